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

On the suite's harness (nginx_host.NginxInstance through conftest's `nginx`
fixture, with its `shm_kv` size; the too-small case started with
`healthy=False`, not waiting for workers that cannot configure). The built
nginx (`make nginx`, or PALISADE_NGINX), palisade.wasm (`make build`, or
PALISADE_WASM) and palisade-check (`cargo build`, or PALISADE_CHECK) must
exist; a missing one fails.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

import harness
import nginx_host

PALISADE_CHECK = Path(os.environ.get("PALISADE_CHECK", harness.REPO_ROOT / "target" / "debug" / "palisade-check"))
NGINX_CONF = harness.REPO_ROOT / "nginx" / "nginx.conf"

WORKERS = 2
REQUEST_TIMEOUT = 30.0

# What the log says when a write did not fit the zone (ngx_wasm_module's
# proxy_set_shared_data trap, and the kv store's own line before it).
SLAB_FULL = re.compile(r"could not write to slab|no memory; cannot allocate pair")
# A worker that failed while starting: nginx logs that it will not start another.
NOT_RESPAWNED = re.compile(r"worker process \d+ exited with fatal code 2 and cannot be respawned")

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
    assert PALISADE_CHECK.exists(), f"palisade-check (cargo build) not found at {PALISADE_CHECK}"
    path = tmp_path / "palisade.json"
    path.write_text(json.dumps(config))
    proc = subprocess.run(
        [str(PALISADE_CHECK), "--nginx-zone-size", str(path)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, f"palisade-check --nginx-zone-size failed:\n{proc.stdout}\n{proc.stderr}"
    match = re.search(r": shm_kv \* (\d+)m eviction=none  # ", proc.stdout)
    assert match, proc.stdout
    return int(match.group(1))


CONFIGS = {"shipped": shipped_config, "replay": lambda: REPLAY_CONFIG}


def exhaust(server: nginx_host.NginxInstance, method: str, path: str, capacity: int) -> list[tuple[int, str | None]]:
    """capacity + 2 requests, each on its own connection (either worker):
    (status, palisade's reason) of each."""
    out = []
    for _ in range(capacity + 2):
        resp = server.request(method, path, timeout=REQUEST_TIMEOUT)
        out.append((resp[0], harness.reason_of(resp)))
    return out


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_computed_size_starts_both_workers_and_serves(nginx, tmp_path: Path, name: str) -> None:
    config = CONFIGS[name]()
    mib = zone_size(config, tmp_path)
    server = nginx(config, shm_kv=f"{mib}m", workers=WORKERS)
    if name == "shipped":
        # login-ip: capacity 5 per client address, counted in the shared table.
        got = exhaust(server, "POST", "/login", 5)
    else:
        got = exhaust(server, "GET", "/api/items", 4)
    capacity = len(got) - 2
    assert got[:capacity] == [(200, None)] * capacity, got
    assert got[capacity:] == [(429, "rl.exhausted")] * 2, got
    assert not SLAB_FULL.search(server.error_log()), server.log_tail()
    server.assert_healthy()  # both workers running, no fatal line, none exited


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_too_small_zone_kills_both_workers_in_on_configure(nginx, tmp_path: Path, name: str) -> None:
    config = CONFIGS[name]()
    mib = zone_size(config, tmp_path)
    # Well under what the tables need (the computed size less its 1 MiB
    # headroom and 2 MiB more), yet above ngx_wasm_module's minimum.
    small = mib - 3
    assert small >= 1, mib
    server = nginx(config, shm_kv=f"{small}m", workers=WORKERS, healthy=False)
    server.wait_workers_gone()
    log = server.error_log()
    assert SLAB_FULL.search(log), server.log_tail()
    assert log.count("on_configure failure") == WORKERS, server.log_tail()
    assert len(NOT_RESPAWNED.findall(log)) == WORKERS, server.log_tail()
    assert nginx_host.CONFIGURED not in log, server.log_tail()
    assert server.proc.poll() is None, "the master stays up, with no workers"
