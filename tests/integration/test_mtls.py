"""Device identity from mutual TLS (palisade's `mtls` section) against a real
Envoy: Envoy verifies the client certificate against make mtls-certs' test
CA, palisade reads the verified certificate's identity (its URI SAN, or its
subject) and decides per route class whether one is required and which
identities may pass; authorization policies can require identities; a JWT
bound to a certificate (RFC 8705 `cnf` `x5t#S256`) is accepted only over a
connection presenting it; and a rate limit can be keyed by the device.

Listeners (harness.EnvoyInstance): `ingress` (plain HTTP), `ingress_mtls`
(a client certificate is required by the TLS handshake) and
`ingress_mtls_optional` (a certificate is verified when sent, but a client
may send none, so that palisade, not the handshake, refuses a request
without one). Client certificates: alpha and beta (URI SAN
spiffe://palisade.demo/device/<name>, CN <name>) from the test CA, and
rogue (alpha's names) from a second CA Envoy does not trust.
"""

from __future__ import annotations

import json
import time

import pytest

import demo_token
import harness
from jwks_server import LocalServer

DEVICE = harness.DEVICE_PREFIX
ALPHA, BETA = DEVICE + "alpha", DEVICE + "beta"

CONFIG = {
    "routes": [
        {"name": "devices", "prefix": "/devices"},
        {"name": "fleet", "prefix": "/fleet"},
        {"name": "ops", "prefix": "/ops"},
        {"name": "bound", "prefix": "/bound"},
        {"name": "api", "prefix": "/api"},
        {"name": "open", "prefix": "/open"},
    ],
    "mtls": {
        "mode": "enforce",
        "identity": "uri_san",
        "defaults": {"required": False, "identities": []},
        "routes": {
            # alpha and alpha-2, ...: prefix patterns end in `*`.
            "devices": {"required": True, "identities": [DEVICE + "alpha*"]},
            "fleet": {"required": True, "identities": [DEVICE + "*"]},
        },
    },
    "jwt": {"providers": [demo_token.demo_provider()]},
    "authorization": {
        "policies": [
            {"routes": ["ops"], "identities": [ALPHA]},
            {"routes": ["bound"], "bound_tokens": True},
            {"routes": ["api"]},
        ]
    },
    "rate_limits": {
        "rules": [{"name": "per-device", "key": ["device"], "routes": ["fleet"], "capacity": 2, "refill": "none"}]
    },
}


class RecordingUpstream(LocalServer):
    """The application: answers 200 with a mark, and records each request's
    path and headers."""

    MARK = "mtls-upstream"

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[str, dict[str, str]]] = []

    def answer(self, handler, body):
        with self.lock:
            self.seen.append((handler.path, {k.lower(): v for k, v in handler.headers.items()}))
        return 200, "application/json", json.dumps({"mark": self.MARK, "path": handler.path}).encode()

    def paths(self) -> list[str]:
        with self.lock:
            return [p for p, _ in self.seen]


@pytest.fixture
def upstream():
    server = RecordingUpstream().start()
    yield server
    server.stop()


@pytest.fixture
def mtls_envoy(envoy, upstream):
    """``mtls_envoy(config=CONFIG)``: Envoy with the plain, mTLS and
    optional-mTLS listeners, every path routed to :func:`upstream`."""

    def start(config: dict = CONFIG, **kwargs) -> harness.EnvoyInstance:
        return envoy(
            config,
            extra_routes=[{"match": {"prefix": "/"}, "route": {"cluster": "upstream"}}],
            extra_clusters=[upstream.cluster("upstream")],
            mtls=True,
            mtls_optional=True,
            **kwargs,
        )

    return start


def reached(resp: harness.Response) -> None:
    """The upstream's own 200."""
    status, _, body = resp
    assert status == 200, f"expected the upstream's 200, got {status}: {body[:300]!r}"
    assert harness.json_body(body).get("mark") == RecordingUpstream.MARK, body[:300]


def refused(resp: harness.Response, status: int, reason: str) -> None:
    assert (resp[0], harness.reason_of(resp)) == (status, reason), f"expected {status} {reason}, got {resp[0]}: {resp[2][:300]!r}"


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def alpha_bound_token(sub: str = "alice") -> str:
    return demo_token.mint(sub, cnf=demo_token.bound_to(harness.client_cert("alpha")[0]))


# --------------------------------------------------------------------------
# Certificates, required and allowed identities
# --------------------------------------------------------------------------
def test_an_allowed_device_reaches_the_upstream_and_others_are_refused(mtls_envoy, upstream):
    e = mtls_envoy()
    reached(harness.mtls_request(e.mtls_port, "GET", "/devices/status", client="alpha"))
    assert upstream.paths() == ["/devices/status"]

    # A verified certificate whose identity no pattern of the class matches.
    refused(harness.mtls_request(e.mtls_port, "GET", "/devices/status", client="beta"), 403, "mtls.identity_not_allowed")
    # Over TLS, but without a certificate: palisade's refusal, not the handshake's.
    refused(
        harness.mtls_request(e.mtls_optional_port, "GET", "/devices/status", client=None), 403, "mtls.required"
    )
    # Plain HTTP has no certificate at all.
    refused(e.request("GET", "/devices/status"), 403, "mtls.required")
    assert upstream.paths() == ["/devices/status"], "a refused request reached the upstream"

    # Where no certificate is required, a request without one passes, and
    # any verified certificate does ("identities": [] by default).
    reached(e.request("GET", "/open/page"))
    reached(harness.mtls_request(e.mtls_optional_port, "GET", "/open/page", client=None))
    reached(harness.mtls_request(e.mtls_port, "GET", "/open/page", client="beta"))


def test_the_handshake_refuses_an_untrusted_certificate_and_none_where_one_is_required(mtls_envoy, upstream):
    """Envoy's doing, before palisade: a certificate from another CA (with
    alpha's very names) never gets a request through, on either mTLS
    listener, and neither does a client without one where the listener
    requires it."""
    e = mtls_envoy()
    for port, client in ((e.mtls_port, "rogue"), (e.mtls_optional_port, "rogue"), (e.mtls_port, None)):
        with pytest.raises(harness.HANDSHAKE_REFUSED):
            harness.mtls_request(port, "GET", "/open/page", client=client)
    time.sleep(0.2)
    assert upstream.paths() == [], "a request over a refused handshake reached the upstream"
    stats = e.stats()
    assert stats.get("listener.ingress_mtls.ssl.fail_verify_error") == 1, stats
    assert stats.get("listener.ingress_mtls_optional.ssl.fail_verify_error") == 1, stats
    assert stats.get("listener.ingress_mtls.ssl.fail_verify_no_cert") == 1, stats
    # The same listener lets the trusted certificate through.
    reached(harness.mtls_request(e.mtls_port, "GET", "/open/page", client="alpha"))


def test_the_identity_can_be_the_certificate_subject(mtls_envoy, upstream):
    """``"identity": "subject"``: the verified certificate's subject
    (connection.subject_peer_certificate; Envoy writes it as RFC 2253,
    `CN=alpha` here) is what the patterns match."""
    config = json.loads(json.dumps(CONFIG))
    config["mtls"]["identity"] = "subject"
    config["mtls"]["routes"] = {"devices": {"required": True, "identities": ["CN=alpha"]}}
    e = mtls_envoy(config)
    reached(harness.mtls_request(e.mtls_port, "GET", "/devices/status", client="alpha"))
    refused(harness.mtls_request(e.mtls_port, "GET", "/devices/status", client="beta"), 403, "mtls.identity_not_allowed")
    assert upstream.paths() == ["/devices/status"]


# --------------------------------------------------------------------------
# Authorization by identity
# --------------------------------------------------------------------------
def test_an_authorization_policy_can_require_a_device_identity(mtls_envoy, upstream):
    e = mtls_envoy()
    token = demo_token.mint("alice")
    reached(harness.mtls_request(e.mtls_port, "GET", "/ops/deploy", bearer(token), client="alpha"))
    # The token is fine; the device is not the one the policy names.
    refused(harness.mtls_request(e.mtls_port, "GET", "/ops/deploy", bearer(token), client="beta"), 403, "authz.identity")
    # No certificate, no device identity.
    refused(e.request("GET", "/ops/deploy", bearer(token)), 403, "authz.identity")
    refused(
        harness.mtls_request(e.mtls_optional_port, "GET", "/ops/deploy", bearer(token), client=None),
        403,
        "authz.identity",
    )
    # The device alone is not a credential: the policy still needs the token.
    refused(harness.mtls_request(e.mtls_port, "GET", "/ops/deploy", client="alpha"), 401, "auth.missing")
    assert upstream.paths() == ["/ops/deploy"]


# --------------------------------------------------------------------------
# Certificate-bound tokens (RFC 8705)
# --------------------------------------------------------------------------
def test_a_certificate_bound_token_is_accepted_only_with_its_certificate(mtls_envoy, upstream):
    e = mtls_envoy()
    token = alpha_bound_token()
    # cnf x5t#S256 computed here from alpha's DER, independently of palisade.
    reached(harness.mtls_request(e.mtls_port, "GET", "/api/items", bearer(token), client="alpha"))
    # Stolen by beta's device, or replayed without a certificate.
    refused(harness.mtls_request(e.mtls_port, "GET", "/api/items", bearer(token), client="beta"), 401, "jwt.binding")
    refused(
        harness.mtls_request(e.mtls_optional_port, "GET", "/api/items", bearer(token), client=None), 401, "jwt.binding"
    )
    refused(e.request("GET", "/api/items", bearer(token)), 401, "jwt.binding")
    # A token bound to another certificate (beta's) is refused over alpha's.
    beta_token = demo_token.mint("bob", cnf=demo_token.bound_to(harness.client_cert("beta")[0]))
    refused(harness.mtls_request(e.mtls_port, "GET", "/api/items", bearer(beta_token), client="alpha"), 401, "jwt.binding")
    reached(harness.mtls_request(e.mtls_port, "GET", "/api/items", bearer(beta_token), client="beta"))
    # Where binding is not demanded, an unbound token passes with or without a certificate.
    plain_token = demo_token.mint("carol")
    reached(e.request("GET", "/api/items", bearer(plain_token)))
    reached(harness.mtls_request(e.mtls_port, "GET", "/api/items", bearer(plain_token), client="beta"))
    assert upstream.paths() == ["/api/items"] * 4


def test_bound_tokens_policy_refuses_an_unbound_token(mtls_envoy, upstream):
    e = mtls_envoy()
    refused(
        harness.mtls_request(e.mtls_port, "GET", "/bound/x", bearer(demo_token.mint("carol")), client="alpha"),
        401,
        "jwt.binding",
    )
    assert upstream.paths() == []
    reached(harness.mtls_request(e.mtls_port, "GET", "/bound/x", bearer(alpha_bound_token()), client="alpha"))
    refused(
        harness.mtls_request(e.mtls_port, "GET", "/bound/x", bearer(alpha_bound_token()), client="beta"),
        401,
        "jwt.binding",
    )
    assert upstream.paths() == ["/bound/x"]


# --------------------------------------------------------------------------
# Rate limits keyed by the device
# --------------------------------------------------------------------------
def test_a_device_keyed_limit_throttles_one_device_and_not_another(mtls_envoy, upstream):
    """Capacity 2, never refilled, one bucket per device identity: alpha's
    third request is refused (each on a new connection, so on either
    worker); beta's bucket is its own."""
    e = mtls_envoy()
    for _ in range(2):
        reached(harness.mtls_request(e.mtls_port, "GET", "/fleet/ping", client="alpha"))
    refused(harness.mtls_request(e.mtls_port, "GET", "/fleet/ping", client="alpha"), 429, "rl.exhausted")
    for _ in range(2):
        reached(harness.mtls_request(e.mtls_port, "GET", "/fleet/ping", client="beta"))
    refused(harness.mtls_request(e.mtls_port, "GET", "/fleet/ping", client="beta"), 429, "rl.exhausted")
    # alpha is still throttled over the other mTLS listener: the key is the
    # device, not the connection or the listener.
    refused(harness.mtls_request(e.mtls_optional_port, "GET", "/fleet/ping", client="alpha"), 429, "rl.exhausted")
    assert upstream.paths() == ["/fleet/ping"] * 4
