"""(c) 429 responses: Retry-After, RateLimit headers, JSON body, no echo of client data."""

from __future__ import annotations

import re

import harness

RULE = "tight"


def config(mode: str = "enforce", quota_headers: bool = False) -> dict:
    return {
        "version": 1,
        "mode": mode,
        "rate_limits": {
            "quota_headers": quota_headers,
            "rules": [
                {
                    "name": RULE,
                    "key": ["ip"],
                    "capacity": 2,
                    "refill": {"tokens": 1, "every": "10s"},
                }
            ],
        },
    }


SECRET = "secret-token-123"
CLIENT_HEADERS = {
    "authorization": f"Bearer {SECRET}",
    "cookie": "session=cookie-value-456",
    "user-agent": "palisade-test-agent-789",
}


def test_429_headers_and_body(envoy):
    e = envoy(config())
    r1 = e.request("GET", "/a", CLIENT_HEADERS)
    r2 = e.request("GET", "/a", CLIENT_HEADERS)
    assert (r1[0], r2[0]) == (200, 200), (r1, r2)

    status, headers, body = e.request("GET", "/a", CLIENT_HEADERS)
    assert status == 429, (status, headers, body)

    ra = headers.get("retry-after")
    assert ra is not None and re.fullmatch(r"\d+", ra), f"Retry-After {ra!r}"
    assert 9 <= int(ra) <= 10, f"Retry-After {ra}"

    assert headers.get("ratelimit-policy") == f'"{RULE}";q=2;w=20', headers
    assert headers.get("ratelimit", "").startswith(f'"{RULE}";r=0;t='), headers
    t = headers["ratelimit"].split(";t=", 1)[1]
    assert re.fullmatch(r"\d+", t) and 9 <= int(t) <= 20, headers["ratelimit"]

    assert headers.get("content-type", "").startswith("application/json"), headers
    doc = harness.json_body(body)
    assert {"error", "reason", "request_id"} <= set(doc), doc
    assert doc["reason"] == "rl.exhausted", doc
    assert isinstance(doc["error"], str) and doc["error"], doc
    assert isinstance(doc["request_id"], str), doc

    # Nothing the client sent is reflected.
    everything = body.decode("utf-8", "replace") + "\n" + "\n".join(f"{k}: {v}" for k, v in headers.items())
    for value in (SECRET, "cookie-value-456", "palisade-test-agent-789"):
        assert value not in everything, f"{value!r} reflected in the 429: {everything}"

    # ...nor written to Envoy's log by the filter's security events.
    log = e.wait_for_log("palisade.request")
    assert "palisade.request" in log, "no security event logged for the 429"
    for value in (SECRET, "cookie-value-456"):
        assert value not in log, f"{value!r} written to the Envoy log"


def test_quota_headers_on_allowed_responses(envoy):
    e = envoy(config(quota_headers=True))
    status, headers, _ = e.request("GET", "/a")
    assert status == 200
    assert headers.get("ratelimit-policy") == f'"{RULE}";q=2;w=20', headers
    assert headers.get("ratelimit", "").startswith(f'"{RULE}";r=1;t='), headers


def test_no_quota_headers_by_default(envoy):
    e = envoy(config())
    status, headers, _ = e.request("GET", "/a")
    assert status == 200
    assert "ratelimit-policy" not in headers and "ratelimit" not in headers, headers
