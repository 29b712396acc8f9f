"""The global mode against the real thing: two Envoy processes (two
replicas, 2 workers each) with palisade, palisade's rate-limit service
(Limitador on Redis, ``envoy/ratelimit-service``) and a ``redis-server``,
all on loopback.

* a global limit of N per window allows exactly N across both replicas,
  sent one after the other and all at once;
* a signature nonce or a refresh token used on one replica is refused on
  the other, and so is a client banned on the other;
* the service or Redis going down gives the configured failure mode
  (``deny``: 503 ``global.unavailable``; ``allow``: through), and the
  requests are counted again once they are back.
"""

from __future__ import annotations

import base64
import concurrent.futures
import hashlib
import secrets
import time
import uuid

import pytest

import cluster
import signing
import suite_support
from harness import json_body, palisade_counter, palisade_lines, reason_of

KEY_SECRET = base64.b64encode(secrets.token_bytes(32)).decode()
SIGNING_SECRET = hashlib.sha256(b"global" + uuid.uuid4().bytes).digest()
HOST = "api.example"
FORM = {"Content-Type": "application/x-www-form-urlencoded"}


def config(failure_mode: str = "deny", limit: int = 5) -> dict:
    return {
        "routes": [
            {"name": "login", "prefix": "/login"},
            {"name": "burst", "prefix": "/burst"},
            {"name": "admin", "prefix": "/admin"},
            {"name": "pay", "prefix": "/pay"},
            {"name": "token", "path": "/oauth/token", "methods": ["POST"]},
        ],
        "global": {
            "cluster": "ratelimit",
            "timeout": "300ms",
            "failure_mode": failure_mode,
            "key_secret": {"base64": KEY_SECRET},
        },
        "rate_limits": {
            "quota_headers": True,
            "rules": [
                {
                    "name": "login-ip",
                    "key": ["ip"],
                    "routes": ["login"],
                    "capacity": limit,
                    "refill": {"tokens": limit, "every": "1m"},
                    "scope": "global",
                },
                {
                    "name": "admin-ip",
                    "key": ["ip"],
                    "routes": ["admin"],
                    "capacity": 2,
                    "refill": {"tokens": 2, "every": "1m"},
                    "ban": True,
                },
                {
                    "name": "burst-route",
                    "key": ["route"],
                    "routes": ["burst"],
                    "capacity": 20,
                    "refill": {"tokens": 20, "every": "1h"},
                    "scope": "global",
                },
            ],
        },
        "bans": {"after": 1, "base": "1m", "factor": 2.0, "max": "4m", "scope": "global"},
        "signatures": {
            "replay_scope": "global",
            "keys": [{"id": "client-a", "secret": {"base64": base64.b64encode(SIGNING_SECRET).decode()}}],
            "policies": [{"routes": ["pay"], "components": ["@method", "@authority", "@path"], "require_nonce": True}],
        },
        "jwt": {"refresh_tokens": {"routes": ["token"], "scope": "global", "remember": "1d"}},
    }


class Stack:
    def __init__(self, tmp_path, envoy, failure_mode: str = "deny") -> None:
        self.redis = cluster.Redis(tmp_path / "redis").start()
        self.rls = cluster.RateLimitService(tmp_path / "rls", self.redis.url).start()
        clusters = [self.rls.cluster()]
        self.replicas = [envoy(config(failure_mode), extra_clusters=clusters) for _ in range(2)]

    def stop(self) -> None:
        self.rls.stop()
        self.redis.stop()


@pytest.fixture
def stack(tmp_path, envoy, request):
    made: list[Stack] = []

    def make(failure_mode: str = "deny") -> Stack:
        s = Stack(tmp_path / f"stack{len(made)}", envoy, failure_mode)
        made.append(s)
        return s

    yield make
    failed = suite_support.call_failed(request)
    for s in made:
        if failed:
            print("\n===== ratelimit-service log =====\n" + s.rls.log_text()[-4000:])
        s.stop()


def status_and_reason(resp) -> tuple[int, str | None]:
    return resp[0], reason_of(resp)


def test_a_global_limit_holds_exactly_across_replicas(stack):
    s = stack()
    a, b = s.replicas
    results = []
    for i in range(12):
        results.append((a if i % 2 == 0 else b).request("GET", "/login", {"Host": HOST}))
    allowed = [r for r in results if r[0] == 200]
    assert len(allowed) == 5, [status_and_reason(r) for r in results]
    # The quota headers count down across replicas.
    remaining = [(r[1].get("ratelimit") or "").split(";")[1:2] for r in allowed]
    assert remaining == [[f"r={n}"] for n in (4, 3, 2, 1, 0)], [r[1] for r in allowed]
    for r in results[5:]:
        assert status_and_reason(r) == (429, "rl.exhausted"), r
        assert 1 <= int(r[1]["retry-after"]) <= 60, r[1]
        assert r[1]["ratelimit-policy"] == '"login-ip";q=5;w=60', r[1]

    # All at once: 60 requests, 30 on each replica, on 8 connections each.
    def one(i: int):
        return (a if i % 2 == 0 else b).request("GET", f"/burst/{i}", {"Host": HOST})[0]

    with concurrent.futures.ThreadPoolExecutor(max_workers=16) as pool:
        statuses = list(pool.map(one, range(60)))
    assert statuses.count(200) == 20, statuses
    assert statuses.count(429) == 40, statuses

    prom = a.prometheus() + b.prometheus()
    assert palisade_counter(prom, "palisade_global_calls_total", result="over") >= 1, palisade_lines(prom)
    assert palisade_counter(prom, "palisade_global_calls_total", result="ok") >= 20, palisade_lines(prom)


def signed_pay(nonce: str) -> dict[str, str]:
    return signing.sign(
        "GET",
        f"http://{HOST}/pay",
        {"Host": HOST},
        None,
        "client-a",
        SIGNING_SECRET,
        components=["@method", "@authority", "@path"],
        nonce=nonce,
    )


def test_nonces_and_refresh_tokens_are_one_use_across_replicas(stack):
    a, b = stack().replicas
    first = signed_pay("nonce-1")
    assert a.request("GET", "/pay", first)[0] == 200
    assert status_and_reason(b.request("GET", "/pay", first)) == (401, "sig.replay")
    assert status_and_reason(a.request("GET", "/pay", first)) == (401, "sig.replay")
    assert b.request("GET", "/pay", signed_pay("nonce-2"))[0] == 200

    token = secrets.token_urlsafe(24)
    form = f"grant_type=refresh_token&refresh_token={token}".encode()
    a.secrets_sent.add(token)
    b.secrets_sent.add(token)
    assert a.request("POST", "/oauth/token", FORM, form)[0] == 200
    reused = b.request("POST", "/oauth/token", FORM, form)
    assert status_and_reason(reused) == (400, "oauth.refresh_reuse"), reused
    assert json_body(reused[2])["error"] == "invalid_grant"
    log = b.wait_for_log("oauth.refresh_reuse", timeout=5)
    assert token not in log


def wait_for(predicate, timeout: float = 15.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(0.2)
    raise AssertionError(f"{what}: not reached in {timeout}s (last {last!r})")


def test_service_or_redis_down_fails_closed_and_recovers(stack):
    s = stack("deny")
    a, b = s.replicas
    assert a.request("GET", "/login", {"Host": HOST})[0] == 200

    s.rls.stop()
    started = time.monotonic()
    down = b.request("GET", "/login", {"Host": HOST})
    assert status_and_reason(down) == (503, "global.unavailable"), down
    assert time.monotonic() - started < 5
    # Routes without global rules are not affected.
    assert a.request("GET", "/other", {"Host": HOST})[0] == 200
    s.rls.start()
    wait_for(lambda: a.request("GET", "/login", {"Host": HOST})[0] == 200, what="service back")

    s.redis.stop()
    assert wait_for(lambda: s.rls.healthz() == 503, what="healthz 503 without Redis")
    assert status_and_reason(b.request("GET", "/login", {"Host": HOST})) == (503, "global.unavailable")
    s.redis.start()
    wait_for(lambda: b.request("GET", "/login", {"Host": HOST})[0] == 200, what="Redis back")
    assert s.rls.healthz() == 200
    prom = a.prometheus() + b.prometheus()
    assert palisade_counter(prom, "palisade_global_calls_total", result="error") >= 2, palisade_lines(prom)
    log = b.log_text()
    assert "rate-limit service" in log and "global.failure_mode is deny" in log


def test_failure_mode_allow_lets_requests_through_while_the_service_is_down(stack):
    s = stack("allow")
    a, _ = s.replicas
    s.rls.stop()
    for _ in range(3):
        assert a.request("GET", "/login", {"Host": HOST})[0] == 200
    # Still held to the local bucket of each replica meanwhile.
    statuses = [a.request("GET", "/login", {"Host": HOST})[0] for _ in range(5)]
    assert 429 in statuses, statuses


def test_a_ban_issued_on_one_replica_holds_on_the_other(stack):
    a, b = stack().replicas
    seen = [status_and_reason(a.request("GET", "/admin", {"Host": HOST})) for _ in range(4)]
    assert seen == [(200, None), (200, None), (429, "rl.exhausted"), (403, "ban.active")], seen
    # Published on the banning worker's next tick (1 s). Replica b's own
    # bucket holds 2: two tries there can only be refused by the ban.
    time.sleep(2.0)
    banned = b.request("GET", "/admin", {"Host": HOST})
    if banned[0] == 200:
        time.sleep(1.5)
        banned = b.request("GET", "/admin", {"Host": HOST})
    assert status_and_reason(banned) == (403, "ban.active"), banned
    assert 50 <= int(banned[1]["retry-after"]) <= 60, banned[1]
    prom = a.prometheus()
    assert palisade_counter(prom, "palisade_bans_total", rule="admin-ip") == 1, palisade_lines(prom)
