"""Issue 11: failed authentication counts against its client, bans and address
limits run before any verification, and IPv6 clients are keyed by their /64.
Real Envoy, 2 workers, one connection per request so both workers serve."""

from __future__ import annotations

import hashlib
import json

import harness

GOOD_KEY = "phases-partner-key-0123456789abcdef"


def config(rules: list[dict], bans: dict | None = None, client_ip: dict | None = None) -> dict:
    return {
        "version": 1,
        "client_ip": client_ip or {"source": "x-forwarded-for", "trusted_hops": 1},
        "routes": [{"name": "partner", "prefix": "/partner/"}, {"name": "api", "prefix": "/api/"}],
        "rate_limits": {"rules": rules},
        "bans": bans or {"after": 1, "base": "1m", "factor": 2.0, "max": "1h", "decay": "10m"},
        "api_keys": {
            "header": "x-api-key",
            "keys": [{"id": "p", "sha256": hashlib.sha256(GOOD_KEY.encode()).hexdigest(), "roles": ["partner"]}],
        },
        "authorization": {"policies": [{"routes": ["partner"], "credentials": ["api_key"], "roles": ["partner"]}]},
    }


def reason(resp: harness.Response) -> str:
    try:
        return json.loads(resp[2]).get("reason") or ""
    except ValueError:
        return ""


def guesses(e, n: int, ip: str = "203.0.113.7") -> list[tuple[int, str]]:
    out = []
    for i in range(n):
        r = e.request("GET", "/partner/report", {"x-api-key": f"guess-{i}", "x-forwarded-for": ip})
        out.append((r[0], reason(r)))
    return out


def test_wrong_api_keys_from_one_address_are_throttled_then_banned(envoy):
    """The issue's case: before, 20 x 401 and never a 429 or 403."""
    rule = {"name": "partner-ip", "key": ["ip"], "routes": ["partner"], "capacity": 2, "refill": "none", "ban": True}
    e = envoy(config([rule]), concurrency=2)
    got = guesses(e, 20)
    verified = sum(1 for _, why in got if why == "apikey.invalid")
    assert verified == 2, got
    assert got[2] == (429, "rl.exhausted"), got
    assert all(r == (403, "ban.active") for r in got[3:]), got
    # Another address is not affected.
    ok = e.request("GET", "/partner/report", {"x-api-key": GOOD_KEY, "x-forwarded-for": "198.51.100.1"})
    assert ok[0] == 200, ok


# Counts failed credentials only, 3 a minute per address, then a ban (also
# run on NGINX: tests/nginx/test_ngx_limits.py).
FAILURES_RULE = {
    "name": "partner-failures",
    "key": ["ip"],
    "routes": ["partner"],
    "capacity": 3,
    "refill": {"tokens": 3, "every": "1m"},
    "ban": True,
    "counts": "failures",
}


def test_a_failures_rule_throttles_guessing_without_limiting_good_clients(envoy):
    e = envoy(config([FAILURES_RULE]), concurrency=2)
    good = [e.request("GET", "/partner/report", {"x-api-key": GOOD_KEY, "x-forwarded-for": "203.0.113.9"})[0]
            for _ in range(15)]
    assert good == [200] * 15, good
    got = guesses(e, 20, ip="203.0.113.9")
    assert sum(1 for _, why in got if why == "apikey.invalid") == 3, got
    assert got[3] == (429, "rl.exhausted"), got
    assert all(r == (403, "ban.active") for r in got[4:]), got
    prom = e.prometheus()
    assert harness.palisade_counter(prom, "palisade_bans_total", rule="partner-failures") == 1, harness.palisade_lines(prom)


def test_ipv6_clients_share_a_bucket_per_64(envoy):
    rule = {"name": "api-ip", "key": ["ip"], "routes": ["api"], "capacity": 2, "refill": "none"}
    e = envoy(config([rule]), concurrency=2)

    def status(ip: str) -> int:
        return e.request("GET", "/api/x", {"x-forwarded-for": ip})[0]

    same_64 = [status(ip) for ip in ("2001:db8:7:1::1", "2001:db8:7:1::2", "2001:db8:7:1:abcd::3")]
    assert same_64 == [200, 200, 429], same_64
    assert status("2001:db8:7:2::1") == 200, "another /64 has its own bucket"

    e128 = envoy(config([rule], client_ip={"source": "x-forwarded-for", "trusted_hops": 1, "ipv6_prefix": 128}))
    per_host = [e128.request("GET", "/api/x", {"x-forwarded-for": f"2001:db8:7:1::{i}"})[0] for i in range(1, 4)]
    assert per_host == [200, 200, 200], per_host


def test_two_palisade_filters_in_one_vm_keep_separate_state(envoy):
    """Issue 11: keys were global (`palisade.rl.p.N`, `palisade.seed`), so two
    filters of one vm_id shared buckets: with the same rule in both, every
    request took two tokens from one bucket."""
    rule = {"name": "api-ip", "key": ["ip"], "routes": ["api"], "capacity": 4, "refill": "none"}
    cfg = config([rule])
    e = envoy(cfg, concurrency=2, more_palisades={"palisade-edge": cfg})
    got = [e.request("GET", "/api/x", {"x-forwarded-for": "192.0.2.44"})[0] for _ in range(5)]
    assert got == [200, 200, 200, 200, 429], got
    log = e.log_text()
    assert log.count("palisade: configured:") >= 2, harness.tail(log)
