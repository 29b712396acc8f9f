"""(b) Different routes get different limits; routes match on method too."""

from __future__ import annotations

CONFIG = {
    "version": 1,
    "routes": [
        {"name": "login", "prefix": "/login", "methods": ["POST"]},
        {"name": "public", "prefix": "/public"},
    ],
    "rate_limits": {
        "rules": [
            {
                "name": "login-ip",
                "key": ["ip"],
                "routes": ["login"],
                "capacity": 5,
                "refill": {"tokens": 5, "every": "1m"},
            },
            {
                "name": "public-ip",
                "key": ["ip"],
                "routes": ["public"],
                "capacity": 100,
                "refill": {"tokens": 100, "every": "1s"},
            },
        ]
    },
}


def test_per_route_limits(envoy):
    e = envoy(CONFIG)
    login = [e.request("POST", "/login", {"content-length": "0"}) for _ in range(6)]
    assert [r[0] for r in login] == [200] * 5 + [429], [(r[0], r[2][:200]) for r in login]
    assert b"login-ip" in login[-1][2] or "login-ip" in login[-1][1].get("ratelimit-policy", ""), login[-1]

    public = [e.request("GET", f"/public/page{i}")[0] for i in range(20)]
    assert public == [200] * 20, public

    # GET /login is not the "login" route (methods: POST only): route "default",
    # to which no rule applies, so login-ip does not limit it.
    get_login = [e.request("GET", "/login")[0] for _ in range(10)]
    assert get_login == [200] * 10, get_login

    # ...and the login bucket is still empty.
    assert e.request("POST", "/login", {"content-length": "0"})[0] == 429
