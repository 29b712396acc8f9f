"""Transport policy on NGINX (ngx_wasm_module, 2 worker processes): TLS
read from the connection (`connection.tls_version`, nginx's
`$ssl_protocol`) or from a trusted X-Forwarded-Proto, and the security
headers on the upstream's answers and palisade's own, as on Envoy
(tests/integration/test_transport.py)."""

from __future__ import annotations

import harness
import nginx_host
from test_transport import CONFIG, tls_request


def tls_server(inst_config: dict, port: int, upstream_port: int) -> str:
    """A second server block: TLS with make tls-cert's certificate, the
    same palisade configuration."""
    palisade = nginx_host.nginx_quote(harness.config_text(inst_config))
    return f"""
    server {{
        listen 127.0.0.1:{port} ssl;
        ssl_certificate {harness.TLS_DIR / "demo.crt"};
        ssl_certificate_key {harness.TLS_DIR / "demo.key"};
        location / {{
            proxy_wasm palisade {palisade};
            proxy_pass http://127.0.0.1:{upstream_port};
        }}
    }}
"""


def test_tls_is_required_where_configured_and_security_headers_are_set_on_nginx(nginx, upstream):
    tls_port = nginx_host.free_port()
    inst = nginx(CONFIG, extra_http=tls_server(CONFIG, tls_port, upstream.port))
    status, headers, body = inst.request("POST", "/login", {"content-length": "0"})
    assert (status, harness.reason_of((status, headers, body))) == (403, "transport.tls_required"), body
    assert headers.get("cache-control") == "no-store", headers
    assert headers.get("strict-transport-security") == "max-age=63072000; includeSubDomains", headers

    status, headers, body = tls_request(tls_port, "POST", "/login", {"content-length": "0"})
    assert status == 200, (status, headers, body)
    assert headers.get("cache-control") == "no-store", headers
    assert headers.get("x-content-type-options") == "nosniff", headers

    status, headers, body = inst.request("GET", "/api/items")
    assert status == 200, body
    assert headers.get("strict-transport-security", "").startswith("max-age=63072000"), headers
    inst.assert_healthy()


def test_a_trusted_forwarded_proto_decides_on_nginx(nginx, upstream):
    inst = nginx({**CONFIG, "transport": {**CONFIG["transport"], "tls_from": "x-forwarded-proto"}})
    assert inst.request("POST", "/login", {"content-length": "0", "x-forwarded-proto": "https"})[0] == 200
    r = inst.request("POST", "/login", {"content-length": "0", "x-forwarded-proto": "http"})
    assert (r[0], harness.reason_of(r)) == (403, "transport.tls_required"), r
    inst.assert_healthy()
