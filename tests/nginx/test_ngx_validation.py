"""Request validation on NGINX (ngx_wasm_module, 2 worker processes): the
same corpora and limits as on Envoy (tests/integration/test_validation.py).

What differs on NGINX: a body of undeclared size (chunked) is refused with
411 `body.length_required` on a route that validates bodies, since
ngx_wasm_module hands no empty body over (README, Responses); nginx does
not normalise `..` in the path before the filter, so palisade sees (and
refuses) the path-placed traversal cases Envoy resolved first.
"""

from __future__ import annotations

import harness
from test_validation import CONFIG, assert_rates, cases, chunked_post, corpus_rates  # noqa: F401  (cases: fixture)


def test_attack_corpus_is_blocked_and_benign_corpus_passes_on_nginx(nginx, upstream, cases):  # noqa: F811
    inst = nginx(CONFIG)
    rates = corpus_rates(inst, cases, "nginx")
    assert_rates(rates)
    inst.assert_healthy()


def test_limits_answer_with_their_status_and_reason_on_nginx(nginx, upstream):
    inst = nginx(
        {
            **CONFIG,
            "validation": {
                "defaults": {
                    "max_url_bytes": 256,
                    "max_body_bytes": 64,
                    "json_max_depth": 3,
                    "content_types": ["application/json", "application/x-www-form-urlencoded"],
                }
            },
        }
    )
    before = upstream.count()
    for expected, (method, path, headers, body) in [
        # nginx answers TRACE itself (405): another method palisade refuses.
        ((405, "validation.method"), ("PURGE", "/api/x", {}, None)),
        ((414, "validation.url_length"), ("GET", "/api/" + "a" * 300, {}, None)),
        ((413, "validation.body_size"), ("POST", "/api/x", {"content-type": "application/json"}, b"[" + b"1," * 40 + b"1]")),
        ((415, "validation.content_type"), ("POST", "/api/x", {"content-type": "text/xml"}, b"<a/>")),
        ((400, "validation.json_depth"), ("POST", "/api/x", {"content-type": "application/json"}, b"[[[[1]]]]")),
        ((400, "validation.control_bytes"), ("GET", "/api/x?name=a%00b", {}, None)),
        ((403, "validation.sqli"), ("GET", "/api/search?q=1%27+or+%271%27%3D%271", {}, None)),
        ((403, "validation.xss"), ("POST", "/api/x", {"content-type": "application/json"}, b'{"a": "<svg onload=alert(1)>"}')),
    ]:
        r = inst.request(method, path, headers, body)
        assert (r[0], harness.reason_of(r)) == expected, (method, path, r)
    assert upstream.count() == before, "a refused request reached the upstream"
    ok = inst.request("POST", "/api/x", {"content-type": "application/json"}, b'{"name": "O\'Hara"}')
    assert ok[0] == 200, ok

    status, body = chunked_post(inst, "/api/x", "application/json", [b"{}"])
    assert status == 411 and b"body.length_required" in body, (status, body)
    inst.assert_healthy()
