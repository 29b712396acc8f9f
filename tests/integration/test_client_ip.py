"""(h) Client IP from X-Forwarded-For with trusted hops.

The test Envoy keeps X-Forwarded-For as sent (use_remote_address: false,
xff_num_trusted_hops: 0; see harness.py), so the filter sees these values.
"""

from __future__ import annotations

import harness

CONFIG = {
    "version": 1,
    "client_ip": {"source": "x-forwarded-for", "trusted_hops": 1},
    "rate_limits": {"rules": [{"name": "per-ip", "key": ["ip"], "capacity": 2, "refill": "none"}]},
}


def xff(value: str) -> dict[str, str]:
    return {"x-forwarded-for": value}


def test_rightmost_xff_entry_is_the_client(envoy):
    e = envoy(CONFIG)
    a = xff("1.1.1.1, 198.51.100.1")
    b = xff("2.2.2.2, 198.51.100.1")
    assert e.request("GET", "/", a)[0] == 200
    assert e.request("GET", "/", b)[0] == 200
    # Same client (198.51.100.1): the shared bucket of 2 is now empty.
    r = e.request("GET", "/", a)
    assert r[0] == 429 and harness.reason_of(r) == "rl.exhausted", r
    r = e.request("GET", "/", b)
    assert r[0] == 429, r
    # A different rightmost entry is a different client, although the TCP peer is the same.
    assert e.request("GET", "/", xff("1.1.1.1, 198.51.100.2"))[0] == 200
    assert e.request("GET", "/", xff("198.51.100.3"))[0] == 200


def test_invalid_rightmost_entry_is_rejected(envoy):
    e = envoy(CONFIG)
    for value in ("nonsense", "1.1.1.1, nonsense"):
        status, headers, body = e.request("GET", "/", xff(value))
        assert status == 400, (value, status, body)
        doc = harness.json_body(body)
        assert doc.get("reason") == "client_ip.invalid", doc
        assert "nonsense" not in body.decode("utf-8", "replace"), body
