"""A real NGINX (ngx_wasm_module on Wasmtime) running palisade, for the NGINX
end-to-end suite (tests/nginx/test_ngx_*.py), and the upstream behind it.

:class:`NginxInstance` renders an ``nginx.conf`` into its own run directory,
with

* ``worker_processes 2`` (by default) and ``master_process on``: the host's
  workers are processes that share palisade's state only through the
  ``shm_kv *`` zone, declared ``eviction=none``;
* one front server on a loopback port picked at start, listening with
  ``reuseport`` (one socket per worker: the kernel spreads connections over
  both workers), whose ``location /`` runs ``proxy_wasm palisade '<json>'``
  and ``proxy_pass``\\ es to the upstream;
* a readiness location (:data:`READY_PATH`) answered by nginx itself, without
  palisade (a probe would spend tokens);
* Wasmtime's compilation cache in :data:`WASMTIME_CACHE` (the module is
  compiled once per wasm build, not by every worker of every start);
* an access log of ``$pid $status $request_method $uri`` (no query string, no
  header: nothing secret), so tests see which worker served what;
* ``user root;`` when run as root (nginx would otherwise run its workers as
  ``nobody``, who may not read the tree).

Run directories are ``target/nginx-test/run-*`` (``$PALISADE_NGINX_RUNS``).
It starts nginx (``-p <run dir> -c <conf>``, ``daemon off``), waits until the
readiness location answers and every worker is alive and has configured
palisade (its ``palisade: configured`` line in the error log, logged at
``info``), and offers :meth:`~NginxInstance.request` (the Envoy harness's
:func:`harness.http_request`, same :data:`harness.Response`),
:meth:`~NginxInstance.reload` (``nginx -s reload`` with a new palisade
configuration; waits until only new workers run), :meth:`~NginxInstance.stop`
and :meth:`~NginxInstance.problems`: the error-log lines and worker-count
drops that mean the host is broken whatever the statuses say (``[emerg]``,
``[alert]``, ``[crit]``, a worker that exited other than by a reload's
graceful retirement, fewer workers than configured).

:class:`RecordingUpstream` is the application: the Envoy suite's
:class:`jwks_server.EchoUpstream` (a threaded HTTP server in the test process)
that also records every request it receives (method, path, every
header with duplicates and in the case it arrived, body) and answers 200 with
JSON of what it got (credential headers redacted, body as length and SHA-256),
so tests assert what reached the upstream.

The nginx binary is ``$PALISADE_NGINX`` or ``target/nginx/sbin/nginx`` of
the tree (``make nginx``); the wasm is the Envoy harness's
(``$PALISADE_WASM`` or ``target/wasm32-wasip1/release/palisade.wasm``).
Missing artefacts are errors (:class:`harness.HarnessError`), never skips.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import harness
import jwks_server

REPO_ROOT = harness.REPO_ROOT
NGINX_BIN = Path(os.environ.get("PALISADE_NGINX", REPO_ROOT / "target" / "nginx" / "sbin" / "nginx"))
# Not under target/nginx/ (make nginx's output, which a worktree may share).
RUN_ROOT = Path(os.environ.get("PALISADE_NGINX_RUNS", REPO_ROOT / "target" / "nginx-test"))
# Wasmtime's compilation cache, shared by every nginx of the suite: each
# worker compiles the module (about 7 s on 2 cores), then loads the cached
# compilation (keyed on the module's bytes and Wasmtime's settings).
WASMTIME_CACHE = RUN_ROOT / "wasmtime-cache"
READY_PATH = "/__palisade_ready"
START_TIMEOUT = float(os.environ.get("PALISADE_NGINX_START_TIMEOUT", "90"))

# Error-log lines that mean the host is broken whatever the statuses say.
FATAL_LEVEL = re.compile(r"\[(emerg|alert|crit)\]")
WORKER_EXIT = re.compile(r"worker process (\d+) exited(.*)$")
CONFIGURED = "palisade: configured"
# `2026/12/02 00:00:00 [info] 1234#0: ...`: the pid of the process that logged.
LOG_PID = re.compile(r"^\S+ \S+ \[\w+\] (\d+)#")

# Credentials are never echoed by the upstream (the assertion messages that
# print its answer could end up in a CI log).
REDACTED_HEADERS = jwks_server.REDACTED_HEADERS | {"signature"}


class NginxError(harness.HarnessError):
    pass


def nginx_binary(path: Path | None = None) -> Path:
    """``path`` (default :data:`NGINX_BIN`) if it is an executable file."""
    binary = path or NGINX_BIN
    if not (binary.is_file() and os.access(binary, os.X_OK)):
        raise NginxError(
            f"nginx with ngx_wasm_module not found at {binary}: run `make nginx` "
            "(or set PALISADE_NGINX=/path/to/nginx)"
        )
    return binary


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def nginx_quote(text: str) -> str:
    """A single-quoted nginx string: only \\ and ' need escaping."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def children(pid: int) -> list[int]:
    """The live (not zombie) child processes of ``pid``: nginx's workers."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid ...: comm may hold spaces, split after the last ')'.
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid and fields[0] != "Z":
            out.append(int(entry.name))
    return sorted(out)


# --------------------------------------------------------------------------
# The upstream
# --------------------------------------------------------------------------
@dataclass
class Received:
    """One request as it reached the upstream."""

    method: str
    path: str
    headers: list[tuple[str, str]]  # in order, with duplicates, names as received
    body: bytes

    def values(self, name: str) -> list[str]:
        """Every value of header ``name`` (any case)."""
        return [v for k, v in self.headers if k.lower() == name.lower()]


class _Server(jwks_server._Server):
    request_queue_size = 256  # 200 concurrent connections in test_ngx_limits


class RecordingUpstream(jwks_server.EchoUpstream):
    """The Envoy suite's echo upstream (200 with ``{"echo", "method", "path",
    "headers": {name: [values]}, "body_sha256", "body_len"}``, credentials
    redacted) that also records every request in :attr:`received`."""

    server_class = _Server
    redacted = REDACTED_HEADERS

    def __init__(self) -> None:
        super().__init__()
        self.received: list[Received] = []

    def answer(self, handler, body: bytes) -> tuple[int, str, bytes]:
        with self.lock:
            self.received.append(Received(handler.command, handler.path, list(handler.headers.items()), body))
        return super().answer(handler, body)

    def count(self) -> int:
        with self.lock:
            return len(self.received)

    def last(self, path_prefix: str = "") -> Received:
        with self.lock:
            hits = [r for r in self.received if r.path.startswith(path_prefix)]
        assert hits, f"the upstream received no request under {path_prefix!r}"
        return hits[-1]


# --------------------------------------------------------------------------
# nginx
# --------------------------------------------------------------------------
@dataclass
class NginxInstance(harness.LoopbackHttp):
    """One nginx master with ``workers`` worker processes running palisade
    with ``config`` (a dict, serialised to JSON, or a raw JSON string), its
    ``shm_kv *`` zone of ``shm_kv`` (an nginx size). ``nginx`` is the binary
    (default :data:`NGINX_BIN`), ``wasm`` palisade's (default the Envoy
    harness's)."""

    request_timeout: ClassVar[float] = 15.0

    config: dict | str
    upstream_port: int
    workers: int = 2
    shm_kv: str = "8m"
    run_dir: Path | None = None
    nginx: Path | None = None
    wasm: Path | None = None
    server_name: str = "localhost"
    # HTTP/2 on the front port too (cleartext, prior knowledge; HTTP/1.1 still answered).
    http2: bool = False
    extra_http: str = ""
    # A whole nginx.conf instead of the generated one, made from the instance
    # once its run directory and port are set (a shipped file, rewritten).
    conf_template: Callable[[NginxInstance], str] | None = None
    port: int = 0
    proc: subprocess.Popen | None = None
    retired: set[int] = field(default_factory=set)  # workers replaced by a reload
    started_workers: list[int] = field(default_factory=list)

    # -- configuration ---------------------------------------------------
    def render(self) -> str:
        assert self.run_dir is not None and self.wasm is not None
        user = f"user {pwd.getpwuid(0).pw_name};\n" if os.geteuid() == 0 else ""
        palisade = nginx_quote(harness.config_text(self.config))
        d = self.run_dir
        return f"""# Generated by tests/nginx/nginx_host.py.
{user}daemon off;
master_process on;
worker_processes {self.workers};
pid {d}/nginx.pid;
error_log {d}/error.log info;

events {{
    worker_connections 1024;
}}

wasm {{
    module palisade {self.wasm};
    shm_kv * {self.shm_kv} eviction=none;
    wasmtime {{
        cache_config {self.cache_config()};
    }}
}}

http {{
    log_format palisade_test '$pid $status $request_method $uri';
    access_log {d}/access.log palisade_test;
    client_body_temp_path {d}/tmp/body;
    proxy_temp_path {d}/tmp/proxy;
    fastcgi_temp_path {d}/tmp/fastcgi;
    uwsgi_temp_path {d}/tmp/uwsgi;
    scgi_temp_path {d}/tmp/scgi;
{self.extra_http}
    server {{
        # reuseport: one listening socket per worker, connections spread by
        # the kernel, so that both workers take requests.
        listen 127.0.0.1:{self.port} reuseport;
        server_name {self.server_name};
        http2 {"on" if self.http2 else "off"};

        location = {READY_PATH} {{
            return 200 "ready\\n";
        }}

        location / {{
            proxy_wasm palisade {palisade};
            proxy_pass http://127.0.0.1:{self.upstream_port};
        }}
    }}
}}
"""

    def cache_config(self) -> Path:
        """Wasmtime's cache configuration (TOML) in the run directory."""
        assert self.run_dir is not None
        path = self.run_dir / "wasmtime-cache.toml"
        if not path.exists():
            WASMTIME_CACHE.mkdir(parents=True, exist_ok=True)
            path.write_text(f'[cache]\nenabled = true\ndirectory = "{WASMTIME_CACHE}"\n')
        return path

    @property
    def conf_path(self) -> Path:
        assert self.run_dir is not None
        return self.run_dir / "nginx.conf"

    @property
    def error_log_path(self) -> Path:
        assert self.run_dir is not None
        return self.run_dir / "error.log"

    def _write_conf(self) -> None:
        text = self.conf_template(self) if self.conf_template is not None else self.render()
        self.conf_path.write_text(text)

    def _nginx(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(nginx_binary(self.nginx)), "-p", str(self.run_dir), "-c", str(self.conf_path), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    # -- life cycle --------------------------------------------------------
    def start(self, timeout: float = START_TIMEOUT, wait: bool = True) -> NginxInstance:
        """Starts nginx and (``wait``) returns once it serves: see
        :meth:`_wait_serving`. ``wait=False`` returns once the master runs,
        for a test that expects the workers to fail (:meth:`wait_workers_gone`)."""
        binary = nginx_binary(self.nginx)
        self.wasm = self.wasm or harness.wasm_path()
        if self.run_dir is None:
            RUN_ROOT.mkdir(parents=True, exist_ok=True)
            self.run_dir = Path(tempfile.mkdtemp(prefix="run-", dir=RUN_ROOT))
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "logs").mkdir(exist_ok=True)  # nginx opens <prefix>/logs/error.log before its config
        (self.run_dir / "tmp").mkdir(exist_ok=True)
        if not self.port:
            self.port = free_port()
        self._write_conf()
        check = self._nginx("-t")
        if check.returncode != 0:
            raise NginxError(f"nginx -t rejected {self.conf_path}:\n{check.stderr.strip()}")
        with (self.run_dir / "nginx.out").open("wb") as out:
            self.proc = subprocess.Popen(
                [str(binary), "-p", str(self.run_dir), "-c", str(self.conf_path)],
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        if wait:
            self._wait_serving(set(), timeout)
            self.started_workers = self.worker_pids()
        return self

    def _wait_serving(self, old: set[int], timeout: float) -> None:
        """Until the readiness location answers, ``workers`` workers not in
        ``old`` run and each has configured palisade, and none of ``old`` is
        left. Raises with the error log's tail otherwise."""
        deadline = time.monotonic() + timeout
        state = "not started"
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                raise NginxError(
                    f"nginx exited with status {self.proc and self.proc.returncode} while starting\n{self.log_tail()}"
                )
            # An [alert] alone does not stop a start (the test runs, and the
            # fixture fails it afterwards); a dead worker or [emerg] does.
            bad = [line for line in self.problems() if "[alert]" not in line or WORKER_EXIT.search(line)]
            if bad:
                raise NginxError("nginx broke while starting:\n  " + "\n  ".join(bad[:10]) + "\n" + self.log_tail())
            pids = self.worker_pids()
            fresh = [p for p in pids if p not in old]
            configured = self.configured_pids()
            ready = False
            try:
                ready = harness.http_request(self.port, "GET", READY_PATH, timeout=5)[0] == 200
            except OSError:
                pass
            state = f"ready={ready} workers={pids} new={fresh} configured={sorted(configured & set(pids))}"
            if (
                ready
                and len(fresh) == self.workers
                and len(pids) == self.workers
                and all(p in configured for p in fresh)
            ):
                return
            time.sleep(0.1)
        raise NginxError(f"nginx not serving within {timeout:.0f} s ({state})\n{self.log_tail()}")

    def wait_workers_gone(self, timeout: float = START_TIMEOUT) -> None:
        """Until no worker runs and the error log holds the exits of
        ``workers`` of them (so that they were started); the master must stay
        up. Raises with the error log's tail otherwise."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                raise NginxError(f"the master exited with {self.proc and self.proc.returncode}\n{self.log_tail()}")
            exits = sum(1 for line in self.error_log().splitlines() if WORKER_EXIT.search(line))
            if not self.worker_pids() and exits >= self.workers:
                return
            time.sleep(0.25)
        raise NginxError(
            f"{len(self.worker_pids())} workers still running after {timeout:.0f} s\n{self.log_tail()}"
        )

    def reload(self, config: dict | str | None = None, timeout: float = START_TIMEOUT) -> None:
        """``nginx -s reload`` with palisade configured with ``config`` (or the
        same configuration); returns when only new workers run, each has
        configured palisade, and the readiness location answers."""
        if config is not None:
            self.config = config
            self._write_conf()
        old = set(self.worker_pids())
        done = self._nginx("-s", "reload")
        if done.returncode != 0:
            raise NginxError(f"nginx -s reload failed: {done.stderr.strip()}")
        self.retired |= old
        self._wait_serving(old, timeout)
        self.started_workers = self.worker_pids()

    def stop(self, timeout: float = 30.0) -> None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGQUIT)  # graceful shutdown
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # the master and its workers (own session)
            except ProcessLookupError:
                pass
            proc.wait(timeout=timeout)

    def cleanup(self) -> None:
        """Removes the run directory (after a passing test)."""
        if self.run_dir is not None and self.run_dir.is_relative_to(RUN_ROOT):
            shutil.rmtree(self.run_dir, ignore_errors=True)

    # -- state -------------------------------------------------------------
    def worker_pids(self) -> list[int]:
        return children(self.proc.pid) if self.proc is not None and self.proc.poll() is None else []

    def error_log(self) -> str:
        try:
            return self.error_log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 60) -> str:
        return f"--- tail of {self.error_log_path} ---\n" + "\n".join(self.error_log().splitlines()[-lines:])

    def configured_pids(self) -> set[int]:
        """The processes that logged palisade's ``palisade: configured``."""
        out = set()
        for line in self.error_log().splitlines():
            if CONFIGURED in line:
                m = LOG_PID.match(line)
                if m:
                    out.add(int(m.group(1)))
        return out

    def served_by(self, uri_prefix: str, status: int | None = None) -> dict[int, int]:
        """{worker pid: requests} of the access log's requests under
        ``uri_prefix`` (answered with ``status`` when given)."""
        out: dict[int, int] = {}
        try:
            lines = (self.run_dir / "access.log").read_text(errors="replace").splitlines()
        except OSError:
            return out
        for line in lines:
            parts = line.split()
            if len(parts) < 4 or not parts[3].startswith(uri_prefix):
                continue
            if status is not None and parts[1] != str(status):
                continue
            out[int(parts[0])] = out.get(int(parts[0]), 0) + 1
        return out

    def wait_served(
        self, uri_prefix: str, count: int, status: int | None = None, timeout: float = 15.0
    ) -> dict[int, int]:
        """:meth:`served_by` once the access log holds ``count`` such lines
        (a worker writes its line after answering), or what it holds at the
        deadline."""
        deadline = time.monotonic() + timeout
        while True:
            served = self.served_by(uri_prefix, status)
            if sum(served.values()) >= count or time.monotonic() > deadline:
                return served
            time.sleep(0.05)

    def problems(self) -> list[str]:
        """What makes this nginx broken: ``[emerg]``/``[alert]``/``[crit]``
        lines, a worker that exited (other than one retired by a reload,
        exiting with code 0), and fewer live workers than configured once
        started. Empty when healthy."""
        out = []
        for line in self.error_log().splitlines():
            if FATAL_LEVEL.search(line):
                out.append(line)
                continue
            m = WORKER_EXIT.search(line)
            if m and not (int(m.group(1)) in self.retired and m.group(2).strip() == "with code 0"):
                out.append(line)
        if self.started_workers and self.proc is not None and self.proc.poll() is None:
            live = self.worker_pids()
            gone = [p for p in self.started_workers if p not in live and p not in self.retired]
            if gone:
                out.append(f"worker processes {gone} are gone ({len(live)} of {self.workers} running: {live})")
        return out

    def assert_healthy(self) -> None:
        bad = self.problems()
        assert not bad, "nginx is broken:\n  " + "\n  ".join(bad[:20])
