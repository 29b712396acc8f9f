"""Rate limits, bans and the client address on NGINX (ngx_wasm_module, 2
worker processes sharing palisade's tables through the ``shm_kv *`` zone).

The Envoy suite's scenarios (test_cross_worker, test_client_ip, test_phases)
on the second host: each request on its own connection, so the kernel spreads
them over both workers (``reuseport``), and the access log tells which worker
answered. What is proven:

* a limit is exact across worker processes: capacity 50, 200 concurrent
  connections, exactly 50 x 200 and 150 x 429 ``rl.exhausted``, in each of
  several runs, with both workers answering, and exactly 50 requests at the
  upstream;
* ``X-Forwarded-For`` (as clients send it, mixed case) with one trusted hop:
  the rightmost entry is the client, limits are keyed on it, not on the TCP
  peer, and an entry that is not an address is 400 ``client_ip.invalid``;
* a ``counts: failures`` rule with bans: wrong API keys (``X-Api-Key``) from
  one address are verified until the bucket is empty, then throttled (429
  ``rl.exhausted``), then banned (403 ``ban.active`` with an integer
  ``Retry-After``) on both workers, none of them reaching the upstream, while
  a client with the right key from another address passes.
"""

from __future__ import annotations

import collections
import threading
import time

import harness
import test_phases
from test_phases import GOOD_KEY

N = 200
CAPACITY = 50
RUNS = 3


def burst_config() -> dict:
    return {
        "version": 1,
        "mode": "enforce",
        "client_ip": {"source": "peer"},
        "routes": [{"name": f"run{k}", "prefix": f"/run{k}/"} for k in range(RUNS)],
        "rate_limits": {
            "slots": 1024,
            "rules": [
                {"name": f"burst{k}", "key": ["ip"], "routes": [f"run{k}"], "capacity": CAPACITY, "refill": "none"}
                for k in range(RUNS)
            ],
        },
    }


def concurrent(inst, paths: list[str], headers: dict[str, str] | None = None) -> list:
    """Every path requested at once (a barrier), each on its own connection."""
    barrier = threading.Barrier(len(paths), timeout=60)
    results: list = [None] * len(paths)

    def worker(i: int) -> None:
        try:
            barrier.wait()
            results[i] = inst.request("GET", paths[i], headers, timeout=60)
        except Exception as exc:  # noqa: BLE001 - reported by the caller
            results[i] = exc

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(paths))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    return results


def burst(inst, paths: list[str], what: str = "") -> tuple[collections.Counter, collections.Counter]:
    """The statuses and the refusals' reason codes of ``paths`` requested at once."""
    results = concurrent(inst, paths)
    errors = [r for r in results if not isinstance(r, tuple)]
    assert not errors, f"{what}{len(errors)} requests failed at the client: {errors[:3]}"
    statuses = collections.Counter(r[0] for r in results)
    reasons = collections.Counter(harness.reason_of(r) for r in results if r[0] != 200)
    return statuses, reasons


def test_limit_is_exact_across_worker_processes(nginx, upstream):
    inst = nginx(burst_config())
    for k in range(RUNS):
        before = upstream.count()
        statuses, reasons = burst(inst, [f"/run{k}/{i}" for i in range(N)], f"run {k}: ")
        assert statuses == {200: CAPACITY, 429: N - CAPACITY}, f"run {k}: statuses {dict(statuses)}, {dict(reasons)}"
        assert reasons == {"rl.exhausted": N - CAPACITY}, f"run {k}: {dict(reasons)}"
        assert upstream.count() - before == CAPACITY, f"run {k}: {upstream.count() - before} requests upstream"
        served = inst.wait_served(f"/run{k}/", N)
        assert len(served) == 2 and sum(served.values()) == N, (
            f"run {k}: requests per worker {served}: both workers must take part"
        )
        print(f"run {k}: requests per worker {served}")
    inst.assert_healthy()


XFF_CONFIG = {
    "version": 1,
    "client_ip": {"source": "x-forwarded-for", "trusted_hops": 1},
    "rate_limits": {"slots": 1024, "rules": [{"name": "per-ip", "key": ["ip"], "capacity": 2, "refill": "none"}]},
}


def xff(value: str) -> dict[str, str]:
    return {"X-Forwarded-For": value}


def test_client_address_from_x_forwarded_for(nginx, upstream):
    inst = nginx(XFF_CONFIG)
    a = xff("1.1.1.1, 198.51.100.1")
    b = xff("2.2.2.2, 198.51.100.1")
    assert inst.request("GET", "/", a)[0] == 200
    assert inst.request("GET", "/", b)[0] == 200
    # Same client (198.51.100.1) on whichever worker: the bucket of 2 is empty.
    for headers in (a, b, {"x-forwarded-for": "198.51.100.1"}):
        r = inst.request("GET", "/", headers)
        assert r[0] == 429 and harness.reason_of(r) == "rl.exhausted", r
    # Another rightmost entry is another client, though the TCP peer is the same.
    assert inst.request("GET", "/", xff("1.1.1.1, 198.51.100.2"))[0] == 200
    assert inst.request("GET", "/", xff("198.51.100.3"))[0] == 200
    # A trusted entry that is not an address: refused, never keyed on the TCP peer.
    for value in ("nonsense", "1.1.1.1, nonsense"):
        status, _, body = inst.request("GET", "/", xff(value))
        assert status == 400, (value, status, body)
        assert harness.json_body(body).get("reason") == "client_ip.invalid", body
        assert b"nonsense" not in body, body
    # What nginx forwarded: the client's header as sent, once.
    assert upstream.last().values("x-forwarded-for") == ["198.51.100.3"], upstream.last().headers
    inst.assert_healthy()


def failures_config() -> dict:
    """The Envoy suite's (test_phases): a ``counts: failures`` rule with bans
    on ``/partner/``, where an API key with role ``partner`` (GOOD_KEY) is
    required; a table of 1,024 slots (the zone's default size holds it)."""
    cfg = test_phases.config([test_phases.FAILURES_RULE])
    cfg["rate_limits"]["slots"] = 1024
    return cfg


def test_failed_credentials_are_throttled_then_banned_on_both_workers(nginx, upstream):
    inst = nginx(failures_config())
    guesser = "203.0.113.9"
    good = [
        inst.request("GET", "/partner/report", {"X-Api-Key": GOOD_KEY, "X-Forwarded-For": guesser})[0]
        for _ in range(10)
    ]
    assert good == [200] * 10, f"good key refused: {good}"
    assert all(r.values("x-palisade-user") == ["apikey:p"] for r in upstream.received), "identity not forwarded"
    before = upstream.count()

    got = []
    for i in range(20):
        r = inst.request("GET", "/partner/report", {"X-Api-Key": f"guess-{i}", "X-Forwarded-For": guesser})
        got.append(r)
    summary = [(r[0], harness.reason_of(r)) for r in got]
    assert summary[:3] == [(401, "apikey.invalid")] * 3, summary
    assert summary[3] == (429, "rl.exhausted"), summary
    assert summary[4:] == [(403, "ban.active")] * 16, summary
    for r in got[4:]:
        ra = r[1].get("retry-after", "")
        assert ra.isdigit() and 1 <= int(ra) <= 60, f"403 ban.active with Retry-After {ra!r}"
    # The ban holds whatever the credential: the right key from the banned address too.
    r = inst.request("GET", "/partner/report", {"X-Api-Key": GOOD_KEY, "X-Forwarded-For": guesser})
    assert (r[0], harness.reason_of(r)) == (403, "ban.active"), r[:2]
    assert upstream.count() == before, "a refused request reached the upstream"

    # Both workers answered with the ban (it is in the shared zone, not per worker).
    banned_by = set(inst.wait_served("/partner/", 17, 403))
    assert len(banned_by) == 2, f"403s answered by workers {banned_by}: the ban was not seen by both"

    # Another address with the right key is not affected.
    ok = inst.request("GET", "/partner/report", {"X-Api-Key": GOOD_KEY, "X-Forwarded-For": "198.51.100.1"})
    assert ok[0] == 200, ok[:2]
    inst.assert_healthy()




RESERVE = 8


def reserve_config(capacity: int, reserve: int = RESERVE) -> dict:
    return {
        "version": 1,
        "client_ip": {"source": "peer"},
        "rate_limits": {
            "slots": 1024,
            "rules": [
                {"name": "held", "key": ["ip"], "capacity": capacity, "refill": "none", "reserve": reserve}
            ],
        },
    }


def test_a_busy_client_never_passes_more_than_its_bucket_across_workers(nginx, upstream):
    # As the Envoy suite's test_reserve: a busy period, the tick, then a
    # burst on batches of 8 taken from the shared bucket.
    inst = nginx(reserve_config(300))
    warm, _ = burst(inst, [f"/w/{i}" for i in range(100)])
    assert warm == {200: 100}, dict(warm)
    time.sleep(1.1)
    before = upstream.count()
    statuses, reasons = burst(inst, [f"/r/{i}" for i in range(N)])
    assert set(statuses) <= {200, 429} and set(reasons) <= {"rl.exhausted"}, dict(statuses)
    # 200 left: one of the two workers may be left holding up to 7.
    assert 200 - (RESERVE - 1) <= statuses[200] <= 200, dict(statuses)
    assert upstream.count() - before == statuses[200]
    served = inst.wait_served("/r/", N)
    assert len(served) == 2, f"requests per worker {served}: both workers must take part"
    inst.assert_healthy()


def test_a_slow_client_gets_its_whole_bucket_on_nginx(nginx, upstream):
    inst = nginx(reserve_config(6, reserve=3))
    conn = inst.connection()
    statuses = []
    for i in range(7):
        statuses.append(inst.request("GET", f"/s/{i}", conn=conn)[0])
        time.sleep(0.7)
    assert statuses == [200] * 6 + [429], statuses
