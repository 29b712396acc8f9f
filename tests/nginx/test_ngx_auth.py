"""JWT, API keys, identity headers and refresh-token reuse on NGINX, seen at
the upstream.

NGINX hands header names to the filter in the client's case, so every request
here is sent as real clients send it (``Authorization: Bearer ...``,
``X-Api-Key``, ``Content-Type``); tokens are signed by PyJWT
(test_jwt.sign_token, HS256 and ES256 with static keys). What is proven:

* a valid token or API key in mixed-case headers is accepted (200) and the
  upstream gets exactly one ``x-palisade-user``, the verified subject (or
  ``apikey:<id>``), and the provider's forwarded claims; a missing credential
  is 401 ``auth.missing``, a bad one 401 with its reason, none reaching the
  upstream;
* a client-sent ``X-Palisade-User`` (in any case) or forwarded-claim header
  never reaches the upstream: NGINX cannot remove a request header (removal
  only marks it and nginx's proxy still forwards it), so palisade refuses the
  request, 400 ``request.identity_header``, on protected and public routes;
* a refresh token is accepted once and its reuse refused (400
  ``oauth.refresh_reuse``), whichever worker takes it, with the form body
  reaching the upstream intact.
"""

from __future__ import annotations

import hashlib
import secrets
import uuid

import harness
from test_jwt import API_KEY_A as API_KEY  # role "reports" (id partner-a)
from test_jwt import API_KEY_B as OTHER_KEY  # role "audit" (id partner-b)
from test_jwt import AUDIENCE, EC_KEY, HS_SECRET, ISSUER, MAIN_CONFIG, jwk, sign_token

# The Envoy suite's main configuration (test_jwt.MAIN_CONFIG) cut down to the
# routes tested here, with the same API keys and authorization policies, one
# provider (HS256 and ES256 with test_jwt's static keys, the email claim
# forwarded), bearer tokens only, and a small refresh-token table.
ROUTES = {"api", "reports", "token", "public"}

CONFIG = {
    "version": 1,
    "mode": "enforce",
    "routes": [r for r in MAIN_CONFIG["routes"] if r["name"] in ROUTES],
    "jwt": {
        "from": [{"header": "authorization", "prefix": "Bearer "}],
        "providers": [
            {
                "name": "idp",
                "issuer": ISSUER,
                "audiences": [AUDIENCE],
                "algorithms": ["HS256", "ES256"],
                "jwks": {"inline": {"keys": [jwk(HS_SECRET, "hs-1"), jwk(EC_KEY, "ec-1")]}},
                "required_claims": ["sub"],
                "forward_claims": [{"claim": "email", "header": "x-user-email"}],
            }
        ],
        "refresh_tokens": {**MAIN_CONFIG["jwt"]["refresh_tokens"], "slots": 1024},
    },
    "api_keys": MAIN_CONFIG["api_keys"],
    "authorization": {
        "policies": [p for p in MAIN_CONFIG["authorization"]["policies"] if set(p["routes"]) <= ROUTES]
    },
}

IDENTITY = ("x-palisade-user", "x-user-email")


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def expect(resp: harness.Response, status: int, reason: str | None = None) -> None:
    got = (resp[0], harness.reason_of(resp))
    assert got[0] == status and (reason is None or got[1] == reason), f"expected {status} {reason}, got {got}"


def test_jwt_in_mixed_case_headers(nginx, upstream):
    inst = nginx(CONFIG)
    for alg in ("HS256", "ES256"):
        sub = f"alice-{uuid.uuid4().hex[:8]}"
        token = sign_token(alg, sub=sub, email="alice@example.com")
        expect(inst.request("GET", f"/api/{alg}", bearer(token)), 200)
        got = upstream.last(f"/api/{alg}")
        assert got.values("x-palisade-user") == [sub], f"{alg}: {got.values('x-palisade-user')}"
        assert got.values("x-user-email") == ["alice@example.com"], got.values("x-user-email")
        # The header name in yet another case, as some clients send it.
        expect(inst.request("GET", f"/api/{alg}/2", {"AUTHORIZATION": f"Bearer {sign_token(alg, sub=sub)}"}), 200)
        assert upstream.last(f"/api/{alg}/2").values("x-palisade-user") == [sub]

    before = upstream.count()
    expect(inst.request("GET", "/api/none"), 401, "auth.missing")
    expect(inst.request("GET", "/api/bad", bearer("not-a-jwt")), 401, "jwt.malformed")
    expect(inst.request("GET", "/api/rogue", bearer(sign_token("HS256", key=secrets.token_bytes(48)))), 401,
           "jwt.signature")
    expect(inst.request("GET", "/api/aud", bearer(sign_token("ES256", aud="other"))), 401, "jwt.audience")
    r = inst.request("GET", "/api/none")
    assert r[1].get("www-authenticate", "").startswith("Bearer "), r[1]
    assert upstream.count() == before, "a refused request reached the upstream"
    inst.assert_healthy()


def test_api_keys_in_mixed_case_headers(nginx, upstream):
    inst = nginx(CONFIG)
    expect(inst.request("GET", "/reports/q3", {"X-Api-Key": API_KEY}), 200)
    assert upstream.last("/reports/q3").values("x-palisade-user") == ["apikey:partner-a"]
    expect(inst.request("GET", "/reports/q4", {"X-API-KEY": API_KEY}), 200)
    assert upstream.last("/reports/q4").values("x-palisade-user") == ["apikey:partner-a"]

    before = upstream.count()
    expect(inst.request("GET", "/reports/q3", {"X-Api-Key": API_KEY + "x"}), 401, "apikey.invalid")
    expect(inst.request("GET", "/reports/q3", {"X-Api-Key": OTHER_KEY}), 403, "authz.role")
    expect(inst.request("GET", "/reports/q3"), 401, "auth.missing")
    assert upstream.count() == before, "a refused request reached the upstream"
    # A JWT with the role is accepted on the same route.
    expect(inst.request("GET", "/reports/jwt", bearer(sign_token("ES256", sub="analyst", roles=["reports"]))), 200)
    assert upstream.last("/reports/jwt").values("x-palisade-user") == ["analyst"]
    inst.assert_healthy()


SPOOFS = [
    {"X-Palisade-User": "mallory"},
    {"x-palisade-user": "mallory"},
    {"X-PALISADE-USER": "mallory"},
    {"X-User-Email": "mallory@example.com"},
]


def test_client_identity_headers_never_reach_the_upstream(nginx, upstream):
    inst = nginx(CONFIG)
    outcomes = {}
    for path in ("/api/me", "/public/page", "/elsewhere"):
        for spoof in SPOOFS:
            for with_token in (True, False):
                headers = dict(spoof)
                if with_token:
                    headers.update(bearer(sign_token("ES256", sub="bob", email="bob@example.com")))
                r = inst.request("GET", path, headers)
                what = f"{path} with {list(spoof)}{' and a valid token' if with_token else ''}"
                outcomes[what] = (r[0], harness.reason_of(r))
    spoofed = [
        (got.path, name)
        for got in upstream.received
        for name in IDENTITY
        if any(v.startswith("mallory") for v in got.values(name))
    ]
    assert not spoofed, f"client-sent identity headers reached the upstream: {spoofed}"
    wrong = {what: got for what, got in outcomes.items() if got != (400, "request.identity_header")}
    assert not wrong, f"expected 400 request.identity_header: {wrong}"
    assert upstream.count() == 0, f"refused requests reached the upstream: {[g.path for g in upstream.received]}"

    # Without such headers: an authenticated request gets exactly one, the verified subject.
    expect(inst.request("GET", "/api/me", bearer(sign_token("HS256", sub="carol"))), 200)
    got = upstream.last("/api/me")
    assert got.values("x-palisade-user") == ["carol"], got.values("x-palisade-user")
    assert got.values("x-user-email") == [], "no email claim: no x-user-email"
    # An unauthenticated route: none at all.
    expect(inst.request("GET", "/public/x", bearer(sign_token("HS256", sub="carol"))), 200)
    assert upstream.last("/public/x").values("x-palisade-user") == []
    inst.assert_healthy()


FORM = {"Content-Type": "application/x-www-form-urlencoded"}


def test_refresh_token_reuse_is_refused_on_both_workers(nginx, upstream):
    inst = nginx(CONFIG)
    rt = "rt_" + secrets.token_urlsafe(32)
    form = f"grant_type=refresh_token&refresh_token={rt}".encode()
    expect(inst.request("POST", "/oauth/token", FORM, form), 200)
    got = upstream.last("/oauth/token")
    assert hashlib.sha256(got.body).digest() == hashlib.sha256(form).digest(), "the form was altered on the way"
    before = upstream.count()

    for _ in range(12):
        r = inst.request("POST", "/oauth/token", FORM, form)
        expect(r, 400, "oauth.refresh_reuse")
        assert harness.json_body(r[2]).get("error") == "invalid_grant", r[2][:200]
    refused_by = set(inst.wait_served("/oauth/token", 12, 400))
    assert len(refused_by) == 2, f"reuses refused by workers {refused_by}: expected both"
    # The same token with the fields in another order is the same token.
    other = f"client_id=web&refresh_token={rt}&grant_type=refresh_token".encode()
    expect(inst.request("POST", "/oauth/token", FORM, other), 400, "oauth.refresh_reuse")
    assert upstream.count() == before, "a reused refresh token reached the upstream"

    # Another token passes once; other grants are not refresh tokens.
    rt2 = "rt_" + secrets.token_urlsafe(32)
    form2 = f"grant_type=refresh_token&refresh_token={rt2}".encode()
    expect(inst.request("POST", "/oauth/token", FORM, form2), 200)
    expect(inst.request("POST", "/oauth/token", FORM, form2), 400, "oauth.refresh_reuse")
    code = f"grant_type=authorization_code&code={secrets.token_urlsafe(8)}".encode()
    expect(inst.request("POST", "/oauth/token", FORM, code), 200)
    expect(inst.request("POST", "/oauth/token", FORM, code), 200)
    log = inst.error_log()
    assert rt not in log and rt2 not in log, "a refresh token value is in nginx's error log"
    inst.assert_healthy()

