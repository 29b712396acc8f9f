"""HTTP/2 to NGINX: body checks where the headers do not say whether a body follows.

ngx_wasm_module never signals end of stream with the request headers and
hands the filter no empty body, so palisade must decide at the headers
whether a body it has to check will come. Over HTTP/2 a request without
``content-length`` may carry DATA frames or none: palisade cannot tell, and
checking it as bodiless would let a body through unchecked (a digest never
compared, a refresh token never looked at). Such a request is refused with
411 ``body.length_required``; with ``content-length`` the body is checked as
over HTTP/1.1. Requests on routes without a body check pass either way.
The server listens with ``http2 on`` (cleartext, prior knowledge); the
requests go out with the h2 library (harness.h2_request).
"""

from __future__ import annotations

import harness
from test_signatures import BASIC, config, expect, json_payload, signed

TIMEOUT = 10.0  # a hang is a failure, not a stuck suite


def h2(inst, method: str, path: str, headers: dict[str, str], body: bytes = b"") -> harness.Response:
    return harness.h2_request(
        inst.port, method, path, list(headers.items()), body, authority=f"127.0.0.1:{inst.port}", timeout=TIMEOUT
    )


def signed_h2(inst, path: str, body: bytes, *, length: bool, components: list[str] | None = None) -> dict[str, str]:
    """A signed POST's headers, with ``content-length`` (not a covered component) when asked."""
    headers = {"content-type": "application/json"}
    extra = {} if components is None else {"components": components}
    headers = signed(inst, "POST", path, body, headers, **extra)
    if length:
        headers["content-length"] = str(len(body))
    return headers


def test_a_body_to_check_needs_a_length_over_http2(nginx, upstream):
    inst = nginx(config(), http2=True)
    body = json_payload(256)

    # With content-length: checked as over HTTP/1.1.
    h = signed_h2(inst, "/payments", body, length=True)
    expect(h2(inst, "POST", "/payments", h, body), 200)
    assert upstream.last("/payments").body == body, "the checked body was altered on the way"
    h = signed_h2(inst, "/payments", body, length=True)
    tampered = body.replace(b"1", b"9", 1)
    assert tampered != body
    expect(h2(inst, "POST", "/payments", h, tampered), 400, "digest.mismatch")

    # Without it, the host cannot say whether DATA frames follow: refused,
    # with or without a body, and nothing reaches the upstream. The last one
    # is the attack: signed over an empty body's digest, a body in DATA
    # frames, which a check of the empty body would let through unchecked.
    before = upstream.count()
    for signed_over, sent in ((body, body), (b"", b""), (b"", body)):
        h = signed_h2(inst, "/payments", signed_over, length=False)
        doc = expect(h2(inst, "POST", "/payments", h, sent), 411, "body.length_required")
        assert doc and doc["error"] == "length_required", doc
    assert upstream.count() == before, "a request whose body was not checked reached the upstream"

    # Routes without a body check take HTTP/2 bodies without a length.
    h = signed_h2(inst, "/orders/bulk", body, length=False, components=BASIC)
    expect(h2(inst, "POST", "/orders/bulk", h, body), 200)
    assert upstream.last("/orders/bulk").body == body
