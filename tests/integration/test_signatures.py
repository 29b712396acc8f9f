"""RFC 9421 request signatures and RFC 9530 Content-Digest, against a real Envoy.

Every signature here is made by the independent PyPI package
``http-message-signatures`` (through ``signing.py``), never by palisade's own
code, and every Content-Digest by :mod:`hashlib`: what palisade accepts is what
a real API client sends.

Route classes of the main configuration:

* ``payments``: the full policy of the README example: method, authority,
  path, query, content-digest and content-type covered, nonce required,
  replays refused, Content-Digest required and checked.
* ``orders``: method, authority, path and query; no nonce required, replays
  refused (a nonce-less signature is accepted once).
* ``uploads``: method, authority, path and query; Content-Digest required and
  checked although the signature does not cover it.
* ``public``: no policy, nothing checked.

The body checks rely on the harness setting the wasm filter's
``allow_on_headers_stop_iteration`` (see harness.py).
"""

from __future__ import annotations

import base64
import collections
import hashlib
import json
import re
import shutil
import subprocess
import threading
import time
import uuid

import pytest

import harness
import signing
from harness import json_body, palisade_counter, palisade_lines

# Fixed-length random secrets, fresh per test run (>= 32 bytes: palisade's minimum).
SECRET_A = hashlib.sha256(b"client-a" + uuid.uuid4().bytes).digest() + b"-a-extra"
SECRET_A2 = hashlib.sha256(b"client-a2" + uuid.uuid4().bytes).digest()  # second secret under the same id
SECRET_B = hashlib.sha256(b"client-b" + uuid.uuid4().bytes).digest() + uuid.uuid4().bytes


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


FULL = list(signing.DEFAULT_COMPONENTS)  # @method @authority @path @query content-digest content-type
BASIC = ["@method", "@authority", "@path", "@query"]
MAX_BODY = 4096

ROUTES = [
    {"name": "payments", "prefix": "/payments"},
    {"name": "orders", "prefix": "/orders"},
    {"name": "uploads", "prefix": "/uploads"},
    {"name": "public", "prefix": "/public"},
]

KEYS = [
    {"id": "client-a", "secret": {"base64": b64(SECRET_A)}},
    {"id": "client-a", "secret": {"base64": b64(SECRET_A2)}},
    {"id": "client-b", "secret": {"base64": b64(SECRET_B)}},
]


def config(mode: str | None = "enforce", top_mode: str = "enforce", rate_limits: dict | None = None) -> dict:
    sigs: dict = {
        "keys": KEYS,
        "max_body_bytes": MAX_BODY,
        "replay_slots": 4096,
        "policies": [
            {
                "routes": ["payments"],
                "components": FULL,
                "max_age": "5m",
                "clock_skew": "30s",
                "require_nonce": True,
                "replay": True,
                "require_digest": True,
            },
            {"routes": ["orders"], "components": BASIC, "require_nonce": False, "replay": True},
            {"routes": ["uploads"], "components": BASIC, "require_digest": True},
        ],
    }
    if mode is not None:
        sigs["mode"] = mode
    cfg = {"version": 1, "mode": top_mode, "routes": ROUTES, "signatures": sigs}
    if rate_limits is not None:
        cfg["rate_limits"] = rate_limits
    return cfg


JSON = {"Content-Type": "application/json"}


def json_payload(size: int = 1024) -> bytes:
    """A JSON object of exactly ``size`` bytes."""
    base = {"amount": 1250, "currency": "EUR", "reference": str(uuid.uuid4()), "pad": ""}
    empty = len(json.dumps(base).encode())
    assert size >= empty, size
    base["pad"] = "x" * (size - empty)
    out = json.dumps(base).encode()
    assert len(out) == size
    return out


def signed(
    e: harness.EnvoyInstance,
    method: str,
    target: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = JSON,
    *,
    key_id: str = "client-a",
    secret: bytes = SECRET_A,
    components: list[str] = FULL,
    **kwargs,
) -> dict[str, str]:
    """Headers signing ``method target`` as sent to this Envoy (authority 127.0.0.1:<port>)."""
    return signing.sign(
        method, e.base_url + target, headers, body, key_id=key_id, secret=secret, components=components, **kwargs
    )


def expect(resp: harness.Response, status: int, reason: str | None = None) -> dict | None:
    st, headers, body = resp
    assert st == status, f"expected {status} {reason or ''}, got {st}: {body[:300]!r}"
    if reason is None:
        return None
    doc = json_body(body)
    assert {"error", "reason", "request_id"} <= set(doc), doc
    assert doc["reason"] == reason, f"expected reason {reason}, got {doc}"
    assert headers.get("content-type", "").startswith("application/json"), headers
    return doc


def without(headers: dict[str, str], *names: str) -> dict[str, str]:
    drop = {n.lower() for n in names}
    return {k: v for k, v in headers.items() if k.lower() not in drop}


def replaced(headers: dict[str, str], name: str, value: str) -> dict[str, str]:
    out = without(headers, name)
    out[name] = value
    return out


# --------------------------------------------------------------------------
# Accepted requests
# --------------------------------------------------------------------------
def test_signed_requests_are_accepted(envoy):
    e = envoy(config())

    # GET with a query, every component of the payments policy covered (the
    # digest is the one of the empty body).
    h = signed(e, "GET", "/payments/history?from=2024-01-01&limit=20")
    expect(e.request("GET", "/payments/history?from=2024-01-01&limit=20", h), 200)

    # POST with a 1 KiB JSON body.
    body = json_payload(1024)
    h = signed(e, "POST", "/payments/charge?idempotent=1", body)
    assert re.fullmatch(r"sha-256=:[A-Za-z0-9+/]{43}=:", h["Content-Digest"]), h["Content-Digest"]
    expect(e.request("POST", "/payments/charge?idempotent=1", h, body), 200)

    # sha-512 Content-Digest.
    body = json_payload(700)
    h = signed(e, "POST", "/payments/charge", body, digest="sha-512")
    assert h["Content-Digest"].startswith("sha-512=:"), h
    expect(e.request("POST", "/payments/charge", h, body), 200)

    # Both algorithms listed, both right.
    body = json_payload(300)
    both = f"{signing.content_digest(body, 'sha-256')}, {signing.content_digest(body, 'sha-512')}"
    h = signed(e, "PUT", "/payments/charge/7", body, {**JSON, "Content-Digest": both})
    expect(e.request("PUT", "/payments/charge/7", h, body), 200)

    # Without the optional alg parameter.
    h = signed(e, "GET", "/payments", include_alg=False)
    assert "alg=" not in h["Signature-Input"], h
    expect(e.request("GET", "/payments", h), 200)

    # A policy with the basic components: GET without body or content-type.
    h = signed(e, "GET", "/orders?page=2", headers=None, components=BASIC)
    expect(e.request("GET", "/orders?page=2", h), 200)

    # Created a while ago (within max_age) and slightly ahead (within skew).
    for created in (int(time.time()) - 240, int(time.time()) + 20):
        h = signed(e, "GET", "/payments/history", created=created)
        expect(e.request("GET", "/payments/history", h), 200)

    # Routes without a policy are not checked.
    expect(e.request("GET", "/public/status"), 200)
    expect(e.request("POST", "/public/form", {"Content-Type": "text/plain"}, b"x" * (MAX_BODY * 2)), 200)


def test_body_at_the_size_limit_is_checked_and_accepted(envoy):
    e = envoy(config())
    body = json_payload(MAX_BODY)
    h = signed(e, "POST", "/payments/charge", body)
    expect(e.request("POST", "/payments/charge", h, body), 200)


# --------------------------------------------------------------------------
# Tampering
# --------------------------------------------------------------------------
def test_tampered_requests_are_rejected(envoy):
    e = envoy(config())
    body = json_payload(1024)
    target = "/payments/charge?amount=5"

    def fresh() -> dict[str, str]:
        return signed(e, "POST", target, body)

    # Control: the untampered request passes.
    expect(e.request("POST", target, fresh(), body), 200)

    # Method.
    expect(e.request("PUT", target, fresh(), body), 401, "sig.invalid")
    # Path.
    expect(e.request("POST", "/payments/refund?amount=5", fresh(), body), 401, "sig.invalid")
    # Query.
    expect(e.request("POST", "/payments/charge?amount=500", fresh(), body), 401, "sig.invalid")
    expect(e.request("POST", "/payments/charge", fresh(), body), 401, "sig.invalid")
    # Authority.
    expect(e.request("POST", target, {**fresh(), "Host": f"evil.example:{e.port}"}, body), 401, "sig.invalid")
    # A covered header.
    expect(e.request("POST", target, replaced(fresh(), "Content-Type", "text/plain"), body), 401, "sig.invalid")
    # The body, digest left as signed: the signature holds, the digest does not.
    evil = body.replace(b'"amount": 1250', b'"amount": 9999')
    assert evil != body and len(evil) == len(body)
    expect(e.request("POST", target, fresh(), evil), 400, "digest.mismatch")
    # The body with a recomputed digest: the digest holds, the signature does not.
    h = replaced(fresh(), "Content-Digest", signing.content_digest(evil))
    expect(e.request("POST", target, h, evil), 401, "sig.invalid")
    # The signature itself.
    h = fresh()
    mac = base64.b64decode(h["Signature"].split(":")[1])
    flipped = bytes([mac[0] ^ 1]) + mac[1:]
    expect(e.request("POST", target, replaced(h, "Signature", f"sig1=:{b64(flipped)}:"), body), 401, "sig.invalid")
    # A signed parameter (the nonce) changed after signing.
    h = fresh()
    h = replaced(h, "Signature-Input", re.sub(r'nonce="[^"]*"', 'nonce="other"', h["Signature-Input"]))
    expect(e.request("POST", target, h, body), 401, "sig.invalid")
    # Signed by client-b's secret but claiming client-a.
    expect(e.request("POST", target, signed(e, "POST", target, body, secret=SECRET_B), body), 401, "sig.invalid")


# --------------------------------------------------------------------------
# Time window, keys, components, missing signatures
# --------------------------------------------------------------------------
def test_expired_and_future_signatures(envoy):
    e = envoy(config())
    now = int(time.time())
    h = signed(e, "GET", "/payments", created=now - 600)
    expect(e.request("GET", "/payments", h), 401, "sig.expired")
    h = signed(e, "GET", "/payments", created=now + 300)
    expect(e.request("GET", "/payments", h), 401, "sig.future")
    # An `expires` in the past.
    h = signed(e, "GET", "/payments", created=now - 120, expires=now - 60)
    expect(e.request("GET", "/payments", h), 401, "sig.expired")


def test_unknown_key_and_missing_components(envoy):
    e = envoy(config())
    body = json_payload(200)
    h = signed(e, "POST", "/payments/charge", body, key_id="client-z", secret=SECRET_A)
    expect(e.request("POST", "/payments/charge", h, body), 401, "sig.unknown_key")

    # Signed without content-type (which the policy requires).
    no_ct = [c for c in FULL if c != "content-type"]
    h = signed(e, "POST", "/payments/charge", body, components=no_ct)
    expect(e.request("POST", "/payments/charge", h, body), 401, "sig.components")
    # Signed without content-digest.
    no_cd = [c for c in FULL if c != "content-digest"]
    h = signed(e, "POST", "/payments/charge", body, components=no_cd)
    assert "Content-Digest" not in h
    h["Content-Digest"] = signing.content_digest(body)
    expect(e.request("POST", "/payments/charge", h, body), 401, "sig.components")
    # The policy needs a nonce.
    h = signed(e, "POST", "/payments/charge", body, nonce=None)
    expect(e.request("POST", "/payments/charge", h, body), 401, "sig.malformed")


@pytest.mark.parametrize(
    "drop",
    [("Signature", "Signature-Input"), ("Signature",), ("Signature-Input",)],
    ids=["both", "signature", "signature-input"],
)
def test_missing_signature_headers(envoy, drop):
    e = envoy(config())
    body = json_payload(100)
    h = without(signed(e, "POST", "/payments/charge", body), *drop)
    expect(e.request("POST", "/payments/charge", h, body), 401, "sig.missing")
    # Nothing at all.
    expect(e.request("GET", "/payments"), 401, "sig.missing")


def test_malformed_signature_fields(envoy):
    e = envoy(config())
    h = signed(e, "GET", "/payments")
    for name, value in [
        ("Signature", "sig1=not-a-byte-sequence"),
        ("Signature", "sig1=:AAAA:"),
        ("Signature-Input", 'sig1=("@method" "@authority";keyid="client-a"'),
    ]:
        expect(e.request("GET", "/payments", replaced(h, name, value)), 401, "sig.malformed")


def test_key_rotation(envoy):
    e = envoy(config())
    for key_id, secret in [("client-a", SECRET_A), ("client-a", SECRET_A2), ("client-b", SECRET_B)]:
        body = json_payload(256)
        h = signed(e, "POST", "/payments/charge", body, key_id=key_id, secret=secret)
        expect(e.request("POST", "/payments/charge", h, body), 200)
    # client-b's id with client-a's secret: one ring per id.
    h = signed(e, "GET", "/payments", key_id="client-b", secret=SECRET_A2)
    expect(e.request("GET", "/payments", h), 401, "sig.invalid")


# --------------------------------------------------------------------------
# Content-Digest
# --------------------------------------------------------------------------
def test_content_digest_checks(envoy):
    e = envoy(config())
    body = json_payload(512)

    # uploads: digest required, checked, but not covered by the signature.
    h = signed(e, "POST", "/uploads/doc", body, components=BASIC)
    assert "Content-Digest" not in h
    expect(e.request("POST", "/uploads/doc", h, body), 400, "digest.missing")

    h = signed(e, "POST", "/uploads/doc", body, components=BASIC)
    expect(e.request("POST", "/uploads/doc", {**h, "Content-Digest": signing.content_digest(body)}, body), 200)
    h = signed(e, "POST", "/uploads/doc", body, components=BASIC)
    cd512 = signing.content_digest(body, "sha-512")
    expect(e.request("POST", "/uploads/doc", {**h, "Content-Digest": cd512}, body), 200)

    h = signed(e, "POST", "/uploads/doc", body, components=BASIC)
    wrong = signing.content_digest(body + b" ")
    expect(e.request("POST", "/uploads/doc", {**h, "Content-Digest": wrong}, body), 400, "digest.mismatch")
    # The body-phase event names the verified signer.
    log = e.wait_for_log('"reason":"digest.mismatch"')
    events = [line for line in log.splitlines() if '"reason":"digest.mismatch"' in line]
    assert events and all('"key_id":"client-a"' in line for line in events), events
    # One right, one wrong: every listed algorithm must match.
    h = signed(e, "POST", "/uploads/doc", body, components=BASIC)
    mixed = f"{signing.content_digest(body, 'sha-256')}, {signing.content_digest(body + b'!', 'sha-512')}"
    expect(e.request("POST", "/uploads/doc", {**h, "Content-Digest": mixed}, body), 400, "digest.mismatch")

    md5 = base64.b64encode(hashlib.md5(body).digest()).decode()
    h = signed(e, "POST", "/uploads/doc", body, components=BASIC)
    expect(e.request("POST", "/uploads/doc", {**h, "Content-Digest": f"md5=:{md5}:"}, body), 400, "digest.unsupported")
    h = signed(e, "POST", "/uploads/doc", body, components=BASIC)
    bad = "sha-256=" + hashlib.sha256(body).hexdigest()
    expect(e.request("POST", "/uploads/doc", {**h, "Content-Digest": bad}, body), 400, "digest.malformed")

    # payments covers content-digest: a missing digest fails the signature first.
    h = signed(e, "POST", "/payments/charge", body)
    expect(e.request("POST", "/payments/charge", without(h, "Content-Digest"), body), 401, "sig.components")


def _chunks(body: bytes, n: int, pause: float = 0.02):
    """The body as ``n`` chunks with pauses: Envoy hands it to the filter in
    several calls (http.client sends an iterable with chunked encoding)."""
    step = -(-len(body) // n)
    for i in range(0, len(body), step):
        yield body[i : i + step]
        time.sleep(pause)


def test_streamed_chunked_body_is_checked_whole(envoy):
    e = envoy(config())
    body = json_payload(3000)
    h = signed(e, "POST", "/payments/charge", body)
    expect(e.request("POST", "/payments/charge", h, _chunks(body, 6)), 200)
    evil = body.replace(b'"amount": 1250', b'"amount": 1251')
    h = signed(e, "POST", "/payments/charge", body)
    expect(e.request("POST", "/payments/charge", h, _chunks(evil, 6)), 400, "digest.mismatch")
    big = json_payload(MAX_BODY + 500)
    h = signed(e, "POST", "/payments/charge", big)
    expect(e.request("POST", "/payments/charge", h, _chunks(big, 5)), 413, "body.too_large")


def _curl_h2(e: harness.EnvoyInstance, method: str, target: str, headers: dict[str, str], body: bytes) -> tuple:
    """One request over HTTP/2 cleartext (prior knowledge) with curl: (status, http version, body)."""
    cmd = ["curl", "-sS", "--http2-prior-knowledge", "-X", method, e.base_url + target]
    cmd += ["--data-binary", "@-"] if body else []
    cmd += ["-o", "-", "-w", "\n%{http_code} %{http_version}"]
    for name, value in headers.items():
        cmd += ["-H", f"{name}: {value}"]
    proc = subprocess.run(cmd, input=body or None, capture_output=True, timeout=20)
    assert proc.returncode == 0, (target, len(body), proc.stderr, proc.stdout[-300:])
    out, _, tail = proc.stdout.rpartition(b"\n")
    status, version = tail.decode().split()
    return int(status), version, out


def test_http2_bodies_are_checked(envoy):
    """HTTP/2 (h2c) through curl: the body arrives in DATA frames.

    Only answers given after the whole request body are checked here: with an
    answer sent while the client is still uploading (a 401 decided on the
    headers, a 413 announced by content-length, or even Envoy's own
    direct_response), Envoy ends the stream with RST_STREAM and curl 7.88
    then often reports error 92 instead of the response.
    """
    if shutil.which("curl") is None or "HTTP2" not in subprocess.run(
        ["curl", "-V"], capture_output=True, text=True
    ).stdout:
        pytest.skip("needs curl with HTTP/2 support (the Python client here speaks HTTP/1.1 only)")
    e = envoy(config())
    body = json_payload(2000)
    h = signed(e, "POST", "/payments/charge", body)
    assert _curl_h2(e, "POST", "/payments/charge", h, body) == (200, "2", b"ok")
    h = signed(e, "POST", "/payments/charge", body, digest="sha-512")
    assert _curl_h2(e, "POST", "/payments/charge", h, body) == (200, "2", b"ok")
    h = signed(e, "POST", "/payments/charge", body)
    status, version, out = _curl_h2(e, "POST", "/payments/charge", h, body[:-1] + b" ")
    assert (status, version, json_body(out)["reason"]) == (400, "2", "digest.mismatch")
    # A replay of a body-less request, over HTTP/2.
    h = signed(e, "GET", "/payments/history")
    assert _curl_h2(e, "GET", "/payments/history", h, b"") == (200, "2", b"ok")
    status, version, out = _curl_h2(e, "GET", "/payments/history", h, b"")
    assert (status, version, json_body(out)["reason"]) == (401, "2", "sig.replay")


def test_body_over_max_body_bytes_is_413(envoy):
    e = envoy(config())
    body = json_payload(MAX_BODY + 1)
    h = signed(e, "POST", "/payments/charge", body)
    expect(e.request("POST", "/payments/charge", h, body), 413, "body.too_large")
    body = json_payload(MAX_BODY * 4)
    h = signed(e, "POST", "/uploads/big", body, components=BASIC)
    h["Content-Digest"] = signing.content_digest(body)
    expect(e.request("POST", "/uploads/big", h, body), 413, "body.too_large")
    # A signed route that checks no digest does not buffer, so no limit.
    h = signed(e, "POST", "/orders/bulk", body, headers=None, components=BASIC)
    expect(e.request("POST", "/orders/bulk", h, body), 200)


# --------------------------------------------------------------------------
# Replays
# --------------------------------------------------------------------------
def _cx_per_worker(e: harness.EnvoyInstance) -> collections.Counter:
    return collections.Counter(e.workers_with_connections())


def _send_and_locate(e: harness.EnvoyInstance, method, target, headers, body=None):
    """One request on a fresh connection; returns (response, worker index that accepted it)."""
    before = _cx_per_worker(e)
    resp = e.request(method, target, headers, body)
    after = _cx_per_worker(e)
    diff = after - before
    assert sum(diff.values()) == 1, f"expected one new connection, got {dict(diff)}"
    return resp, next(iter(diff))


def test_replayed_nonce_is_refused_on_other_workers(envoy):
    e = envoy(config(), concurrency=4)
    body = json_payload(1024)
    target = "/payments/charge?amount=5"
    h = signed(e, "POST", target, body)

    resp, first_worker = _send_and_locate(e, "POST", target, h, body)
    expect(resp, 200)

    replay_workers = []
    for _ in range(12):
        resp, worker = _send_and_locate(e, "POST", target, h, body)
        expect(resp, 401, "sig.replay")
        replay_workers.append(worker)
    workers = e.workers_with_connections()
    assert len(workers) >= 2, f"all connections on one worker: {workers}"
    assert any(w != first_worker for w in replay_workers), (
        f"no replay reached a worker other than the first ({first_worker}): {replay_workers}"
    )
    print(f"first request on worker {first_worker}; replays on workers {replay_workers}")

    # The same nonce under a new signature (other path) is still a replay.
    nonce = re.search(r'nonce="([^"]*)"', h["Signature-Input"]).group(1)
    h2 = signed(e, "POST", "/payments/other", body, nonce=nonce)
    expect(e.request("POST", "/payments/other", h2, body), 401, "sig.replay")
    # A fresh nonce for the same request is fine.
    expect(e.request("POST", target, signed(e, "POST", target, body), body), 200)


def test_concurrent_copies_of_one_signature_pass_once(envoy):
    e = envoy(config(), concurrency=4)
    body = json_payload(256)
    target = "/payments/charge"
    h = signed(e, "POST", target, body)
    n = 24
    barrier = threading.Barrier(n, timeout=30)
    results: list = [None] * n

    def worker(i: int) -> None:
        try:
            barrier.wait()
            results[i] = e.request("POST", target, h, body)
        except Exception as exc:  # noqa: BLE001 - reported below
            results[i] = exc

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    errors = [r for r in results if not isinstance(r, tuple)]
    assert not errors, errors[:3]
    outcome = collections.Counter((r[0], harness.reason_of(r)) for r in results)
    assert outcome == {(200, None): 1, (401, "sig.replay"): n - 1}, dict(outcome)
    assert len(e.workers_with_connections()) >= 2, e.workers_with_connections()


def test_identical_signature_without_nonce_is_replay(envoy):
    e = envoy(config(), concurrency=4)
    h = signed(e, "GET", "/orders?page=1", headers=None, components=BASIC, nonce=None)
    assert "nonce" not in h["Signature-Input"]
    expect(e.request("GET", "/orders?page=1", h), 200)
    for _ in range(4):
        expect(e.request("GET", "/orders?page=1", h), 401, "sig.replay")
    # Another request (its own signature) without nonce is accepted once.
    h2 = signed(e, "GET", "/orders?page=2", headers=None, components=BASIC, nonce=None)
    expect(e.request("GET", "/orders?page=2", h2), 200)
    expect(e.request("GET", "/orders?page=2", h2), 401, "sig.replay")


def test_full_replay_table_refuses_rather_than_forgets(envoy):
    cfg = config()
    cfg["signatures"]["replay_slots"] = 16  # the minimum: 4 pages of 4 slots
    e = envoy(cfg)
    accepted: list[tuple[str, dict[str, str]]] = []
    outcome = collections.Counter()
    for i in range(40):
        h = signed(e, "GET", f"/payments/{i}")
        resp = e.request("GET", f"/payments/{i}", h)
        outcome[(resp[0], harness.reason_of(resp))] += 1
        if resp[0] == 200:
            accepted.append((f"/payments/{i}", h))
    assert set(outcome) <= {(200, None), (503, "sig.replay_capacity")}, dict(outcome)
    assert 1 <= outcome[(200, None)] <= 16, dict(outcome)
    assert outcome[(503, "sig.replay_capacity")] >= 24, dict(outcome)
    # Nothing accepted was forgotten to make room.
    for target, h in accepted:
        expect(e.request("GET", target, h), 401, "sig.replay")


def test_rejected_request_does_not_burn_the_nonce(envoy):
    """A forgery carrying a captured nonce must not lock the real request out."""
    e = envoy(config())
    body = json_payload(128)
    h = signed(e, "POST", "/payments/charge", body)
    forged = replaced(h, "Signature", f"sig1=:{b64(bytes(32))}:")
    expect(e.request("POST", "/payments/charge", forged, body), 401, "sig.invalid")
    expect(e.request("POST", "/payments/charge", h, body), 200)


# --------------------------------------------------------------------------
# Monitor mode
# --------------------------------------------------------------------------
@pytest.mark.parametrize("where", ["signatures.mode", "top-level mode"])
def test_monitor_mode_allows_and_counts(envoy, where):
    cfg = config(mode="monitor") if where == "signatures.mode" else config(mode=None, top_mode="monitor")
    e = envoy(cfg)
    body = json_payload(256)
    prom0 = e.prometheus()

    def count(reason: str, prom: str) -> float:
        return palisade_counter(prom, "palisade_findings_total", reason=reason, mode="monitor")

    expect(e.request("POST", "/payments/charge", JSON, body), 200)  # sig.missing
    h = signed(e, "POST", "/payments/charge", body)
    expect(e.request("PUT", "/payments/charge", h, body), 200)  # sig.invalid
    h = signed(e, "POST", "/payments/charge", body)
    expect(e.request("POST", "/payments/charge", h, body + b" "), 200)  # digest.mismatch
    h = signed(e, "POST", "/payments/charge", body)
    expect(e.request("POST", "/payments/charge", h, body), 200)
    expect(e.request("POST", "/payments/charge", h, body), 200)  # sig.replay
    h = signed(e, "GET", "/payments", created=int(time.time()) - 600)
    expect(e.request("GET", "/payments", h), 200)  # sig.expired
    big = json_payload(MAX_BODY + 100)
    h = signed(e, "POST", "/payments/charge", big)
    expect(e.request("POST", "/payments/charge", h, big), 200)  # body.too_large

    prom = e.prometheus()
    for reason in ("sig.missing", "sig.invalid", "digest.mismatch", "sig.replay", "sig.expired", "body.too_large"):
        assert count(reason, prom) - count(reason, prom0) >= 1, (
            f"no monitor finding for {reason}:\n{palisade_lines(prom)}"
        )
    assert palisade_counter(prom, "palisade_findings_total", reason="sig.invalid", mode="enforce") == 0, (
        palisade_lines(prom)
    )
    assert palisade_counter(prom, "palisade_requests_total", decision="allow", route="payments") >= 7, (
        palisade_lines(prom)
    )


def test_enforced_findings_are_counted(envoy):
    e = envoy(config())
    expect(e.request("GET", "/payments"), 401, "sig.missing")
    body = json_payload(128)
    h = signed(e, "POST", "/uploads/x", body, components=BASIC)
    expect(e.request("POST", "/uploads/x", h, body), 400, "digest.missing")
    prom = e.prometheus()
    for reason in ("sig.missing", "digest.missing"):
        assert palisade_counter(prom, "palisade_findings_total", reason=reason, mode="enforce") >= 1, (
            f"no enforce finding for {reason}:\n{palisade_lines(prom)}"
        )
    assert palisade_counter(prom, "palisade_requests_total", decision="deny", route="payments") >= 1, (
        palisade_lines(prom)
    )


# --------------------------------------------------------------------------
# Rate limits keyed on the verified key id
# --------------------------------------------------------------------------
def test_rate_limit_per_signing_key(envoy):
    rl = {"rules": [{"name": "per-signer", "key": ["key_id"], "routes": ["payments"], "capacity": 3, "refill": "none"}]}
    e = envoy(config(rate_limits=rl))
    statuses = []
    for i in range(4):
        body = json_payload(128)
        h = signed(e, "POST", f"/payments/charge/{i}", body)
        statuses.append(e.request("POST", f"/payments/charge/{i}", h, body))
    assert [r[0] for r in statuses] == [200, 200, 200, 429], [(r[0], r[2][:120]) for r in statuses]
    expect(statuses[3], 429, "rl.exhausted")
    assert statuses[3][1].get("ratelimit-policy", "").startswith('"per-signer";q=3'), statuses[3][1]

    # client-a's other secret is the same key id: same bucket.
    h = signed(e, "GET", "/payments", secret=SECRET_A2)
    expect(e.request("GET", "/payments", h), 429, "rl.exhausted")
    # Another signer has its own bucket.
    for _ in range(3):
        expect(e.request("GET", "/payments", signed(e, "GET", "/payments", key_id="client-b", secret=SECRET_B)), 200)
    h = signed(e, "GET", "/payments", key_id="client-b", secret=SECRET_B)
    expect(e.request("GET", "/payments", h), 429, "rl.exhausted")
    # An unverified claim of a key id is refused as such, not counted against anyone.
    h = signed(e, "GET", "/payments", key_id="client-b", secret=b"\x00" * 32)
    expect(e.request("GET", "/payments", h), 401, "sig.invalid")


# --------------------------------------------------------------------------
# No secret in logs or responses
# --------------------------------------------------------------------------
def test_no_secret_or_signature_in_logs_or_responses(envoy):
    # Envoy's own debug logs print request headers: only palisade's logger
    # (component `wasm`) runs at its most verbose level.
    e = envoy(config(), component_log_level="wasm:trace")
    body = json_payload(300)
    sent: list[dict[str, str]] = []
    responses: list[harness.Response] = []

    def send(method, target, headers, data=None):
        sent.append(headers)
        responses.append(e.request(method, target, headers, data))

    h = signed(e, "POST", "/payments/charge", body)
    send("POST", "/payments/charge", h, body)  # 200
    send("POST", "/payments/charge", h, body)  # replay
    send("PUT", "/payments/charge", signed(e, "POST", "/payments/charge", body), body)  # invalid
    send("POST", "/payments/charge", signed(e, "POST", "/payments/charge", body), body + b"x")  # digest
    send("GET", "/payments", signed(e, "GET", "/payments", key_id="client-zz"))  # unknown key
    expired = int(time.time()) - 900
    send("GET", "/payments", signed(e, "GET", "/payments", key_id="client-b", secret=SECRET_B, created=expired))
    short_mac = "sig1=:" + b64(b"not-a-mac-but-long-enough-to-count") + ":"  # 34 bytes: malformed
    send("GET", "/payments", replaced(signed(e, "GET", "/payments"), "Signature", short_mac))
    narrow = 'sig1=("@method");keyid="client-a"'  # required components not covered
    send("GET", "/payments", replaced(signed(e, "GET", "/payments"), "Signature-Input", narrow))
    statuses = collections.Counter(r[0] for r in responses)
    assert statuses[200] == 1 and statuses[401] >= 5 and statuses[400] == 1, statuses

    e.wait_for_log("sig.malformed", timeout=3)
    time.sleep(0.3)  # let the log flush (100 ms interval)
    log = e.log_text()

    secrets = {}
    for name, secret in [("SECRET_A", SECRET_A), ("SECRET_A2", SECRET_A2), ("SECRET_B", SECRET_B)]:
        secrets[f"{name} base64"] = b64(secret)
        secrets[f"{name} url-safe base64"] = base64.urlsafe_b64encode(secret).decode()
        secrets[f"{name} hex"] = secret.hex()
        secrets[f"{name} HEX"] = secret.hex().upper()
        secrets[f"{name} bytes"] = secret.decode("latin-1")
    for i, headers in enumerate(sent):
        sig = headers["Signature"]
        secrets[f"request {i} Signature header"] = sig
        secrets[f"request {i} signature value"] = sig.split(":")[1] if ":" in sig else sig
        secrets[f"request {i} Signature-Input header"] = headers["Signature-Input"]
        # Per-member contents of the Signature-Input (beyond key ids, which may be logged).
        inner = headers["Signature-Input"].split("=", 1)[1]
        secrets[f"request {i} covered components"] = inner.split(")", 1)[0] + ")"
    haystacks = {"envoy log": log}
    for i, (status, headers, rbody) in enumerate(responses):
        haystacks[f"response {i} body"] = rbody.decode("latin-1")
        haystacks[f"response {i} headers"] = json.dumps(headers)
    leaks = [
        f"{what} in {where}"
        for what, needle in secrets.items()
        for where, hay in haystacks.items()
        if len(needle) >= 8 and needle in hay
    ]
    assert not leaks, leaks
    # Security events are still written (the test is not vacuous).
    assert "palisade.request" in log and "sig.replay" in log, harness.tail(log, 40)
