"""``nginx -s reload`` with palisade: what a configuration change does on NGINX.

On Envoy a listener update keeps palisade's shared data (test_reload.py). On
NGINX a reload starts new worker processes and ngx_wasm_module creates the
``shm_kv`` zone afresh (documented host behaviour, shared/vendor/README.md):
every bucket, ban and replay record is lost. What is proven:

* a reload with a changed configuration takes effect (a lower capacity, a
  new route class with its own rule) and both new workers run and stay up,
  with no fatal line in the error log;
* state is LOST on this host: a bucket emptied and a ban issued before a
  reload are gone after it, also when the configuration did not change at
  all, so a client banned before a reload gets its full capacity again, and
  a signature refused as a replay before a reload is accepted once more
  after it (the replay table is empty).
"""

from __future__ import annotations

import harness
from test_signatures import BASIC, config as signatures_config, expect, signed


def config(capacity: int, extra_routes: bool = False) -> dict:
    routes = [{"name": "login", "prefix": "/login"}]
    rules = [
        {"name": "login-ip", "key": ["ip"], "routes": ["login"], "capacity": capacity, "refill": "none", "ban": True}
    ]
    if extra_routes:
        routes.append({"name": "search", "prefix": "/search"})
        rules.append({"name": "search-ip", "key": ["ip"], "routes": ["search"], "capacity": 1, "refill": "none"})
    return {
        "version": 1,
        "routes": routes,
        "rate_limits": {"slots": 1024, "rules": rules},
        "bans": {"after": 2, "base": "10m", "factor": 2.0, "max": "1h", "decay": "1h"},
    }


def outcomes(inst, path: str, n: int) -> list[tuple[int, str | None]]:
    return [(r[0], harness.reason_of(r)) for r in (inst.request("GET", path) for _ in range(n))]


OK = (200, None)
THROTTLED = (429, "rl.exhausted")
BANNED = (403, "ban.active")


def test_reload_takes_effect_and_workers_stay_up(nginx):
    inst = nginx(config(capacity=5))
    assert outcomes(inst, "/login", 6) == [OK] * 5 + [THROTTLED]
    assert outcomes(inst, "/search", 3) == [OK] * 3, "no rule on /search yet"
    first = set(inst.worker_pids())

    inst.reload(config(capacity=2, extra_routes=True))
    second = set(inst.worker_pids())
    assert len(second) == 2 and not (first & second), f"workers before {first}, after {second}"
    # The new capacity, the new rule.
    assert outcomes(inst, "/login", 3) == [OK] * 2 + [THROTTLED]
    assert outcomes(inst, "/search", 2) == [OK, THROTTLED]
    inst.assert_healthy()

    # A second reload back to the first configuration.
    inst.reload(config(capacity=5))
    assert outcomes(inst, "/search", 3) == [OK] * 3, "the /search rule is gone again"
    assert len(inst.worker_pids()) == 2
    inst.assert_healthy()


def test_buckets_and_bans_are_lost_on_reload(nginx):
    """Documented NGINX host behaviour: the shm_kv zone is created afresh."""
    cfg = config(capacity=3)
    inst = nginx(cfg)
    # Exhaust, then strike twice: banned.
    got = outcomes(inst, "/login", 6)
    assert got[:3] == [OK] * 3 and got[3] == THROTTLED and got[-1] == BANNED, got
    assert outcomes(inst, "/login", 4) == [BANNED] * 4, "the ban holds before the reload, on both workers"

    inst.reload(cfg)  # the very same configuration
    # Lost: the ban and the empty bucket. A fresh bucket of 3, then 429 again.
    after = outcomes(inst, "/login", 4)
    assert after == [OK] * 3 + [THROTTLED], (
        f"after a reload expected the state to be lost (3 x 200 then 429), got {after}"
    )
    inst.assert_healthy()


def test_replay_records_are_lost_on_reload(nginx):
    """The consequence for replay protection: one more use of a captured
    signature after each reload (within its max_age)."""
    cfg = signatures_config()
    inst = nginx(cfg)
    h = signed(inst, "GET", "/orders?page=1", headers=None, components=BASIC)
    expect(inst.request("GET", "/orders?page=1", h), 200)
    expect(inst.request("GET", "/orders?page=1", h), 401, "sig.replay")
    inst.reload(cfg)
    expect(inst.request("GET", "/orders?page=1", h), 200)  # accepted again: the record is gone
    expect(inst.request("GET", "/orders?page=1", h), 401, "sig.replay")
    inst.assert_healthy()
