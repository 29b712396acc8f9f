"""The bot stage (issue 12) against a real Envoy (2 workers) and a real
upstream that records what reached it.

Header sets come from tests/fixtures/browsers.json and go out in exactly
that order: over HTTP/1.1 through http.client with ``putrequest(skip_host=
True, skip_accept_encoding=True)`` and one ``putheader`` per header (``Host``
first, as browsers send it), over HTTP/2 through :func:`harness.h2_request`.
The Host is ``127.0.0.1:<port>``: a loopback origin is a secure context, so a
browser there sends client hints and ``sec-fetch-*`` and palisade expects them.

Order facts these tests rely on (checked by
``test_envoy_hands_the_filter_the_clients_header_order``): Envoy keeps the
client's header order over HTTP/1.1 and HTTP/2; it lowercases names, turns
``Host`` into ``:authority`` (forwarded as the first header, ``host``), drops
hop-by-hop ``connection`` and appends its own headers (``x-forwarded-proto``,
``x-request-id``, ``x-envoy-expected-rq-timeout-ms``) after the client's.

Every test sets its client address with ``X-Forwarded-For`` (``trusted_hops:
1``), a different one per simulated client, so that behaviour records (keyed
by fingerprint and address) of one client never touch another's.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import re
import time

import pytest

import harness
from demo_token import demo_provider, mint
from jwks_server import LocalServer
from signing import DEFAULT_COMPONENTS, sign

FIXTURES = json.loads((harness.REPO_ROOT / "tests" / "fixtures" / "browsers.json").read_text())
SECRET_B64 = base64.b64encode(b"bot-itests challenge secret 0123456789").decode()
API_KEY = "bot-itests-partner-key-0123456789abcdef"
SIGNING_SECRET_B64 = "PzMJdwhYCagyf4qv+oAsKv1EnEzOaOye1k/Nl16hJyQ="
UPSTREAM_MARK = "palisade-bot-itests-upstream-body"
BOT_HEADERS = ("x-palisade-fingerprint", "x-palisade-bot-score", "x-palisade-bot-reasons")
# The pairs whose relative order is part of the fingerprint (src/stages/bot/fingerprint.rs).
ORDER_PAIRS = (
    ("user-agent", "accept"),
    ("user-agent", "accept-encoding"),
    ("accept", "accept-language"),
    ("accept-encoding", "accept-language"),
    ("sec-fetch-site", "sec-fetch-mode"),
    ("sec-fetch-mode", "sec-fetch-dest"),
)
BROWSERS = (
    "chrome_windows_navigate",
    "chrome_windows_fetch",
    "chrome_android_navigate",
    "edge_windows_navigate",
    "firefox_linux_navigate",
    "firefox_windows_fetch",
    "safari_macos_navigate",
    "safari_ios_fetch",
)
# The header_mutation filter envoy/envoy.yaml puts before palisade.
STRIP_JA4 = {
    "name": "envoy.filters.http.header_mutation",
    "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.header_mutation.v3.HeaderMutation",
        "mutations": {"request_mutations": [{"remove": "x-palisade-ja4"}]},
    },
}
TO_UPSTREAM = {"match": {"prefix": "/"}, "route": {"cluster": "upstream"}}


def config(bot: dict | None = None, **extra) -> dict:
    """Routes api (public), account (JWT of the demo issuer), partner (API
    key), payments (RFC 9421 signature), page and login; the bot stage with
    a small challenge difficulty."""
    bot_section = {"challenge": {"secret": {"base64": SECRET_B64}, "difficulty": 8}}
    bot_section.update(bot or {})
    return {
        "version": 1,
        "client_ip": {"source": "x-forwarded-for", "trusted_hops": 1},
        "routes": [
            {"name": "api", "prefix": "/api/"},
            {"name": "account", "prefix": "/account"},
            {"name": "partner", "prefix": "/partner/"},
            {"name": "payments", "prefix": "/payments"},
            {"name": "page", "prefix": "/page"},
            {"name": "login", "prefix": "/login"},
        ],
        "jwt": {"providers": [demo_provider()]},
        "api_keys": {
            "header": "x-api-key",
            "keys": [{"id": "p", "sha256": hashlib.sha256(API_KEY.encode()).hexdigest(), "roles": ["partner"]}],
        },
        "signatures": {
            "keys": [{"id": "k1", "secret": {"base64": SIGNING_SECRET_B64}}],
            "policies": [{"routes": ["payments"], "require_digest": True}],
        },
        "authorization": {
            "policies": [
                {"routes": ["account"]},
                {"routes": ["partner"], "credentials": ["api_key"], "roles": ["partner"]},
            ]
        },
        "bot": bot_section,
        **extra,
    }


# --------------------------------------------------------------------------
# The upstream: records every request (path and headers in arrival order);
# /page answers an identifiable HTML page, everything else a JSON echo.
# --------------------------------------------------------------------------
class RecordingUpstream(LocalServer):
    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[str, list[tuple[str, str]]]] = []

    def answer(self, handler, body):
        headers = [(k.lower(), v) for k, v in handler.headers.items()]
        with self.lock:
            self.seen.append((handler.path, headers))
        if handler.path.startswith("/page"):
            page = f"<!doctype html><html><body><p id='upstream'>{UPSTREAM_MARK}</p></body></html>"
            return 200, "text/html; charset=utf-8", page.encode()
        doc = {"echo": True, "mark": UPSTREAM_MARK, "path": handler.path, "headers": headers}
        return 200, "application/json", json.dumps(doc).encode()

    def requests_to(self, prefix: str) -> list[list[tuple[str, str]]]:
        with self.lock:
            return [h for p, h in self.seen if p.startswith(prefix)]


@pytest.fixture
def upstream():
    server = RecordingUpstream().start()
    yield server
    server.stop()


@pytest.fixture
def bot_envoy(envoy, upstream):
    """``bot_envoy(config, pre_filters=None, **kw)``: Envoy routing everything to :func:`upstream`."""

    def start(cfg: dict, **kwargs) -> harness.EnvoyInstance:
        return envoy(
            cfg,
            concurrency=2,
            extra_routes=[TO_UPSTREAM],
            extra_clusters=[upstream.cluster("upstream")],
            **kwargs,
        )

    return start


# --------------------------------------------------------------------------
# Requests
# --------------------------------------------------------------------------
class Reply:
    """A response: status, headers (lower-case names, repeated ones joined),
    every Set-Cookie, the body; ``upstream`` is the echo's header list when
    the request reached the upstream."""

    def __init__(self, status: int, headers: dict[str, str], cookies: list[str], body: bytes) -> None:
        self.status, self.headers, self.set_cookies, self.body = status, headers, cookies, body

    @property
    def doc(self) -> dict:
        return harness.json_body(self.body)

    @property
    def reason(self) -> str | None:
        if self.status < 400:
            return None
        try:
            return json.loads(self.body).get("reason")
        except (ValueError, AttributeError):
            return None

    @property
    def upstream(self) -> list[tuple[str, str]]:
        assert self.status == 200, f"expected the upstream's 200, got {self.status}: {self.body[:400]!r}"
        doc = self.doc
        assert doc.get("mark") == UPSTREAM_MARK, f"not the upstream's answer: {doc}"
        return [tuple(h) for h in doc["headers"]]

    def upstream_values(self, name: str) -> list[str]:
        return [v for k, v in self.upstream if k == name]

    def upstream_one(self, name: str) -> str:
        values = self.upstream_values(name)
        assert len(values) == 1, f"{name}: the upstream got {values}"
        return values[0]

    @property
    def score(self) -> int:
        return int(self.upstream_one("x-palisade-bot-score"))

    @property
    def fingerprint(self) -> str:
        fp = self.upstream_one("x-palisade-fingerprint")
        assert re.fullmatch(r"[0-9a-f]{16}", fp), fp
        return fp

    def cookie(self, name: str) -> str | None:
        """``name=value`` of the Set-Cookie for ``name``."""
        for c in self.set_cookies:
            if c.startswith(name + "="):
                return c.split(";", 1)[0]
        return None

    def __repr__(self) -> str:
        return f"Reply({self.status}, {self.headers}, {self.body[:300]!r})"


def header_set(name: str) -> list[tuple[str, str]]:
    return [(k, v) for k, v in FIXTURES[name]]


def send(
    e: harness.EnvoyInstance,
    headers: list[tuple[str, str]],
    path: str = "/api/items",
    method: str = "GET",
    ip: str | None = "203.0.113.1",
    body: bytes | None = None,
) -> Reply:
    """One HTTP/1.1 request on a fresh connection, ``Host`` first, then
    ``headers`` in exactly this order, then the client address
    (``X-Forwarded-For``, unless ``ip`` is None)."""
    c = http.client.HTTPConnection("127.0.0.1", e.port, timeout=10)
    try:
        c.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        c.putheader("Host", f"127.0.0.1:{e.port}")
        for k, v in headers:
            c.putheader(k, v)
        if ip is not None:
            c.putheader("x-forwarded-for", ip)
        if body is not None:
            c.putheader("content-length", str(len(body)))
        c.endheaders(body)
        r = c.getresponse()
        data = r.read()
        return Reply(r.status, harness._collect_headers(r.msg), r.msg.get_all("set-cookie") or [], data)
    finally:
        c.close()


def send_h2(
    e: harness.EnvoyInstance, headers: list[tuple[str, str]], path: str = "/api/items", ip: str = "203.0.113.1"
) -> Reply:
    status, got, data = harness.h2_request(
        e.port, "GET", path, headers + [("x-forwarded-for", ip)], authority=f"127.0.0.1:{e.port}"
    )
    cookies = [c.strip() for c in got.get("set-cookie", "").split(", ") if c.strip()]
    return Reply(status, got, cookies, data)


def leading_zero_bits(digest: bytes) -> int:
    bits = 0
    for byte in digest:
        if byte:
            return bits + 8 - byte.bit_length()
        bits += 8
    return bits


def solve(challenge: dict) -> str:
    """``<token>.<nonce>`` whose SHA-256 has ``difficulty`` leading zero bits (hashlib, not palisade)."""
    assert challenge.get("algorithm") == "sha256-leading-zero-bits", challenge
    token, difficulty = challenge["token"], int(challenge["difficulty"])
    for nonce in range(1 << 26):
        solution = f"{token}.{nonce}"
        if leading_zero_bits(hashlib.sha256(solution.encode()).digest()) >= difficulty:
            return solution
    raise AssertionError(f"no nonce solves {challenge}")


def challenged(reply: Reply) -> dict:
    """The JSON challenge of a 403 ``bot.challenge``."""
    assert (reply.status, reply.reason) == (403, "bot.challenge"), reply
    doc = reply.doc
    assert doc.get("error") == "challenge", doc
    ch = doc.get("challenge") or {}
    assert ch.get("header") == "x-palisade-pow" and ch.get("token") and ch.get("difficulty"), doc
    assert reply.headers.get("cache-control") == "no-store", reply.headers
    return ch


# --------------------------------------------------------------------------
# 1. Browsers
# --------------------------------------------------------------------------
def test_envoy_hands_the_filter_the_clients_header_order(bot_envoy):
    """Envoy keeps the client's order (HTTP/1.1 and HTTP/2): the upstream sees
    the client's headers in the order sent, and the filter does too, since a
    Chrome header set with accept-language moved before accept-encoding (the
    only change) scores `bot.header_order` while the original does not."""
    e = bot_envoy(config({"mode": "monitor"}))
    for i, name in enumerate(BROWSERS):
        sent = header_set(name)
        names = [k for k, _ in sent if k not in ("connection",)]
        for proto, reply in (
            ("http/1.1", send(e, sent, ip=f"198.51.100.{i + 1}")),
            ("http/2", send_h2(e, sent, ip=f"198.51.100.{i + 101}")),
        ):
            got = [k for k, _ in reply.upstream]
            assert got[0] == "host", (proto, name, got)
            client_part = [k for k in got if k in names]
            assert client_part == names, f"{proto} {name}: sent {names}, upstream got {client_part}"
            # Envoy's own headers come after the client's, palisade's after those.
            last_client = max(got.index(k) for k in names)
            assert got.index("x-forwarded-proto") > last_client, (proto, name, got)
            assert got.index("x-palisade-fingerprint") > last_client, (proto, name, got)

    chrome = header_set("chrome_windows_fetch")
    swapped = [h for h in chrome if h[0] != "accept-language"]
    at = [k for k, _ in swapped].index("accept-encoding")
    swapped.insert(at, next(h for h in chrome if h[0] == "accept-language"))
    original = send(e, chrome, ip="198.51.100.201")
    reordered = send(e, swapped, ip="198.51.100.202")
    assert "bot.header_order" not in original.upstream_one("x-palisade-bot-reasons"), original
    assert "bot.header_order" in reordered.upstream_one("x-palisade-bot-reasons").split(","), reordered
    assert original.fingerprint != reordered.fingerprint, "the order pair is part of the fingerprint"
    h2_reordered = send_h2(e, swapped, ip="198.51.100.203")
    assert "bot.header_order" in h2_reordered.upstream_one("x-palisade-bot-reasons").split(","), h2_reordered

    # The filter computes the fingerprint from the order it is handed: moving
    # the second header of any order pair before the first changes the id.
    for i, (a, b) in enumerate(ORDER_PAIRS):
        names = [k for k, _ in chrome]
        assert names.index(a) < names.index(b), (a, b)
        moved = [h for h in chrome if h[0] != b]
        moved.insert(names.index(a), next(h for h in chrome if h[0] == b))
        fp = send(e, moved, ip=f"198.51.100.{210 + i}").fingerprint
        assert fp != original.fingerprint, f"{b} moved before {a}: same fingerprint"
    # HTTP/1.1 browsers send Title-Case names: Envoy lowercases them, same id.
    title = [("-".join(p.capitalize() for p in k.split("-")), v) for k, v in chrome]
    assert send(e, title, ip="198.51.100.220").fingerprint == original.fingerprint


def test_current_browsers_are_allowed_with_a_low_score(bot_envoy):
    e = bot_envoy(config())
    got = {}
    for i, name in enumerate(BROWSERS):
        for proto, reply in (
            ("http/1.1", send(e, header_set(name), ip=f"198.51.100.{i + 1}")),
            ("http/2", send_h2(e, header_set(name), ip=f"198.51.100.{i + 101}")),
        ):
            got[(name, proto)] = (reply.status, reply.score, reply.upstream_one("x-palisade-bot-reasons"))
            reply.fingerprint  # noqa: B018 - asserts 16 hex digits
    bad = {k: v for k, v in got.items() if not (v[0] == 200 and v[1] <= 10 and v[2] == "")}
    assert bad == {}, got
    # One browser has one id on its page loads and its API calls.
    nav = send(e, header_set("chrome_windows_navigate"), ip="198.51.100.50")
    fetch = send(e, header_set("chrome_windows_fetch"), ip="198.51.100.50")
    assert nav.fingerprint == fetch.fingerprint
    assert nav.fingerprint != send(e, header_set("firefox_linux_navigate"), ip="198.51.100.50").fingerprint


# --------------------------------------------------------------------------
# 2. API clients, scripts and headless browsers
# --------------------------------------------------------------------------
def sdk(token: str) -> list[tuple[str, str]]:
    return [(k, f"Bearer {token}" if k == "authorization" else v) for k, v in header_set("api_client_sdk")]


def test_api_clients_scripts_and_headless_browsers(bot_envoy, upstream):
    e = bot_envoy(config())
    token = mint("sdk-client")
    # A well-behaved SDK: low score on a public route and with its token on a JWT route.
    public = send(e, sdk(token), "/api/orders", ip="192.0.2.10")
    assert public.score <= 10 and public.upstream_one("x-palisade-bot-reasons") == "", public
    account = send(e, sdk(token), "/account/orders", ip="192.0.2.10")
    assert account.score <= 10, account
    assert account.upstream_one("x-palisade-user") == "sdk-client", account.upstream

    # python-requests: a script, challenged on a public route...
    requests_ua = header_set("python_requests")
    challenged(send(e, requests_ua, "/api/report", ip="192.0.2.11"))
    # ...but a verified client on a credential route (allow.authenticated).
    keyed = send(e, requests_ua + [("x-api-key", API_KEY)], "/partner/report", ip="192.0.2.11")
    assert keyed.status == 200, keyed
    assert "bot.automation_ua" in keyed.upstream_one("x-palisade-bot-reasons"), keyed
    wrong_key = send(e, requests_ua + [("x-api-key", "not-the-key-0123456789")], "/partner/report", ip="192.0.2.12")
    assert (wrong_key.status, wrong_key.reason) == (401, "apikey.invalid"), wrong_key
    # The same with an RFC 9421 signature on a signature route.
    body = b'{"amount": 5}'
    signed = sign(
        "POST",
        f"http://127.0.0.1:{e.port}/payments",
        {"Content-Type": "application/json"},
        body,
        key_id="k1",
        secret=base64.b64decode(SIGNING_SECRET_B64),
        components=DEFAULT_COMPONENTS,
    )
    paid = send(e, requests_ua + list(signed.items()), "/payments", "POST", ip="192.0.2.15", body=body)
    assert paid.status == 200, paid
    unsigned = send(e, requests_ua + [("content-type", "application/json")], "/payments", "POST", "192.0.2.15", body)
    assert (unsigned.status, unsigned.reason) == (401, "sig.missing"), unsigned
    # Even a headless browser is let through with a valid token (and only then).
    headless = header_set("headless_chrome")
    assert send(e, headless + [("authorization", f"Bearer {token}")], "/account", ip="192.0.2.16").status == 200
    assert send(e, headless, "/account", ip="192.0.2.16").status == 401

    # curl without credentials: the JSON challenge (not the page: no text/html).
    curl = send(e, header_set("curl"), "/api/items", ip="192.0.2.13")
    ch = challenged(curl)
    assert curl.headers.get("content-type", "").startswith("application/json"), curl.headers
    assert ch["difficulty"] == 8, ch
    # Headless Chrome: denied outright.
    headless = send(e, header_set("headless_chrome"), "/api/items", ip="192.0.2.14")
    assert (headless.status, headless.reason) == (403, "bot.deny"), headless
    assert upstream.requests_to("/api/items") == [], "a refused request reached the upstream"

    # Without allow.authenticated the same keyed script is held to its score.
    strict = bot_envoy(config({"allow": {"authenticated": False}}))
    held = send(strict, requests_ua + [("x-api-key", API_KEY)], "/partner/report", ip="192.0.2.11")
    assert (held.status, held.reason) == (403, "bot.challenge"), held


# --------------------------------------------------------------------------
# 3. Challenge round trip
# --------------------------------------------------------------------------
def test_challenge_round_trip_and_the_pass_is_bound_to_its_client(bot_envoy):
    e = bot_envoy(config())
    curl, ip = header_set("curl"), "192.0.2.20"
    ch = challenged(send(e, curl, ip=ip))
    solution = solve(ch)
    # A wrong nonce is refused.
    token = ch["token"]
    unsolved = next(
        f"{token}.{n}" for n in range(1000) if leading_zero_bits(hashlib.sha256(f"{token}.{n}".encode()).digest()) == 0
    )
    challenged(send(e, curl + [("x-palisade-pow", unsolved)], ip=ip))

    solved = send(e, curl + [("x-palisade-pow", solution)], ip=ip)
    assert solved.status == 200, solved
    pass_cookie = solved.cookie("palisade_pass")
    assert pass_cookie, f"no palisade_pass Set-Cookie: {solved.set_cookies}"
    full = next(c for c in solved.set_cookies if c.startswith("palisade_pass="))
    assert "HttpOnly" in full and "Path=/" in full, full
    assert "bot.challenge_passed" not in solved.upstream_one("x-palisade-bot-reasons")
    assert solved.score < 60, solved

    # The pass alone lets the same client through.
    again = send(e, curl + [("cookie", f"theme=dark; {pass_cookie}")], ip=ip)
    assert again.status == 200 and again.score < 60, again
    # Another header set (another fingerprint) with that pass: challenged.
    challenged(send(e, header_set("python_requests") + [("cookie", pass_cookie)], ip=ip))
    # The same header set from another address prefix: challenged too.
    challenged(send(e, curl + [("cookie", pass_cookie)], ip="198.18.7.9"))
    # The solution, too, is bound to the client.
    challenged(send(e, header_set("python_requests") + [("x-palisade-pow", solution)], ip=ip))
    # Over HTTP/2 the same client's pass works as well, also in a split cookie header.
    h2 = send_h2(e, curl + [("cookie", pass_cookie)], ip=ip)
    assert h2.status == 200, h2
    split = send_h2(e, curl + [("cookie", "theme=dark"), ("cookie", pass_cookie), ("cookie", "lang=en")], ip=ip)
    assert split.status == 200, split


def test_a_valid_pass_after_a_stale_one_is_honoured(bot_envoy):
    e = bot_envoy(config())
    curl, ip = header_set("curl"), "192.0.2.25"
    solution = solve(challenged(send(e, curl, ip=ip)))
    pass_cookie = send(e, curl + [("x-palisade-pow", solution)], ip=ip).cookie("palisade_pass")
    assert pass_cookie
    assert send(e, curl + [("cookie", pass_cookie)], ip=ip).status == 200
    # Another client's genuine pass, then this client's.
    other = header_set("python_requests")
    other_pass = send(e, other + [("x-palisade-pow", solve(challenged(send(e, other, ip=ip))))], ip=ip).cookie(
        "palisade_pass"
    )
    assert other_pass and other_pass != pass_cookie
    both = send(e, curl + [("cookie", f"{other_pass}; {pass_cookie}")], ip=ip)
    assert both.status == 200, both


# --------------------------------------------------------------------------
# 4. Forged JA4
# --------------------------------------------------------------------------
def test_a_client_sent_ja4_header_is_removed_before_palisade(bot_envoy, upstream):
    cfg = config({"fingerprint": {"ja4_header": "x-palisade-ja4"}})
    chrome = header_set("chrome_windows_fetch")
    forged = chrome + [("x-palisade-ja4", "t13d1516h2_8daaf6152771_02713d6af862")]

    edge = bot_envoy(cfg, pre_filters=[STRIP_JA4])
    plain = send(edge, chrome, ip="192.0.2.30")
    spoofed = send(edge, forged, ip="192.0.2.30")
    assert spoofed.fingerprint == plain.fingerprint, (plain.upstream, spoofed.upstream)
    assert spoofed.upstream_values("x-palisade-ja4") == [], spoofed.upstream
    h2 = send_h2(edge, forged, ip="192.0.2.31")
    assert h2.fingerprint == plain.fingerprint and h2.upstream_values("x-palisade-ja4") == [], h2.upstream

    # Without the header_mutation filter the forged value is taken as the
    # proxy's: the fingerprint changes (what the filter in front prevents).
    bare = bot_envoy(cfg)
    plain_bare = send(bare, chrome, ip="192.0.2.32")
    spoofed_bare = send(bare, forged, ip="192.0.2.32")
    assert plain_bare.fingerprint == plain.fingerprint
    assert spoofed_bare.fingerprint != plain_bare.fingerprint, spoofed_bare.upstream


# --------------------------------------------------------------------------
# 5. Fingerprint as a rate-limit key
# --------------------------------------------------------------------------
def test_fingerprint_rate_limit_key_spans_addresses(bot_envoy):
    capacity = 3
    rule = {"name": "login-fp", "key": ["fingerprint"], "routes": ["login"], "capacity": capacity, "refill": "none"}
    e = bot_envoy(config(rate_limits={"rules": [rule]}))
    chrome = header_set("chrome_windows_navigate")
    got = [send(e, chrome, "/login", ip=f"198.51.100.{i + 1}") for i in range(capacity + 2)]
    statuses = [(r.status, r.reason) for r in got]
    assert statuses == [(200, None)] * capacity + [(429, "rl.exhausted")] * 2, statuses
    firefox = send(e, header_set("firefox_linux_navigate"), "/login", ip="198.51.100.1")
    assert firefox.status == 200, firefox
    # Another route is not limited by the rule.
    assert send(e, chrome, "/api/items", ip="198.51.100.99").status == 200


# --------------------------------------------------------------------------
# 6. Behaviour over time (real time: a few seconds each)
# --------------------------------------------------------------------------
def test_a_browser_walking_ids_at_machine_pace_is_stopped(bot_envoy):
    e = bot_envoy(config())
    chrome = header_set("chrome_windows_fetch")
    outcome = []
    for i in range(15):
        reply = send(e, chrome, f"/api/items/{1000 + i}", ip="192.0.2.60")
        outcome.append((reply.status, reply.reason))
        if reply.status != 200:
            break
        time.sleep(0.25)
    assert outcome[-1][0] == 403 and outcome[-1][1] in ("bot.challenge", "bot.deny"), outcome
    assert len(outcome) <= 15, outcome


def test_a_browser_reading_at_human_pace_is_not(bot_envoy):
    e = bot_envoy(config())
    chrome = header_set("chrome_windows_fetch")
    # Irregular pauses (0.1 to 0.8 s) and items in no order.
    pauses = [0.3, 0.8, 0.15, 0.55, 0.1, 0.7, 0.35, 0.2, 0.6, 0.12, 0.45]
    items = [4711, 13, 2890, 377, 1999, 52, 3301, 845, 4120, 610, 2222, 97]
    outcome = []
    for item, pause in zip(items, pauses + [0]):
        reply = send(e, chrome, f"/api/items/{item}", ip="192.0.2.61")
        outcome.append((reply.status, reply.score if reply.status == 200 else reply.reason))
        time.sleep(pause)
    assert all(status == 200 for status, _ in outcome), outcome
    assert all(score < 60 for _, score in outcome), outcome


# --------------------------------------------------------------------------
# 7. Client copies of palisade's headers
# --------------------------------------------------------------------------
FORGED = [
    ("x-palisade-fingerprint", "0123456789abcdef"),
    ("x-palisade-bot-score", "0"),
    ("x-palisade-bot-reasons", "bot.none"),
]


def assert_not_forged(reply: Reply, what: str) -> None:
    for name, value in FORGED:
        got = reply.upstream_values(name)
        assert value not in got, f"{what}: the upstream got the client's {name}: {reply.upstream}"
        assert len(reply.upstream_values(name)) <= 1, f"{what}: {name} twice: {reply.upstream}"


def test_the_upstream_never_gets_a_client_sent_bot_header(bot_envoy):
    e = bot_envoy(config({"routes": ["api", "page"], "allow": {"cidrs": ["192.0.2.128/25"]}}))
    chrome = header_set("chrome_windows_fetch")
    scored = send(e, chrome + FORGED, "/api/items", ip="192.0.2.70")
    assert_not_forged(scored, "scored route")
    assert scored.score <= 10 and scored.fingerprint != "0123456789abcdef", scored.upstream
    # Client copies first, palisade's after them: still only palisade's.
    early = send(e, FORGED + chrome, "/api/items", ip="192.0.2.71")
    assert_not_forged(early, "forged headers sent first")
    assert_not_forged(send_h2(e, chrome + FORGED, "/api/items", ip="192.0.2.72"), "HTTP/2")
    assert_not_forged(send(e, chrome + FORGED, "/login", ip="192.0.2.73"), "route outside bot.routes")
    allowlisted = send(e, chrome + FORGED, "/api/items", ip="192.0.2.200")
    assert_not_forged(allowlisted, "allowlisted address (not scored)")
    # A verified client (no score held against it) on a credential route.
    keyed = send(e, header_set("python_requests") + FORGED + [("x-api-key", API_KEY)], "/partner/x", ip="192.0.2.74")
    assert_not_forged(keyed, "verified client")

    quiet = bot_envoy(config({"upstream_headers": False}))
    off = send(quiet, chrome + FORGED, "/api/items", ip="192.0.2.75")
    assert_not_forged(off, "upstream_headers: false")
    assert all(off.upstream_values(n) == [] for n in BOT_HEADERS), off.upstream


# --------------------------------------------------------------------------
# 8. Secrets stay out of the log
# --------------------------------------------------------------------------
def test_no_pass_solution_or_secret_in_the_envoy_log(bot_envoy):
    e = bot_envoy(config({"events": "all"}), component_log_level="wasm:trace")
    curl, ip = header_set("curl"), "192.0.2.80"
    replies = [send(e, curl, ip=ip)]
    solution = solve(challenged(replies[0]))
    replies.append(send(e, curl + [("x-palisade-pow", solution)], ip=ip))
    pass_cookie = replies[-1].cookie("palisade_pass")
    assert pass_cookie, replies[-1]
    replies.append(send(e, curl + [("cookie", pass_cookie)], ip=ip))
    # Refused ones too: another client's solution and pass, a tampered pass.
    replies.append(send(e, header_set("python_requests") + [("x-palisade-pow", solution)], ip=ip))
    replies.append(send(e, header_set("python_requests") + [("cookie", pass_cookie)], ip=ip))
    replies.append(send(e, curl + [("cookie", pass_cookie[:-2] + "AA")], ip=ip))
    # The page's cookie form of a solution.
    replies.append(send(e, curl + [("cookie", f"palisade_pow={solution}")], ip=ip))
    assert [r.status for r in replies] == [403, 200, 200, 403, 403, 403, 200], [(r.status, r.reason) for r in replies]

    time.sleep(0.3)  # the log is flushed every 100 ms
    log = e.wait_for_log('"event":"palisade.bot"')
    assert '"event":"palisade.bot"' in log, harness.tail(log)
    raw_secret = base64.b64decode(SECRET_B64)
    secrets = {
        "pass cookie": pass_cookie.split("=", 1)[1],
        "solution": solution,
        "challenge secret (base64)": SECRET_B64,
        "challenge secret (text)": raw_secret.decode(),
        "challenge secret (hex)": raw_secret.hex(),
    }
    found = harness.leaks(secrets, log, [])
    assert not found, found


# --------------------------------------------------------------------------
# Task B: the challenge page in a real browser
# --------------------------------------------------------------------------
