"""RFC 9421 request signatures and RFC 9530 Content-Digest on NGINX.

The Envoy suite's configuration (test_signatures.config(): ``payments``
covers content-digest and requires it, ``orders`` binds no body, ``uploads``
requires a digest it does not cover), signed by the independent
``http-message-signatures`` package (signing.py) with header names as clients
send them (``Signature``, ``Signature-Input``, ``Content-Digest``,
``Content-Type``). Every request has a timeout of a few seconds: a body check
that waits for an end of stream NGINX never signals fails here as a client
timeout instead of hanging the suite. What is proven:

* without body binding: a signed request is accepted, a tampered one is 401
  ``sig.invalid``, a replay 401 ``sig.replay``, and a body on such a route
  (with a length or chunked) reaches the upstream unchanged;
* with body binding: the right body is accepted (200) and reaches the
  upstream byte for byte; a tampered body is 400 ``digest.mismatch``, a
  missing digest 400 ``digest.missing``, a body over ``max_body_bytes`` 413
  ``body.too_large``, and a body to check sent chunked (no
  ``Content-Length``) 411 ``body.length_required`` on this host, right or
  wrong (palisade cannot wait for the end of a body NGINX never signals);
  none of those reach the upstream;
* body-less GETs on digest routes get what the same requests get from Envoy
  (run side by side in the test);
* ``@authority`` is the ``Host`` header the client sent, not nginx's
  ``server_name`` or listen port: a signature for ``api.example.test:8443``
  sent to nginx with that ``Host`` verifies, the same one with another
  ``Host`` is 401 ``sig.invalid``;
* a nonce used once is refused on both workers (401 ``sig.replay``).
"""

from __future__ import annotations

import re

import harness
import signing
from test_signatures import BASIC, MAX_BODY, SECRET_A, _chunks, config, expect, json_payload, signed

TIMEOUT = 10.0  # seconds per request: a hang is a failure, not a stuck suite


def send(inst, method: str, target: str, headers=None, body=None) -> harness.Response:
    return inst.request(method, target, headers, body, timeout=TIMEOUT)


# A charge: covered by a signature with its Content-Digest, which is required.
CHARGE = "/payments/charge?amount=5"


def accepted_charge(inst, size: int) -> tuple[bytes, dict[str, str]]:
    """A signed charge of a ``size``-byte JSON body, sent and accepted (200):
    the body and the signed headers."""
    body = json_payload(size)
    h = signed(inst, "POST", CHARGE, body)
    assert "Content-Digest" in h and "Signature-Input" in h
    expect(send(inst, "POST", CHARGE, h, body), 200)
    return body, h


def test_signatures_without_body_binding(nginx, upstream):
    inst = nginx(config())
    h = signed(inst, "GET", "/orders?page=2", headers=None, components=BASIC)
    expect(send(inst, "GET", "/orders?page=2", h), 200)
    expect(send(inst, "GET", "/orders?page=2", h), 401, "sig.replay")
    h = signed(inst, "GET", "/orders?page=3", headers=None, components=BASIC)
    expect(send(inst, "DELETE", "/orders?page=3", h), 401, "sig.invalid")
    expect(send(inst, "GET", "/orders?page=4", h), 401, "sig.invalid")
    expect(send(inst, "GET", "/orders"), 401, "sig.missing")

    # A body on a route that binds none is not buffered by palisade and reaches the upstream.
    body = json_payload(MAX_BODY * 2)
    h = signed(inst, "POST", "/orders/bulk", body, headers={"Content-Type": "application/json"}, components=BASIC)
    expect(send(inst, "POST", "/orders/bulk", h, body), 200)
    assert upstream.last("/orders/bulk").body == body, "the body was altered on the way"
    # Chunked too (a body palisade does not check needs no length).
    h = signed(inst, "POST", "/orders/bulk", body, headers={"Content-Type": "application/json"}, components=BASIC)
    expect(send(inst, "POST", "/orders/bulk", h, _chunks(body, 4)), 200)
    assert upstream.last("/orders/bulk").body == body, "the chunked body was altered on the way"
    inst.assert_healthy()


def test_signatures_with_body_binding(nginx, upstream):
    inst = nginx(config())
    target = CHARGE
    body, h = accepted_charge(inst, 1024)
    got = upstream.last("/payments/charge")
    assert got.body == body, "the signed body was altered on the way"
    assert got.values("content-digest") == [h["Content-Digest"]]

    before = upstream.count()
    # The body changed, the digest left as signed: the signature holds, the digest does not.
    evil = body.replace(b'"amount": 1250', b'"amount": 9999')
    assert evil != body and len(evil) == len(body)
    expect(send(inst, "POST", target, signed(inst, "POST", target, body), evil), 400, "digest.mismatch")
    # Sent chunked (no Content-Length), a body to check is refused on this
    # host, right or wrong: 411 body.length_required, never a hang.
    for sent in (evil, body):
        h = signed(inst, "POST", "/payments/charge", body)
        expect(send(inst, "POST", "/payments/charge", h, _chunks(sent, 6)), 411, "body.length_required")
    # The digest recomputed for the new body: the signature fails.
    h = signed(inst, "POST", target, body)
    h["Content-Digest"] = signing.content_digest(evil)
    expect(send(inst, "POST", target, h, evil), 401, "sig.invalid")
    # Too large to check.
    big = json_payload(MAX_BODY + 1)
    expect(send(inst, "POST", "/payments/charge", signed(inst, "POST", "/payments/charge", big), big), 413,
           "body.too_large")

    # uploads: a digest required and checked, not covered by the signature.
    up = json_payload(512)
    h = signed(inst, "POST", "/uploads/doc", up, components=BASIC)
    expect(send(inst, "POST", "/uploads/doc", h, up), 400, "digest.missing")
    h = signed(inst, "POST", "/uploads/doc", up, components=BASIC)
    h["Content-Digest"] = signing.content_digest(up + b" ")
    expect(send(inst, "POST", "/uploads/doc", h, up), 400, "digest.mismatch")
    assert upstream.count() == before, "a refused body reached the upstream"

    h = signed(inst, "POST", "/uploads/doc", up, components=BASIC)
    h["Content-Digest"] = signing.content_digest(up, "sha-512")
    expect(send(inst, "POST", "/uploads/doc", h, up), 200)
    assert upstream.last("/uploads/doc").body == up
    inst.assert_healthy()


def _bodyless_gets(target_host) -> list[tuple[str, str, dict[str, str]]]:
    """(what, target, headers) of body-less GETs on digest routes, signed for ``target_host``."""
    uploads_empty = signed(target_host, "GET", "/uploads/list", headers=None, components=BASIC)
    uploads_empty["Content-Digest"] = signing.content_digest(b"")
    return [
        ("payments GET, digest of the empty body covered", "/payments/history?limit=20",
         signed(target_host, "GET", "/payments/history?limit=20")),
        ("uploads GET without Content-Digest", "/uploads/list",
         signed(target_host, "GET", "/uploads/list", headers=None, components=BASIC)),
        ("uploads GET with the empty body's digest", "/uploads/list", uploads_empty),
    ]


def test_bodyless_get_on_a_digest_route_behaves_as_on_envoy(nginx, tmp_path):
    inst = nginx(config())
    envoy = harness.EnvoyInstance(config(), concurrency=2, workdir=tmp_path / "envoy")
    try:
        envoy.start()
        on_envoy = {what: _outcome(envoy.request("GET", t, h)) for what, t, h in _bodyless_gets(envoy)}
    finally:
        envoy.stop()
    on_nginx = {what: _outcome(send(inst, "GET", t, h)) for what, t, h in _bodyless_gets(inst)}
    assert on_envoy["payments GET, digest of the empty body covered"] == (200, None), on_envoy
    print(f"body-less GETs on digest routes, nginx and envoy: {on_nginx}")
    assert on_nginx == on_envoy, f"nginx {on_nginx}\nenvoy {on_envoy}"
    inst.assert_healthy()


def _outcome(resp: harness.Response) -> tuple[int, str | None]:
    return resp[0], harness.reason_of(resp)


def test_authority_is_the_host_header(nginx):
    inst = nginx(config(), server_name="palisade.internal")
    host = "api.example.test:8443"
    url = f"http://{host}/orders?page=1"
    h = signing.sign("GET", url, None, None, key_id="client-a", secret=SECRET_A, components=BASIC)
    expect(send(inst, "GET", "/orders?page=1", {**h, "Host": host}), 200)
    h = signing.sign("GET", url, None, None, key_id="client-a", secret=SECRET_A, components=BASIC)
    expect(send(inst, "GET", "/orders?page=1", {**h, "Host": "evil.example:8443"}), 401, "sig.invalid")
    # Nothing special about the host name: the listen address as the client
    # wrote it (no Host override, http.client sends 127.0.0.1:<port>).
    body = json_payload(256)
    h = signed(inst, "POST", "/payments/charge", body)
    expect(send(inst, "POST", "/payments/charge", h, body), 200)
    # And the server_name with nginx's port is not what the client signed for.
    h = signing.sign("GET", f"http://palisade.internal:{inst.port}/orders?page=2", None, None,
                     key_id="client-a", secret=SECRET_A, components=BASIC)
    expect(send(inst, "GET", "/orders?page=2", {**h, "Host": host}), 401, "sig.invalid")
    inst.assert_healthy()


def test_replayed_nonce_is_refused_on_both_workers(nginx, upstream):
    inst = nginx(config())
    body, h = accepted_charge(inst, 512)
    for _ in range(12):
        expect(send(inst, "POST", CHARGE, h, body), 401, "sig.replay")
    refused_by = set(inst.wait_served("/payments/charge", 12, 401))
    assert len(refused_by) == 2, f"replays refused by workers {refused_by}: expected both"
    nonce = re.search(r'nonce="([^"]*)"', h["Signature-Input"]).group(1)
    h2 = signed(inst, "POST", "/payments/other", body, nonce=nonce)
    expect(send(inst, "POST", "/payments/other", h2, body), 401, "sig.replay")
    assert len(upstream.received) == 1, "a replay reached the upstream"
    inst.assert_healthy()
