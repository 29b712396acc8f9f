"""Rate-limit rules with ``reserve`` (issue 14 item 3): a worker takes a
batch of tokens from the shared bucket in one compare-and-swap for a key
that was busy on it in the last tick period, and spends them without shared
data; a key never gets more than its bucket.

* A busy client (a first burst, then the 1 s tick, so that every worker
  takes batches of 8), then 400 concurrent requests over 16 HTTP/2
  connections spread on 4 workers: never more passes than the bucket had
  left, all the others 429 ``rl.exhausted``, and at most
  ``(workers - 1) x 7`` tokens left held unspent.
* A slow client is not burned in batches it never uses: one request every
  0.7 s gets its whole bucket of 6 (with ``reserve: 3``), then 429.
"""

from __future__ import annotations

import collections
import time

from test_contention import WORKERS, XFF_CLIENT, Burst, get, outcome

RESERVE = 8


def config(capacity: int, reserve: int = RESERVE) -> dict:
    return {
        "version": 1,
        "client_ip": XFF_CLIENT,
        "rate_limits": {
            "slots": 256,
            "rules": [
                {"name": "per-ip", "key": ["ip"], "capacity": capacity, "refill": "none", "reserve": reserve}
            ],
        },
    }


def test_a_busy_client_on_four_workers_never_passes_more_than_the_bucket(envoy):
    e = envoy(config(300), concurrency=WORKERS)
    ip = {"x-forwarded-for": "198.51.100.7"}
    burst = Burst(e)
    warm = burst.run([get(f"/w/{i}", ip) for i in range(100)])
    assert collections.Counter(outcome(r) for r in warm) == {(200, None): 100}
    # Past a tick: each worker saw the client about 25 times in the period.
    time.sleep(1.1)
    results = burst.run([get(f"/b/{i}", ip) for i in range(400)])
    got = collections.Counter(outcome(r) for r in results)
    passed = got[(200, None)]
    assert set(got) <= {(200, None), (429, "rl.exhausted")}, dict(got)
    assert passed <= 200, f"{passed} passes for the 200 tokens left"
    assert passed >= 200 - (WORKERS - 1) * (RESERVE - 1), dict(got)
    print(f"{passed} of 400 passed; {burst.spread()}")


def test_a_slow_client_gets_its_whole_bucket(envoy):
    e = envoy(config(6, reserve=3), concurrency=2)
    conn = e.connection()
    ip = {"x-forwarded-for": "198.51.100.8"}
    statuses = []
    for i in range(7):
        statuses.append(e.request("GET", f"/s/{i}", ip, conn=conn)[0])
        time.sleep(0.7)
    assert statuses == [200] * 6 + [429], statuses
