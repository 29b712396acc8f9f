"""The global mode on NGINX: ngx_wasm_module has no gRPC calls (its
`proxy_dispatch_grpc_call` traps), so a configuration with a `global`
section is refused in `on_configure`, naming the section, and no request
reaches the upstream unchecked. The Envoy suite runs the mode itself
(tests/integration/test_global.py)."""

from __future__ import annotations

import base64
import time

import nginx_host

CONFIG = {
    "routes": [{"name": "login", "prefix": "/login"}],
    "global": {"cluster": "ratelimit", "key_secret": {"base64": base64.b64encode(b"k" * 32).decode()}},
    "rate_limits": {
        "rules": [
            {
                "name": "login-ip",
                "key": ["ip"],
                "routes": ["login"],
                "capacity": 5,
                "refill": {"tokens": 5, "every": "1m"},
                "scope": "global",
            }
        ]
    },
}


def test_a_global_section_is_refused_on_nginx(upstream, nginx_artefacts):
    inst = nginx_host.NginxInstance(CONFIG, upstream.port)
    try:
        inst.start(wait=False)
        deadline = time.monotonic() + 20
        while "ngx_wasm_module does not support" not in inst.error_log() and time.monotonic() < deadline:
            time.sleep(0.1)
        log = inst.error_log()
        assert "invalid configuration at `global`: needs gRPC calls" in log, inst.log_tail()
        assert not inst.configured_pids(), inst.log_tail()
        # nginx does not serve with a filter that failed to initialize:
        # the request gets an error or no answer, and never the upstream.
        try:
            status = inst.request("GET", "/login", timeout=3)[0]
        except OSError:
            status = None
        assert status is None or status >= 500, status
        assert upstream.count() == 0, "a request passed a refused configuration"
    finally:
        inst.stop()
    inst.cleanup()
