"""Hostile input (issue 17, item 2): one Envoy (2 workers) running palisade
with every stage on, a barrage of malformed, oversized, duplicated and
garbage requests over HTTP/1.1 (raw sockets) and HTTP/2 (raw header bytes),
then proof that nothing broke.

Configuration: routes login (ip rate limit with bans, fingerprint rate
limit), api (public, ip limit), payments (RFC 9421 HMAC signature with
``require_digest``, ``max_body_bytes`` 8 KiB), account (JWT from an inline
JWKS), partner (API key), token (refresh-token reuse detection), and the bot
stage on every route with a proof-of-work challenge configured (so
``x-palisade-pow`` and ``palisade_pass`` are parsed) but thresholds at
challenge 99 / deny 100: the raw clients below look nothing like browsers,
and the point is that the *other* stages judge the hostile requests (a
``bot.*`` answer is still a documented answer and accepted).

Every answer must be deliberate:

* palisade's: a status and JSON ``reason`` from README's Responses table
  (parsed from README.md, so the two cannot drift), the status the table
  gives for that reason; a 5xx only for the documented 503s;
* Envoy's own refusals before palisade: 400 (malformed HTTP/1.1: control
  bytes in a value, bad chunk framing), 413, 431 (over the 60 KiB header
  limit or the 100-header count limit), with a non-JSON body;
* the upstream's 200 (a marked body), never on a protected route when no
  valid credential was sent.

Where Envoy itself closes instead of answering, the case says so
(``closes=True``): an HTTP/2 stream with a header value holding a control
byte or NUL is reset by Envoy's codec (RFC 9113 section 8.2.1, the request is
malformed) before any filter runs; an HTTP/1.1 request whose client
half-closes mid-body gets no answer (Envoy resets the stream); an HTTP/2
header block over the header limit is answered 431 or reset by the codec.

Two ``x-api-key`` header lines, the first valid, used to get through
(palisade checked the first line only; the upstream got both): now 401
``apikey.invalid`` (``test_two_api_key_lines_are_refused``).

Other behaviour recorded, not a defect: two ``Authorization`` lines (Envoy
joins them with ``, ``) are ``jwt.malformed`` even when both are the same
valid token; an ``X-Forwarded-For`` entry ``[::1]`` or ``203.0.113.5:8080``
is accepted as an address; a ``/%2e%2e/`` path climbs out of its route
(Envoy normalises it to ``/``) and reaches the upstream as ``/``.

Run with ``-s`` for the summary (requests per category, statuses, reason
codes, Envoy's codec counters); ``HOSTILE_VERBOSE=1`` lists every request.

The last test checks the aftermath: no wasm VM failure or panic in Envoy's
log, no secret in the log or in any response, and normal traffic (a browser
header set on the api route, a signed payment, a valid token, a partner key,
a fresh refresh grant) still gets 200 from both workers.
"""

from __future__ import annotations

import base64
import collections
import concurrent.futures
import hashlib
import http.client
import json
import os
import re
import secrets
import socket
import threading
import time

import pytest

import harness
from demo_token import DEMO_AUDIENCE, DEMO_ISSUER, DEMO_KID, demo_provider, mint
from jwks_server import LocalServer
from signing import DEFAULT_COMPONENTS, content_digest, sign

FIXTURES = json.loads((harness.REPO_ROOT / "tests" / "fixtures" / "browsers.json").read_text())
SIGNING_SECRET_B64 = base64.b64encode(b"hostile-itests signing key 0123456789abcdef").decode()
CHALLENGE_SECRET_B64 = base64.b64encode(b"hostile-itests challenge secret 0123456789").decode()
API_KEY = "hostile-partner-key-" + secrets.token_hex(12)
UPSTREAM_MARK = "palisade-hostile-upstream"
MAX_BODY = 8192

# Secrets and credential-like values that must never show up in Envoy's log
# or in a response: the real ones and the distinctive garbage ones sent.
SECRETS: dict[str, str] = {
    "signing secret (base64)": SIGNING_SECRET_B64,
    "challenge secret (base64)": CHALLENGE_SECRET_B64,
    "api key": API_KEY,
}


def secret(what: str, value: str) -> str:
    SECRETS[what] = value
    return value


def readme_reasons() -> dict[str, int]:
    """{reason: status} from README's Responses table."""
    text = (harness.REPO_ROOT / "README.md").read_text()
    section = text.split("## Responses", 1)[1].split("\n## ", 1)[0]
    out = {}
    for line in section.splitlines():
        m = re.match(r"^\| (\d{3}) \| (.+?) \|", line)
        if m:
            for reason in re.findall(r"`([a-z_0-9]+\.[a-z_0-9.]+)`", m.group(2)):
                out[reason] = int(m.group(1))
    return out


REASONS = readme_reasons()
ENVOY_OWN = {400, 413, 431}

CONFIG = {
    "version": 1,
    "mode": "enforce",
    "client_ip": {"source": "x-forwarded-for", "trusted_hops": 1},
    "routes": [
        {"name": "login", "prefix": "/login", "methods": ["POST"]},
        {"name": "api", "prefix": "/api/"},
        {"name": "payments", "prefix": "/payments"},
        {"name": "account", "prefix": "/account"},
        {"name": "partner", "prefix": "/partner/"},
        {"name": "token", "path": "/oauth/token", "methods": ["POST"]},
    ],
    "rate_limits": {
        "rules": [
            {"name": "login-ip", "key": ["ip"], "routes": ["login"], "capacity": 5,
             "refill": {"tokens": 5, "every": "1m"}, "ban": True},
            {"name": "login-fp", "key": ["fingerprint"], "routes": ["login"], "capacity": 50,
             "refill": {"tokens": 50, "every": "1m"}, "ban": True},
            {"name": "all-ip", "key": ["ip"], "capacity": 5000, "refill": {"tokens": 5000, "every": "1s"}},
        ]
    },
    "bans": {"after": 2, "base": "1m", "factor": 2.0, "max": "1h", "decay": "10m"},
    "signatures": {
        "max_body_bytes": MAX_BODY,
        "keys": [{"id": "k1", "secret": {"base64": SIGNING_SECRET_B64}}],
        "policies": [{"routes": ["payments"], "components": list(DEFAULT_COMPONENTS), "require_digest": True}],
    },
    "jwt": {
        "providers": [demo_provider()],
        "refresh_tokens": {"routes": ["token"], "remember": "1h", "slots": 4096},
    },
    "api_keys": {
        "header": "x-api-key",
        "keys": [{"id": "p", "sha256": hashlib.sha256(API_KEY.encode()).hexdigest(), "roles": ["partner"]}],
    },
    "authorization": {
        "policies": [
            {"routes": ["account"]},
            {"routes": ["partner"], "credentials": ["api_key"], "roles": ["partner"]},
        ]
    },
    "bot": {
        "challenge": {"secret": {"base64": CHALLENGE_SECRET_B64}, "difficulty": 8},
        "thresholds": {"challenge": 99, "deny": 100},
    },
}
PROTECTED = ("/account", "/partner/", "/payments")


class Upstream(LocalServer):
    """Answers 200 with a marked body that names the path only (never a
    header value: responses are searched for secrets)."""

    def __init__(self) -> None:
        super().__init__()
        self.paths: list[str] = []
        self.seen: list[tuple[str, list[tuple[str, str]]]] = []  # kept here, never echoed

    def answer(self, handler, body):
        with self.lock:
            self.paths.append(handler.path)
            self.seen.append((handler.path, [(k.lower(), v) for k, v in handler.headers.items()]))
        return 200, "application/json", json.dumps({"mark": UPSTREAM_MARK}).encode()


def hostile_envoy(up: Upstream, workdir) -> harness.EnvoyInstance:
    """The suite's Envoy (not started): CONFIG, 2 workers, ``up`` as upstream."""
    return harness.EnvoyInstance(
        CONFIG,
        concurrency=2,
        extra_routes=[{"match": {"prefix": "/"}, "route": {"cluster": "upstream", "timeout": "5s"}}],
        extra_clusters=[up.cluster("upstream")],
        workdir=workdir,
    )


@pytest.fixture(scope="module")
def env(tmp_path_factory, artefacts):
    up = Upstream().start()
    inst = hostile_envoy(up, tmp_path_factory.mktemp("hostile"))
    try:
        inst.start()
    except harness.HarnessError as e:
        up.stop()
        pytest.fail(str(e), pytrace=False)
    inst.upstream = up
    yield inst
    inst.stop()
    up.stop()
    print(f"\n(Envoy log: {inst.log_path})")


# --------------------------------------------------------------------------
# Outcomes
# --------------------------------------------------------------------------
SEEN: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
REASONS_SEEN: collections.Counter = collections.Counter()
RESPONSES: list[harness.Response] = []
_ips = iter(range(1, 1 << 20))


def fresh_ip() -> str:
    n = next(_ips)
    return f"10.{(n >> 16) & 255}.{(n >> 8) & 255}.{n & 255}"


class Closed(Exception):
    """The connection or stream ended without a response."""


SLOW: list[str] = []
DETAILS: list[str] = []


def check(category: str, what: str, resp: harness.Response | None, *, protected: bool = False,
          closes: bool = False, allow: set[int] | None = None) -> harness.Response | None:
    """Assert a deliberate answer (module doc) and record it for the summary.
    ``resp`` None means Envoy closed/reset without a response."""
    DETAILS.append(f"{category:10} {what[:90]} -> " + ("closed" if resp is None else
                                                        f"{resp[0]} {harness.reason_of(resp) or ''}"))
    if resp is None:
        SEEN[category]["closed"] += 1
        assert closes, f"[{category}] {what}: connection closed / stream reset without a response"
        return None
    status, headers, body = resp
    RESPONSES.append(resp)
    reason = harness.reason_of(resp)
    SEEN[category][f"{status} {reason or ''}".strip()] += 1
    if allow and status in allow:
        return resp
    if status == 200:
        assert UPSTREAM_MARK.encode() in body, f"[{category}] {what}: 200 not from the upstream: {body[:200]!r}"
        assert not protected, f"[{category}] {what}: reached the upstream of a protected route"
        return resp
    if reason is not None:
        REASONS_SEEN[reason] += 1
        assert reason in REASONS, f"[{category}] {what}: undocumented reason {reason!r} ({status})"
        assert REASONS[reason] == status, f"[{category}] {what}: {reason} with {status}, README says {REASONS[reason]}"
        assert headers.get("content-type", "").startswith("application/json"), (category, what, headers)
        doc = json.loads(body)
        # README: small JSON that never echoes a header; request_id is
        # Envoy's x-request-id only when it is a plain token of <= 64 chars.
        limit = 4096 if reason == "bot.challenge" else 512
        assert len(body) <= limit, f"[{category}] {what}: {len(body)}-byte body: {body[:200]!r}"
        assert re.fullmatch(r"[A-Za-z0-9._~-]{0,64}", doc.get("request_id", "")), (category, what, doc)
        return resp
    assert status in ENVOY_OWN, f"[{category}] {what}: status {status} without a palisade reason: {body[:300]!r}"
    return resp


# --------------------------------------------------------------------------
# Clients
# --------------------------------------------------------------------------
def _parse(raw: bytes) -> harness.Response:
    head, _, rest = raw.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0][9:12])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        k, _, v = line.partition(b":")
        k, v = k.strip().lower().decode("latin-1"), v.strip().decode("latin-1")
        headers[k] = f"{headers[k]}, {v}" if k in headers else v
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = b""
        while rest:
            size_line, _, rest = rest.partition(b"\r\n")
            size = int(size_line.split(b";")[0] or b"0", 16)
            if size == 0:
                break
            body, rest = body + rest[:size], rest[size + 2:]
        return status, headers, body
    if "content-length" in headers:
        rest = rest[: int(headers["content-length"])]
    return status, headers, rest


def raw_h1(e, data: bytes, *, half_close: bool = False, timeout: float = 10.0) -> harness.Response | None:
    """Send ``data`` as is on a fresh connection; read until Envoy closes.
    None when it closed without a response."""
    with socket.create_connection(("127.0.0.1", e.port), timeout=timeout) as s:
        try:
            s.sendall(data)
            if half_close:
                s.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass
        got = b""
        try:
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                got += chunk
                if b"\r\n\r\n" in got and _complete(got):
                    break
        except ConnectionResetError:
            pass
    return _parse(got) if got.startswith(b"HTTP/1.1 ") else None


def _complete(got: bytes) -> bool:
    head, _, rest = got.partition(b"\r\n\r\n")
    m = re.search(rb"(?im)^content-length:\s*(\d+)", head)
    if m:
        return len(rest) >= int(m.group(1))
    if re.search(rb"(?im)^transfer-encoding:\s*chunked", head):
        return rest.endswith(b"0\r\n\r\n")
    return False


def b(v: bytes | str) -> bytes:
    return v if isinstance(v, bytes) else v.encode("latin-1")


def timed(fn):
    def wrapper(e, method, path, *args, **kwargs):
        t = time.monotonic()
        try:
            return fn(e, method, path, *args, **kwargs)
        finally:
            dt = time.monotonic() - t
            if dt > 0.5:
                SLOW.append(f"{fn.__name__} {method} {b(path)[:40]!r} {dt:.1f}s")
    wrapper.__name__ = fn.__name__
    return wrapper


@timed
def h1(e, method: str, path: bytes | str, headers: list[tuple[bytes | str, bytes | str]], body: bytes = b"",
       *, ip: str | None = "auto", chunked: bool = False) -> harness.Response | None:
    """One raw HTTP/1.1 request, bytes exactly as given (Connection: close)."""
    lines = [b"%s %s HTTP/1.1" % (b(method), b(path)), b"host: 127.0.0.1:%d" % e.port]
    lines += [b(k) + b": " + b(v) for k, v in headers]
    if ip is not None:
        lines.append(b"x-forwarded-for: " + b(fresh_ip() if ip == "auto" else ip))
    if chunked:
        lines.append(b"transfer-encoding: chunked")
        payload = (b"%x\r\n%s\r\n" % (len(body), body) if body else b"") + b"0\r\n\r\n"
    else:
        if body or method in ("POST", "PUT"):
            lines.append(b"content-length: %d" % len(body))
        payload = body
    lines.append(b"connection: close")
    return raw_h1(e, b"\r\n".join(lines) + b"\r\n\r\n" + payload)


@timed
def h2(e, method: str, path: bytes | str, headers: list[tuple[bytes | str, bytes | str]], body: bytes = b"",
       *, ip: str | None = "auto", trailers=None) -> harness.Response | None:
    hs = list(headers)
    if ip is not None:
        hs.append(("x-forwarded-for", fresh_ip() if ip == "auto" else ip))
    if body and not any(b(k).lower() == b"content-length" for k, _ in hs) and trailers is None:
        hs.append(("content-length", str(len(body))))
    try:
        return harness.h2_request(e.port, method, path, hs, body, authority=f"127.0.0.1:{e.port}",
                                  trailers=trailers)
    except harness.HarnessError:
        return None
    except (ConnectionError, socket.timeout):
        return None


TRANSPORTS = {"h1": h1, "h2": h2}

# Route: (method, path, body). A hostile header goes to every one.
ROUTES = {
    "api": ("GET", "/api/items", b""),
    "login": ("POST", "/login", b"user=a&password=b"),
    "account": ("GET", "/account/me", b""),
    "partner": ("GET", "/partner/orders", b""),
    "payments": ("POST", "/payments", b'{"amount": 5}'),
    "token": ("POST", "/oauth/token", b"grant_type=client_credentials"),
}


def is_protected(path: bytes | str) -> bool:
    p = b(path).decode("latin-1")
    return p.startswith(PROTECTED)


def signed_payment(e, body: bytes = b'{"amount": 5}', path: str = "/payments") -> list[tuple[str, str]]:
    hs = sign("POST", f"http://127.0.0.1:{e.port}{path}", {"Content-Type": "application/json"}, body,
              key_id="k1", secret=base64.b64decode(SIGNING_SECRET_B64))
    return list(hs.items())


def valid_token(sub: str = "alice") -> str:
    return secret(f"token {sub}", mint(sub))


def b64u(data: bytes | str) -> str:
    return base64.urlsafe_b64encode(b(data) if isinstance(data, str) else data).rstrip(b"=").decode()


# --------------------------------------------------------------------------
# 1. Invalid UTF-8 and control bytes in header values; odd-case names
# --------------------------------------------------------------------------
BAD_VALUES = {
    "latin1": b"caf\xe9 \xff\xfe",
    "bad-utf8": b"Bearer \xc3\x28\xa0\xa1",
    "overlong-utf8": b"\xc0\xaf\xe0\x80\xaf",
    "ctl": b"a\x01b\x1fc\x7fd",
    "nul": b"x\x00y",
    "tab": b"\tpadded\t",
}
HOSTILE_HEADERS = ("user-agent", "authorization", "cookie", "signature-input", "signature",
                   "x-forwarded-for", "x-api-key", "sec-ch-ua", "content-digest", "x-palisade-pow", "x-request-id")


@pytest.mark.parametrize("transport", ["h1", "h2"])
def test_invalid_bytes_in_header_values(env, transport):
    send = TRANSPORTS[transport]
    cat = f"bytes/{transport}"
    jobs = []
    for name in HOSTILE_HEADERS:
        for label, value in BAD_VALUES.items():
            for route, (method, path, body) in ROUTES.items():
                ip = None if name == "x-forwarded-for" else "auto"
                what = f"{transport} {route} {name}: {value!r}"
                # HTTP/1.1: Envoy's parser answers 400 to a control byte or NUL
                # in a value. HTTP/2: Envoy's codec treats the header block as
                # malformed and closes the connection without a frame, after
                # its 1 s delayed-close timeout (so these run in parallel).
                if label in ("ctl", "nul") and transport == "h2":
                    jobs.append((what, path, lambda m=method, p=path, h=[(name, value)], bd=body, ip=ip:
                                 send(env, m, p, h, bd, ip=ip)))
                    continue
                check(cat, what, send(env, method, path, [(name, value)], body, ip=ip), protected=is_protected(path))
    run_parallel(cat, [(what, thunk, {"protected": is_protected(path), "closes": True})
                       for what, path, thunk in jobs], workers=40)


def test_odd_case_header_names(env):
    tok = valid_token("odd-case")
    cases = [
        ("/account/me", "GET", [("AuThOrIzAtIoN", "Bearer " + tok)], b"", False),
        ("/account/me", "GET", [("AUTHORIZATION", "bEaReR " + tok)], b"", False),
        ("/partner/x", "GET", [("X-API-KEY", API_KEY)], b"", False),
        ("/partner/x", "GET", [("x-Api-Key", "not-the-key-" + "z" * 20)], b"", True),
        ("/api/items", "GET", [("USER-AGENT", "Mozilla/5.0"), ("Cookie", "PALISADE_PASS=x; palisade_pass=y")], b"", False),
        ("/api/items", "GET", [("X-Forwarded-For", "203.0.113.9"), ("X-FORWARDED-FOR", "nonsense")], b"", False),
    ]
    for path, method, hs, body, protected in cases:
        ip = None if any(k.lower() == "x-forwarded-for" for k, _ in hs) else "auto"
        check("odd-case/h1", f"{path} {hs}", h1(env, method, path, hs, body, ip=ip), protected=protected)
    # The payment signed with lower-case names, sent in upper case (names are case-insensitive).
    hs = [(k.upper(), v) for k, v in signed_payment(env)]
    check("odd-case/h1", "upper-case signed payment", h1(env, "POST", "/payments", hs, b'{"amount": 5}'))


# --------------------------------------------------------------------------
# 2. Many headers, maximum-size headers, long paths and queries
# --------------------------------------------------------------------------
# The route whose stage judges each header (HTTP/2 sends each huge header
# there only: HPACK-encoding 56 KiB in pure Python costs ~0.5 s a request).
JUDGED_ON = {"user-agent": "api", "authorization": "account", "cookie": "api", "x-api-key": "partner",
             "signature-input": "payments", "signature": "payments", "content-digest": "payments",
             "x-forwarded-for": "login", "sec-ch-ua": "login"}


def run_parallel(cat: str, jobs: list, workers: int = 16) -> list:
    """``jobs``: (what, send thunk, check kwargs); checks in order after all ran."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(pool.map(lambda job: job[1](), jobs))
    return [check(cat, what, resp, **kw) for (what, _, kw), resp in zip(jobs, results)]


@pytest.mark.parametrize("transport", ["h1", "h2"])
def test_many_and_huge_headers(env, transport):
    send = TRANSPORTS[transport]
    cat = f"size/{transport}"
    over_jobs = []  # refused by Envoy: 431, or (HTTP/2) a close after 1 s
    for route, (method, path, body) in ROUTES.items():
        prot = is_protected(path)
        # 90 headers: under Envoy's default limit of 100, palisade sees them all.
        many = [(f"x-h-{i}", "v" * 20) for i in range(90)]
        check(cat, f"{route} 90 headers", send(env, method, path, many, body), protected=prot)
        # 300 headers: over the limit, Envoy refuses (431 over HTTP/1.1; over
        # HTTP/2 its codec closes the connection without a response).
        lots = [(f"x-h-{i}", "v") for i in range(300)]
        over_jobs.append((f"{route} 300 headers", lambda m=method, p=path, bd=body: send(env, m, p, lots, bd),
                          {"closes": transport == "h2"}))
        # 90 repetitions of one credential header.
        reps = [("authorization", f"Bearer x{i}") for i in range(90)]
        check(cat, f"{route} 90 authorization", send(env, method, path, reps, body), protected=prot)
        for name in JUDGED_ON:
            if transport == "h2" and JUDGED_ON[name] != route:
                continue
            # Near the 60 KiB limit (the rest of the request fits), then over it.
            for size, over in ((56 * 1024, False), (70 * 1024, True)):
                value = {"authorization": "Bearer " + "A" * size, "cookie": "palisade_pass=" + "p" * size,
                         "x-forwarded-for": "1.2.3.4, " * (size // 9) + "5.6.7.8"}.get(name, "A" * size)
                ip = None if name == "x-forwarded-for" else "auto"
                thunk = lambda m=method, p=path, h=[(name, value)], bd=body, ip=ip: send(env, m, p, h, bd, ip=ip)  # noqa: E731
                if over:
                    over_jobs.append((f"{route} {name} {size}", thunk, {"closes": transport == "h2"}))
                else:
                    check(cat, f"{route} {name} {size}", thunk(), protected=prot)
    over_jobs.append(("path 70 KiB", lambda: send(env, "GET", "/api/" + "a" * 70000, []),
                      {"closes": transport == "h2"}))
    for r in run_parallel(cat, over_jobs):
        assert r is None or r[0] == 431, r and r[:2]
    # Long paths and query strings.
    for route, (method, path, body) in ROUTES.items():
        for extra in ("/" + "a" * 16000, "?" + "q=" + "x" * 30000, "?" + "&".join(f"k{i}=v" for i in range(3000)),
                      "?" + "%ff%00%zz" * 3000, "/" + "%2e%2e/" * 2000):
            # `/%2e%2e/` repeated climbs out of the route: Envoy's path
            # normalisation makes it `/`, which no route protects.
            check(cat, f"{route} long {extra[:12]!r}", send(env, method, path + extra, [], body),
                  protected=is_protected(path) and "%2e" not in extra)


# --------------------------------------------------------------------------
# 3. Duplicate and conflicting headers
# --------------------------------------------------------------------------
@pytest.mark.parametrize("transport", ["h1", "h2"])
def test_duplicate_and_conflicting_headers(env, transport):
    send = TRANSPORTS[transport]
    cat = f"dup/{transport}"
    tok = valid_token(f"dup-{transport}")
    garbage = "eyJhbGciOiJub25lIn0.e30."
    body = b'{"amount": 5}'
    # Authorization twice; the request must not get through on the garbage
    # one alone; with one valid token the outcome is recorded, not asserted.
    check(cat, "two garbage bearer", send(env, "GET", "/account/me",
                                          [("authorization", "Bearer a.b.c"), ("authorization", "Bearer " + garbage)]),
          protected=True)
    for hs in ([("authorization", "Bearer " + tok), ("authorization", "Bearer " + garbage)],
               [("authorization", "Bearer " + garbage), ("authorization", "Bearer " + tok)],
               [("authorization", "Bearer " + tok), ("authorization", "Bearer " + tok)],
               [("authorization", f"Bearer {tok}, Bearer {garbage}")]):
        check(cat, "valid+garbage bearer", send(env, "GET", "/account/me", hs), allow={200})
    # Two API keys.
    check(cat, "two wrong keys", send(env, "GET", "/partner/x", [("x-api-key", "wrong-1-xxxxxxxx"),
                                                                ("x-api-key", "wrong-2-xxxxxxxx")]), protected=True)
    for hs in ([("x-api-key", API_KEY), ("x-api-key", "wrong-1-xxxxxxxx")],
               [("x-api-key", "wrong-1-xxxxxxxx"), ("x-api-key", API_KEY)],
               [("x-api-key", f"{API_KEY}, wrong")]):
        check(cat, "valid+wrong key", send(env, "GET", "/partner/x", hs), allow={200})
    # API key and bearer token on the API-key-only route.
    check(cat, "bearer on key route", send(env, "GET", "/partner/x", [("authorization", "Bearer " + tok)]),
          protected=True)
    # Signatures: several Signature-Input / Signature lines and dictionary members.
    good = dict(signed_payment(env, body))
    other = dict(signed_payment(env, body))
    sig_variants = {
        "two sig-input lines": [("signature-input", good["Signature-Input"]), ("signature-input", other["Signature-Input"])],
        "two signature lines": [("signature", good["Signature"]), ("signature", other["Signature"])],
        "second member": [("signature-input", good["Signature-Input"] + ", " + other["Signature-Input"].replace("sig1=", "sig2=")),
                          ("signature", good["Signature"] + ", " + other["Signature"].replace("sig1=", "sig2="))],
        "dup member": [("signature-input", good["Signature-Input"] + ", " + other["Signature-Input"]),
                       ("signature", good["Signature"] + ", " + other["Signature"])],
    }
    for label, replace in sig_variants.items():
        names = {k.lower() for k, _ in replace}
        hs = [(k, v) for k, v in good.items() if k.lower() not in names] + replace
        check(cat, f"signature {label}", send(env, "POST", "/payments", hs, body), allow={200})
    # Two Content-Digest: right + wrong, wrong + right, wrong alone signed.
    wrong = content_digest(b"other body")
    for hs_digest in ([("content-digest", good["Content-Digest"]), ("content-digest", wrong)],
                      [("content-digest", wrong), ("content-digest", good["Content-Digest"])]):
        hs = [(k, v) for k, v in good.items() if k.lower() != "content-digest"] + hs_digest
        check(cat, "two content-digest", send(env, "POST", "/payments", hs, body), protected=True)
    # Two cookie headers, several pass cookies.
    for hs in ([("cookie", "palisade_pass=aaa.bbb"), ("cookie", "palisade_pass=ccc.ddd")],
               [("cookie", "a=1; palisade_pass=; palisade_pass=x.y.z; palisade_pass")],
               [("cookie", "=; ;;; =palisade_pass; palisade_pass==")]):
        check(cat, "cookies", send(env, "GET", "/api/items", hs))
    # X-Forwarded-For lists with garbage entries.
    for xff in ("203.0.113.5, garbage", "garbage, 203.0.113.5", ",,,", "", " ", "unknown", "[::1]",
                "203.0.113.5:8080", "999.1.1.1", "::ffff:203.0.113.5", "203.0.113.5 , , 198.51.100.1",
                "fe80::1%eth0", "0x7f.1", "1.2.3.4\t5.6.7.8"):
        check(cat, f"xff {xff!r}", send(env, "POST", "/login", [("x-forwarded-for", xff)], b"u=1", ip=None))
    check(cat, "xff two lines", send(env, "POST", "/login", [("x-forwarded-for", "garbage"),
                                                             ("x-forwarded-for", "203.0.113.7")], b"u=1", ip=None))
    # Conflicting framing: Content-Length twice, CL + TE (HTTP/1.1 only).
    if transport == "h1":
        for hs in ([("content-length", "13"), ("content-length", "14")],
                   [("content-length", "13"), ("transfer-encoding", "chunked")],
                   [("transfer-encoding", "gzip, chunked")]):
            raw = b"POST /payments HTTP/1.1\r\nhost: x\r\n" + b"".join(b(k) + b": " + b(v) + b"\r\n" for k, v in hs)
            # Envoy answers 501 itself to a transfer-coding it does not implement.
            check(cat, f"framing {hs}", raw_h1(env, raw + b"connection: close\r\n\r\n" + body), protected=True,
                  allow={501} if "gzip" in hs[-1][1] else None)


@pytest.mark.parametrize("transport", ["h1", "h2"])
def test_two_api_key_lines_are_refused(env, transport):
    hs = [("x-api-key", API_KEY), ("x-api-key", "wrong-1-xxxxxxxx")]
    before = len(env.upstream.seen)
    resp = TRANSPORTS[transport](env, "GET", "/partner/two-keys", hs)
    check(f"dup/{transport}", "two x-api-key lines, valid first", resp, allow={200})
    reached = [h for p, h in env.upstream.seen[before:] if p.startswith("/partner/two-keys")]
    assert resp[0] == 401 and harness.reason_of(resp) == "apikey.invalid" and not reached, (
        resp[:2], [[(k, v if k != "x-api-key" else "<key>") for k, v in h if k.startswith("x-")] for h in reached])


@pytest.mark.parametrize("transport", ["h1", "h2"])
def test_spoofed_palisade_headers_never_reach_the_upstream(env, transport):
    """Client-sent copies of the headers palisade sets upstream (README:
    removed on every request), duplicated, odd-cased, with hostile bytes."""
    send = TRANSPORTS[transport]
    spoof = [("x-palisade-user", "apikey:spoofed"), ("x-palisade-user", b"admin\xff"),
             ("x-palisade-bot-score", "0"), ("x-palisade-bot-reasons", "none"),
             ("x-palisade-fingerprint", "0000000000000000"), ("x-palisade-fingerprint", "spoof")]
    if transport == "h1":
        spoof += [("X-Palisade-User", "root"), ("X-PALISADE-BOT-SCORE", "1")]
    tok = valid_token(f"spoof-{transport}")
    for path, extra in ((f"/api/spoof-{transport}", []), (f"/account/spoof-{transport}", [("authorization", "Bearer " + tok)]),
                        (f"/partner/spoof-{transport}", [("x-api-key", API_KEY)])):
        before = len(env.upstream.seen)
        r = check(f"spoof/{transport}", path, send(env, "GET", path, spoof + extra))
        assert r[0] == 200, r[:3]
        got = [h for p, h in env.upstream.seen[before:] if p == path]
        assert len(got) == 1, got
        sent = {(k.lower(), b(v).decode("latin-1")) for k, v in spoof}
        leaked = [(k, v) for k, v in got[0] if (k, v) in sent]
        assert not leaked, f"client-sent palisade headers reached the upstream: {leaked}"
        users = [v for k, v in got[0] if k == "x-palisade-user"]
        assert users == ([] if "/api/" in path else [f"spoof-{transport}" if "account" in path else "apikey:p"]), users


# --------------------------------------------------------------------------
# 4. Garbage in every credential format
# --------------------------------------------------------------------------
def _jwt(header, payload, sig: str = "c2ln") -> str:
    enc = lambda x: b64u(x if isinstance(x, (bytes, str)) else json.dumps(x))  # noqa: E731
    return f"{enc(header)}.{enc(payload)}.{sig}"


def garbage_jwts() -> dict[str, str]:
    now = int(time.time())
    claims = {"iss": DEMO_ISSUER, "aud": DEMO_AUDIENCE, "sub": "eve", "exp": now + 600, "iat": now}
    valid = mint("jwt-garbage")
    h, p, s = valid.split(".")
    # The std-base64 variant must differ from a valid token: about one token
    # in 300 has no '-' or '_' to swap, so mint until one has.
    swappable = next(t for t in (mint("jwt-garbage", jti=str(n)) for n in range(10_000)) if "-" in t or "_" in t)
    return {
        "empty": "", "one segment": "abc", "two segments": "abc.def", "four segments": "a.b.c.d",
        "dots only": "....", "bad base64url": "!!!.$$$.%%%", "padding": h + "==." + p + "==." + s,
        "std base64": swappable.replace("-", "+").replace("_", "/"),
        "alg none": _jwt({"alg": "none", "kid": DEMO_KID}, claims, ""),
        "alg None": _jwt({"alg": "None"}, claims, ""),
        "alg HS256 kid demo": _jwt({"alg": "HS256", "kid": DEMO_KID}, claims),
        "alg RS256": _jwt({"alg": "RS256", "kid": DEMO_KID}, claims),
        "header array": _jwt([1, 2], claims), "header string": _jwt('"EdDSA"', claims),
        "header number": _jwt("123", claims), "header null": _jwt("null", claims),
        "header not json": _jwt("{not json", claims), "header bytes": _jwt(b"\xff\xfe\x00", claims),
        "payload array": _jwt({"alg": "EdDSA", "kid": DEMO_KID}, [claims]),
        "payload string": _jwt({"alg": "EdDSA", "kid": DEMO_KID}, '"x"'),
        "payload nested": _jwt({"alg": "EdDSA", "kid": DEMO_KID}, "[" * 5000 + "]" * 5000),
        "header nested": _jwt("{\"a\":" * 3000 + "1" + "}" * 3000, claims),
        "payload huge number": _jwt({"alg": "EdDSA", "kid": DEMO_KID}, '{"exp": 1e999999, "sub": "x"}'),
        "exp string": _jwt({"alg": "EdDSA", "kid": DEMO_KID}, dict(claims, exp="soon")),
        "dup keys": _jwt('{"alg":"EdDSA","alg":"none","kid":"' + DEMO_KID + '"}', claims),
        "kid huge": _jwt({"alg": "EdDSA", "kid": "k" * 6000}, claims),
        "sig of other": h + "." + b64u(json.dumps(claims)) + "." + s,
        "sig bad b64": h + "." + p + ".!!!!",
        "sig empty": h + "." + p + ".",
        "huge 9 KiB": h + "." + "A" * 9216 + "." + s,
        "huge 50 KiB": "A" * 51200,
        "unicode": "é.ü.ß",
        "whitespace inside": h + " ." + p + ". " + s,
    }


@pytest.mark.parametrize("transport", ["h1", "h2"])
def test_garbage_credentials(env, transport):
    send = TRANSPORTS[transport]
    cat = f"creds/{transport}"
    for label, tok in garbage_jwts().items():
        for value in (f"Bearer {tok}", f"bearer  {tok}", tok):
            check(cat, f"jwt {label} {value[:40]!r}", send(env, "GET", "/account/me", [("authorization", value)]),
                  protected=True)
    for value in ("Bearer", "Bearer ", "Basic dXNlcjpwYXNz", "Digest x", "Bearer a b c", "Bearer\x0bx"):
        check(cat, f"authorization {value!r}", send(env, "GET", "/account/me", [("authorization", value)]),
              protected=True, closes=transport == "h2" and "\x0b" in value)
    junk_key = secret(f"garbage api key {transport}", "hostile-garbage-apikey-" + secrets.token_hex(8))
    for value in ("", " ", junk_key, API_KEY[:-1], API_KEY + "x", API_KEY.upper(), "A" * 50000, "\u00e9" * 100,
                  "%s" * 100, "${jndi:ldap://x}"):
        check(cat, f"api key {value[:20]!r}", send(env, "GET", "/partner/x", [("x-api-key", value.encode("utf-8"))]),
              protected=True)
    # RFC 9421 fields: malformed structured fields (with a correct digest,
    # so the signature fields are what is judged).
    body = b'{"amount": 5}'
    good = dict(signed_payment(env, body))
    sig_inputs = ["", "sig1", "sig1=", "sig1=(", 'sig1=("@method"', 'sig1=("@method" ;created=abc)',
                  'sig1=();created=1;keyid="k1"', "=", 'sig1=("@method");created=99999999999999999999;keyid="k1"',
                  'sig1=("@method");created=-1;keyid="k1"', 'sig1=("@method");created=1.5;keyid="k1"',
                  'sig1=("@method");keyid="nope";created=%d' % time.time(),
                  'sig1=("@method" "@method");keyid="k1";created=%d' % time.time(),
                  'sig1=("@method";bs;req;sf);keyid="k1";created=%d' % time.time(),
                  'sig1=("\\"");keyid="k1"', "sig1=" + "(" * 2000, 'sig1=("x-' + "a" * 20000 + '")',
                  ", ".join(f'sig{i}=("@method");keyid="k1";created=1' for i in range(500)),
                  good["Signature-Input"].replace('alg="hmac-sha256"', 'alg="none"'),
                  good["Signature-Input"].replace("sig1=", "Sig1=")]
    signatures = ["", "sig1", "sig1=", "sig1=:", "sig1=::", "sig1=:not base64!:", "sig1=:" + "A" * 20000 + ":",
                  'sig1="string"', "sig1=?1", "sig1=:AAAA:, sig1=:BBBB:", "sig2=" + good["Signature"][5:]]
    for si in sig_inputs:
        hs = [(k, v) for k, v in good.items() if k != "Signature-Input"] + [("signature-input", si)]
        check(cat, f"signature-input {si[:40]!r}", send(env, "POST", "/payments", hs, body), protected=True)
    for sg in signatures:
        hs = [(k, v) for k, v in good.items() if k != "Signature"] + [("signature", sg)]
        check(cat, f"signature {sg[:40]!r}", send(env, "POST", "/payments", hs, body), protected=True)
    # Content-Digest garbage (unsigned requests and signed ones with the garbage digest signed).
    for cd in ("", "sha-256", "sha-256=", "sha-256=:garbage!:", "sha-256=:AAAA:", "sha-512=:AAAA:", "md5=:AAAA:",
               "sha-256=:" + "A" * 30000 + ":", "sha-256=x, sha-512=y", "SHA-256=:" + content_digest(body)[9:],
               "sha-256=:%s:, md5=:x:" % content_digest(body)[9:-1], "sha-256=(", "sha-256=:%s:;p=1" % ("A" * 43)):
        # The signing package refuses to sign a malformed digest: send the
        # garbage in place of a good signature's digest, and alone.
        hs = [(k, v) for k, v in signed_payment(env, body) if k != "Content-Digest"] + [("content-digest", cd)]
        check(cat, f"signed, content-digest {cd[:40]!r}", send(env, "POST", "/payments", hs, body), protected=True)
        hs = [("content-type", "application/json"), ("content-digest", cd)]
        check(cat, f"content-digest {cd[:40]!r}", send(env, "POST", "/payments", hs, body), protected=True)
    # Refresh-token bodies.
    form = [("content-type", "application/x-www-form-urlencoded")]
    rt = secret(f"refresh {transport}", "rt_hostile_" + secrets.token_urlsafe(24))
    bodies = {
        "bad percent": b"grant_type=refresh_token&refresh_token=%zz%",
        "bad utf8": b"grant_type=refresh_token&refresh_token=%ff%fe\xff",
        "nul": b"grant_type=refresh_token&refresh_token=a%00b",
        "empty token": b"grant_type=refresh_token&refresh_token=",
        "no value": b"grant_type=refresh_token&refresh_token",
        "separators": b"&&&===&;;&grant_type=refresh_token&&refresh_token=" + rt.encode() + b"1",
        "repeated": b"grant_type=refresh_token&refresh_token=a1234567&refresh_token=b1234567",
        "repeated grant": b"grant_type=refresh_token&grant_type=password&refresh_token=" + rt.encode() + b"2",
        "json array": b'[{"grant_type":"refresh_token","refresh_token":"x"}]',
        "json number token": b'{"grant_type":"refresh_token","refresh_token":123}',
        "json null": b'{"grant_type":"refresh_token","refresh_token":null}',
        "json dup": b'{"grant_type":"refresh_token","refresh_token":"a12345678","refresh_token":"b12345678"}',
        "json nested": b'{"grant_type":"refresh_token","refresh_token":' + b"[" * 5000 + b"]" * 5000 + b"}",
        "json broken": b'{"grant_type":"refresh_token","refresh_token":"abc',
        "huge 15 KiB": b"grant_type=refresh_token&refresh_token=" + b"r" * 15000,
        "huge 20 KiB": b"grant_type=refresh_token&refresh_token=" + b"r" * 20000,
        "huge params": b"&".join(b"p%d=v" % i for i in range(3000)),
    }
    for label, bd in bodies.items():
        check(cat, f"refresh body {label}", send(env, "POST", "/oauth/token", form, bd))
    check(cat, "refresh in query", send(env, "POST", "/oauth/token?refresh_token=x&grant_type=refresh_token", form,
                                        b"grant_type=refresh_token&refresh_token=y"))
    check(cat, "multipart", send(env, "POST", "/oauth/token", [("content-type", "multipart/form-data; boundary=b")],
                                 b"--b\r\n\r\nx\r\n--b--\r\n"))
    check(cat, "gzip", send(env, "POST", "/oauth/token", form + [("content-encoding", "gzip")], b"\x1f\x8b\x08\x00"))
    # Challenge solutions and pass cookies.
    pass_junk = secret(f"garbage pass {transport}", "hostile-pass-" + secrets.token_hex(10))
    for pow_value in ("", ".", "a.b", "..........", "x" * 50000, pass_junk, "abc." + "9" * 400, "-1.-1",
                      b64u(b"\xff" * 40) + ".1"):
        check(cat, f"pow {pow_value[:20]!r}", send(env, "GET", "/api/items", [("x-palisade-pow", pow_value)]))
    for cookie in ("palisade_pass=", "palisade_pass=" + pass_junk, "palisade_pass=a.b.c.d.e",
                   "palisade_pass=" + "." * 3000, "palisade_pass=" + b64u(b"\x00" * 64) + "." + b64u(b"\xff" * 32),
                   'palisade_pass="quoted"', "palisade_pass=%ff%00"):
        check(cat, f"pass {cookie[:30]!r}", send(env, "GET", "/api/items", [("cookie", cookie)]))


def _zero_bits(digest: bytes) -> int:
    bits = 0
    for byte in digest:
        if byte:
            return bits + 8 - byte.bit_length()
        bits += 8
    return bits


LOG_ONLY_SECRETS: dict[str, str] = {}  # values a response legitimately carries (a pass in Set-Cookie)


@pytest.mark.parametrize("transport", ["h1", "h2"])
def test_garbage_challenge_solutions_and_passes(env, transport):
    """A client scoring over the challenge threshold (a lone `sec-ch-ua`, no
    user-agent) gets a real challenge; garbage solutions built on its token
    and tampered passes built on a real pass are challenged again, never let
    through; the real solution and pass work."""
    send = TRANSPORTS[transport]
    cat = f"pow/{transport}"
    ip = "192.0.2.77" if transport == "h1" else "192.0.2.78"
    base = [("sec-ch-ua", "bot-like")]

    def challenged(resp, what):
        check(cat, what, resp)
        assert resp and (resp[0], harness.reason_of(resp)) == (403, "bot.challenge"), (what, resp and resp[:3])
        return json.loads(resp[2])["challenge"]

    ch = challenged(send(env, "GET", "/api/items", base, ip=ip), "no solution")
    token, difficulty = ch["token"], int(ch["difficulty"])
    nonce = next(n for n in range(1 << 24) if _zero_bits(hashlib.sha256(f"{token}.{n}".encode()).digest()) >= difficulty)
    wrong = next(n for n in range(1000) if _zero_bits(hashlib.sha256(f"{token}.{n}".encode()).digest()) == 0)
    flipped = token[:-2] + ("A" if token[-2] != "A" else "B") + token[-1]
    for label, value in {
        "wrong nonce": f"{token}.{wrong}", "empty nonce": f"{token}.", "huge nonce": f"{token}." + "9" * 5000,
        "negative nonce": f"{token}.-{nonce}", "nonce with spaces": f"{token}. {nonce}",
        "two nonces": f"{token}.{nonce}.{nonce}", "token flipped": f"{flipped}.{nonce}",
        "token truncated": f"{token[:10]}.{nonce}", "token doubled": f"{token}{token}.{nonce}",
        "solution twice": f"{token}.{nonce}, {token}.{nonce}", "bad bytes": f"{token}.\xff{nonce}",
    }.items():
        challenged(send(env, "GET", "/api/items", base + [("x-palisade-pow", value.encode("latin-1"))], ip=ip), label)
    solved = send(env, "GET", "/api/items", base + [("x-palisade-pow", f"{token}.{nonce}")], ip=ip)
    assert solved and solved[0] == 200, solved
    SEEN[cat]["200 (solved)"] += 1
    m = re.search(r"palisade_pass=([^;,\s]+)", solved[1].get("set-cookie", ""))
    assert m, solved[1]
    real = LOG_ONLY_SECRETS[f"pass {transport}"] = m.group(1)
    ok = send(env, "GET", "/api/items", base + [("cookie", f"palisade_pass={real}")], ip=ip)
    assert ok and ok[0] == 200, ok
    SEEN[cat]["200 (pass)"] += 1
    mid = len(real) // 2
    for label, value in {
        "pass flipped": real[:mid] + ("x" if real[mid] != "x" else "y") + real[mid + 1:],
        "pass truncated": real[:-4], "pass extended": real + "AAAA", "pass doubled": real + real,
        "pass upper": real.upper(), "pass reversed": real[::-1],
        "pass + garbage cookie first": real, "pass as pow": real,
    }.items():
        if label == "pass + garbage cookie first":
            hs = base + [("cookie", f"palisade_pass=garbage; palisade_pass={real[:-1]}")]
        elif label == "pass as pow":
            hs = base + [("x-palisade-pow", real)]
        else:
            hs = base + [("cookie", f"palisade_pass={value}")]
        challenged(send(env, "GET", "/api/items", hs, ip=ip), label)
    # Another client (address prefix) with the real pass: challenged.
    challenged(send(env, "GET", "/api/items", base + [("cookie", f"palisade_pass={real}")], ip="198.18.0.1"),
               "pass from another address")


# --------------------------------------------------------------------------
# 5. Bodies
# --------------------------------------------------------------------------
def test_bodies_h1(env):
    cat = "body/h1"
    body = b'{"amount": 5}'
    good = signed_payment(env, body)
    check(cat, "signed payment (control)", h1(env, "POST", "/payments", good, body))
    # Chunked: the signed payment in chunks, then garbage chunk framing.
    r = check(cat, "signed payment chunked", h1(env, "POST", "/payments", signed_payment(env, body), body,
                                                chunked=True))
    assert r[0] == 200, r
    for framing in (b"zz\r\nabc\r\n0\r\n\r\n", b"5\r\nabc\r\n0\r\n\r\n", b"ffffffffffffffffff\r\nx\r\n",
                    b"-1\r\nx\r\n0\r\n\r\n", b"3;ext=" + b"e" * 20000 + b"\r\nabc\r\n0\r\n\r\n"):
        raw = (b"POST /payments HTTP/1.1\r\nhost: 127.0.0.1:%d\r\ntransfer-encoding: chunked\r\n" % env.port
               + b"".join(b(k) + b": " + b(v) + b"\r\n" for k, v in signed_payment(env, body))
               + b"connection: close\r\n\r\n" + framing)
        check(cat, f"chunk framing {framing[:16]!r}", raw_h1(env, raw), protected=True, closes=True)
    # Oversized: declared, and streamed (chunked) without a declaration.
    big = b'{"pad": "' + b"x" * (MAX_BODY * 2) + b'"}'
    r = check(cat, "oversized declared", h1(env, "POST", "/payments", signed_payment(env, big), big), protected=True)
    assert r[0] == 413, r[:2]
    r = check(cat, "oversized chunked", h1(env, "POST", "/payments", signed_payment(env, big), big, chunked=True),
              protected=True)
    assert r[0] == 413, r[:2]
    check(cat, "oversized token body", h1(env, "POST", "/oauth/token", [], b"grant_type=x&" + b"a" * 40000))
    # Truncated: Content-Length larger than what is sent, then half-close.
    # (Whether a response still comes before Envoy sees the FIN is a race:
    # either is fine.)
    for path, hs in (("/payments", signed_payment(env, body)),
                     ("/oauth/token", [("content-type", "application/x-www-form-urlencoded")])):
        raw = (b"POST " + path.encode() + b" HTTP/1.1\r\nhost: 127.0.0.1:%d\r\ncontent-length: 1000\r\n" % env.port
               + b"".join(b(k) + b": " + b(v) + b"\r\n" for k, v in hs) + b"\r\n" + body)
        check(cat, f"truncated {path}", raw_h1(env, raw, half_close=True, timeout=5), protected=True, closes=True)
        # ... and a client that just disappears.
        with socket.create_connection(("127.0.0.1", env.port)) as s:
            s.sendall(raw)
    # Body on a GET to a protected route; body with a wrong declared length.
    check(cat, "GET with body", h1(env, "GET", "/account/me", [], b"hello"),
          protected=True)


def test_bodies_h2(env):
    cat = "body/h2"
    body = b'{"amount": 5}'
    good = signed_payment(env, body)
    check(cat, "signed payment (control)", h2(env, "POST", "/payments", good, body))
    r = check(cat, "signed payment + trailers", h2(env, "POST", "/payments", signed_payment(env, body), body,
                                                   trailers=[("x-trailer", "1")]))
    assert r[0] == 200, r
    # Body with trailers but a wrong digest: still refused (the body was checked).
    bad = body.replace(b"5", b"6")
    r = check(cat, "tampered + trailers", h2(env, "POST", "/payments", signed_payment(env, body), bad, trailers=[("x-t", "1")]),
              protected=True)
    assert r[2] and harness.reason_of(r) in ("digest.mismatch", "sig.invalid"), r
    # Trailers that try to add credentials after the fact.
    r = check(cat, "sig in trailers", h2(env, "POST", "/payments", [("content-type", "application/json")], body,
                                         trailers=[(k.lower(), v) for k, v in good if k.lower().startswith("sig")]),
              protected=True)
    # Refresh reuse with the grant ended by trailers.
    rt = secret("refresh h2 trailers", "rt_trailers_" + secrets.token_urlsafe(24))
    form = [("content-type", "application/x-www-form-urlencoded")]
    grant = f"grant_type=refresh_token&refresh_token={rt}".encode()
    r1 = check(cat, "refresh 1 + trailers", h2(env, "POST", "/oauth/token", form, grant, trailers=[("x-t", "1")]))
    r2 = check(cat, "refresh 2 + trailers", h2(env, "POST", "/oauth/token", form, grant, trailers=[("x-t", "1")]))
    assert r1[0] == 200 and harness.reason_of(r2) == "oauth.refresh_reuse", (r1[:2], r2)
    # Oversized over HTTP/2 (in 16 KiB DATA frames), declared and undeclared.
    big = b'{"pad": "' + b"x" * (MAX_BODY * 4) + b'"}'
    r = check(cat, "oversized", h2(env, "POST", "/payments", signed_payment(env, big), big), protected=True)
    assert r[0] == 413, r[:2]
    r = check(cat, "oversized + trailers", h2(env, "POST", "/payments", signed_payment(env, big), big,
                                              trailers=[("x-t", "1")]), protected=True)
    assert r[0] == 413, r[:2]
    # content-length that disagrees with the DATA frames: Envoy resets the stream.
    r = check(cat, "content-length mismatch", h2(env, "POST", "/payments", signed_payment(env, body) + [("content-length", "100")], body),
              protected=True, closes=True)


def test_slowloris_body_does_not_block(env):
    """A payment body that never finishes (1 byte every 100 ms of a declared
    1000) is held by palisade waiting for the digest check; meanwhile normal
    requests on fresh connections (both workers) still get 200. The test
    bootstrap's HTTP connection manager sets no `request_timeout` and the
    drip keeps the 5-minute stream idle timeout from firing, so Envoy neither
    answers nor times out the slow bodies within the test: the client closes
    them. A deployment bounds them with `request_timeout` /
    `request_headers_timeout`."""
    cat = "slowloris"
    body = b'{"amount": 5}'
    stop = threading.Event()
    socks = []

    def drip(path: str, headers: list[tuple[str, str]]):
        s = socket.create_connection(("127.0.0.1", env.port), timeout=10)
        socks.append(s)
        s.sendall(b"POST " + path.encode() + b" HTTP/1.1\r\nhost: 127.0.0.1:%d\r\ncontent-length: 1000\r\n" % env.port
                  + b"".join(b(k) + b": " + b(v) + b"\r\n" for k, v in headers) + b"\r\n")
        while not stop.is_set():
            try:
                s.send(b"x")
            except OSError:
                return
            stop.wait(0.1)

    threads = [threading.Thread(target=drip, args=(p, h), daemon=True) for p, h in (
        ("/payments", signed_payment(env, body)), ("/oauth/token", [("content-type", "text/plain")]),
        ("/payments", signed_payment(env, body)), ("/oauth/token", [("content-type", "text/plain")]))]
    for t in threads:
        t.start()
    try:
        time.sleep(0.3)
        before = env.workers_with_connections()
        for i in range(12):
            check(cat, "normal api during slowloris", h1(env, "GET", "/api/items", [("user-agent", "Mozilla/5.0")]))
            r = check(cat, "signed payment during slowloris", h1(env, "POST", "/payments", signed_payment(env, body),
                                                                  body))
            assert r[0] == 200, r
        after = env.workers_with_connections()
        assert all(after.get(w, 0) > before.get(w, 0) for w in (0, 1)), (before, after)
    finally:
        stop.set()
        for t in threads:
            t.join(5)
        for s in socks:
            s.close()


def test_slowloris_bodies_end_at_the_request_timeout(tmp_path, artefacts):
    """With the HTTP connection manager's `request_timeout` (what README
    recommends for production), a body that never finishes ends with Envoy's
    408 at the timeout: palisade, holding the request for its body check,
    lets nothing through and keeps no state that outlives the stream (the
    worker serves the next request, the VM logs no failure)."""
    up = Upstream().start()
    inst = hostile_envoy(up, tmp_path / "envoy")
    bootstrap = json.loads(inst.config_path.read_text())
    listener = bootstrap["static_resources"]["listeners"][0]
    listener["filter_chains"][0]["filters"][0]["typed_config"]["request_timeout"] = "2s"
    inst.config_path.write_text(json.dumps(bootstrap))
    socks: list[socket.socket] = []
    try:
        inst.start()
        body = b'{"amount": 5}'
        heads = [("/payments", signed_payment(inst, body)) for _ in range(3)]
        heads += [("/oauth/token", [("content-type", "text/plain")])] * 3
        for path, headers in heads:
            s = socket.create_connection(("127.0.0.1", inst.port), timeout=20)
            s.sendall(b"POST " + path.encode() + b" HTTP/1.1\r\nhost: 127.0.0.1:%d\r\ncontent-length: 1000\r\n"
                      % inst.port + b"".join(b(k) + b": " + b(v) + b"\r\n" for k, v in headers) + b"\r\n" + b"x")
            socks.append(s)
        answers = []
        deadline = time.monotonic() + 20
        for s in socks:
            got = b""
            # Drip a byte every 200 ms (the stream is never idle) until Envoy answers.
            while b"\r\n\r\n" not in got and time.monotonic() < deadline:
                s.settimeout(0.2)
                try:
                    chunk = s.recv(4096)
                    if not chunk:
                        break
                    got += chunk
                except socket.timeout:
                    for other in socks:
                        try:
                            other.send(b"x")
                        except OSError:
                            pass
            answers.append(got.split(b"\r\n", 1)[0])
        assert answers == [b"HTTP/1.1 408 Request Timeout"] * len(socks), answers
        # Held by palisade for its body check, none was forwarded (not even its headers).
        assert inst.stats().get("cluster.upstream.upstream_rq_total", 0) == 0, "a slow request went upstream"
        for _ in range(4):
            r = h1(inst, "POST", "/payments", signed_payment(inst, body), body)
            assert r is not None and r[0] == 200, r and r[:2]
        assert inst.stats()["cluster.upstream.upstream_rq_total"] == 4
        bad = [line for line in inst.log_text().splitlines() if "wasm" in line.lower() and CRASH.search(line)]
        assert not bad, bad[:3]
    finally:
        for s in socks:
            s.close()
        inst.stop()
        up.stop()


# --------------------------------------------------------------------------
# 6. Aftermath
# --------------------------------------------------------------------------
CRASH = re.compile(
    r"panicked at|panic|Function: proxy_on_\w+ failed|failed to load|wasm vm crash|VM (?:has )?crash|"
    r"RuntimeError|unreachable|Uncaught|abort|out of bounds|fail closed|stack overflow",
    re.IGNORECASE,
)


def browser_request(e, name: str, ip: str) -> harness.Response:
    c = http.client.HTTPConnection("127.0.0.1", e.port, timeout=10)
    try:
        c.putrequest("GET", "/api/items", skip_host=True, skip_accept_encoding=True)
        c.putheader("Host", f"127.0.0.1:{e.port}")
        for k, v in FIXTURES[name]:
            c.putheader(k, v)
        c.putheader("x-forwarded-for", ip)
        c.endheaders()
        r = c.getresponse()
        return r.status, harness._collect_headers(r.msg), r.read()
    finally:
        c.close()


def test_zz_aftermath(env):
    """Runs last (file order): normal traffic on both workers, a clean log,
    no secret anywhere; prints the summary."""
    body = b'{"amount": 5}'
    before = env.workers_with_connections()
    for i in range(10):
        ip = f"192.0.2.{i + 1}"
        r = browser_request(env, "chrome_windows_navigate", ip)
        assert r[0] == 200 and UPSTREAM_MARK.encode() in r[2], r
        r = h1(env, "POST", "/payments", signed_payment(env, body), body)
        assert r[0] == 200, r
        r = h2(env, "POST", "/payments", signed_payment(env, body), body)
        assert r[0] == 200, r
        r = h1(env, "GET", "/account/me", [("authorization", "Bearer " + valid_token(f"after-{i}"))])
        assert r[0] == 200, r
        r = h1(env, "GET", "/partner/x", [("x-api-key", API_KEY)])
        assert r[0] == 200, r
        rt = secret(f"refresh after {i}", "rt_after_" + secrets.token_urlsafe(24))
        r = h1(env, "POST", "/oauth/token", [("content-type", "application/x-www-form-urlencoded")],
               f"grant_type=refresh_token&refresh_token={rt}".encode())
        assert r[0] == 200, r
        RESPONSES.append(r)
    after = env.workers_with_connections()
    assert all(after.get(w, 0) > before.get(w, 0) for w in (0, 1)), f"not both workers served: {before} -> {after}"
    assert env.proc.poll() is None, "Envoy exited"

    time.sleep(0.3)  # log flush interval is 100 ms
    log = env.log_text()
    bad = [line for line in log.splitlines() if "wasm" in line.lower() and CRASH.search(line)]
    assert not bad, "wasm failures in Envoy's log:\n" + "\n".join(bad[:20])
    assert not re.search(r"panicked at|Function: proxy_on_\w+ failed", log), "VM failure in the log"
    found = harness.leaks(SECRETS, log, RESPONSES) + harness.leaks(LOG_ONLY_SECRETS, log, [])
    assert not found, found

    total = sum(sum(c.values()) for c in SEEN.values())
    print(f"\n=== hostile barrage: {total} requests ===")
    for cat in sorted(SEEN):
        c = SEEN[cat]
        print(f"{cat:12} {sum(c.values()):5}  " + ", ".join(f"{k}: {v}" for k, v in sorted(c.items())))
    if os.environ.get("HOSTILE_VERBOSE"):
        print(*DETAILS, sep="\n")
    print(f"slow requests (> 0.5 s; HTTP/2 requests Envoy's codec refuses wait for its 1 s delayed close): "
          f"{len(SLOW)}", *SLOW[:5], sep="\n  ")
    codec = {k: v for k, v in env.stats().items() if v and re.search(
        r"^http2\.|protocol_error|downstream_rq_(4|5)xx|rq_rx_reset|header_overflow|too_large|rq_too_large", k)}
    print("Envoy codec/refusal counters:", json.dumps(codec, indent=1, sort_keys=True))
    print("reason codes seen: " + ", ".join(f"{k} ({v})" for k, v in sorted(REASONS_SEEN.items())))
