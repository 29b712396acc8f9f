"""HTTP/2 carries bytes HTTP/1 parsers refuse: a request whose `:path` is not
UTF-8 must be refused, never classified as `default` with every route's policy
skipped (issue 11: before the fix each request below got 200 from the
upstream, with no security event)."""

from __future__ import annotations

import hashlib
import json

import harness

API_KEY = "h2-partner-key-0123456789abcdef"

CONFIG = {
    "version": 1,
    "mode": "enforce",
    "client_ip": {"source": "peer"},
    "routes": [
        {"name": "login", "prefix": "/login", "methods": ["POST"]},
        {"name": "payments", "prefix": "/payments"},
        {"name": "account", "prefix": "/account"},
        {"name": "admin", "prefix": "/admin"},
        {"name": "partner", "prefix": "/partner/"},
        {"name": "token", "path": "/oauth/token", "methods": ["POST"]},
    ],
    "rate_limits": {
        "rules": [
            {"name": "login-ip", "key": ["ip"], "routes": ["login"], "capacity": 2, "refill": "none", "ban": True},
        ]
    },
    "bans": {"after": 1, "base": "1m", "factor": 2.0, "max": "1h", "decay": "10m"},
    "signatures": {
        "keys": [{"id": "k1", "secret": {"base64": "PzMJdwhYCagyf4qv+oAsKv1EnEzOaOye1k/Nl16hJyQ="}}],
        "policies": [{"routes": ["payments"], "require_digest": True}],
    },
    "jwt": {
        "providers": [
            {
                "name": "idp",
                "issuer": "https://idp.example",
                "audiences": ["api"],
                "algorithms": ["EdDSA"],
                "jwks": {
                    "inline": {
                        "keys": [
                            {
                                "kty": "OKP",
                                "crv": "Ed25519",
                                "kid": "k",
                                "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo",
                            }
                        ]
                    }
                },
            }
        ],
        "refresh_tokens": {"routes": ["token"], "remember": "1h"},
    },
    "api_keys": {
        "header": "x-api-key",
        "keys": [{"id": "p", "sha256": hashlib.sha256(API_KEY.encode()).hexdigest(), "roles": ["partner"]}],
    },
    "authorization": {
        "policies": [
            {"routes": ["account"]},
            {"routes": ["admin"], "roles": ["admin"]},
            {"routes": ["partner"], "credentials": ["api_key"], "roles": ["partner"]},
        ]
    },
}

FORM = [("content-type", "application/x-www-form-urlencoded")]
REFRESH = b"grant_type=refresh_token&refresh_token=rt-h2-1"


def reason(resp: harness.Response) -> str | None:
    try:
        return json.loads(resp[2]).get("reason")
    except ValueError:
        return None


def test_non_utf8_path_over_http2_is_refused_on_every_protected_route(envoy):
    e = envoy(CONFIG, concurrency=2)
    port = e.port

    # Controls over HTTP/2 with a readable path: the policies apply.
    assert harness.h2_request(port, "GET", "/account?q=x")[0] == 401
    assert harness.h2_request(port, "GET", "/account?q=%FF")[0] == 401
    assert harness.h2_request(port, "GET", "/partner/report")[0] == 401
    assert harness.h2_request(port, "POST", "/payments", FORM, b"a=1")[0] == 401
    first = harness.h2_request(port, "POST", "/oauth/token", FORM, REFRESH)
    assert first[0] == 200, first
    again = harness.h2_request(port, "POST", "/oauth/token", FORM, REFRESH)
    assert (again[0], reason(again)) == (400, "oauth.refresh_reuse"), again
    logins = [harness.h2_request(port, "POST", "/login")[0] for _ in range(4)]
    assert logins[:2] == [200, 200] and logins[-1] == 403, logins

    # The same requests with one raw 0xff byte in the query (or the path).
    bypasses = {
        "account without a token": ("GET", b"/account?q=\xff", [], b""),
        "admin without a token": ("GET", b"/admin/users?\xff", [], b""),
        "partner without an API key": ("GET", b"/partner/report?\xff", [], b""),
        "payment without signature or digest": ("POST", b"/payments?\xff", FORM, b"a=1"),
        "refresh token used again": ("POST", b"/oauth/token?\xff", FORM, REFRESH),
        "login from a banned address": ("POST", b"/login?\xff", [], b""),
    }
    got = {what: harness.h2_request(port, m, p, h, b) for what, (m, p, h, b) in bypasses.items()}
    summary = {what: (r[0], reason(r)) for what, r in got.items()}
    assert {k: v for k, v in summary.items() if v != (400, "request.path")} == {}

    # A raw byte in the path itself is percent-encoded by Envoy's path
    # normalization (`/acc%FFount`): a path of its own, not `/account`.
    assert harness.h2_request(port, "GET", b"/account\xff/x")[0] == 401

    # A non-UTF-8 :authority (it feeds @authority in signatures): Envoy's
    # codec resets the connection itself; palisade refuses it too (unit test).
    try:
        resp = harness.h2_request(port, "GET", "/account", authority=b"h\xffst")
        assert (resp[0], reason(resp)) == (400, "request.authority"), resp
    except harness.HarnessError:
        pass

    prom = e.prometheus()
    refused = harness.palisade_counter(prom, "palisade_requests_total", decision="deny", route="default")
    assert refused >= len(bypasses), harness.palisade_lines(prom)
    events = e.log_text().count('"reason":"request.path"')
    assert events >= len(bypasses), e.log_tail(40)


def test_raw_bytes_in_an_http1_request_line_never_reach_the_upstream(envoy):
    """Envoy's HTTP/1 parser refuses them itself; whatever answers, it is not 200."""
    import socket

    e = envoy(CONFIG, concurrency=2)
    with socket.create_connection(("127.0.0.1", e.port), timeout=5) as s:
        s.sendall(b"GET /account?q=\xff HTTP/1.1\r\nhost: x\r\n\r\n")
        head = s.recv(4096)
    assert head.startswith(b"HTTP/1.1 4"), head[:200]
