"""The bot stage's challenge page in a real browser: headless Chromium loads
a page that palisade holds back, runs the page's proof of work
(``crypto.subtle``; ``http://127.0.0.1`` is a secure context), reloads with
the solution cookie and reaches the upstream.

Headless Chromium says so in its User-Agent (``HeadlessChrome``), which the
shipped model scores about 97: the thresholds here (challenge 50, deny 100)
challenge it instead of denying it, and the pass (weight -6) brings it under
50. Chromium is driven with ``--dump-dom`` and a virtual-time budget: it
prints the DOM once the page (and the reload its script makes) is done.

Chromium comes from Debian (``make integration`` installs it when missing,
target ``chromium``); ``CHROMIUM=/path/to/chromium`` picks another binary. A
missing browser is a failure, never a skip, like a missing Envoy.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import subprocess
import time

import pytest

from test_bot import FIXTURES, TO_UPSTREAM, UPSTREAM_MARK, RecordingUpstream, leading_zero_bits, send

DIFFICULTY = 12
SECRET_B64 = base64.b64encode(b"bot-itests browser challenge secret 0123").decode()
CONFIG = {
    "version": 1,
    # Chromium connects from 127.0.0.1 and sends no X-Forwarded-For.
    "client_ip": {"source": "peer"},
    "routes": [{"name": "page", "prefix": "/page"}],
    "bot": {
        "events": "all",
        "thresholds": {"challenge": 50, "deny": 100},
        "challenge": {"secret": {"base64": SECRET_B64}, "difficulty": DIFFICULTY},
    },
}
BROWSER_TIMEOUT = float(os.environ.get("PALISADE_BROWSER_TIMEOUT", "60"))


def chromium_binary() -> str:
    env = os.environ.get("CHROMIUM")
    for candidate in ([env] if env else []) + ["chromium", "chromium-browser", "google-chrome"]:
        path = shutil.which(candidate) if candidate else None
        if path:
            return path
    pytest.fail(
        "Chromium not found (CHROMIUM={!r}): `make integration` installs Debian's chromium "
        "(target `chromium`), or set CHROMIUM=/path/to/chromium".format(env),
        pytrace=False,
    )


def dump_dom(url: str, profile) -> tuple[str, str]:
    """Headless Chromium loads ``url``; returns (DOM, stderr without D-Bus noise)."""
    cmd = [
        chromium_binary(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--no-default-browser-check",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-extensions",
        f"--user-data-dir={profile}",
        "--virtual-time-budget=20000",
        "--dump-dom",
        url,
    ]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=BROWSER_TIMEOUT, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as e:
        raise AssertionError(
            f"Chromium did not finish within {BROWSER_TIMEOUT}s: {' '.join(cmd)}\nDOM so far: {e.stdout!r}"
        ) from e
    noise = ("dbus", "DBus", "Fontconfig", "gcm", "UPower")
    stderr = "\n".join(line for line in out.stderr.splitlines() if not any(n in line for n in noise))
    return out.stdout, stderr[-3000:]


def cookies_of(headers: list[tuple[str, str]]) -> dict[str, str]:
    out = {}
    for k, v in headers:
        if k == "cookie":
            for part in v.split(";"):
                name, _, value = part.strip().partition("=")
                out[name] = value
    return out


def bot_events(log: str) -> list[dict]:
    out = []
    for line in log.splitlines():
        at = line.find("palisade: {")
        if '"event":"palisade.bot"' in line and at >= 0:
            out.append(json.loads(line[at + len("palisade: "):]))
    return out


def test_headless_chromium_solves_the_challenge_page_and_reaches_the_upstream(envoy, tmp_path):
    upstream = RecordingUpstream().start()
    try:
        e = envoy(CONFIG, concurrency=2, extra_routes=[TO_UPSTREAM], extra_clusters=[upstream.cluster("upstream")])
        url = f"{e.base_url}/page"

        # A browser navigation without a proof gets the page, not the upstream.
        headless = [(k, v) for k, v in FIXTURES["headless_chrome"]]
        page = send(e, headless, "/page", ip=None)
        assert page.status == 403, page
        assert page.headers.get("content-type", "").startswith("text/html"), page.headers
        html = page.body.decode()
        assert 'data-token="' in html and f'data-difficulty="{DIFFICULTY}"' in html, html[:500]
        assert "script-src 'sha256-" in page.headers.get("content-security-policy", ""), page.headers
        # A script without solving: 403, no upstream.
        curl = send(e, [(k, v) for k, v in FIXTURES["curl"]], "/page", ip=None)
        assert (curl.status, curl.reason) == (403, "bot.challenge"), curl
        assert upstream.requests_to("/page") == [], "an unsolved request reached the upstream"

        dom, stderr = dump_dom(url, tmp_path / "profile")
        time.sleep(0.3)  # the log is flushed every 100 ms
        context = f"\n--- DOM ---\n{dom[:2000]}\n--- Chromium stderr ---\n{stderr}\n--- Envoy log ---\n{e.log_tail(30)}"
        assert UPSTREAM_MARK in dom, "the browser did not reach the upstream" + context

        seen = upstream.requests_to("/page")
        assert seen, "the upstream saw no /page request" + context
        first = cookies_of(seen[0])
        no_solution = f"the upstream's first /page request had no solution cookie: {seen[0]}"
        assert "palisade_pow" in first, no_solution + context
        solution = first["palisade_pow"]
        digest = hashlib.sha256(solution.encode()).digest()
        assert leading_zero_bits(digest) >= DIFFICULTY, f"{solution!r} does not solve difficulty {DIFFICULTY}"
        ua = dict(seen[0]).get("user-agent", "")
        assert "HeadlessChrome" in ua, ua
        for headers in seen:
            score = int(dict(headers)["x-palisade-bot-score"])
            assert score < 50, f"the upstream got a request scored {score}: {headers}"

        fp = dict(seen[0])["x-palisade-fingerprint"]

        def browser_events() -> list[dict]:
            return [ev for ev in bot_events(e.log_text()) if ev.get("fingerprint") == fp and ev.get("route") == "page"]

        events = browser_events()
        actions = [ev["action"] for ev in events]
        assert actions[:2] == ["challenge", "allow"], f"palisade.bot events: {events}" + context
        assert events[0]["signals"]["headless_ua"] == 1.0 and events[1]["signals"]["challenge_passed"] == 1.0, events

        # The same browser again (same profile): its pass cookie alone lets it through.
        dom2, stderr2 = dump_dom(url, tmp_path / "profile")
        time.sleep(0.3)
        assert UPSTREAM_MARK in dom2, "the second visit did not reach the upstream" + context
        again = upstream.requests_to("/page")[len(seen):]
        assert again, "the second visit never reached the upstream"
        assert "palisade_pass" in cookies_of(again[0]), f"the second visit carried no pass: {again[0]}"
        later = [ev["action"] for ev in browser_events()][len(events):]
        assert later and "challenge" not in later, f"the second visit was challenged again: {later}"
    finally:
        upstream.stop()
