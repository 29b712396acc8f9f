"""The global mode's services for the integration tests: a Redis
(``redis-server`` from Debian, on loopback, nothing saved) and palisade's
rate-limit service (``envoy/ratelimit-service``, Limitador on that Redis),
each started on a free port and stoppable and restartable on the same port,
so a test can take them down and bring them back.

A missing binary is a :class:`harness.HarnessError` (a failure, never a
skip): ``make test`` installs Redis and builds the service.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import harness

RLS_BINARY = Path(
    os.environ.get(
        "PALISADE_RLS_BIN",
        harness.REPO_ROOT / "target" / "ratelimit-service" / "release" / "palisade-ratelimit",
    )
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_port(port: int, proc: subprocess.Popen, what: str, log: Path, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise harness.HarnessError(f"{what} exited with {proc.returncode}:\n{harness.tail(log.read_text(errors='replace'))}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise harness.HarnessError(f"{what} not listening on {port} after {timeout}s")


class _Process:
    """A child process that can be stopped and started again on its ports."""

    what = "process"

    def __init__(self, workdir: Path) -> None:
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.log = self.dir / f"{self.what}.log"
        self.proc: subprocess.Popen | None = None

    def command(self) -> list[str]:
        raise NotImplementedError

    def env(self) -> dict[str, str] | None:
        return None

    def ready_port(self) -> int:
        raise NotImplementedError

    def start(self):
        out = open(self.log, "ab")
        self.proc = subprocess.Popen(
            self.command(),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=str(self.dir),
            env=self.env(),
            start_new_session=True,
        )
        out.close()
        _wait_port(self.ready_port(), self.proc, self.what, self.log)
        return self

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


class Redis(_Process):
    what = "redis"

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir)
        binary = shutil.which("redis-server")
        if binary is None:
            raise harness.HarnessError("redis-server is not installed: run `make redis` (Debian package redis-server)")
        self.binary = binary
        self.port = free_port()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        return [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]

    def ready_port(self) -> int:
        return self.port


class RateLimitService(_Process):
    what = "ratelimit-service"

    def __init__(self, workdir: Path, redis_url: str) -> None:
        super().__init__(workdir)
        if not RLS_BINARY.is_file():
            raise harness.HarnessError(f"{RLS_BINARY} is missing: run `make ratelimit-service`")
        self.redis_url = redis_url
        self.port = free_port()
        self.health_port = free_port()

    def command(self) -> list[str]:
        return [
            str(RLS_BINARY),
            "--listen",
            f"127.0.0.1:{self.port}",
            "--health-listen",
            f"127.0.0.1:{self.health_port}",
            "--redis-url",
            self.redis_url,
            "--redis-timeout",
            "250ms",
        ]

    def ready_port(self) -> int:
        return self.port

    def healthz(self) -> int:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.health_port}/healthz", timeout=2) as r:
                return r.status
        except urllib.error.HTTPError as e:
            return e.code
        except OSError:
            return 0

    def cluster(self, name: str = "ratelimit") -> dict:
        """The Envoy cluster palisade's `global.cluster` names: gRPC needs HTTP/2."""
        c = harness.static_cluster(name, self.port)
        c["typed_extension_protocol_options"] = {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}},
            }
        }
        return c
