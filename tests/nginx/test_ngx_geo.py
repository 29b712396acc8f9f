"""Geo rules on NGINX (ngx_wasm_module, 2 worker processes): the country
header (here set by the test, as a CDN in front of NGINX would set it;
clients send it in mixed case) feeds the same allow/deny lists and
`countries` rate-limit rule as on Envoy (tests/integration/test_geo.py).

What is proven: a country an allow list does not name, and a request
without a country (the allow list does not name "unknown"), get 403 ``geo.denied`` and
never reach the upstream; a listed country is throttled after its stricter
capacity (2, shared by both workers) while another country from another
address is not.
"""

from __future__ import annotations

import harness

CONFIG = {
    "version": 1,
    "client_ip": {"source": "x-forwarded-for", "trusted_hops": 1},
    "routes": [{"name": "admin", "prefix": "/admin"}, {"name": "api", "prefix": "/api/"}],
    "geo": {
        "header": "x-geo-country",
        "rules": [{"routes": ["admin"], "allow": ["US", "CA"]}],
    },
    "rate_limits": {
        "slots": 1024,
        "rules": [
            {"name": "api-listed", "key": ["ip"], "routes": ["api"], "countries": ["KP"],
             "capacity": 2, "refill": "none"},
            {"name": "api-ip", "key": ["ip"], "routes": ["api"], "capacity": 20, "refill": "none"},
        ],
    },
}


def req(ip: str, country: str | None = None) -> dict[str, str]:
    headers = {"X-Forwarded-For": ip}
    if country is not None:
        headers["X-Geo-Country"] = country
    return headers


def test_country_rules_apply_on_nginx(nginx, upstream):
    inst = nginx(CONFIG)
    assert inst.request("GET", "/admin", req("192.0.2.7", "us"))[0] == 200
    before = upstream.count()
    for country in ("DE", None, "--"):
        r = inst.request("GET", "/admin", req("192.0.2.7", country))
        assert r[0] == 403 and harness.reason_of(r) == "geo.denied", (country, r[0], r[2])
    assert upstream.count() == before, "a refused request reached the upstream"

    kp = [inst.request("GET", "/api/items", req("198.51.100.7", "KP")) for _ in range(3)]
    assert [r[0] for r in kp] == [200, 200, 429], [r[0] for r in kp]
    assert harness.reason_of(kp[2]) == "rl.exhausted", kp[2]
    others = [inst.request("GET", "/api/items", req("192.0.2.8", "US"))[0] for _ in range(10)]
    assert others == [200] * 10, others
    inst.assert_healthy()


def test_impossible_travel_holds_across_nginx_workers(nginx, upstream):
    """A verified token from a second country within an hour is refused
    (403 ``geo.impossible_travel``) whichever worker takes it; its owner and
    another user are served (tests/integration/test_travel.py on Envoy)."""
    from demo_token import demo_provider, mint

    config = {
        "version": 1,
        "routes": [{"name": "api", "prefix": "/api/"}],
        "jwt": {"providers": [demo_provider()]},
        "authorization": {"policies": [{"routes": ["api"]}]},
        "geo": {"header": "x-geo-country", "impossible_travel": {"within": "1h", "slots": 256}},
    }
    inst = nginx(config)
    alice = mint("alice")

    def call(token: str, country: str):
        return inst.request("GET", "/api/orders",
                            {"Authorization": f"Bearer {token}", "X-Geo-Country": country})

    assert [call(alice, "DE")[0] for _ in range(4)] == [200] * 4
    before = upstream.count()
    stolen = [call(alice, "BR") for _ in range(6)]
    assert {(r[0], harness.reason_of(r)) for r in stolen} == {(403, "geo.impossible_travel")}, stolen
    assert upstream.count() == before, "a refused request reached the upstream"
    assert call(alice, "DE")[0] == 200
    assert call(mint("bob"), "BR")[0] == 200
    inst.assert_healthy()
