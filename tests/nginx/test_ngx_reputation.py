"""Reputation lists on NGINX (ngx_wasm_module, 2 worker processes).

The Envoy suite's scenarios (tests/integration/test_reputation.py) on the
second host, with the client address from ``X-Forwarded-For`` (one trusted
hop) and each request on its own connection so both workers answer. What is
proven:

* inline IPv4 and IPv6 deny lists refuse with 403 ``reputation.deny`` before
  the upstream, an allow list wins over a deny list, and other addresses
  reach the upstream;
* a remote list fetched from ``address`` (host:port, ngx_wasm_module's
  ``dispatch_http_call``) loads through the ``shm_kv`` zone and is enforced
  by both workers, and an address added to it is denied after a refresh.
"""

from __future__ import annotations

import time

import harness
from test_reputation import DENIED, INLINE, LIST_PATH, ListServer

SPREAD = 8


def config(lists: list[dict]) -> dict:
    return {
        "version": 1,
        "client_ip": {"source": "x-forwarded-for", "trusted_hops": 1},
        "routes": [{"name": "login", "prefix": "/login"}],
        "reputation": {"lists": lists},
    }


def statuses(inst, ip: str, path: str = "/api") -> set[tuple[int, str | None]]:
    out = set()
    for _ in range(SPREAD):
        r = inst.request("GET", path, {"X-Forwarded-For": ip})
        out.add((r[0], harness.reason_of(r)))
    return out


def wait_until(inst, ip: str, want: set, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    seen: set = set()
    while time.monotonic() < deadline:
        seen = statuses(inst, ip)
        if seen == want:
            return
        time.sleep(0.25)
    raise AssertionError(f"{ip}: still {seen} after {timeout}s, wanted {want}")


def test_inline_lists_on_nginx(nginx, upstream):
    inst = nginx(config(INLINE))
    before = upstream.count()
    for ip in ("203.0.113.5", "2001:db8::5", "::ffff:203.0.113.5", "192.0.2.66"):
        assert statuses(inst, ip) == DENIED, ip
    assert upstream.count() == before, "a denied request reached the upstream"
    for ip in ("203.0.113.9", "2001:db8:1::9", "192.0.2.1"):
        assert statuses(inst, ip) == {(200, None)}, ip
    assert statuses(inst, "198.51.100.1", "/login") == DENIED
    assert statuses(inst, "198.51.100.1", "/api") == {(200, None)}
    assert upstream.count() == before + 4 * SPREAD
    served = inst.served_by("/")
    assert len(served) == 2, f"requests answered by {served}"


def test_remote_list_on_nginx(nginx):
    server = ListServer("203.0.113.0/24\n").start()
    try:
        remote = {
            "name": "drop",
            "action": "deny",
            "remote": {
                "address": f"127.0.0.1:{server.port}",
                "authority": "lists.example",
                "path": LIST_PATH,
                "refresh": "2s",
                "min_refetch": "2s",
                "timeout": "2s",
            },
        }
        inst = nginx(config([remote]))
        wait_until(inst, "203.0.113.7", DENIED, 30)
        assert statuses(inst, "198.51.100.7") == {(200, None)}
        server.serve("203.0.113.0/24\n198.51.100.7\n")
        wait_until(inst, "198.51.100.7", DENIED, 30)
        assert "(2 prefixes)" in inst.error_log()
    finally:
        server.stop()
