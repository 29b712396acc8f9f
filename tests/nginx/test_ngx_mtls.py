"""Mutual-TLS device identity on NGINX: ngx_wasm_module does not implement
the connection properties palisade reads the client certificate from
(`connection.uri_san_peer_certificate`, `connection.subject_peer_certificate`,
...: "not yet implemented"), so a configuration with an `mtls` section is
refused in `on_configure`, naming the section and the host, and no request
reaches the upstream unchecked. The Envoy suite runs the section itself
(tests/integration/test_mtls.py)."""

from __future__ import annotations

import time

import nginx_host

CONFIG = {
    "routes": [{"name": "devices", "prefix": "/devices"}],
    "mtls": {
        "mode": "enforce",
        "identity": "uri_san",
        "defaults": {"required": False, "identities": []},
        "routes": {"devices": {"required": True, "identities": ["spiffe://palisade.demo/device/*"]}},
    },
}


def test_an_mtls_section_is_refused_on_nginx(upstream, nginx_artefacts):
    inst = nginx_host.NginxInstance(CONFIG, upstream.port)
    try:
        inst.start(wait=False)
        deadline = time.monotonic() + 20
        while "invalid configuration at `mtls`" not in inst.error_log() and time.monotonic() < deadline:
            time.sleep(0.1)
        log = inst.error_log()
        refusals = [line for line in log.splitlines() if "invalid configuration at `mtls`" in line]
        assert refusals, inst.log_tail()
        assert any("ngx_wasm_module" in line for line in refusals), "\n".join(refusals)
        assert not inst.configured_pids(), inst.log_tail()
        # nginx does not serve with a filter that failed to initialize: the
        # requests get an error or no answer, and never the upstream - not on
        # the route that requires a certificate, nor on any other.
        for path in ("/devices/status", "/other"):
            try:
                status = inst.request("GET", path, timeout=3)[0]
            except OSError:
                status = None
            assert status is None or status >= 500, (path, status)
        assert upstream.count() == 0, "a request passed a refused configuration"
    finally:
        inst.stop()
    inst.cleanup()
