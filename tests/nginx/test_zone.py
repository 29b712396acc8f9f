"""The `shm_kv *` zone size on NGINX (ngx_wasm_module), run for real.

ngx_wasm_module keeps palisade's shared data (slot pages of every table, the
seed, key-set records) in the `shm_kv *` zone. With `eviction=none` a write
that does not fit traps ("could not write to slab"); in `on_configure` that
kills the worker, and nginx never respawns a worker that fails while
starting: the master stays up with no workers. `palisade-check
--nginx-zone-size` computes the size a configuration needs; these tests start
the built nginx (2 workers, loopback) with that size and check that both
workers configure palisade and its tables work (a rate limit counted across
workers), then with a zone clearly too small and check the documented
consequence (both workers gone, the slab error logged). Two configurations:
the shipped nginx/nginx.conf's, and one with the signature replay table as
well (the finding: rate limits plus the replay table did not fit 16m).

Self-contained: the built nginx (`make nginx`, or PALISADE_NGINX),
palisade.wasm (`make build`, or PALISADE_WASM) and palisade-check
(`cargo build`, or PALISADE_CHECK) must exist; a missing one fails.
"""

from __future__ import annotations

import http.client
import json
import os
import pwd
import re
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
NGINX = Path(os.environ.get("PALISADE_NGINX", REPO_ROOT / "target" / "nginx" / "sbin" / "nginx"))
WASM = Path(os.environ.get("PALISADE_WASM", REPO_ROOT / "target" / "wasm32-wasip1" / "release" / "palisade.wasm"))
PALISADE_CHECK = Path(os.environ.get("PALISADE_CHECK", REPO_ROOT / "target" / "debug" / "palisade-check"))
NGINX_CONF = REPO_ROOT / "nginx" / "nginx.conf"

WORKERS = 2
# Generous: two cores shared with other test runs, and each worker compiles
# the module (Wasmtime) before it configures palisade.
START_TIMEOUT = 180.0
REQUEST_TIMEOUT = 30.0
READY_PATH = "/__zone_ready"

# What the log says when a write did not fit the zone (ngx_wasm_module's
# proxy_set_shared_data trap, and the kv store's own line before it).
SLAB_FULL = re.compile(r"could not write to slab|no memory; cannot allocate pair")
# A worker that died: nginx logs its exit, and that it will not start another
# when the worker failed while starting.
WORKER_EXIT = re.compile(r"worker process \d+ exited")
NOT_RESPAWNED = re.compile(r"worker process \d+ exited with fatal code 2 and cannot be respawned")
FATAL = re.compile(r"\[emerg\]|\[crit\]|\[alert\] .*(exited|signal)|" + SLAB_FULL.pattern)
CONFIGURED = "palisade: configured:"

# A configuration with the replay table on top of a 65,536-slot rate-limit
# table: what did not fit the old 16m. The key is a test value, not a secret
# anyone uses.
TEST_KEY = "YS1kZW1vLXNlY3JldC1vZi1hdC1sZWFzdC0zMi1ieXRlcyEh"
REPLAY_CONFIG = {
    "version": 1,
    "mode": "enforce",
    "client_ip": {"source": "peer"},
    "routes": [{"name": "pay", "prefix": "/pay"}, {"name": "api", "prefix": "/api/"}],
    "rate_limits": {
        "slots": 65536,
        "rules": [{"name": "api-ip", "key": ["ip"], "routes": ["api"], "capacity": 4, "refill": "none"}],
    },
    "signatures": {
        "keys": [{"id": "k", "secret": {"base64": TEST_KEY}}],
        "policies": [{"routes": ["pay"], "replay": True}],
    },
}


def shipped_config() -> dict:
    """The palisade JSON of nginx/nginx.conf's proxy_wasm directive."""
    text = NGINX_CONF.read_text()
    (quoted,) = re.findall(r"proxy_wasm\s+palisade\s+'((?:[^'\\]|\\.)*)'\s*;", text)
    return json.loads(re.sub(r"\\(['\\])", r"\1", quoted))


def zone_size(config: dict, tmp_path: Path) -> int:
    """`palisade-check --nginx-zone-size`: the zone size in MiB."""
    path = tmp_path / "palisade.json"
    path.write_text(json.dumps(config))
    proc = subprocess.run(
        [str(PALISADE_CHECK), "--nginx-zone-size", str(path)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, f"palisade-check --nginx-zone-size failed:\n{proc.stdout}\n{proc.stderr}"
    match = re.search(r": shm_kv \* (\d+)m eviction=none  # ", proc.stdout)
    assert match, proc.stdout
    return int(match.group(1))


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def nginx_quote(text: str) -> str:
    """A single-quoted nginx string: only \\ and ' need escaping."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


class Nginx:
    """One nginx master with WORKERS workers running palisade with `config`
    behind a `shm_kv *` zone of `zone` (an nginx size such as `7m`)."""

    def __init__(self, run_dir: Path, config: dict, zone: str) -> None:
        self.run_dir = run_dir
        (run_dir / "logs").mkdir(parents=True)  # nginx opens <prefix>/logs/error.log first
        (run_dir / "tmp").mkdir()
        self.port, self.upstream = free_port(), free_port()
        while self.upstream == self.port:
            self.upstream = free_port()
        self.error_log = run_dir / "error.log"
        conf = run_dir / "nginx.conf"
        conf.write_text(self.render(config, zone))
        check = subprocess.run(
            [str(NGINX), "-p", str(run_dir), "-c", str(conf), "-t"], capture_output=True, text=True, timeout=120
        )
        assert check.returncode == 0, f"nginx -t rejected the configuration:\n{check.stderr}"
        with (run_dir / "nginx.out").open("wb") as out:
            self.proc = subprocess.Popen(
                [str(NGINX), "-p", str(run_dir), "-c", str(conf)], stdout=out, stderr=subprocess.STDOUT
            )

    def render(self, config: dict, zone: str) -> str:
        run_dir = self.run_dir
        # As root nginx would run its workers as `nobody`, who may not read
        # the wasm file or write the run directory.
        user = f"user {pwd.getpwuid(0).pw_name};\n" if os.geteuid() == 0 else ""
        temp = "\n".join(
            f"    {name}_temp_path {run_dir}/tmp/{name};" for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        return f"""# Generated by tests/nginx/test_zone.py.
{user}daemon off;
master_process on;
worker_processes {WORKERS};
pid {run_dir}/nginx.pid;
error_log {run_dir}/error.log info;

events {{
    worker_connections 256;
}}

wasm {{
    module palisade {WASM.resolve()};
    shm_kv * {zone} eviction=none;
}}

http {{
    access_log off;
{temp}

    server {{
        listen 127.0.0.1:{self.upstream};
        location / {{
            return 200 "upstream ok\\n";
        }}
    }}

    server {{
        # One listening socket per worker: connections spread over both.
        listen 127.0.0.1:{self.port} reuseport;

        location = {READY_PATH} {{
            proxy_pass http://127.0.0.1:{self.upstream};
        }}

        location / {{
            proxy_wasm palisade {nginx_quote(json.dumps(config))};
            proxy_pass http://127.0.0.1:{self.upstream};
        }}
    }}
}}
"""

    def log(self) -> str:
        try:
            return self.error_log.read_text(errors="replace")
        except OSError:
            return ""

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    def workers(self) -> list[int]:
        """The master's live children."""
        pids = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[1].split()
            if int(fields[1]) == self.proc.pid and fields[0] != "Z":
                pids.append(int(entry.name))
        return pids

    def request(self, method: str, path: str, headers: dict[str, str] | None = None) -> tuple[int, str | None]:
        """One request on its own connection: the status and palisade's reason."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=REQUEST_TIMEOUT)
        try:
            conn.request(method, path, headers={"Connection": "close", **(headers or {})})
            resp = conn.getresponse()
            body = resp.read().decode("utf-8", "replace")
        finally:
            conn.close()
        reason = None
        if resp.status >= 400:
            try:
                reason = json.loads(body).get("reason")
            except (ValueError, AttributeError):
                reason = None
        return resp.status, reason

    def wait_configured(self) -> None:
        """Until every worker logged palisade's configured line and the
        server answers; fails at once on a fatal line."""
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"nginx exited with {self.proc.returncode}:\n{self.tail()}"
            log = self.log()
            fatal = [line for line in log.splitlines() if FATAL.search(line)]
            assert not fatal, "nginx logged while starting:\n" + "\n".join(fatal[:10])
            if log.count(CONFIGURED) >= WORKERS and len(self.workers()) == WORKERS:
                try:
                    conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
                    conn.request("GET", READY_PATH, headers={"Connection": "close"})
                    if conn.getresponse().status == 200:
                        return
                except OSError:
                    pass
                finally:
                    conn.close()
            time.sleep(0.25)
        raise AssertionError(f"nginx not configured within {START_TIMEOUT:.0f} s:\n{self.tail()}")

    def wait_workers_gone(self) -> None:
        """Until no worker is left; fails if one configured palisade."""
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"the master exited with {self.proc.returncode}:\n{self.tail()}"
            if not self.workers() and self.log().count("exited") >= WORKERS:
                return
            time.sleep(0.25)
        raise AssertionError(f"{len(self.workers())} workers still running after {START_TIMEOUT:.0f} s:\n{self.tail()}")

    def stop(self) -> None:
        if self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGQUIT)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def nginx(tmp_path: Path) -> Iterator:
    """Starts nginx on demand: nginx(config, zone) -> Nginx; stops them all."""
    needs = ((NGINX, "nginx (make nginx)"), (WASM, "palisade.wasm (make build)"), (PALISADE_CHECK, "palisade-check (cargo build)"))
    for path, what in needs:
        assert path.exists(), f"{what} not found at {path}"
    started: list[Nginx] = []

    def start(config: dict, zone: str) -> Nginx:
        n = Nginx(tmp_path / f"run{len(started)}", config, zone)
        started.append(n)
        return n

    yield start
    for n in started:
        n.stop()


CONFIGS = {"shipped": shipped_config, "replay": lambda: REPLAY_CONFIG}


def exhaust(server: Nginx, method: str, path: str, capacity: int, headers: dict[str, str] | None = None) -> list[tuple[int, str | None]]:
    """capacity + 2 requests, each on its own connection (either worker)."""
    return [server.request(method, path, headers) for _ in range(capacity + 2)]


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_computed_size_starts_both_workers_and_serves(nginx, tmp_path: Path, name: str) -> None:
    config = CONFIGS[name]()
    mib = zone_size(config, tmp_path)
    server = nginx(config, f"{mib}m")
    server.wait_configured()
    if name == "shipped":
        # login-ip: capacity 5 per client address, counted in the shared table.
        got = exhaust(server, "POST", "/login", 5)
    else:
        got = exhaust(server, "GET", "/api/items", 4)
    capacity = len(got) - 2
    assert got[:capacity] == [(200, None)] * capacity, got
    assert got[capacity:] == [(429, "rl.exhausted")] * 2, got
    assert len(server.workers()) == WORKERS, server.tail()
    fatal = [line for line in server.log().splitlines() if FATAL.search(line) or WORKER_EXIT.search(line)]
    assert not fatal, "\n".join(fatal[:10])


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_too_small_zone_kills_both_workers_in_on_configure(nginx, tmp_path: Path, name: str) -> None:
    config = CONFIGS[name]()
    mib = zone_size(config, tmp_path)
    # Well under what the tables need (the computed size less its 1 MiB
    # headroom and 2 MiB more), yet above ngx_wasm_module's minimum.
    small = mib - 3
    assert small >= 1, mib
    server = nginx(config, f"{small}m")
    server.wait_workers_gone()
    log = server.log()
    assert SLAB_FULL.search(log), server.tail()
    assert log.count("on_configure failure") == WORKERS, server.tail()
    assert len(NOT_RESPAWNED.findall(log)) == WORKERS, server.tail()
    assert CONFIGURED not in log, server.tail()
    assert server.proc.poll() is None, "the master stays up, with no workers"
