"""Smoke run of palisade on the NGINX host built by `make nginx`.

Starts the built nginx (ngx_wasm_module on Wasmtime) with 2 worker processes
on a loopback port, through the NGINX suite's harness (tests/nginx/nginx_host.py:
the nginx.conf it generates in the run directory, its wait until every
worker has configured palisade, its checks of the error log): palisade.wasm
runs through `proxy_wasm` in front of an upstream in this process
(nginx_host.RecordingUpstream) that answers 200. Palisade's configuration
has one rate-limit rule, capacity 3, never refilled, keyed by client IP; the
two workers share its bucket through the `shm_kv *` zone, so 5 requests
(each on its own connection, whichever worker takes it) must get 200, 200,
200, then 429 with reason `rl.exhausted` twice, and only 3 reach the
upstream. Both workers must still be running at the end
(a worker that dies in on_configure is not respawned on this host).

Any mismatch, nginx failing to start, or a broken nginx (an `[emerg]`,
`[alert]` or `[crit]` line, a worker that exited), exits non-zero with the
tail of nginx's error log. Used by `make nginx-smoke`:

    .venv/bin/python tests/nginx/smoke.py --nginx target/nginx/sbin/nginx \
        --wasm target/wasm32-wasip1/release/palisade.wasm --run-dir target/nginx/run
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "integration"))
sys.path.insert(0, str(HERE))

import harness  # noqa: E402
import nginx_host  # noqa: E402

CAPACITY = 3
REQUESTS = 5
EXPECTED = [200] * CAPACITY + [429] * (REQUESTS - CAPACITY)

PALISADE_CONFIG = {
    "version": 1,
    "mode": "enforce",
    "client_ip": {"source": "peer"},
    "rate_limits": {
        # 1,024 slots: 256 pages of ~512 bytes in the zone, far below its 4 MiB.
        "slots": 1024,
        "rules": [{"name": "smoke-ip", "key": ["ip"], "capacity": CAPACITY, "refill": "none"}],
    },
}


def run(args: argparse.Namespace) -> list[str]:
    """Start nginx, send the requests; the list of failures (empty: passed)."""
    run_dir: Path = args.run_dir.resolve()
    if run_dir.exists():
        shutil.rmtree(run_dir)
    upstream = nginx_host.RecordingUpstream().start()
    inst = nginx_host.NginxInstance(
        PALISADE_CONFIG,
        upstream.port,
        workers=args.workers,
        shm_kv="4m",
        run_dir=run_dir,
        nginx=args.nginx.resolve(),
        wasm=args.wasm.resolve(),
    )
    failures: list[str] = []
    try:
        try:
            inst.start(timeout=args.timeout)
        except harness.HarnessError as exc:
            return [str(exc)]

        got: list[tuple[int, str | None]] = []
        for i in range(REQUESTS):
            try:
                resp = inst.request("GET", f"/smoke/{i}", timeout=args.timeout)
            except OSError as exc:
                failures.append(f"request {i + 1}: {exc!r}")
                break
            got.append((resp[0], harness.reason_of(resp)))
        statuses = [status for status, _ in got]
        print(f"nginx-smoke: statuses {statuses} (expected {EXPECTED})")
        if statuses != EXPECTED:
            failures.append(f"statuses {statuses}, expected {EXPECTED}")
        for i, (status, reason) in enumerate(got):
            if status == 429 and reason != "rl.exhausted":
                failures.append(f"request {i + 1}: 429 with reason {reason!r}, expected 'rl.exhausted'")
        print("nginx-smoke: 429 reasons " + (", ".join(str(r) for s, r in got if s == 429) or "none"))
        if upstream.count() != CAPACITY:
            failures.append(f"{upstream.count()} requests reached the upstream, expected {CAPACITY}")

        served = sorted(inst.wait_served("/smoke/", len(got)))
        print(f"nginx-smoke: the counted requests were served by {len(served)} worker process(es) {served}")

        workers = inst.worker_pids()
        if len(workers) != args.workers:
            failures.append(f"{len(workers)} worker processes running at the end, expected {args.workers}")
        # Read before stopping: a graceful stop logs workers exiting too.
        bad = inst.problems()
        if bad:
            failures.append("nginx is broken:\n    " + "\n    ".join(bad[:10]))
    finally:
        inst.stop()
        upstream.stop()
    return failures


def main() -> int:
    parser = argparse.ArgumentParser(description="palisade on the built nginx: 3 x 200, then 429 rl.exhausted")
    parser.add_argument("--nginx", type=Path, default=Path("target/nginx/sbin/nginx"))
    parser.add_argument("--wasm", type=Path, default=Path("target/wasm32-wasip1/release/palisade.wasm"))
    parser.add_argument("--run-dir", type=Path, default=Path("target/nginx/run"))
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for nginx and for each answer")
    args = parser.parse_args()
    for path, what in ((args.nginx, "nginx (make nginx)"), (args.wasm, "palisade.wasm (make build)")):
        if not path.exists():
            print(f"nginx-smoke: {what} not found at {path}", file=sys.stderr)
            return 2

    started = time.monotonic()
    failures = run(args)
    if failures:
        print("nginx-smoke: FAILED", file=sys.stderr)
        for failure in failures:
            print(f"  - {failure}", file=sys.stderr)
        error_log = args.run_dir / "error.log"
        try:
            tail = "\n".join(error_log.read_text(errors="replace").splitlines()[-40:])
        except OSError as exc:
            tail = f"(no error log: {exc})"
        print(f"nginx-smoke: tail of {error_log}:", file=sys.stderr)
        print(tail, file=sys.stderr)
        return 1
    print(
        f"nginx-smoke: passed in {time.monotonic() - started:.1f} s: nginx with {args.workers} workers, "
        f"palisade rate limit of {CAPACITY}: {CAPACITY} x 200, then 429 rl.exhausted"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
