"""(a) One limit, enforced exactly across Envoy worker threads."""

from __future__ import annotations

import collections
import threading

import harness

CONFIG = {
    "version": 1,
    "rate_limits": {
        "rules": [{"name": "burst", "key": ["ip"], "capacity": 50, "refill": "none"}],
    },
}

N = 200


def test_exact_limit_across_workers(envoy):
    e = envoy(CONFIG, concurrency=4)
    barrier = threading.Barrier(N, timeout=60)
    results: list = [None] * N

    def worker(i: int) -> None:
        try:
            barrier.wait()
            # Each request on its own TCP connection (connections are spread
            # over the workers by the kernel, SO_REUSEPORT per worker socket).
            results[i] = e.request("GET", f"/burst/{i}")
        except Exception as exc:  # noqa: BLE001 - reported below
            results[i] = exc

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(N)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=90)

    errors = [r for r in results if not isinstance(r, tuple)]
    assert not errors, f"{len(errors)} requests failed at the client: {errors[:3]}"
    statuses = collections.Counter(r[0] for r in results)
    reasons = collections.Counter(harness.reason_of(r) for r in results if r[0] != 200)
    assert statuses == {200: 50, 429: 150}, f"statuses {dict(statuses)}, reasons {dict(reasons)}"
    assert reasons == {"rl.exhausted": 150}, dict(reasons)

    workers = e.workers_with_connections()
    assert len(workers) >= 2, (
        f"only workers {workers} accepted connections: the test did not exercise cross-worker sharing"
    )
    assert sum(workers.values()) >= N
    print(f"connections per worker: {workers}")
