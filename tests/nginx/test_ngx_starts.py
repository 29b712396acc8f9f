"""Starting nginx with palisade, many times: both workers always survive.

At start, each worker process runs palisade's ``on_configure``, which creates
its shared tables (rate-limit slots, the signature replay table) in the
``shm_kv *`` zone; the two workers race to create them. On this host a
shared-data write with CAS 0 means "create only if absent", so the loser
gets a CAS mismatch: palisade must take the winner's table, not trap (a
worker that dies in ``on_configure`` is never respawned: nginx stays up with
one worker, or none). Host detection must not log at alert level either.

Each of :data:`STARTS` starts of a fresh nginx (fresh zone) must end with
both workers configured, alive, serving a request through palisade, and no
``[emerg]``/``[alert]``/``[crit]`` or worker-exit line; every failed start is
collected and reported together.
"""

from __future__ import annotations

import harness
import nginx_host
from test_signatures import config as signatures_config

STARTS = 15


def config() -> dict:
    cfg = signatures_config()  # a replay table of 4,096 slots
    cfg["rate_limits"] = {
        "slots": 16384,
        "rules": [{"name": "per-ip", "key": ["ip"], "capacity": 1000, "refill": {"tokens": 1000, "every": "1s"}}],
    }
    return cfg


def test_both_workers_survive_every_start(upstream, nginx_artefacts):
    failures = []
    for i in range(STARTS):
        inst = nginx_host.NginxInstance(config(), upstream.port, shm_kv="16m")
        try:
            inst.start()
            r = inst.request("GET", f"/public/start-{i}")
            if r[0] != 200:
                failures.append(f"start {i + 1}: GET /public got {r[0]} {harness.reason_of(r)}")
            bad = inst.problems()
            if len(inst.worker_pids()) != 2:
                bad.append(f"{len(inst.worker_pids())} workers running")
            if bad:
                failures.append(f"start {i + 1}: " + "; ".join(bad[:5]))
        except harness.HarnessError as e:
            failures.append(f"start {i + 1}: {str(e).splitlines()[0]}\n" + "\n".join(inst.problems()[:5]))
        finally:
            inst.stop()
        if not failures or not failures[-1].startswith(f"start {i + 1}:"):
            inst.cleanup()
    assert not failures, f"{len(failures)} of {STARTS} starts broke:\n" + "\n".join(failures)
    assert upstream.count() == STARTS
