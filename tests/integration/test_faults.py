"""Fault injection on the remote JWKS endpoint (issue 17, item 3), against a real Envoy.

The JWKS server (jwks_server.JwksServer, cluster ``idp_jwks``) is made to
fail in each way an identity provider can: slow (answers after palisade's
fetch timeout), garbage (200, not JSON), valid JSON without a usable key (an
empty set; a set of only unsupported or refused keys), huge (200, a valid set
padded to 1 MiB, over palisade's 256 KiB limit), error statuses (404, 503)
and down (connection refused). For each:

* at start (no key set ever loaded): a valid token follows ``without_keys``
  (``deny``: 503 ``jwt.no_keys``; ``allow``: passed through), no fetch counts
  as a success, and once the endpoint recovers the keys load and tokens are
  verified for real;
* mid-run (keys loaded, then the fault): tokens signed with the last good
  key keep passing, forged, expired and unknown-``kid`` tokens are still
  refused, and a stream of unknown ``kid``s over the 4 workers causes at most
  one fetch per ``min_refetch`` (counted at the server and by palisade's
  ``palisade_jwks_fetches_total``); the keys the faulty endpoint would have
  served (a rotated key) are never installed, and are once it recovers;
* slow: requests are answered while the fetch is outstanding (checked by
  state: the fetch is still unanswered at the server and uncounted by
  palisade when the response arrives), and the late answer does not count.

In every case the Envoy log shows no wasm VM failure or panic, the failed
fetch is logged as a warning, no byte the faulty endpoint sent (a unique
marker in each body) is quoted in the log, and normal traffic is served
afterwards. Tests use short ``min_refetch``/``timeout`` values (the
configuration requires ``min_refetch >= timeout``; before the first success
retries come every ``max(min(min_refetch, 5s), timeout)``).
"""

from __future__ import annotations

import base64
import collections
import re
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

import harness
from harness import palisade_counter, palisade_lines
from jwks_server import JwksServer
from test_jwt import EC_KEY, JWKS_PATH, REMOTE_ISSUER, ROGUE, RSA_KEY, bearer, jwk, remote_config, sign_token, wait_until
from test_signatures import expect

# Fast faults: a fetch times out after 1 s; refetches at most every 2 s.
TIMEOUT_S, MIN_REFETCH_S = 1, 2
# The slow fault: the fetch is outstanding for 6 s (palisade's timeout), the
# server would answer after 12 s.
SLOW_TIMEOUT_S, SLOW_DELAY_S = 6, 12
WORKERS = 4
MAX_JWKS_BYTES = 256 * 1024  # filters/palisade/src/lib.rs

CRASH = re.compile(
    r"panicked at|palisade: panic|Function: proxy_on_\w+ failed|wasm vm crash|VM (?:has )?crash|"
    r"Wasm VM failed|failed to load wasm|stack overflow|out of bounds memory access",
    re.IGNORECASE,
)
# The warnings a failed fetch leaves (src/stages/auth/mod.rs, jwks_fetched).
FETCH_WARNING = re.compile(
    r"\[warning\].*palisade: (?:JWKS fetch for provider `remote` failed: .+; the last good key set stays in use"
    r"|JWKS of provider `remote` has no usable key; the last good key set stays in use)"
)


def config(without_keys: str = "deny", *, timeout_s: int = TIMEOUT_S, min_refetch_s: int = MIN_REFETCH_S) -> dict:
    return remote_config(without_keys, min_refetch_s=min_refetch_s, timeout_s=timeout_s)


# --------------------------------------------------------------------------
# Tokens: "remote-a" is the key served from the start, "remote-b" the key
# the endpoint adds when the fault starts (installed only once it recovers).
# --------------------------------------------------------------------------
def valid() -> str:
    return sign_token("RS256", key=RSA_KEY, kid="remote-a", iss=REMOTE_ISSUER)


def rotated() -> str:
    return sign_token("ES256", key=EC_KEY, kid="remote-b", iss=REMOTE_ISSUER)


def forged() -> str:
    return sign_token("RS256", key=ROGUE["RSA"], kid="remote-a", iss=REMOTE_ISSUER)


def expired() -> str:
    return sign_token("RS256", key=RSA_KEY, kid="remote-a", iss=REMOTE_ISSUER, now=int(time.time()) - 1000)


def unknown_kid() -> str:
    return sign_token("RS256", key=ROGUE["RSA"], kid=f"rotated-{uuid.uuid4().hex[:8]}", iss=REMOTE_ISSUER)


KEY_A = jwk(RSA_KEY, "remote-a")
KEY_B = jwk(EC_KEY, "remote-b")


# --------------------------------------------------------------------------
# Faults
# --------------------------------------------------------------------------
def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


@dataclass(frozen=True)
class Fault:
    name: str
    apply: Callable[[JwksServer, str], None]  # (server, marker): start the fault
    # Whether the server sees the fetches (not when it is down).
    answered: bool = True


def _unsupported(server: JwksServer, marker: str) -> None:
    """JSON with a `keys` array, but no key palisade may use from a fetched set:
    an HMAC key (never from a fetched set; its secret holds the marker), an
    RSA key under 2048 bits, a curve palisade does not support, a private
    key, and entries that are not keys."""
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    keys = [
        {"kty": "oct", "kid": "remote-b", "k": b64url(f"{marker}-{marker}".encode())},
        jwk(small, "small-rsa"),
        {"kty": "EC", "crv": "secp256k1", "kid": "k1", "x": b64url(marker.encode()), "y": b64url(marker.encode())},
        {**KEY_A, "kid": "private", "d": b64url(marker.encode())},
        {"kty": "RSA", "kid": "no-modulus", "e": "AQAB"},
        marker,
        None,
    ]
    server.document({"keys": keys})


FAULTS = [
    Fault("garbage", lambda s, m: s.garbage(f"<html><body><h1>502 Bad Gateway</h1>{m}</body></html>".encode())),
    Fault("empty_set", lambda s, m: s.document({"keys": [], "note": m})),
    Fault("no_keys_member", lambda s, m: s.document({"issuer": REMOTE_ISSUER, "jwks_uri": m})),
    Fault("unsupported_keys", _unsupported),
    # 80,000 entries that are not keys, under the size limit: a few log lines per fetch, not one per entry.
    Fault("many_bad_entries", lambda s, m: s.document({"keys": [0] * 80_000, "note": m})),
    Fault("huge", lambda s, m: s.huge(4 * MAX_JWKS_BYTES, marker=m)),  # 1 MiB
    Fault("status_404", lambda s, m: s.fail(404)),
    Fault("status_503", lambda s, m: s.fail(503)),
    Fault("down", lambda s, m: s.stop(), answered=False),
]


def recover(server: JwksServer, keys: list[dict]) -> None:
    server.set_keys(keys)  # ends the fault
    server.start()  # no-op unless it was down


# --------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------
def fetched(e: harness.EnvoyInstance, result: str) -> float:
    return palisade_counter(e.prometheus(), "palisade_jwks_fetches_total", result=result)


def send(e: harness.EnvoyInstance, token: str, path: str = "/api/x") -> harness.Response:
    """One request on a fresh connection (connections spread over the workers)."""
    return e.request("GET", path, bearer(token))


def accepted_within(e: harness.EnvoyInstance, make_token: Callable[[], str], timeout: float, what: str) -> None:
    def attempt():
        resp = send(e, make_token(), "/api/ready")
        return resp[0] == 200, (resp[0], harness.reason_of(resp))

    wait_until(what, attempt, timeout)


def served_everywhere(e: harness.EnvoyInstance, make_token: Callable[[], str], n: int = 12) -> None:
    """``n`` fresh connections in a row (spread over the workers) all get 200."""
    for i in range(n):
        expect(send(e, make_token(), f"/api/ok-{i}"), 200)


def assert_verifies(e: harness.EnvoyInstance) -> None:
    """Keys are loaded and used: good tokens pass, bad ones get their own reason."""
    served_everywhere(e, valid)
    expect(send(e, forged()), 401, "jwt.signature")
    expect(send(e, expired()), 401, "jwt.expired")
    expect(send(e, unknown_kid()), 401, "jwt.unknown_kid")


def keys_loaded_again(deny: harness.EnvoyInstance, allow: harness.EnvoyInstance, timeout: float, what: str) -> None:
    """After a fault at start: both Envoys (``without_keys`` deny and allow)
    load keys within ``timeout`` and verify with them. ``allow`` passed
    tokens while it had none, so a forged token's refusal is what shows it."""
    accepted_within(deny, valid, timeout, f"keys loaded after {what} (deny)")
    wait_until(
        f"keys loaded after {what} (allow): a forged token is refused",
        lambda: (harness.reason_of(send(allow, forged())) == "jwt.signature", None),
        timeout,
    )
    for e in (deny, allow):
        assert_verifies(e)


def check_log(e: harness.EnvoyInstance, marker: str) -> None:
    """No VM failure or panic; the failed fetch logged as a warning; nothing
    of the faulty body (its marker) quoted."""
    wait_until("a failed fetch logged as a warning", lambda: (FETCH_WARNING.search(e.log_text()), None), 5)
    log = e.log_text()
    crash = CRASH.search(log)
    assert crash is None, f"VM failure or panic in the Envoy log: {crash.group(0)!r}"
    assert marker not in log, "the log quotes the body the faulty JWKS endpoint sent"
    skipped = log.count("JWKS entry skipped")
    parsed = log.count("has no usable key") + log.count("fetched key set generation")
    assert skipped <= 8 * parsed, f"{skipped} skipped-entry lines for {parsed} parsed key sets: a log flood"
    for line in log.splitlines():
        if "JWKS" in line and "palisade" in line:
            assert len(line) < 600, f"a long JWKS log line (a quoted body?): {line[:200]!r}..."


def burst_of_unknown_kids(e: harness.EnvoyInstance, seconds: float, threads: int = WORKERS) -> collections.Counter:
    """``threads`` clients, each on fresh connections for ``seconds``: unknown
    kids, rotated-key tokens (unknown during the fault), valid and forged
    tokens. Returns the (token kind, status, reason) counts."""
    results: collections.Counter = collections.Counter()
    errors: list[BaseException] = []
    lock = threading.Lock()
    kinds = [("unknown_kid", unknown_kid), ("rotated", rotated), ("valid", valid), ("forged", forged)]
    deadline = time.monotonic() + seconds

    def client() -> None:
        out: collections.Counter = collections.Counter()
        try:
            i = 0
            while time.monotonic() < deadline:
                kind, make = kinds[i % len(kinds)]
                resp = send(e, make(), f"/api/burst-{i}")
                out[(kind, resp[0], harness.reason_of(resp))] += 1
                i += 1
        except Exception as exc:  # noqa: BLE001 - reported below
            with lock:
                errors.append(exc)
        with lock:
            results.update(out)

    pool = [threading.Thread(target=client) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join(timeout=seconds + 60)
    assert not errors, errors[:3]
    return results


# The outcome of each token kind while the last good set is {remote-a}.
DURING_FAULT = {
    "unknown_kid": (401, "jwt.unknown_kid"),
    "rotated": (401, "jwt.unknown_kid"),
    "valid": (200, None),
    "forged": (401, "jwt.signature"),
}


@pytest.fixture
def server():
    s = JwksServer([KEY_A], path=JWKS_PATH).start()
    yield s
    s.stop()


def start(envoy, server: JwksServer, without_keys: str = "deny", **kw) -> harness.EnvoyInstance:
    return envoy(config(without_keys, **kw), concurrency=WORKERS, extra_clusters=[server.cluster("idp_jwks")])


# --------------------------------------------------------------------------
# (a) At start: no key set was ever loaded
# --------------------------------------------------------------------------
@pytest.mark.parametrize("fault", FAULTS, ids=[f.name for f in FAULTS])
def test_fault_at_start_follows_without_keys_then_recovers(envoy, server, fault):
    marker = f"MARKER{uuid.uuid4().hex}"
    fault.apply(server, marker)
    deny = start(envoy, server, "deny")
    allow = start(envoy, server, "allow")

    # At least the first fetch and one retry failed on each Envoy.
    for e in (deny, allow):
        wait_until(
            "two failed fetches counted",
            lambda e=e: (fetched(e, "failed") >= 2, palisade_lines(e.prometheus())),
            timeout=4 * MIN_REFETCH_S + 10,
        )
    if fault.answered:
        assert server.fetch_count >= 4, server.fetches
        assert all(f.fault for f in server.fetches), server.fetches

    for i in range(WORKERS * 2):
        expect(send(deny, valid(), f"/api/early-{i}"), 503, "jwt.no_keys")
        # allow: passed through unauthenticated, whatever the token.
        for token in (valid(), forged()):
            status, _, body = send(allow, token, f"/api/early-{i}")
            assert (status, body) == (200, b"ok"), f"without_keys allow: got {status}: {body[:200]!r}"
    for e in (deny, allow):
        assert fetched(e, "ok") == 0, palisade_lines(e.prometheus())
        check_log(e, marker)
    # Still nothing loaded after the requests (they did not install anything).
    expect(send(deny, valid()), 503, "jwt.no_keys")

    recover(server, [KEY_A])
    keys_loaded_again(deny, allow, 3 * MIN_REFETCH_S + 10, "the endpoint recovered")
    for e in (deny, allow):
        assert fetched(e, "ok") >= 1, palisade_lines(e.prometheus())
        check_log(e, marker)


# --------------------------------------------------------------------------
# (b) Mid-run: keys loaded, then the fault
# --------------------------------------------------------------------------
@pytest.mark.parametrize("fault", FAULTS, ids=[f.name for f in FAULTS])
def test_fault_mid_run_keeps_last_good_keys_without_a_fetch_storm(envoy, server, fault):
    marker = f"MARKER{uuid.uuid4().hex}"
    e = start(envoy, server, "deny")
    accepted_within(e, valid, 15, "first key set loaded")
    served_everywhere(e, valid)
    ok_before, failed_before = fetched(e, "ok"), fetched(e, "failed")
    cx_before = collections.Counter(e.workers_with_connections())

    # The endpoint rotates in key B and fails at once: B must not be installed.
    server.set_keys([KEY_A, KEY_B])
    fault.apply(server, marker)
    t_fault = time.monotonic()
    # Wait out min_refetch since the last fetch, so that the burst may (and must) cause a refetch.
    time.sleep(max(0.0, server.fetches[-1].at + MIN_REFETCH_S + 0.2 - time.monotonic()))

    t0 = time.monotonic()
    outcome = burst_of_unknown_kids(e, seconds=3 * MIN_REFETCH_S)
    wait_until(
        "the fetch during the fault failed and was counted",
        lambda: (fetched(e, "failed") > failed_before, palisade_lines(e.prometheus())),
        timeout=TIMEOUT_S + 10,
    )
    time.sleep(TIMEOUT_S + 0.5)  # let a fetch the end of the burst started finish
    elapsed = time.monotonic() - t0

    # Every request got its deliberate answer on the last good keys.
    wrong = {k: n for k, n in outcome.items() if DURING_FAULT[k[0]] != k[1:]}
    assert not wrong, f"unexpected answers during the fault: {wrong} (all: {dict(outcome)})"
    assert sum(n for k, n in outcome.items() if k[0] == "unknown_kid") >= 8, dict(outcome)
    workers = collections.Counter(e.workers_with_connections()) - cx_before
    assert len(workers) >= 2, f"the burst's connections all landed on worker(s) {dict(workers)}"

    # No fetch storm: at most one fetch per min_refetch for the whole process.
    bound = 1 + int(elapsed / MIN_REFETCH_S) + 1
    failed = fetched(e, "failed") - failed_before
    print(f"{fault.name}: {sum(outcome.values())} requests in {elapsed:.1f}s on workers {dict(workers)}: "
          f"{failed:.0f} failed fetches (bound {bound}), server saw {len(server.fetches_since(t_fault))}")
    assert 1 <= failed <= bound, f"{failed} failed fetches in {elapsed:.1f}s (bound {bound})"
    assert fetched(e, "ok") == ok_before, "a faulty answer counted as a successful fetch"
    if fault.answered:
        during = server.fetches_since(t_fault)
        assert 1 <= len(during) <= bound, f"{len(during)} fetches at the server in {elapsed:.1f}s (bound {bound})"
        assert all(f.fault for f in during), during

    # Afterwards: the last good keys still serve every worker; B is still unknown.
    assert_verifies(e)
    expect(send(e, rotated()), 401, "jwt.unknown_kid")
    check_log(e, marker)

    # The endpoint recovers: the rotated set is installed (an unknown kid asks for it).
    recover(server, [KEY_A, KEY_B])
    accepted_within(e, rotated, 2 * MIN_REFETCH_S + 10, "rotated key loaded after the endpoint recovered")
    served_everywhere(e, rotated)
    assert_verifies(e)
    assert fetched(e, "ok") > ok_before, palisade_lines(e.prometheus())
    check_log(e, marker)


# --------------------------------------------------------------------------
# (c) Slow: requests are never held on the fetch; a late answer does not count
# --------------------------------------------------------------------------
def answered_while_fetching(
    e: harness.EnvoyInstance, server: JwksServer, check: Callable[[int], None], t_fault: float, failed_before: float
) -> int:
    """Runs ``check(i)`` (requests and their expected answers) until one ran
    entirely while a slow fetch was outstanding; returns the attempts made.

    Outstanding, by state rather than by timing: every slow fetch fails (its
    answer comes after palisade's timeout), so while the server has received
    more fetches since ``t_fault`` than palisade has counted failed, one is
    in flight; if that holds before and after ``check`` and no failure was
    counted in between, the same fetch was in flight all along."""
    deadline = time.monotonic() + 3 * SLOW_TIMEOUT_S + 20
    attempts = 0
    while time.monotonic() < deadline:
        failed = fetched(e, "failed") - failed_before
        if len(server.fetches_since(t_fault)) > failed:
            check(attempts)
            attempts += 1
            after = fetched(e, "failed") - failed_before
            if after == failed and len(server.fetches_since(t_fault)) > after:
                return attempts
        else:
            time.sleep(0.1)
    raise AssertionError(f"no request was answered while a fetch was outstanding ({attempts} attempts)")


@pytest.fixture
def server2():
    s = JwksServer([KEY_A], path=JWKS_PATH).start()
    yield s
    s.stop()


def test_slow_endpoint_at_start_never_holds_requests(envoy, server, server2):
    # One server per Envoy, so that each one's fetches are counted apart.
    t_fault = time.monotonic()
    server.slow(SLOW_DELAY_S)
    server2.slow(SLOW_DELAY_S)
    deny = start(envoy, server, "deny", timeout_s=SLOW_TIMEOUT_S, min_refetch_s=SLOW_TIMEOUT_S)
    allow = start(envoy, server2, "allow", timeout_s=SLOW_TIMEOUT_S, min_refetch_s=SLOW_TIMEOUT_S)

    def deny_check(i: int) -> None:
        expect(send(deny, valid(), f"/api/while-fetching-{i}"), 503, "jwt.no_keys")

    def allow_check(i: int) -> None:
        status, _, body = send(allow, valid(), f"/api/while-fetching-{i}")
        assert (status, body) == (200, b"ok"), f"without_keys allow: got {status}: {body[:200]!r}"

    answered_while_fetching(deny, server, deny_check, t_fault, 0)
    answered_while_fetching(allow, server2, allow_check, t_fault, 0)

    # The fetches time out; the servers' late answers (a valid set) are not taken.
    for e, s in ((deny, server), (allow, server2)):
        wait_until("a slow fetch failed", lambda e=e: (fetched(e, "failed") >= 1, palisade_lines(e.prometheus())),
                   SLOW_TIMEOUT_S + 10)
        wait_until("the server sent a late answer", lambda s=s: (s.slow_pending < s.fetch_count, s.fetches),
                   SLOW_DELAY_S + 5)
    for i in range(WORKERS * 2):
        expect(send(deny, valid(), f"/api/after-timeout-{i}"), 503, "jwt.no_keys")
    for e in (deny, allow):
        assert fetched(e, "ok") == 0, palisade_lines(e.prometheus())
        check_log(e, KEY_A["n"][:48])  # the late answer (the key set) is not quoted

    server.recover()
    server2.recover()
    keys_loaded_again(deny, allow, 2 * SLOW_TIMEOUT_S + 10, "the endpoint sped up")


def test_slow_endpoint_mid_run_never_holds_requests(envoy, server):
    e = start(envoy, server, "deny", timeout_s=SLOW_TIMEOUT_S, min_refetch_s=SLOW_TIMEOUT_S)
    accepted_within(e, valid, 15, "first key set loaded")
    served_everywhere(e, valid)
    ok_before, failed_before = fetched(e, "ok"), fetched(e, "failed")

    # Rotated set, served slowly: if the late answer were taken, B would pass.
    server.set_keys([KEY_A, KEY_B])
    server.slow(SLOW_DELAY_S)
    t_fault = time.monotonic()
    time.sleep(max(0.0, server.fetches[-1].at + SLOW_TIMEOUT_S + 0.2 - time.monotonic()))
    before = server.fetch_count
    expect(send(e, unknown_kid()), 401, "jwt.unknown_kid")
    assert server.wait_for_fetch(before, timeout=10), "an unknown kid caused no refetch"

    kinds = [(valid, 200, None), (forged, 401, "jwt.signature"), (unknown_kid, 401, "jwt.unknown_kid"),
             (rotated, 401, "jwt.unknown_kid")]

    def check(i: int) -> None:
        for make, status, reason in kinds:
            expect(send(e, make(), f"/api/while-fetching-{i}"), status, reason)

    answered_while_fetching(e, server, check, t_fault, failed_before)
    # One fetch in flight for the whole process, whatever the unknown kids
    # (the next may start min_refetch = timeout after it).
    during = server.fetches_since(t_fault)
    first = during[0]
    in_flight = [f for f in during if f.at < first.at + SLOW_TIMEOUT_S - 0.5]
    assert len(in_flight) == 1, during

    wait_until("the slow fetch failed", lambda: (fetched(e, "failed") > failed_before, palisade_lines(e.prometheus())),
               SLOW_TIMEOUT_S + 10)
    wait_until("the server sent its late answer", lambda: (server.slow_pending < len(server.fetches_since(t_fault)),
               server.fetches), SLOW_DELAY_S + 5)
    time.sleep(1.5)  # a tick on every worker: nothing new may be installed
    assert fetched(e, "ok") == ok_before, "the late answer counted as a successful fetch"
    expect(send(e, rotated()), 401, "jwt.unknown_kid")
    assert_verifies(e)
    check_log(e, KEY_B["x"])

    server.recover()
    accepted_within(e, rotated, 2 * SLOW_TIMEOUT_S + 10, "rotated key loaded after the endpoint sped up")
    assert_verifies(e)
