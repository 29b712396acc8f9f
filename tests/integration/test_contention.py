"""Exactness of every shared table under contention (issue 17 items 3 and 5).

Envoy runs 4 workers; each burst goes out over 16 HTTP/2 connections
(the kernel spreads connections over the workers), released together by a
``threading.Barrier``, each connection's share as concurrent streams in one
write, and each test checks that the connections reached at least 3
workers. All shared state palisade keeps is updated by compare-and-swap;
a lost update would show as one request too many let through (a bucket,
an overflow bucket, a nonce, a refresh token), a strike counted twice or
not at all (bans), a path forgotten (the behaviour record), or a second
fetch (the remote key set). What is asserted, per table:

* rate-limit buckets, many keys at once and two rules at once: every key
  gets exactly its capacity, a global rule exactly its own;
* the per-rule overflow bucket of a full table: exactly the rule's capacity
  for all unplaced keys together;
* bans: the strikes of concurrent violations make exactly one ban, of the
  first level;
* a ``counts: failures`` rule: exactly one token per refused request (how
  many requests are verified before the bucket refuses is not exact: see
  the test);
* refresh tokens and signature nonces: each accepted exactly once, however
  many copies race, and distinct ones never mistaken for each other;
* the bot behaviour record: paths arriving together on all workers leave
  the same path sketch as the same paths sent one by one;
* the remote key set: unknown kids on every worker at once claim exactly
  one fetch.

A request whose every compare-and-swap lost is answered 503
``store.unavailable`` (README, ``failure_mode``: "sustained write
contention"); it changed nothing, so it is counted and sent again, and it
must never be a pass. No other answer is retried.
"""

from __future__ import annotations

import base64
import collections
import hashlib
import json
import secrets
import socket
import threading
import time
import uuid

import h2.config
import h2.connection
import h2.events

import harness
import signing
from jwks_server import JwksServer
from test_jwt import EC_KEY, JWKS_PATH, REMOTE_ISSUER, REMOTE_KEYS, RSA_KEY, bearer, jwk, remote_config, sign_token

WORKERS = 4
# HTTP/2 connections a burst is spread over (the kernel hands each to a
# worker), each carrying its share of the burst as concurrent streams sent in
# one write: every worker then runs its requests back to back, at the same
# time as the others, which is what makes compare-and-swaps collide.
CONNECTIONS = 16
# Retries of one request answered 503 store.unavailable, before giving up.
MAX_CONTENTION_RETRIES = 50

Request = tuple[str, str, dict[str, str], bytes]  # method, path, headers, body


def h2_streams(port: int, requests: list[Request], barrier: threading.Barrier, authority: str) -> list:
    """``requests`` as concurrent streams of one HTTP/2 connection, all sent
    in one write once ``barrier`` is passed; their responses, in order."""
    config = h2.config.H2Configuration(client_side=True, header_encoding=None)
    conn = h2.connection.H2Connection(config=config)
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        conn.initiate_connection()
        sock.sendall(conn.data_to_send())
        barrier.wait()
        ids = []
        for method, path, headers, body in requests:
            sid = conn.get_next_available_stream_id()
            ids.append(sid)
            block = [(":method", method), (":scheme", "http"), (":authority", authority), (":path", path)]
            block += [(k.lower(), v) for k, v in headers.items()]
            conn.send_headers(sid, [(k.encode(), v.encode()) for k, v in block], end_stream=not body)
            if body:
                conn.send_data(sid, body, end_stream=True)
        sock.sendall(conn.data_to_send())
        status = dict.fromkeys(ids, 0)
        got: dict[int, dict[str, str]] = {sid: {} for sid in ids}
        data: dict[int, bytearray] = {sid: bytearray() for sid in ids}
        open_streams = set(ids)
        while open_streams:
            chunk = sock.recv(65536)
            if not chunk:
                raise harness.HarnessError(f"HTTP/2: connection closed with {len(open_streams)} streams open")
            for event in conn.receive_data(chunk):
                if isinstance(event, h2.events.ResponseReceived):
                    for k, v in event.headers:
                        k, v = k.decode("latin-1"), v.decode("latin-1")
                        if k == ":status":
                            status[event.stream_id] = int(v)
                        else:
                            got[event.stream_id][k] = v
                elif isinstance(event, h2.events.DataReceived):
                    data[event.stream_id] += event.data
                    conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                elif isinstance(event, h2.events.StreamEnded):
                    open_streams.discard(event.stream_id)
                elif isinstance(event, h2.events.StreamReset):
                    raise harness.HarnessError(f"HTTP/2: stream reset (error code {event.error_code})")
            sock.sendall(conn.data_to_send())
    return [(status[sid], got[sid], bytes(data[sid])) for sid in ids]


class Burst:
    """Requests released together over :data:`CONNECTIONS` connections; each
    answered 503 ``store.unavailable`` is counted and sent again."""

    def __init__(self, e: harness.EnvoyInstance) -> None:
        self.e = e
        self.authority = f"127.0.0.1:{e.port}"
        self.contention = 0  # 503 store.unavailable answers (retried)

    def run(self, requests: list[Request]) -> list[harness.Response]:
        n = min(CONNECTIONS, len(requests))
        # Round-robin: the requests of one key go over every connection.
        shares = [list(range(i, len(requests), n)) for i in range(n)]
        barrier = threading.Barrier(n, timeout=120)
        answers: list = [None] * n

        def connection(c: int) -> None:
            try:
                answers[c] = h2_streams(self.e.port, [requests[i] for i in shares[c]], barrier, self.authority)
            except Exception as exc:  # noqa: BLE001 - reported below
                barrier.abort()
                answers[c] = exc

        threads = [threading.Thread(target=connection, args=(c,)) for c in range(n)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 240
        for t in threads:
            t.join(timeout=max(1.0, deadline - time.monotonic()))
        errors = [a for a in answers if not isinstance(a, list)]
        assert not errors, f"{len(errors)} of {n} connections failed at the client: {errors[:3]}"
        results: list = [None] * len(requests)
        for c, share in enumerate(shares):
            for i, resp in zip(share, answers[c]):
                results[i] = resp
        for i, resp in enumerate(results):
            for _ in range(MAX_CONTENTION_RETRIES):
                if not is_contention(resp):
                    break
                self.contention += 1
                method, path, headers, body = requests[i]
                resp = harness.h2_request(self.e.port, method, path, headers, body, authority=self.authority)
            results[i] = resp
        still = [r for r in results if is_contention(r)]
        assert not still, f"{len(still)} requests lost every compare-and-swap {MAX_CONTENTION_RETRIES} times"
        return results

    def spread(self) -> str:
        """Checks that the connections reached at least 3 workers; returns
        the figures (connections per worker, compare-and-swap retries, 503
        contention answers) for the test's output."""
        workers = self.e.workers_with_connections()
        assert len(workers) >= 3, (
            f"only workers {workers} accepted connections: the test did not exercise cross-worker sharing"
        )
        retries = harness.palisade_counter(self.e.prometheus(), "palisade_shared_data_cas_retries_total")
        return f"connections per worker {workers}, CAS retries {retries:.0f}, 503 contention retried {self.contention}"


def is_contention(resp: harness.Response) -> bool:
    return resp[0] == 503 and harness.reason_of(resp) == "store.unavailable"


def outcome(resp: harness.Response) -> tuple[int, str | None]:
    return resp[0], harness.reason_of(resp)


def rule_of(resp: harness.Response) -> str | None:
    """The rule a 429 names in ``RateLimit-Policy: "<rule>";q=...``."""
    policy = resp[1].get("ratelimit-policy", "")
    return policy.split(";", 1)[0].strip('"') if policy else None


def xff(i: int) -> str:
    return f"198.18.{i // 200}.{i % 200 + 1}"


def interleaved(per_key: dict[str, int]) -> list[str]:
    """Keys repeated as often as asked, round-robin: each key's requests are
    spread over the whole burst instead of arriving back to back."""
    out: list[str] = []
    left = dict(per_key)
    while left:
        for k in list(left):
            out.append(k)
            left[k] -= 1
            if not left[k]:
                del left[k]
    return out


def get(path: str, headers: dict[str, str]) -> Request:
    return "GET", path, headers, b""


def send(e: harness.EnvoyInstance, request: Request) -> harness.Response:
    """One request alone, over HTTP/1.1 on a fresh connection."""
    method, path, headers, body = request
    return e.request(method, path, headers, body or None)


XFF_CLIENT = {"source": "x-forwarded-for", "trusted_hops": 1}


# --------------------------------------------------------------------------
# 1. Buckets: many keys at once, and two rules at once
# --------------------------------------------------------------------------
def test_many_keys_each_get_exactly_their_capacity(envoy):
    # 128 slots (8 pages of 16) for 40 keys: about 5 keys share each page, a
    # full page sends keys to alternates, so the writes of different keys
    # collide on one shared-data value. With `ban: true` (and a ban too far
    # off to start) every throttled request writes its strike too, so every
    # request of the burst is a compare-and-swap.
    keys, capacity, per_key = 40, 5, 50
    cfg = {
        "version": 1,
        "client_ip": XFF_CLIENT,
        "rate_limits": {
            "slots": 128,
            "rules": [{"name": "per-ip", "key": ["ip"], "capacity": capacity, "refill": "none", "ban": True}],
        },
        "bans": {"after": 10000},
    }
    e = envoy(cfg, concurrency=WORKERS)
    burst = Burst(e)
    order = interleaved({xff(k): per_key for k in range(keys)})
    results = burst.run([get(f"/k/{i}", {"x-forwarded-for": ip}) for i, ip in enumerate(order)])

    by_key: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for ip, resp in zip(order, results):
        by_key[ip][outcome(resp)] += 1
    want = {(200, None): capacity, (429, "rl.exhausted"): per_key - capacity}
    wrong = {ip: dict(c) for ip, c in by_key.items() if c != want}
    assert not wrong, f"{len(wrong)} of {keys} keys not exact (want {want}): {dict(list(wrong.items())[:5])}"
    figures = burst.spread()
    print(f"{len(results)} requests, {figures}")


def test_an_ip_rule_and_a_route_rule_are_both_exact(envoy):
    keys, capacity, per_key, route_capacity = 40, 5, 25, 120
    cfg = {
        "version": 1,
        "client_ip": XFF_CLIENT,
        "routes": [{"name": "search", "prefix": "/search"}],
        "rate_limits": {
            "rules": [
                {"name": "per-ip", "key": ["ip"], "capacity": capacity, "refill": "none"},
                {
                    "name": "search-all",
                    "key": ["route"],
                    "routes": ["search"],
                    "capacity": route_capacity,
                    "refill": "none",
                },
            ]
        },
    }
    e = envoy(cfg, concurrency=WORKERS)
    burst = Burst(e)
    order = interleaved({xff(k): per_key for k in range(keys)})
    results = burst.run([get(f"/search?q={i}", {"x-forwarded-for": ip}) for i, ip in enumerate(order)])

    # The ip rule runs first: a request it refuses never reaches the route
    # rule; one it lets through has taken its token even if the route rule
    # then refuses it.
    by_key: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for ip, resp in zip(order, results):
        by_key[ip][(resp[0], harness.reason_of(resp), rule_of(resp))] += 1
    totals = sum(by_key.values(), collections.Counter())
    passed_ip = keys * capacity
    assert totals == {
        (200, None, None): route_capacity,
        (429, "rl.exhausted", "search-all"): passed_ip - route_capacity,
        (429, "rl.exhausted", "per-ip"): keys * per_key - passed_ip,
    }, dict(totals)
    wrong = {
        ip: dict(c)
        for ip, c in by_key.items()
        if c[(200, None, None)] + c[(429, "rl.exhausted", "search-all")] != capacity
        or c[(429, "rl.exhausted", "per-ip")] != per_key - capacity
    }
    assert not wrong, f"keys whose ip-rule count is not exactly {capacity}: {wrong}"
    figures = burst.spread()
    print(f"{len(results)} requests, {figures}")


# --------------------------------------------------------------------------
# 2. The overflow bucket of a full table
# --------------------------------------------------------------------------
def test_the_overflow_bucket_holds_exactly_the_rules_capacity(envoy):
    # 32 slots: two pages of 16. Buckets that never refill never become
    # reclaimable, so once 32 keys hold a slot every other key goes through
    # the rule's one overflow bucket (palisade.rl.o.<rule>), which has the
    # rule's own capacity for all of them together.
    slots, keys, capacity, per_key = 32, 56, 10, 25
    cfg = {
        "version": 1,
        "client_ip": XFF_CLIENT,
        "rate_limits": {
            "slots": slots,
            "rules": [{"name": "tiny", "key": ["ip"], "capacity": capacity, "refill": "none"}],
        },
    }
    e = envoy(cfg, concurrency=WORKERS)
    burst = Burst(e)
    order = interleaved({xff(k): per_key for k in range(keys)})
    results = burst.run([get(f"/o/{i}", {"x-forwarded-for": ip}) for i, ip in enumerate(order)])

    by_key: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for ip, resp in zip(order, results):
        by_key[ip][outcome(resp)] += 1
    placed = {ip: c for ip, c in by_key.items() if (429, "rl.exhausted") in c}
    unplaced = {ip: c for ip, c in by_key.items() if ip not in placed}
    mixed = {ip: dict(c) for ip, c in placed.items() if (429, "rl.overflow") in c}
    assert not mixed, f"keys both placed and in the overflow bucket: {mixed}"
    known = {(200, None), (429, "rl.exhausted"), (429, "rl.overflow")}
    odd = {ip: dict(c) for ip, c in by_key.items() if set(c) - known}
    assert not odd, odd
    wrong = {ip: dict(c) for ip, c in placed.items() if c[(200, None)] != capacity}
    assert not wrong, f"placed keys without exactly {capacity} passes: {wrong}"
    # Every slot is used (a key whose home page is full spills to the other).
    assert len(placed) == slots, f"{len(placed)} keys placed in a table of {slots} slots"
    overflow_passes = sum(c[(200, None)] for c in unplaced.values())
    assert overflow_passes == capacity, (
        f"the overflow bucket let {overflow_passes} requests of {len(unplaced)} unplaced keys through, "
        f"its capacity is {capacity}: {[dict(c) for c in unplaced.values()]}"
    )
    # The table stays full: one more new key is refused by the overflow bucket.
    assert outcome(e.request("GET", "/o/late", {"x-forwarded-for": xff(keys + 1)})) == (429, "rl.overflow")
    figures = burst.spread()
    print(
        f"{len(results)} requests, {len(placed)} keys placed, {len(unplaced)} in overflow, "
        f"{figures}"
    )


# --------------------------------------------------------------------------
# 3. Bans
# --------------------------------------------------------------------------
def test_concurrent_violations_make_exactly_one_first_level_ban(envoy):
    # Every throttled request of a `ban: true` rule is one strike (bans.after
    # of them within `decay` start a ban and reset the strikes); a banned
    # key's requests take nothing and strike nothing. Serialised by the
    # record's compare-and-swap, n requests of one client therefore get
    # exactly: capacity passes, `after` throttles (the last of which issues
    # the ban), and 403 ban.active for all the others, with a first-level
    # Retry-After (base, 60 s) and not the second level's 120 s a strike
    # counted twice would reach.
    capacity, after, n = 50, 100, 300
    cfg = {
        "version": 1,
        "client_ip": XFF_CLIENT,
        "rate_limits": {"rules": [{"name": "b", "key": ["ip"], "capacity": capacity, "refill": "none", "ban": True}]},
        "bans": {"after": after, "base": "60s", "factor": 2.0, "max": "1h", "decay": "10m"},
    }
    e = envoy(cfg, concurrency=WORKERS)
    burst = Burst(e)
    ip = "198.51.100.7"
    results = burst.run([get(f"/b/{i}", {"x-forwarded-for": ip}) for i in range(n)])
    got = collections.Counter(outcome(r) for r in results)
    assert got == {
        (200, None): capacity,
        (429, "rl.exhausted"): after,
        (403, "ban.active"): n - capacity - after,
    }, dict(got)
    retry_after = sorted({int(r[1]["retry-after"]) for r in results if outcome(r) == (403, "ban.active")})
    assert retry_after and 1 <= retry_after[0] and retry_after[-1] <= 60, (
        f"Retry-After of the ban {retry_after}: not the first level (base 60 s)"
    )
    # Still the first level after the burst.
    later = e.request("GET", "/b/after", {"x-forwarded-for": ip})
    assert outcome(later) == (403, "ban.active") and int(later[1]["retry-after"]) <= 60, later[:2]
    prom = e.prometheus()
    bans = harness.palisade_counter(prom, "palisade_bans_total")
    assert bans == 1, f"{bans} bans issued, want 1:\n{harness.palisade_lines(prom)}"
    figures = burst.spread()
    print(f"{n} requests, Retry-After {retry_after}, {figures}")


# --------------------------------------------------------------------------
# 4. A `counts: failures` rule
# --------------------------------------------------------------------------
GOOD_API_KEY = "contention-itests-good-key-" + secrets.token_hex(16)


def failures_config(capacity: int) -> dict:
    return {
        "version": 1,
        "client_ip": XFF_CLIENT,
        "routes": [{"name": "api", "prefix": "/api/"}],
        "api_keys": {
            "header": "x-api-key",
            "keys": [{"id": "good", "sha256": hashlib.sha256(GOOD_API_KEY.encode()).hexdigest(), "roles": ["r"]}],
        },
        "authorization": {"policies": [{"routes": ["api"], "credentials": ["api_key"]}]},
        "rate_limits": {
            "rules": [
                {
                    "name": "api-failures",
                    "key": ["ip"],
                    "routes": ["api"],
                    "capacity": capacity,
                    "refill": "none",
                    "counts": "failures",
                }
            ]
        },
    }


def bad_key(i: int) -> dict[str, str]:
    return {"x-api-key": f"wrong-key-{i}-{uuid.uuid4().hex}"}


def test_a_failures_rule_takes_exactly_one_token_per_refusal(envoy):
    capacity = 20
    e = envoy(failures_config(capacity), concurrency=WORKERS)
    burst = Burst(e)
    good = {"x-api-key": GOOD_API_KEY}

    # (a) capacity - 1 wrong keys at once: all are verified and refused,
    # and each took exactly one token: one more is verified, then the
    # bucket is empty and even the good key is refused before verification.
    ip = "198.51.100.20"
    results = burst.run([get(f"/api/{i}", {**bad_key(i), "x-forwarded-for": ip}) for i in range(capacity - 1)])
    got = collections.Counter(outcome(r) for r in results)
    assert got == {(401, "apikey.invalid"): capacity - 1}, dict(got)
    ok = e.request("GET", "/api/ok", {**good, "x-forwarded-for": ip})
    assert outcome(ok) == (200, None), "successes take nothing"
    assert outcome(e.request("GET", "/api/last", {**bad_key(99), "x-forwarded-for": ip})) == (401, "apikey.invalid"), (
        "a token was counted twice: the bucket emptied before its capacity"
    )
    after = [outcome(e.request("GET", "/api/x", {**h, "x-forwarded-for": ip})) for h in (bad_key(100), good)]
    assert after == [(429, "rl.exhausted")] * 2, f"a refusal was not counted: {after}"

    # (b) ten times the capacity at once, from another client: the checks
    # before verification only read the bucket, so requests that read it
    # before it emptied are verified (and refused) too; none passes, at
    # least the capacity is verified, and the bucket ends empty.
    ip2 = "198.51.100.21"
    n = 10 * capacity
    results = burst.run([get(f"/api/{i}", {**bad_key(i), "x-forwarded-for": ip2}) for i in range(n)])
    got = collections.Counter(outcome(r) for r in results)
    assert set(got) <= {(401, "apikey.invalid"), (429, "rl.exhausted")}, dict(got)
    assert got[(401, "apikey.invalid")] >= capacity, dict(got)
    # A worker reads, verifies and takes within one headers callback, so at
    # most one request per other worker can read the bucket before the last
    # token goes.
    assert got[(401, "apikey.invalid")] <= capacity + e.concurrency - 1, dict(got)
    assert outcome(e.request("GET", "/api/ok", {**good, "x-forwarded-for": ip2})) == (429, "rl.exhausted")
    figures = burst.spread()
    print(
        f"burst of {n} wrong keys, capacity {capacity}: {dict(got)} "
        f"(verified beyond the capacity: {got[(401, 'apikey.invalid')] - capacity}); "
        f"{figures}"
    )


# --------------------------------------------------------------------------
# 5. Refresh tokens
# --------------------------------------------------------------------------
FORM = {"Content-Type": "application/x-www-form-urlencoded"}
REFRESH_CONFIG = {
    "version": 1,
    "routes": [{"name": "token", "path": "/oauth/token", "methods": ["POST"]}],
    "jwt": {"refresh_tokens": {"routes": ["token"], "remember": "1d", "slots": 4096}},
}


def refresh_grant(token: str) -> Request:
    body = f"grant_type=refresh_token&refresh_token={token}&client_id=web".encode()
    return "POST", "/oauth/token", FORM, body


def test_refresh_tokens_pass_exactly_once_under_contention(envoy):
    e = envoy(REFRESH_CONFIG, concurrency=WORKERS)
    burst = Burst(e)

    # One token, many copies at once.
    n = 100
    one = "rt_" + secrets.token_urlsafe(32)
    got = collections.Counter(outcome(r) for r in burst.run([refresh_grant(one)] * n))
    assert got == {(200, None): 1, (400, "oauth.refresh_reuse"): n - 1}, dict(got)

    # Many tokens at once: each alone passes; each in three copies passes once.
    singles = ["rt_" + secrets.token_urlsafe(32) for _ in range(100)]
    tripled = ["rt_" + secrets.token_urlsafe(32) for _ in range(50)]
    tokens = singles + interleaved({t: 3 for t in tripled})
    results = burst.run([refresh_grant(t) for t in tokens])
    by_token: dict[int, collections.Counter] = collections.defaultdict(collections.Counter)
    index = {t: i for i, t in enumerate(singles + tripled)}
    for t, resp in zip(tokens, results):
        by_token[index[t]][outcome(resp)] += 1
    wrong_singles = {i: dict(c) for i, c in by_token.items() if i < len(singles) and c != {(200, None): 1}}
    assert not wrong_singles, f"distinct tokens refused under contention (by index): {wrong_singles}"
    want = {(200, None): 1, (400, "oauth.refresh_reuse"): 2}
    wrong_tripled = {i: dict(c) for i, c in by_token.items() if i >= len(singles) and c != want}
    assert not wrong_tripled, f"tokens not accepted exactly once (by index): {wrong_tripled}"
    # Every accepted token is remembered afterwards.
    for t in (one, singles[0], singles[-1], tripled[0]):
        assert outcome(send(e, refresh_grant(t))) == (400, "oauth.refresh_reuse")
    figures = burst.spread()
    print(f"{figures}")


# --------------------------------------------------------------------------
# 6. Signature nonces
# --------------------------------------------------------------------------
SIGNING_SECRET = hashlib.sha256(b"contention-itests" + uuid.uuid4().bytes).digest()
SIGNED_COMPONENTS = ["@method", "@authority", "@path", "@query"]
SIGNATURE_CONFIG = {
    "version": 1,
    "routes": [{"name": "payments", "prefix": "/payments"}],
    "signatures": {
        "keys": [{"id": "k1", "secret": {"base64": base64.b64encode(SIGNING_SECRET).decode()}}],
        "replay_slots": 4096,
        "policies": [{"routes": ["payments"], "components": SIGNED_COMPONENTS, "require_nonce": True}],
    },
}


def test_many_nonces_each_pass_once_while_their_copies_race(envoy):
    e = envoy(SIGNATURE_CONFIG, concurrency=WORKERS)
    burst = Burst(e)
    distinct, copies = 100, 3
    signed = []
    for i in range(distinct):
        target = f"/payments/{i}?ref={uuid.uuid4().hex}"
        h = signing.sign(
            "GET", e.base_url + target, None, None, key_id="k1", secret=SIGNING_SECRET, components=SIGNED_COMPONENTS
        )
        signed.append((target, h))
    order = interleaved({i: copies for i in range(distinct)})
    results = burst.run([get(signed[i][0], signed[i][1]) for i in order])
    by_sig: dict[int, collections.Counter] = collections.defaultdict(collections.Counter)
    for i, resp in zip(order, results):
        by_sig[i][outcome(resp)] += 1
    want = {(200, None): 1, (401, "sig.replay"): copies - 1}
    wrong = {i: dict(c) for i, c in by_sig.items() if c != want}
    assert not wrong, f"{len(wrong)} of {distinct} signatures not accepted exactly once: {wrong}"
    figures = burst.spread()
    print(f"{len(results)} requests, {figures}")


# --------------------------------------------------------------------------
# 7. The bot behaviour record
# --------------------------------------------------------------------------
BROWSER = {
    "user-agent": "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0",
    "accept": "*/*",
    "accept-language": "en-US,en;q=0.5",
    "accept-encoding": "gzip, deflate, br",
}
BEHAVIOUR_CONFIG = {
    "version": 1,
    "client_ip": XFF_CLIENT,
    "bot": {
        # Scores are only reported: nothing is refused, every request is
        # logged with its signals (events: all).
        "mode": "monitor",
        "events": "all",
        # A window of a day: the burst and the replay below never straddle
        # a window boundary (which restarts the sketch).
        # 64 slots (4 pages of 16): the clients' records share pages.
        "behaviour": {"window": "24h", "max_distinct": 128, "slots": 64},
    },
}


def bot_events(e: harness.EnvoyInstance) -> dict[str, dict]:
    """The palisade.bot events of the log by request id."""
    out = {}
    for line in e.log_text().splitlines():
        start = line.find('{"event":"palisade.bot"')
        if start < 0:
            start = line.find("{") if '"palisade.bot"' in line else -1
        if start < 0:
            continue
        try:
            doc = json.loads(line[start:])
        except ValueError:
            continue
        if doc.get("event") == "palisade.bot":
            out[doc.get("request_id")] = doc
    return out


def distinct_paths_of(e: harness.EnvoyInstance, request_id: str) -> float:
    deadline = time.monotonic() + 30
    while True:
        doc = bot_events(e).get(request_id)
        if doc is not None:
            return float(doc["signals"]["distinct_paths"])
        assert time.monotonic() < deadline, f"no palisade.bot event for {request_id}:\n{e.log_tail(20)}"
        time.sleep(0.1)


def test_concurrent_paths_of_each_client_all_reach_its_behaviour_record(envoy):
    # The distinct_paths signal is an estimate (a 64-bit sketch, one bit per
    # path, under a per-client key), so its value for a given set of paths
    # is not predictable; but it is a function of the set of bits the
    # client's paths set. Paths that arrive all at once on 4 workers must
    # leave exactly the sketch that the same paths sent again one by one
    # leave: a lost update would forget bits and lower the signal. The
    # probes repeat a path already sent, so they add no bit. The signal only
    # moves between 64 and 128 estimated paths (0 below, 1 above): several
    # clients, each with its own sketch, make sure some land in between.
    clients, paths_each, copies = 6, 90, 3
    e = envoy(BEHAVIOUR_CONFIG, concurrency=WORKERS)
    burst = Burst(e)
    ips = [f"203.0.113.{70 + c}" for c in range(clients)]
    paths = {ip: [f"/catalogue/{uuid.uuid4().hex[:12]}/view" for _ in range(paths_each)] for ip in ips}
    # Every request rewrites its client's record (the last-seen time), so
    # the copies collide with the new paths.
    order = interleaved({(ip, p): copies for ip in ips for p in paths[ip]})
    results = burst.run([get(p, {**BROWSER, "x-forwarded-for": ip}) for ip, p in order])
    got = collections.Counter(outcome(r) for r in results)
    assert got == {(200, None): len(order)}, dict(got)
    after_burst = {ip: probe_distinct_paths(e, ip, paths[ip][0], f"burst-{n}") for n, ip in enumerate(ips)}
    # Now every path again, one at a time: a bit the burst lost is set now.
    for ip in ips:
        for p in paths[ip]:
            assert send(e, get(p, {**BROWSER, "x-forwarded-for": ip}))[0] == 200
    after_replay = {ip: probe_distinct_paths(e, ip, paths[ip][-1], f"replay-{n}") for n, ip in enumerate(ips)}
    lost = {ip: (after_burst[ip], after_replay[ip]) for ip in ips if after_burst[ip] != after_replay[ip]}
    assert not lost, (
        f"distinct_paths (after the concurrent burst, after sending the same paths again one by one) {lost}: "
        "the burst lost updates of the behaviour record"
    )
    sensitive = [ip for ip in ips if 0.0 < after_replay[ip] < 1.0]
    assert sensitive, f"distinct_paths {after_replay}: all saturated, the comparison could not see a lost path"
    figures = burst.spread()
    print(f"distinct_paths {sorted(after_burst.values())} ({len(sensitive)} not saturated), {figures}")


def probe_distinct_paths(e: harness.EnvoyInstance, ip: str, path: str, request_id: str) -> float:
    """The distinct_paths strength of one more request (``path``, already
    sent) of client ``ip``, read from its palisade.bot event."""
    headers = {**BROWSER, "x-forwarded-for": ip, "x-request-id": request_id}
    for _ in range(MAX_CONTENTION_RETRIES):
        resp = e.request("GET", path, headers)
        if not is_contention(resp):
            break
    assert resp[0] == 200, resp[:2]
    return distinct_paths_of(e, request_id)


# --------------------------------------------------------------------------
# 8. The remote key set's fetch claim
# --------------------------------------------------------------------------
JWKS_MIN_REFETCH_S = 20


def test_a_burst_of_unknown_kids_on_all_workers_claims_exactly_one_fetch(envoy):
    # Workers share one remote key-set record; a token naming an unknown kid
    # asks for a refetch, and a worker fetches only after winning the
    # compare-and-swap on the attempt time, at most once per min_refetch.
    # min_refetch is far longer than the burst and the wait for every
    # worker to install the new set, so exactly one fetch is right: none
    # would leave the rotated key unknown, two would mean two claims won.
    def token(kid: str) -> str:
        alg, key = REMOTE_KEYS[kid]
        return sign_token(alg, key=key, kid=kid, iss=REMOTE_ISSUER)

    cfg = remote_config(min_refetch_s=JWKS_MIN_REFETCH_S, timeout_s=2)
    jwks = JwksServer([jwk(RSA_KEY, "remote-a")], path=JWKS_PATH).start()
    try:
        e = envoy(cfg, concurrency=WORKERS, extra_clusters=[jwks.cluster("idp_jwks")])
        burst = Burst(e)
        deadline = time.monotonic() + 30
        while send(e, get("/api/ready", bearer(token("remote-a"))))[0] != 200:
            assert time.monotonic() < deadline, f"first key set not loaded; fetches {jwks.fetches}"
            time.sleep(0.2)
        initial = jwks.fetch_count

        # The IdP rotates; once min_refetch has passed since the last fetch,
        # tokens of the new key arrive on every worker at once.
        jwks.set_keys([jwk(RSA_KEY, "remote-a"), jwk(EC_KEY, "remote-b")])
        time.sleep(max(0.0, jwks.fetches[-1].at + JWKS_MIN_REFETCH_S + 0.5 - time.monotonic()))
        t0 = time.monotonic()
        n = 200
        results = burst.run([get(f"/api/b/{i}", bearer(token("remote-b"))) for i in range(n)])
        got = collections.Counter(outcome(r) for r in results)
        assert set(got) <= {(200, None), (401, "jwt.unknown_kid")}, dict(got)
        assert jwks.wait_for_fetch(initial, timeout=10), "the unknown kids caused no refetch"
        # Every worker takes the new set: a second burst passes whole.
        deadline = time.monotonic() + 15
        while True:
            again = burst.run([get(f"/api/c/{i}", bearer(token("remote-b"))) for i in range(64)])
            if all(r[0] == 200 for r in again):
                break
            assert time.monotonic() < deadline, collections.Counter(outcome(r) for r in again)
            time.sleep(0.2)
        elapsed = time.monotonic() - t0
        fetches = jwks.fetch_count - initial
        assert fetches == 1, (
            f"{fetches} key-set fetches for one rotation in {elapsed:.1f}s (min_refetch {JWKS_MIN_REFETCH_S}s): "
            f"{jwks.fetches[initial:]}"
        )
        figures = burst.spread()
        print(f"burst of {n} unknown kids: {dict(got)}; 1 fetch; {figures}")
    finally:
        jwks.stop()
