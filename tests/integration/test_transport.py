"""Transport policy against the real Envoy: route classes that require TLS
refuse plain HTTP (read from the connection, or from a trusted
X-Forwarded-Proto), and the configured security headers are on every
response of a route class, the upstream's and palisade's own."""

from __future__ import annotations

import http.client
import ssl

import harness

CONFIG = {
    "routes": [{"name": "login", "prefix": "/login"}, {"name": "api", "prefix": "/api"}],
    "transport": {
        "defaults": {
            "response_headers": {
                "Strict-Transport-Security": "max-age=63072000; includeSubDomains",
                "x-content-type-options": "nosniff",
            }
        },
        "routes": {"login": {"require_tls": True, "response_headers": {"cache-control": "no-store"}}},
    },
}


def tls_request(port: int, method: str, path: str, headers: dict | None = None):
    context = ssl.create_default_context(cafile=str(harness.TLS_DIR / "demo.crt"))
    conn = http.client.HTTPSConnection("localhost", port, timeout=10, context=context)
    try:
        conn.request(method, path, headers=headers or {})
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


def test_tls_is_required_where_configured_and_security_headers_are_set(envoy):
    e = envoy(CONFIG, tls=True)
    status, headers, body = e.request("POST", "/login", {"content-length": "0"})
    assert (status, harness.reason_of((status, headers, body))) == (403, "transport.tls_required"), body
    # palisade's own answer carries the route class's headers too.
    assert headers.get("cache-control") == "no-store", headers
    assert headers.get("strict-transport-security") == "max-age=63072000; includeSubDomains", headers

    status, headers, body = tls_request(e.tls_port, "POST", "/login", {"content-length": "0"})
    assert (status, body) == (200, b"ok"), (status, headers, body)
    assert headers.get("cache-control") == "no-store", headers
    assert headers.get("x-content-type-options") == "nosniff", headers

    # A route class without require_tls: plain HTTP passes, with the defaults.
    status, headers, body = e.request("GET", "/api/items")
    assert status == 200, body
    assert headers.get("strict-transport-security", "").startswith("max-age=63072000"), headers
    assert "cache-control" not in headers, headers

    # Over cleartext HTTP/2 the client writes :scheme itself: not evidence.
    status, _, body = harness.h2_request(e.port, "POST", "/login", [], b"", scheme="https")
    assert status == 403 and b"transport.tls_required" in body, (status, body)
    # Nor is a client's X-Forwarded-Proto, in the default `connection` mode.
    status, _, body = e.request("POST", "/login", {"content-length": "0", "x-forwarded-proto": "https"})
    assert status == 403, body


def test_a_trusted_forwarded_proto_decides_behind_a_tls_terminating_edge(envoy):
    config = {**CONFIG, "transport": {**CONFIG["transport"], "tls_from": "x-forwarded-proto"}}
    e = envoy(config)
    assert e.request("POST", "/login", {"content-length": "0", "x-forwarded-proto": "https"})[0] == 200
    status, _, body = e.request("POST", "/login", {"content-length": "0", "x-forwarded-proto": "http"})
    assert (status, harness.reason_of((status, {}, body))) == (403, "transport.tls_required")
    assert e.request("POST", "/login", {"content-length": "0"})[0] == 403


def test_monitor_mode_counts_plain_http_and_lets_it_through(envoy):
    config = {**CONFIG, "transport": {**CONFIG["transport"], "mode": "monitor"}}
    e = envoy(config)
    assert e.request("POST", "/login", {"content-length": "0"})[0] == 200
    stats = e.prometheus()
    assert (
        harness.palisade_counter(
            stats, "palisade_findings_total", stage="transport", reason="transport_tls_required", mode="monitor"
        )
        == 1
    ), stats
