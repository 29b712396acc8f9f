"""JWT / OAuth authentication and authorization (issue 4), against a real Envoy.

Every token here is minted by PyJWT (an independent implementation), every key
set exported by PyJWT's JWK code; the only hand-made tokens are the attacks
PyJWT refuses to make (``alg: none`` variants, HS256 signed with an RSA public
key). The config follows issue 4's contract (jwt, api_keys, authorization).

Envoys:

* ``idp`` (module-scoped, 4 workers, palisade at ``wasm:trace``): three inline
  providers (``idp`` with a key for every algorithm but ES384, ``idp2`` with
  ``realm_access.roles`` and ``max_age``, ``rs-only`` allowing RS256 only), API
  keys, a refresh-token route, and an echo upstream (jwks_server.EchoUpstream)
  so that tests see the headers palisade forwards. Tests on it use fresh
  subjects and refresh tokens, so they do not depend on each other.
* one Envoy each for ES384, for the rate limit keyed on ``user``, and for each
  remote-JWKS scenario (jwks_server.JwksServer as cluster ``idp_jwks``).

Readings of the spec where it leaves room (see also the asserts' messages):

* a route class without an authorization policy is not authenticated at all:
  upstream sees no ``x-palisade-user`` there, even with a valid token;
* ``without_keys: allow`` lets a request through before the first key set was
  loaded, but never forwards its (unverified) subject as ``x-palisade-user``;
* refresh-token reuse is detected whatever the order of the form fields;
* "401 responses carry WWW-Authenticate" holds for every 401 reason, including
  ``auth.missing`` and ``apikey.invalid``.
"""

from __future__ import annotations

import base64
import collections
import copy
import hashlib
import hmac
import json
import secrets
import threading
import time
import uuid

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, HMACAlgorithm, OKPAlgorithm, RSAAlgorithm

import harness
from harness import json_body, palisade_counter, palisade_lines
from jwks_server import EchoUpstream, JwksServer
from test_signatures import _send_and_locate, expect

# --------------------------------------------------------------------------
# Keys (fresh per run; RSA 2048 bits, palisade's minimum)
# --------------------------------------------------------------------------
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())
EC2_KEY = ec.generate_private_key(ec.SECP256R1())  # idp2's
EC384_KEY = ec.generate_private_key(ec.SECP384R1())
ED_KEY = ed25519.Ed25519PrivateKey.generate()
HS_SECRET = secrets.token_bytes(48)

# Keys of the same kinds that no key set holds: forgeries.
ROGUE = {
    "RSA": rsa.generate_private_key(public_exponent=65537, key_size=2048),
    "EC": ec.generate_private_key(ec.SECP256R1()),
    "EC384": ec.generate_private_key(ec.SECP384R1()),
    "OKP": ed25519.Ed25519PrivateKey.generate(),
    "oct": secrets.token_bytes(48),
}

API_KEY_A = "pk_" + secrets.token_urlsafe(24)
API_KEY_B = "pk_" + secrets.token_urlsafe(24)

# Everything that must never be echoed by palisade or written to its log:
# {description: text}. Tokens are added as they are minted.
SECRETS: dict[str, str] = {
    "HS secret (base64url)": base64.urlsafe_b64encode(HS_SECRET).rstrip(b"=").decode(),
    "HS secret (hex)": HS_SECRET.hex(),
    "HS secret (base64)": base64.b64encode(HS_SECRET).decode(),
    "API key A": API_KEY_A,
    "API key B": API_KEY_B,
}
RESPONSES: list[harness.Response] = []  # every response of this module, checked for leaks


def _family(key) -> str:
    if isinstance(key, bytes):
        return "oct"
    if isinstance(key, rsa.RSAPrivateKey):
        return "RSA"
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return "EC384" if key.curve.name == "secp384r1" else "EC"
    return "OKP"


def jwk(key, kid: str) -> dict:
    """The public JWK of ``key`` (the JWK of an HMAC secret is the secret), as PyJWT exports it."""
    exporter = {"oct": HMACAlgorithm, "RSA": RSAAlgorithm, "EC": ECAlgorithm, "EC384": ECAlgorithm, "OKP": OKPAlgorithm}
    family = _family(key)
    material = key if family == "oct" else key.public_key()
    return {**exporter[family].to_jwk(material, as_dict=True), "kid": kid, "use": "sig"}


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


# --------------------------------------------------------------------------
# Tokens
# --------------------------------------------------------------------------
ISSUER = "https://idp.example"
ISSUER2 = "https://idp2.example"
RS_ONLY_ISSUER = "https://rs-only.example"
REMOTE_ISSUER = "https://remote.example"
AUDIENCE = "api"

ALGS = ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "EdDSA", "HS256"]
SIGNERS = {alg: (RSA_KEY, "rsa-1") for alg in ALGS if alg[:2] in ("RS", "PS")}
SIGNERS.update({"ES256": (EC_KEY, "ec-1"), "EdDSA": (ED_KEY, "ed-1"), "HS256": (HS_SECRET, "hs-1")})
SIGNERS["ES384"] = (EC384_KEY, "ec384-1")

_DEFAULT = object()


def record_token(token: str) -> str:
    n = len(SECRETS)
    SECRETS[f"token {n}"] = token
    _, payload, signature = (token.split(".") + ["", ""])[:3]
    SECRETS[f"token {n} payload"] = payload
    SECRETS[f"token {n} signature"] = signature
    return token


def claims(*, iss=ISSUER, aud=AUDIENCE, sub=None, ttl=300, now=None, drop=(), **extra) -> dict:
    now = int(time.time()) if now is None else now
    out = {"iss": iss, "aud": aud, "sub": sub or f"user-{uuid.uuid4().hex[:10]}", "iat": now, "exp": now + ttl}
    out["jti"] = uuid.uuid4().hex  # every token is new: no verified-token cache answers for it
    out.update(extra)
    for name in drop:
        out.pop(name, None)
    return out


def sign_token(alg: str = "RS256", *, key=None, kid=_DEFAULT, header: dict | None = None, **claim_args) -> str:
    """A token signed by PyJWT with ``alg`` (by default with the key the ``idp``
    provider has for it), not recorded: for other modules, whose thousands of
    tokens this module's leak check (which reads only its own Envoy) need not
    search for."""
    default_key, default_kid = SIGNERS[alg]
    kid = default_kid if kid is _DEFAULT else kid
    headers = ({"kid": kid} if kid is not None else {}) | (header or {})
    return jwt.encode(claims(**claim_args), default_key if key is None else key, algorithm=alg, headers=headers)


def mint(alg: str = "RS256", **kwargs) -> str:
    """:func:`sign_token`, recorded as a secret for this module's leak check."""
    return record_token(sign_token(alg, **kwargs))


def craft(header: dict, payload: dict, signature: bytes = b"") -> str:
    """A compact JWS assembled by hand (for the attacks PyJWT does not make)."""
    parts = [b64url(json.dumps(header).encode()), b64url(json.dumps(payload).encode()), b64url(signature)]
    return record_token(".".join(parts))


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# --------------------------------------------------------------------------
# Configuration of the main Envoy
# --------------------------------------------------------------------------
def sha256_hex(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


FORWARD = [{"claim": "sub", "header": "x-user-id"}, {"claim": "email", "header": "x-user-email"}]
FORWARDED_HEADERS = ("x-palisade-user", "x-user-id", "x-user-email", "x-tenant")

MAIN_CONFIG = {
    "version": 1,
    "mode": "enforce",
    "routes": [
        {"name": "api", "prefix": "/api"},
        {"name": "admin", "prefix": "/admin"},
        {"name": "orders", "prefix": "/orders"},
        {"name": "mfa", "prefix": "/mfa"},
        {"name": "reports", "prefix": "/reports"},
        {"name": "token", "path": "/oauth/token", "methods": ["POST"]},
        {"name": "public", "prefix": "/public"},
    ],
    "jwt": {
        "from": [
            {"header": "authorization", "prefix": "Bearer "},
            {"header": "x-access-token"},
            {"cookie": "access_token"},
        ],
        "without_keys": "deny",
        "providers": [
            {
                "name": "idp",
                "issuer": ISSUER,
                "audiences": [AUDIENCE],
                "algorithms": ALGS,
                "jwks": {
                    "inline": {
                        "keys": [
                            jwk(RSA_KEY, "rsa-1"),
                            jwk(EC_KEY, "ec-1"),
                            jwk(ED_KEY, "ed-1"),
                            jwk(HS_SECRET, "hs-1"),
                        ]
                    }
                },
                "clock_skew": "30s",
                "max_lifetime": "15m",
                "required_claims": ["sub"],
                "roles_claim": "roles",
                "forward_claims": FORWARD,
            },
            {
                "name": "idp2",
                "issuer": ISSUER2,
                "audiences": [AUDIENCE, "api2"],
                "algorithms": ["ES256"],
                "jwks": {"inline": {"keys": [jwk(EC2_KEY, "idp2-ec")]}},
                "max_age": "1h",
                "roles_claim": "realm_access.roles",
                "forward_claims": [{"claim": "tenant", "header": "x-tenant"}],
            },
            {
                "name": "rs-only",
                "issuer": RS_ONLY_ISSUER,
                "audiences": [AUDIENCE],
                "algorithms": ["RS256"],
                "jwks": {"inline": {"keys": [jwk(RSA_KEY, "rsa-1")]}},
            },
        ],
        "refresh_tokens": {"routes": ["token"], "remember": "30d", "slots": 4096},
    },
    "api_keys": {
        "header": "x-api-key",
        "keys": [
            {"id": "partner-a", "sha256": sha256_hex(API_KEY_A), "roles": ["reports"]},
            {"id": "partner-b", "sha256": sha256_hex(API_KEY_B), "roles": ["audit"]},
        ],
    },
    "authorization": {
        "policies": [
            {"routes": ["api"]},
            {"routes": ["admin"], "roles": ["admin"]},
            {"routes": ["orders"], "scopes": ["orders:read", "orders:write"]},
            {"routes": ["mfa"], "amr": ["mfa", "otp", "hwk"]},
            {"routes": ["reports"], "credentials": ["jwt", "api_key"], "roles": ["reports"]},
        ]
    },
}

TO_UPSTREAM = {"match": {"prefix": "/"}, "route": {"cluster": "upstream"}}


def idp2_token(**kw) -> str:
    return mint("ES256", key=EC2_KEY, kid="idp2-ec", iss=ISSUER2, **kw)


# --------------------------------------------------------------------------
# Fixtures and helpers
# --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def idp(request, tmp_path_factory, artefacts):
    """The main Envoy (see module doc), shared by the tests of its config."""
    upstream = EchoUpstream().start()
    e = harness.EnvoyInstance(
        MAIN_CONFIG,
        concurrency=4,
        extra_routes=[TO_UPSTREAM],
        extra_clusters=[upstream.cluster("upstream")],
        workdir=tmp_path_factory.mktemp("jwt-envoy"),
        # Envoy's own debug logs print request headers: only palisade's
        # logger (component `wasm`) runs at its most verbose level.
        component_log_level="wasm:trace",
    )
    failed_before = request.session.testsfailed
    try:
        e.start()
    except harness.HarnessError as err:
        upstream.stop()
        pytest.fail(str(err), pytrace=False)
    yield e
    e.stop()
    upstream.stop()
    if request.session.testsfailed > failed_before:
        print(f"\n===== Envoy log tail ({e.log_path}) =====")
        print(e.log_tail(80))


@pytest.fixture
def upstream():
    server = EchoUpstream().start()
    yield server
    server.stop()


def send(e: harness.EnvoyInstance, method: str = "GET", path: str = "/api/x", headers=None, body=None, conn=None):
    resp = e.request(method, path, headers, body, conn=conn)
    RESPONSES.append(resp)
    return resp


def located(e: harness.EnvoyInstance, method: str, path: str, headers=None, body=None):
    """One request on a fresh connection: (response, index of the worker that accepted it)."""
    resp, worker = _send_and_locate(e, method, path, headers, body)
    RESPONSES.append(resp)
    return resp, worker


def denied(resp: harness.Response, status: int, reason: str) -> dict:
    """``status`` with JSON reason ``reason``; 401/403 with the spec's WWW-Authenticate."""
    doc = expect(resp, status, reason)
    challenge = resp[1].get("www-authenticate", "")
    if status in (401, 403):
        error = "invalid_token" if status == 401 else "insufficient_scope"
        assert challenge.startswith("Bearer ") and f'error="{error}"' in challenge, (
            f"{status} {reason}: WWW-Authenticate is {challenge!r}, expected Bearer error=\"{error}\""
        )
        assert f'error_description="{reason}"' in challenge, f"{reason}: WWW-Authenticate is {challenge!r}"
    return doc


def upstream_view(resp: harness.Response) -> dict[str, list[str]]:
    """The request headers the echo upstream received ({name: [values]}); the response must be its 200."""
    status, _, body = resp
    assert status == 200, f"expected 200 from the upstream, got {status}: {body[:300]!r}"
    doc = json_body(body)
    assert doc.get("echo") is True, f"not the echo upstream's answer: {doc}"
    return doc["headers"]


def assert_no_leaks(e: harness.EnvoyInstance) -> str:
    """No token, key or secret of :data:`SECRETS` in ``e``'s log or in any response of the module."""
    time.sleep(0.3)  # the log is flushed every 100 ms
    log = e.log_text()
    found = harness.leaks(SECRETS, log, RESPONSES)
    assert not found, found[:20]
    return log


def wait_until(what: str, attempt, timeout: float, interval: float = 0.2):
    """Call ``attempt()`` until it returns a true value; returns (value, seconds waited)."""
    t0 = time.monotonic()
    last = None
    while True:
        last = attempt()
        if last and last[0]:
            return last[1], time.monotonic() - t0
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"{what}: not within {timeout:.0f}s; last: {last!r}")
        time.sleep(interval)


def accepted_within(e: harness.EnvoyInstance, make_token, timeout: float, what: str) -> float:
    """Poll with fresh tokens until one is accepted (200); returns the seconds waited."""

    def attempt():
        resp = send(e, "GET", "/api/ready", bearer(make_token()))
        return resp[0] == 200, (resp[0], harness.reason_of(resp))

    return wait_until(what, attempt, timeout)[1]


# --------------------------------------------------------------------------
# Algorithms
# --------------------------------------------------------------------------
@pytest.mark.parametrize("alg", ALGS)
def test_every_supported_algorithm_is_accepted(idp, alg):
    sub = f"alg-{alg.lower()}-{uuid.uuid4().hex[:6]}"
    token = mint(alg, sub=sub)
    view = upstream_view(send(idp, "GET", f"/api/{alg}", bearer(token)))
    assert view.get("x-palisade-user") == [sub], view
    # Again (the verified-token cache answers now): same outcome.
    assert upstream_view(send(idp, "GET", f"/api/{alg}", bearer(token))).get("x-palisade-user") == [sub]
    # The same header and kid, signed by another key of the same kind: refused.
    forged = mint(alg, key=ROGUE[_family(SIGNERS[alg][0])], sub=sub)
    denied(send(idp, "GET", f"/api/{alg}", bearer(forged)), 401, "jwt.signature")


def test_es384_is_accepted(envoy):
    cfg = {
        "version": 1,
        "routes": [{"name": "api", "prefix": "/api"}],
        "jwt": {
            "providers": [
                {
                    "name": "idp",
                    "issuer": ISSUER,
                    "audiences": [AUDIENCE],
                    "algorithms": ["ES384"],
                    "jwks": {"inline": {"keys": [jwk(EC384_KEY, "ec384-1")]}},
                }
            ]
        },
        "authorization": {"policies": [{"routes": ["api"]}]},
    }
    e = envoy(cfg)
    expect(send(e, "GET", "/api/es384", bearer(mint("ES384"))), 200)
    denied(send(e, "GET", "/api/es384", bearer(mint("ES384", key=ROGUE["EC384"]))), 401, "jwt.signature")
    denied(send(e, "GET", "/api/es384", bearer(mint("ES256"))), 401, "jwt.alg")  # not allowed here


# --------------------------------------------------------------------------
# Rejected tokens
# --------------------------------------------------------------------------
def _tampered_payload() -> str:
    token = mint("RS256", roles=["user"])
    head, _, sig = token.split(".")
    payload = jwt.decode(token, options={"verify_signature": False})
    payload["roles"] = ["admin"]
    return record_token(f"{head}.{b64url(json.dumps(payload).encode())}.{sig}")


def _tampered_signature() -> str:
    token = mint("ES256")
    head, body, sig = token.split(".")
    raw = bytearray(base64.urlsafe_b64decode(sig + "=" * (-len(sig) % 4)))
    raw[5] ^= 0x01
    return record_token(f"{head}.{body}.{b64url(bytes(raw))}")


def _alg_none(name: str, kid: str | None = "rsa-1", signature: bytes = b"") -> str:
    header = {"alg": name, "typ": "JWT"} | ({"kid": kid} if kid else {})
    return craft(header, claims(), signature)


def _oversized() -> str:
    token = mint("RS256", pad="x" * 9000)
    assert len(token) > 8192
    return token


def _now() -> int:
    return int(time.time())


REJECTED = [
    pytest.param(_tampered_payload, "jwt.signature", id="tampered-payload"),
    pytest.param(_tampered_signature, "jwt.signature", id="tampered-signature"),
    pytest.param(lambda: mint("RS256", now=_now() - 1000), "jwt.expired", id="expired"),
    pytest.param(lambda: mint("EdDSA", nbf=_now() + 600, ttl=800), "jwt.not_yet_valid", id="nbf-in-future"),
    pytest.param(lambda: mint("PS256", aud="other-api"), "jwt.audience", id="wrong-audience"),
    pytest.param(lambda: mint("RS256", drop=("aud",)), "jwt.audience", id="no-audience"),
    pytest.param(lambda: mint("RS256", iss="https://evil.example"), "jwt.issuer", id="unknown-issuer"),
    pytest.param(lambda: mint("RS256", key=ROGUE["RSA"], kid="no-such-kid"), "jwt.unknown_kid", id="unknown-kid"),
    pytest.param(lambda: _alg_none("none"), "jwt.alg", id="alg-none"),
    pytest.param(lambda: _alg_none("None", kid=None), "jwt.alg", id="alg-None-no-kid"),
    pytest.param(lambda: _alg_none("NONE", signature=b"x" * 32), "jwt.alg", id="alg-NONE-with-signature"),
    pytest.param(lambda: mint("RS256", ttl=3600), "jwt.lifetime", id="max-lifetime"),
    pytest.param(lambda: mint("RS256", drop=("sub",)), "jwt.claims", id="required-claim-missing"),
    pytest.param(lambda: idp2_token(now=_now() - 7200, ttl=7500), "jwt.too_old", id="max-age"),
    pytest.param(_oversized, "jwt.too_large", id="too-large"),
    pytest.param(lambda: "not-a-jwt", "jwt.malformed", id="garbage"),
    pytest.param(lambda: "a.b.c", "jwt.malformed", id="garbage-segments"),
    pytest.param(
        lambda: f"{b64url(b'hello')}.{b64url(b'world')}.{b64url(b'sig')}", "jwt.malformed", id="segments-not-json"
    ),
    pytest.param(lambda: mint("RS256") + ".x.y", "jwt.malformed", id="five-segments"),
]


@pytest.mark.parametrize("make, reason", REJECTED)
def test_invalid_tokens_are_rejected(idp, make, reason):
    token = make()
    denied(send(idp, "GET", "/api/resource", bearer(token)), 401, reason)


def test_token_size_limit_is_8192_bytes(idp):
    def sized(n: int) -> str:
        return jwt.encode(claims(sub="size", jti="0" * 32, pad="p" * n), HS_SECRET, "HS256", {"kid": "hs-1"})

    n = 5000
    assert len(sized(n)) <= 8192
    while len(sized(n + 1)) <= 8192:
        n += 1
    fits, over = record_token(sized(n)), record_token(sized(n + 1))
    assert 8190 <= len(fits) <= 8192 < len(over), (len(fits), len(over))
    expect(send(idp, "GET", "/api/size", bearer(fits)), 200)
    denied(send(idp, "GET", "/api/size", bearer(over)), 401, "jwt.too_large")


def test_missing_credentials(idp):
    denied(send(idp, "GET", "/api/resource"), 401, "auth.missing")
    denied(send(idp, "GET", "/admin/panel"), 401, "auth.missing")
    # An API key is not a credential the admin route accepts (jwt only).
    denied(send(idp, "GET", "/admin/panel", {"x-api-key": API_KEY_A}), 401, "auth.missing")


# RSA public key encodings an attacker would try as an HMAC secret.
_PUB = RSA_KEY.public_key()
CONFUSION_SECRETS = {
    "pem-spki": _PUB.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo),
    "pem-pkcs1": _PUB.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.PKCS1),
    "der-spki": _PUB.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo),
    "jwk-json": json.dumps(jwk(RSA_KEY, "rsa-1")).encode(),
    "modulus": _PUB.public_numbers().n.to_bytes(256, "big"),
}


@pytest.mark.parametrize("secret_kind", sorted(CONFUSION_SECRETS))
@pytest.mark.parametrize(
    "issuer, kid", [(RS_ONLY_ISSUER, "rsa-1"), (ISSUER, "rsa-1"), (ISSUER, None)], ids=["rs-only", "idp", "idp-no-kid"]
)
def test_rs_hs_algorithm_confusion_is_refused(idp, issuer, kid, secret_kind):
    """HS256 signed with the RSA public key's bytes as the HMAC secret. ``rs-only``
    allows RS256 only; ``idp`` also allows HS256 (with its own oct key)."""
    secret = CONFUSION_SECRETS[secret_kind]
    header = {"alg": "HS256", "typ": "JWT"} | ({"kid": kid} if kid else {})
    head = b64url(json.dumps(header).encode())
    body = b64url(json.dumps(claims(iss=issuer, roles=["admin"])).encode())
    mac = hmac.new(secret, f"{head}.{body}".encode(), hashlib.sha256).digest()
    token = record_token(f"{head}.{body}.{b64url(mac)}")
    resp = send(idp, "GET", "/admin/panel", bearer(token))
    assert resp[0] == 401 and harness.reason_of(resp) in ("jwt.alg", "jwt.signature"), (
        f"confused token accepted or misclassified: {resp[0]} {resp[2][:300]!r}"
    )
    denied(resp, 401, harness.reason_of(resp))


# --------------------------------------------------------------------------
# Authorization
# --------------------------------------------------------------------------
def test_roles_any_of(idp):
    denied(send(idp, "GET", "/admin/panel", bearer(mint("RS256", roles=["user"]))), 403, "authz.role")
    denied(send(idp, "GET", "/admin/panel", bearer(mint("RS256"))), 403, "authz.role")
    denied(send(idp, "GET", "/admin/panel", bearer(mint("RS256", roles="admin-ish"))), 403, "authz.role")
    expect(send(idp, "GET", "/admin/panel", bearer(mint("ES256", roles=["user", "admin"]))), 200)
    # idp2 reads roles from realm_access.roles (a claim path), not from `roles`.
    expect(send(idp, "GET", "/admin/panel", bearer(idp2_token(realm_access={"roles": ["admin"]}))), 200)
    denied(send(idp, "GET", "/admin/panel", bearer(idp2_token(roles=["admin"]))), 403, "authz.role")
    # Authenticated but not authorized is not a token problem: the token still works elsewhere.
    expect(send(idp, "GET", "/api/x", bearer(mint("RS256", roles=["user"]))), 200)


def test_scopes_all_of(idp):
    def status(**kw):
        return send(idp, "POST", "/orders/42", bearer(mint("RS256", **kw)))

    expect(status(scope="profile orders:write orders:read"), 200)
    expect(status(scp=["orders:write", "orders:read"]), 200)
    denied(status(scope="orders:read"), 403, "authz.scope")
    denied(status(scope="orders:read profile"), 403, "authz.scope")
    denied(status(scp=["orders:read"]), 403, "authz.scope")
    denied(status(scope="orders:read,orders:write"), 403, "authz.scope")  # space-separated, not commas
    denied(status(), 403, "authz.scope")


def test_amr_any_of(idp):
    def status(**kw):
        return send(idp, "GET", "/mfa/settings", bearer(mint("EdDSA", **kw)))

    expect(status(amr=["pwd", "otp"]), 200)
    expect(status(amr=["hwk"]), 200)
    denied(status(amr=["pwd"]), 403, "authz.mfa")
    denied(status(amr=[]), 403, "authz.mfa")
    denied(status(), 403, "authz.mfa")


def test_api_keys(idp):
    spoofed = {"x-api-key": API_KEY_A, "x-palisade-user": "apikey:partner-b"}
    view = upstream_view(send(idp, "GET", "/reports/q3", spoofed))
    assert view.get("x-palisade-user") == ["apikey:partner-a"], view
    denied(send(idp, "GET", "/reports/q3", {"x-api-key": API_KEY_A + "x"}), 401, "apikey.invalid")
    denied(send(idp, "GET", "/reports/q3", {"x-api-key": "pk_" + secrets.token_urlsafe(24)}), 401, "apikey.invalid")
    # The configured hash is not the key.
    denied(send(idp, "GET", "/reports/q3", {"x-api-key": sha256_hex(API_KEY_A)}), 401, "apikey.invalid")
    # partner-b's key is valid but carries role `audit` only.
    denied(send(idp, "GET", "/reports/q3", {"x-api-key": API_KEY_B}), 403, "authz.role")
    # A JWT with the role is accepted on the same route.
    view = upstream_view(send(idp, "GET", "/reports/q3", bearer(mint("RS256", sub="analyst", roles=["reports"]))))
    assert view.get("x-palisade-user") == ["analyst"], view


# --------------------------------------------------------------------------
# Forwarded claims, stripped client copies, token sources
# --------------------------------------------------------------------------
SPOOFED = {name: "mallory" for name in FORWARDED_HEADERS}


def test_claims_are_forwarded_and_client_copies_stripped(idp):
    sub = f"alice-{uuid.uuid4().hex[:6]}"
    token = mint("RS256", sub=sub, email="alice@example.com")
    view = upstream_view(send(idp, "GET", "/api/me", {**bearer(token), **SPOOFED}))
    assert view.get("x-palisade-user") == [sub], view
    assert view.get("x-user-id") == [sub], view
    assert view.get("x-user-email") == ["alice@example.com"], view
    assert "x-tenant" not in view, f"client copy of idp2's forwarded header reached the upstream: {view}"

    # No email claim: the client's copy is still dropped, nothing is set.
    view = upstream_view(send(idp, "GET", "/api/me", {**bearer(mint("RS256", sub=sub)), **SPOOFED}))
    assert "x-user-email" not in view and view.get("x-user-id") == [sub], view

    # idp2 forwards `tenant` only.
    view = upstream_view(send(idp, "GET", "/api/me", {**bearer(idp2_token(sub="bob", tenant="acme")), **SPOOFED}))
    assert view.get("x-palisade-user") == ["bob"] and view.get("x-tenant") == ["acme"], view
    assert "x-user-id" not in view and "x-user-email" not in view, view


@pytest.mark.parametrize("path", ["/public/page", "/elsewhere", "/oauth/token"])
def test_client_copies_are_stripped_without_a_policy(idp, path):
    """Routes without an authorization policy (public, the default class, and
    GET on the token route) are not authenticated: nothing is forwarded, and
    what the client sent under those names is removed."""
    for headers in (SPOOFED, {**SPOOFED, **bearer(mint("RS256", sub="alice", email="a@example.com"))}):
        view = upstream_view(send(idp, "GET", path, headers))
        present = {name: view[name] for name in FORWARDED_HEADERS if name in view}
        assert not present, f"{path}: {present} reached the upstream"
    # Not authenticated: an invalid token does not matter there.
    upstream_view(send(idp, "GET", path, bearer("not-a-jwt")))


def test_token_sources(idp):
    sub = f"carol-{uuid.uuid4().hex[:6]}"
    view = upstream_view(send(idp, "GET", "/api/src", {"x-access-token": mint("ES256", sub=sub)}))
    assert view.get("x-palisade-user") == [sub], view
    cookie = f"theme=dark; access_token={mint('ES256', sub=sub)}; lang=en"
    view = upstream_view(send(idp, "GET", "/api/src", {"Cookie": cookie}))
    assert view.get("x-palisade-user") == [sub], view
    # The first source present wins: a bad Authorization is not rescued by a good cookie.
    headers = {"Authorization": "Bearer not-a-jwt", "Cookie": f"access_token={mint('ES256', sub=sub)}"}
    denied(send(idp, "GET", "/api/src", headers), 401, "jwt.malformed")


# --------------------------------------------------------------------------
# Refresh-token reuse
# --------------------------------------------------------------------------
FORM = {"Content-Type": "application/x-www-form-urlencoded"}


def _refresh_token() -> str:
    token = "rt_" + secrets.token_urlsafe(32)
    SECRETS[f"refresh token {len(SECRETS)}"] = token
    return token


def test_refresh_token_reuse_is_refused_on_other_workers(idp):
    rt = _refresh_token()
    form = f"grant_type=refresh_token&refresh_token={rt}".encode()
    resp, first_worker = located(idp, "POST", "/oauth/token", FORM, form)
    upstream_view(resp)
    assert json_body(resp[2])["body_sha256"] == hashlib.sha256(form).hexdigest(), "form altered"

    reuse_workers = []
    for _ in range(10):
        resp, worker = located(idp, "POST", "/oauth/token", FORM, form)
        doc = denied(resp, 400, "oauth.refresh_reuse")
        assert doc["error"] == "invalid_grant", doc
        reuse_workers.append(worker)
    assert any(w != first_worker for w in reuse_workers), (
        f"no reuse reached a worker other than the first ({first_worker}): {reuse_workers}"
    )
    # The same token with the form fields in another order is the same token.
    other_order = f"client_id=web&refresh_token={rt}&grant_type=refresh_token".encode()
    denied(send(idp, "POST", "/oauth/token", FORM, other_order), 400, "oauth.refresh_reuse")

    # Another refresh token passes (once).
    rt2 = _refresh_token()
    form2 = f"grant_type=refresh_token&refresh_token={rt2}".encode()
    upstream_view(send(idp, "POST", "/oauth/token", FORM, form2))
    denied(send(idp, "POST", "/oauth/token", FORM, form2), 400, "oauth.refresh_reuse")
    # Other grants are not refresh tokens.
    code = f"grant_type=authorization_code&code={secrets.token_urlsafe(8)}".encode()
    upstream_view(send(idp, "POST", "/oauth/token", FORM, code))
    upstream_view(send(idp, "POST", "/oauth/token", FORM, code))

    log = idp.wait_for_log("oauth.refresh_reuse", timeout=5)
    events = [line for line in log.splitlines() if "oauth.refresh_reuse" in line]
    assert any("palisade.request" in line for line in events), harness.tail(log, 30)
    assert rt not in log and rt2 not in log, "a refresh token value is in Envoy's log"


def via(e: harness.EnvoyInstance, transport: str, method: str, path: str, headers=None, body: bytes = b""):
    """One request over HTTP/1.1 (``h1``) or HTTP/2 with prior knowledge (``h2``)."""
    if transport == "h1":
        return send(e, method, path, headers, body or None)
    resp = harness.h2_request(e.port, method, path, headers or {}, body)
    RESPONSES.append(resp)
    return resp


JSON_TYPE = {"Content-Type": "application/json"}


def _grant(rt: str) -> bytes:
    return f"grant_type=refresh_token&refresh_token={rt}".encode()


def _json_grant(rt: str, *more: str) -> bytes:
    members = ", ".join(f'"refresh_token": "{t}"' for t in (rt, *more))
    return ('{"grant_type": "refresh_token", ' + members + "}").encode()


@pytest.mark.parametrize("transport", ["h1", "h2"])
def test_a_repeated_token_request_parameter_is_refused(idp, transport):
    """Issue 11: `refresh_token=<used>&refresh_token=<fresh>` passed (palisade
    checked the last value; a server reading the first accepted the replay)."""
    rt = _refresh_token()
    upstream_view(via(idp, transport, "POST", "/oauth/token", FORM, _grant(rt)))
    fresh = _refresh_token()
    attempts = {
        "used first": (FORM, _grant(rt) + f"&refresh_token={fresh}".encode(), "/oauth/token"),
        "used last": (FORM, _grant(fresh) + f"&refresh_token={rt}".encode(), "/oauth/token"),
        "grant_type twice": (FORM, _grant(rt) + b"&grant_type=authorization_code", "/oauth/token"),
        "encoded name": (FORM, _grant(fresh) + f"&refresh%5Ftoken={rt}".encode(), "/oauth/token"),
        "JSON member twice": (JSON_TYPE, _json_grant(rt, fresh), "/oauth/token"),
        "in the query": (FORM, _grant(fresh), f"/oauth/token?refresh_token={rt}"),
    }
    for what, (headers, body, path) in attempts.items():
        doc = denied(via(idp, transport, "POST", path, headers, body), 400, "oauth.repeated_parameter")
        assert doc["error"] == "invalid_request", (what, doc)
    # None of them was remembered: the fresh token passes once.
    upstream_view(via(idp, transport, "POST", "/oauth/token", FORM, _grant(fresh)))
    denied(via(idp, transport, "POST", "/oauth/token", FORM, _grant(fresh)), 400, "oauth.refresh_reuse")


@pytest.mark.parametrize("transport", ["h1", "h2"])
def test_refresh_grants_are_checked_whatever_their_content_type(idp, transport):
    """Issue 11: a grant without a form or JSON content type was not checked."""
    declared = [{}, {"Content-Type": "text/plain"}, {"Content-Type": "application/octet-stream"},
                {"Content-Type": "application/x-www-form-urlencoded; charset=UTF-8"}, JSON_TYPE]
    for headers in declared:
        for encode in (_grant, _json_grant):
            rt = _refresh_token()
            upstream_view(via(idp, transport, "POST", "/oauth/token", headers, encode(rt)))
            denied(via(idp, transport, "POST", "/oauth/token", headers, encode(rt)), 400, "oauth.refresh_reuse")
    # A token used as a form is the same token as JSON.
    rt = _refresh_token()
    upstream_view(via(idp, transport, "POST", "/oauth/token", FORM, _grant(rt)))
    denied(via(idp, transport, "POST", "/oauth/token", {"Content-Type": "text/plain"}, _json_grant(rt)),
           400, "oauth.refresh_reuse")
    # Bodies palisade cannot read are refused.
    multipart = {"Content-Type": "multipart/form-data; boundary=b"}
    body = f'--b\r\nContent-Disposition: form-data; name="refresh_token"\r\n\r\n{rt}\r\n--b--\r\n'.encode()
    doc = denied(via(idp, transport, "POST", "/oauth/token", multipart, body), 400, "oauth.unsupported_body")
    assert doc["error"] == "invalid_request", doc


@pytest.mark.parametrize("transport", ["h1", "h2"])
def test_the_token_route_matches_with_a_trailing_slash(idp, transport):
    """Issue 11: `"path": "/oauth/token"` did not match `/oauth/token/`."""
    for first, again in (("/oauth/token", "/oauth/token/"), ("/oauth/token/", "/oauth/token?x=1")):
        rt = _refresh_token()
        upstream_view(via(idp, transport, "POST", first, FORM, _grant(rt)))
        denied(via(idp, transport, "POST", again, FORM, _grant(rt)), 400, "oauth.refresh_reuse")


# --------------------------------------------------------------------------
# Claim types
# --------------------------------------------------------------------------
def signed(payload: dict, key=RSA_KEY, kid: str = "rsa-1", alg: str = "RS256") -> str:
    """A token with exactly ``payload`` (claims() cannot set every type)."""
    return record_token(jwt.encode(payload, key, algorithm=alg, headers={"kid": kid}))


@pytest.mark.parametrize("transport", ["h1", "h2"])
def test_claims_of_the_wrong_type_are_refused(idp, transport):
    """Issue 11: `"sub": 42` passed `required_claims: ["sub"]`."""
    for change in [{"sub": 42}, {"sub": ["alice"]}, {"sub": {"id": "alice"}}, {"sub": ""}, {"jti": 7},
                   {"aud": [AUDIENCE, 5]}]:
        token = signed({**claims(), **change})
        resp = via(idp, transport, "GET", "/api/types", bearer(token))
        assert (resp[0], harness.reason_of(resp)) == (401, "jwt.claims"), (change, resp[0], resp[2][:200])
        denied(resp, 401, "jwt.claims")
    view = upstream_view(via(idp, transport, "GET", "/api/types", bearer(signed(claims(sub="typed")))))
    assert view.get("x-palisade-user") == ["typed"], view


def test_tokens_without_a_subject_share_no_user_key(envoy):
    """Issue 11: tokens whose `sub` was absent, empty or a number all shared one
    empty-subject bucket (idp2 does not require `sub`)."""
    cfg = copy.deepcopy(MAIN_CONFIG)
    cfg["rate_limits"] = {
        "rules": [{"name": "per-user", "key": ["user"], "routes": ["api"], "capacity": 2, "refill": "none"}]
    }
    e = envoy(cfg, concurrency=2)

    def idp2(**fields) -> str:
        return signed({**claims(iss=ISSUER2, drop=("sub",)), **fields}, EC2_KEY, "idp2-ec", "ES256")

    for transport in ("h1", "h2"):
        first, second, empty = idp2(), idp2(), idp2(sub="")
        for token in (first, first, second, empty):
            expect(via(e, transport, "GET", "/api/n", bearer(token)), 200)
        expect(via(e, transport, "GET", "/api/n", bearer(first)), 429, "rl.exhausted")
        denied(via(e, transport, "GET", "/api/n", bearer(idp2(sub=42))), 401, "jwt.claims")


# --------------------------------------------------------------------------
# Rate limit keyed on the verified subject
# --------------------------------------------------------------------------
def test_user_rate_limit_uses_the_verified_subject(envoy):
    cfg = copy.deepcopy(MAIN_CONFIG)
    cfg["rate_limits"] = {
        "rules": [
            {"name": "per-user", "key": ["user"], "routes": ["api"], "capacity": 6, "refill": "none"},
            {"name": "reports-per-user", "key": ["user"], "routes": ["reports"], "capacity": 2, "refill": "none"},
        ]
    }
    e = envoy(cfg, concurrency=4)  # direct_response upstream: 200 "ok"

    results = [located(e, "GET", f"/api/n{i}", bearer(mint("RS256", sub="alice"))) for i in range(9)]
    statuses = [r[0] for r, _ in results]
    assert statuses == [200] * 6 + [429] * 3, [(r[0], harness.reason_of(r)) for r, _ in results]
    expect(results[-1][0], 429, "rl.exhausted")
    workers = {w for _, w in results}
    assert len(workers) >= 2, f"alice's requests all on worker(s) {workers}: nothing shared across workers"

    # Another subject has its own bucket, whatever alice's tokens' other claims.
    for i in range(6):
        expect(send(e, "GET", f"/api/b{i}", bearer(mint("ES256", sub="bob"))), 200)
    expect(send(e, "GET", "/api/b", bearer(mint("ES256", sub="bob"))), 429, "rl.exhausted")
    # A client-sent x-palisade-user is not the key: carol is not limited as alice.
    expect(send(e, "GET", "/api/c", {**bearer(mint("RS256", sub="carol")), "x-palisade-user": "alice"}), 200)
    # Unauthenticated requests are refused as such, not counted.
    denied(send(e, "GET", "/api/anon"), 401, "auth.missing")

    # An API key's user is apikey:<id>.
    for _ in range(2):
        expect(send(e, "GET", "/reports/r", {"x-api-key": API_KEY_A}), 200)
    expect(send(e, "GET", "/reports/r", {"x-api-key": API_KEY_A}), 429, "rl.exhausted")
    expect(send(e, "GET", "/reports/r", bearer(mint("RS256", sub="analyst", roles=["reports"]))), 200)


# --------------------------------------------------------------------------
# Remote JWKS
# --------------------------------------------------------------------------
JWKS_PATH = "/.well-known/jwks.json"
MIN_REFETCH_S = 3
REMOTE_KEYS = {"remote-a": ("RS256", RSA_KEY), "remote-b": ("ES256", EC_KEY)}


def remote_config(without_keys: str = "deny", *, min_refetch_s: int = MIN_REFETCH_S, timeout_s: int = 1) -> dict:
    """One provider whose keys come from the JWKS server behind cluster
    ``idp_jwks`` (also used by test_faults and test_contention)."""
    return {
        "version": 1,
        "routes": [{"name": "api", "prefix": "/api"}],
        "jwt": {
            "without_keys": without_keys,
            "providers": [
                {
                    "name": "remote",
                    "issuer": REMOTE_ISSUER,
                    "audiences": [AUDIENCE],
                    "algorithms": ["RS256", "ES256"],
                    "jwks": {
                        "remote": {
                            "cluster": "idp_jwks",
                            "authority": "idp.example",
                            "path": JWKS_PATH,
                            "refresh": "1h",  # only unknown kids and failures cause refetches here
                            "min_refetch": f"{min_refetch_s}s",
                            "timeout": f"{timeout_s}s",
                        }
                    },
                }
            ],
        },
        "authorization": {"policies": [{"routes": ["api"]}]},
    }


def remote_token(kid: str = "remote-a", **kw) -> str:
    alg, key = REMOTE_KEYS[kid]
    return mint(alg, key=key, kid=kid, iss=REMOTE_ISSUER, **kw)


def unknown_kid_token() -> str:
    return mint("RS256", key=ROGUE["RSA"], kid=f"rotated-{uuid.uuid4().hex[:8]}", iss=REMOTE_ISSUER)


def fetch_metric(e: harness.EnvoyInstance, result: str) -> float:
    return palisade_counter(e.prometheus(), "palisade_jwks_fetches_total", result=result)


@pytest.fixture
def jwks():
    server = JwksServer([jwk(RSA_KEY, "remote-a")], path=JWKS_PATH).start()
    yield server
    server.stop()


def remote_envoy(envoy, jwks, *, without_keys="deny", concurrency=2, upstream=None) -> harness.EnvoyInstance:
    clusters = [jwks.cluster("idp_jwks")] + ([upstream.cluster("upstream")] if upstream else [])
    routes = [TO_UPSTREAM] if upstream else None
    return envoy(remote_config(without_keys), concurrency=concurrency, extra_routes=routes, extra_clusters=clusters)


def test_remote_jwks_deny_without_keys(envoy, jwks):
    jwks.fail(500)
    e = remote_envoy(envoy, jwks)
    denied(send(e, "GET", "/api/early", bearer(remote_token())), 503, "jwt.no_keys")
    assert jwks.wait_for_fetch(0, timeout=5), "no JWKS fetch within 5 s of start"
    denied(send(e, "GET", "/api/early", bearer(remote_token())), 503, "jwt.no_keys")
    wait_until(
        "failed fetch counted", lambda: (fetch_metric(e, "failed") >= 1, palisade_lines(e.prometheus())), timeout=3
    )

    jwks.recover()
    waited = accepted_within(e, remote_token, MIN_REFETCH_S + 8, "first key set loaded after the IdP recovered")
    print(f"keys loaded {waited:.1f}s after recovery; fetches: {jwks.fetches}")
    assert {f.host for f in jwks.fetches} == {"idp.example"}, f"fetch :authority: {jwks.fetches}"
    assert {f.path for f in jwks.fetches} == {JWKS_PATH}, jwks.fetches
    assert fetch_metric(e, "ok") >= 1, palisade_lines(e.prometheus())
    # Verification is real once keys are there.
    forged = mint("RS256", key=ROGUE["RSA"], kid="remote-a", iss=REMOTE_ISSUER)
    denied(send(e, "GET", "/api/x", bearer(forged)), 401, "jwt.signature")
    assert_no_leaks(e)


def test_remote_jwks_allow_without_keys(envoy, jwks, upstream):
    jwks.fail(500)
    e = remote_envoy(envoy, jwks, without_keys="allow", upstream=upstream)
    view = upstream_view(send(e, "GET", "/api/early", bearer(remote_token(sub="early"))))
    assert "x-palisade-user" not in view, f"an unverified subject was forwarded: {view}"
    assert jwks.wait_for_fetch(0, timeout=5), "no JWKS fetch within 5 s of start"

    jwks.recover()

    def verified():
        view = upstream_view(send(e, "GET", "/api/x", bearer(remote_token(sub="dave"))))
        return view.get("x-palisade-user") == ["dave"], view

    wait_until("key set loaded (subject forwarded)", verified, MIN_REFETCH_S + 8)
    # Once keys are loaded, tokens are verified: a forgery is refused.
    forged = mint("RS256", key=ROGUE["RSA"], kid="remote-a", iss=REMOTE_ISSUER)
    denied(send(e, "GET", "/api/x", bearer(forged)), 401, "jwt.signature")


def test_remote_jwks_rotation_is_picked_up_without_restart(envoy, jwks):
    e = remote_envoy(envoy, jwks)
    accepted_within(e, remote_token, 10, "first key set loaded")
    pid = e.proc.pid

    jwks.set_keys([jwk(EC_KEY, "remote-b")])  # the IdP rotated to a new key (and another algorithm)
    waited = accepted_within(
        e, lambda: remote_token("remote-b"), MIN_REFETCH_S + 4, "token with the rotated key accepted"
    )
    print(f"rotated key accepted after {waited:.1f}s (min_refetch {MIN_REFETCH_S}s)")
    assert e.proc.poll() is None and e.proc.pid == pid, "Envoy restarted"
    # The retired key verifies no new token, on any worker once each has had
    # its tick (1 s) to take the new set from shared data.
    time.sleep(1.5)
    for i in range(6):
        denied(send(e, "GET", f"/api/old-{i}", bearer(remote_token("remote-a"))), 401, "jwt.unknown_kid")
    assert all(f.status == 200 for f in jwks.fetches), jwks.fetches


def test_remote_jwks_outage_keeps_last_good_keys(envoy, jwks):
    e = remote_envoy(envoy, jwks, concurrency=4)
    accepted_within(e, remote_token, 10, "first key set loaded")

    def refetch_attempted(before: int):
        resp = send(e, "GET", "/api/x", bearer(unknown_kid_token()))
        denied(resp, 401, "jwt.unknown_kid")
        return jwks.fetch_count > before, jwks.fetches[-1]

    # The IdP answers 500: an unknown kid makes palisade refetch, which fails.
    jwks.fail(500)
    before = jwks.fetch_count
    last, _ = wait_until("refetch on unknown kid", lambda: refetch_attempted(before), MIN_REFETCH_S + 5)
    assert last.status == 500, last
    for i in range(6):
        expect(send(e, "GET", f"/api/during-500-{i}", bearer(remote_token())), 200)
    wait_until("failed fetch counted", lambda: (fetch_metric(e, "failed") >= 1, palisade_lines(e.prometheus())), 3)
    failed = fetch_metric(e, "failed")

    # The IdP is down (connection refused).
    jwks.stop()
    time.sleep(MIN_REFETCH_S + 0.2)

    def another_failure():
        denied(send(e, "GET", "/api/x", bearer(unknown_kid_token())), 401, "jwt.unknown_kid")
        return fetch_metric(e, "failed") > failed, palisade_lines(e.prometheus())

    wait_until("failed fetch while the IdP is down", another_failure, MIN_REFETCH_S + 5)
    for i in range(6):
        expect(send(e, "GET", f"/api/during-down-{i}", bearer(remote_token())), 200)

    # Back, with a rotated set: picked up again.
    jwks.set_keys([jwk(RSA_KEY, "remote-a"), jwk(EC_KEY, "remote-b")])
    jwks.start()
    accepted_within(e, lambda: remote_token("remote-b"), MIN_REFETCH_S + 5, "new key after the IdP came back")


def test_unknown_kid_burst_causes_few_fetches(envoy, jwks):
    started = time.monotonic()
    e = remote_envoy(envoy, jwks, concurrency=4)
    accepted_within(e, remote_token, 10, "first key set loaded")
    initial = jwks.fetch_count
    assert 1 <= initial <= 1 + int((time.monotonic() - started) / MIN_REFETCH_S), (
        f"{initial} fetches to load the first key set (one per process expected): {jwks.fetches}"
    )

    n_threads, per_thread = 8, 25
    tokens = [[unknown_kid_token() for _ in range(per_thread)] for _ in range(n_threads)]
    # Start once min_refetch has passed since the last fetch: the burst may
    # (and should) cause a refetch.
    time.sleep(max(0.0, jwks.fetches[-1].at + MIN_REFETCH_S + 0.2 - time.monotonic()))
    results: list = []
    lock = threading.Lock()
    barrier = threading.Barrier(n_threads, timeout=30)
    cx_before = collections.Counter(e.workers_with_connections())

    def client(batch: list[str]) -> None:
        conn = e.connection()
        out = []
        try:
            barrier.wait()
            for token in batch:
                out.append(send(e, "GET", "/api/burst", bearer(token), conn=conn))
        except Exception as exc:  # noqa: BLE001 - reported below
            out.append(exc)
        finally:
            conn.close()
        with lock:
            results.extend(out)

    t0 = time.monotonic()
    threads = [threading.Thread(target=client, args=(batch,)) for batch in tokens]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    time.sleep(1.5)  # let a fetch the burst triggered land
    elapsed = time.monotonic() - t0

    errors = [r for r in results if not isinstance(r, tuple)]
    assert not errors, errors[:3]
    outcome = collections.Counter((r[0], harness.reason_of(r)) for r in results)
    assert outcome == {(401, "jwt.unknown_kid"): n_threads * per_thread}, dict(outcome)
    workers = collections.Counter(e.workers_with_connections()) - cx_before
    assert len(workers) >= 2, f"the burst's connections all landed on worker(s) {dict(workers)}"

    burst_fetches = jwks.fetch_count - initial
    bound = 1 + int(elapsed / MIN_REFETCH_S) + 1
    print(f"{len(results)} unknown kids in {elapsed:.1f}s on workers {dict(workers)}: {burst_fetches} fetches")
    assert burst_fetches <= bound, f"{burst_fetches} JWKS fetches in {elapsed:.1f}s (bound {bound}): {jwks.fetches}"
    assert burst_fetches >= 1, "unknown kids, min_refetch after the last fetch, caused no refetch"

    # Every fetch the IdP served is counted, once.
    wait_until(
        "palisade_jwks_fetches_total{result=ok} equals the fetches served",
        lambda: (fetch_metric(e, "ok") == jwks.fetch_count, (fetch_metric(e, "ok"), jwks.fetch_count)),
        3,
    )
    assert fetch_metric(e, "failed") == 0, palisade_lines(e.prometheus())
    expect(send(e, "GET", "/api/after", bearer(remote_token())), 200)


# --------------------------------------------------------------------------
# No token, key or secret in logs or responses (last: sees the module's traffic)
# --------------------------------------------------------------------------
def test_no_token_key_or_secret_in_logs_or_responses(idp):
    # A sample of every outcome on this Envoy (more if the whole module ran).
    send(idp, "GET", "/api/x", bearer(mint("HS256")))
    send(idp, "GET", "/api/x", bearer(mint("RS256", now=_now() - 1000)))
    send(idp, "GET", "/api/x", bearer(_tampered_payload()))
    send(idp, "GET", "/api/x", bearer(_alg_none("none")))
    send(idp, "GET", "/api/x", bearer(mint("RS256", key=ROGUE["RSA"], kid="nope")))
    send(idp, "GET", "/admin/x", bearer(mint("RS256", roles=["user"])))
    send(idp, "GET", "/reports/x", {"x-api-key": API_KEY_A})
    send(idp, "GET", "/reports/x", {"x-api-key": API_KEY_B + "0"})
    rt = _refresh_token()
    for _ in range(2):
        send(idp, "POST", "/oauth/token", FORM, f"grant_type=refresh_token&refresh_token={rt}".encode())
    statuses = collections.Counter(r[0] for r in RESPONSES[-10:])
    assert statuses[200] >= 2 and statuses[401] >= 5 and statuses[403] >= 1 and statuses[400] == 1, statuses

    idp.wait_for_log("oauth.refresh_reuse", timeout=5)
    log = assert_no_leaks(idp)
    # Security events are written (the check is not vacuous).
    assert "palisade.request" in log and "jwt.signature" in log and "apikey.invalid" in log, harness.tail(log, 40)
