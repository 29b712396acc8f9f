"""Token hijacking and sharing on a real Envoy (4 workers): a verified token
used from more networks (``counts: networks``) or client programs
(``counts: fingerprints``) than its rule allows within the window is refused
with 403 ``token.shared``; the networks and programs it already used keep
working, other tokens are untouched, and the token never reaches the log.
Clients pick their address through ``X-Forwarded-For`` (one trusted hop).
"""

from __future__ import annotations

import harness
from demo_token import demo_provider, mint

WORKERS = 4

CONFIG = {
    "version": 1,
    "client_ip": {"source": "x-forwarded-for", "trusted_hops": 1},
    "routes": [{"name": "api", "prefix": "/api/"}],
    "jwt": {"providers": [demo_provider()]},
    "authorization": {"policies": [{"routes": ["api"]}]},
    "rate_limits": {
        "rules": [
            {"name": "token-networks", "key": ["token"], "counts": "networks", "capacity": 3,
             "refill": {"tokens": 3, "every": "10m"}},
            {"name": "token-programs", "key": ["token"], "counts": "fingerprints", "capacity": 2,
             "refill": {"tokens": 2, "every": "10m"}, "ban": True},
        ]
    },
    "bans": {"after": 2, "base": "10m"},
}


def call(e, token: str, ip: str, agent: str = "shop-app/4.2"):
    return e.request("GET", "/api/orders", headers={
        "authorization": f"Bearer {token}", "x-forwarded-for": ip, "user-agent": agent})


def test_a_token_replayed_from_many_networks_is_refused(envoy):
    e = envoy(CONFIG, concurrency=WORKERS)
    token = mint("alice")
    # The owner moves between three networks (home, office, phone).
    for ip in ["203.0.113.10", "198.51.100.20", "192.0.2.30"]:
        for _ in range(3):
            assert call(e, token, ip)[0] == 200, ip
    # A thief replays it from a fourth, then from dozens more.
    refused = 0
    for i in range(40):
        r = call(e, token, f"10.9.{i}.1")
        assert (r[0], harness.reason_of(r)) == (403, "token.shared"), r
        refused += 1
    print(f"one token from 43 networks: 3 served, {refused} refused")
    # The owner's networks still work; another user's token is its own.
    assert call(e, token, "203.0.113.10")[0] == 200
    assert call(e, mint("bob"), "10.9.0.1")[0] == 200
    assert token not in e.log_text()


def test_a_token_shared_between_programs_is_refused_then_banned(envoy):
    e = envoy(CONFIG, concurrency=WORKERS)
    token = mint("carol")
    assert call(e, token, "203.0.113.10", "shop-app/4.2")[0] == 200
    assert call(e, token, "203.0.113.10", "shop-web/1.0")[0] == 200
    seen = [harness.reason_of(call(e, token, "203.0.113.10", f"scraper/{i}")) for i in range(3)]
    # Two strikes ban the token (`after`: 2), for every program.
    assert seen == ["token.shared", "token.shared", "ban.active"], seen
    r = call(e, token, "203.0.113.10", "shop-app/4.2")
    assert (r[0], harness.reason_of(r)) == (403, "ban.active"), r
