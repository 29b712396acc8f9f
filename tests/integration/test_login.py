"""Account protection on a real Envoy (4 workers): failed logins counted from
the upstream's answers, per address, fingerprint and username; usernames
tried per client; a username under attack kept open to its owner's known
network; scripted credential-stuffing runs stopped after a bounded number of
attempts while a user who mistypes twice is never refused; passwords and
usernames never in Envoy's log.

The upstream is a small login service: 200 for a right password, 401
otherwise. Clients pick their address through ``X-Forwarded-For`` (one
trusted hop), so one test machine can be many networks.
"""

from __future__ import annotations

import json
import threading
from urllib.parse import parse_qs

import pytest

import harness
import jwks_server
from jwks_server import LocalServer

WORKERS = 4

TO_UPSTREAM = {"match": {"prefix": "/"}, "route": {"cluster": "upstream"}}

# The attack's "leaked" credentials and the one real account.
REAL_USER, REAL_PASSWORD = "alice@example.com", "correct horse battery staple"
LEAKED = [(f"victim{i}@example.com", f"leaked-pw-{i:04d}") for i in range(300)]

# Header sets that give two different fingerprints: a script, and a browser.
SCRIPT = {"user-agent": "python-requests/2.32.3", "accept": "*/*"}
BROWSER = {
    "user-agent": "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0 Safari/537.36",
    "accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
    "accept-language": "en-GB,en;q=0.9",
    "accept-encoding": "gzip, deflate, br",
}


class _Server(jwks_server._Server):
    request_queue_size = 64  # concurrent logins: Envoy must not find it refusing


class LoginService(LocalServer):
    """``POST /login`` with a form or JSON body: 200 for a known user's
    password, 401 otherwise. Counts the attempts that reach it."""

    server_class = _Server

    def __init__(self, accounts: dict[str, str]) -> None:
        super().__init__()
        self.accounts = accounts
        self.attempts: list[str] = []
        self._lock = threading.Lock()

    def answer(self, handler, body):
        if handler.headers.get("content-type", "").startswith("application/json"):
            doc = json.loads(body or b"{}")
            user, password = doc.get("username", ""), doc.get("password", "")
        else:
            form = parse_qs(body.decode())
            user, password = form.get("username", [""])[0], form.get("password", [""])[0]
        with self._lock:
            self.attempts.append(user)
        if self.accounts.get(user) == password:
            return 200, "application/json", b'{"ok": true}'
        return 401, "application/json", b'{"error": "invalid credentials"}'

    def count(self, user: str | None = None) -> int:
        with self._lock:
            return sum(1 for u in self.attempts if user is None or u == user)


@pytest.fixture
def service():
    """The login service, with the real user's account."""
    server = LoginService({REAL_USER: REAL_PASSWORD, "mallory": "mallory-pw"})
    yield server
    server.stop()


def config(*rules: dict, mode: str = "enforce") -> dict:
    return {
        "version": 1,
        "mode": mode,
        "client_ip": {"source": "x-forwarded-for", "trusted_hops": 1},
        "routes": [{"name": "login", "path": "/login", "methods": ["POST"]}],
        "login": {"routes": ["login"], "username_field": "username", "failure_statuses": [401, 403]},
        "bans": {"after": 3, "base": "10m", "max": "1h", "decay": "10m"},
        "rate_limits": {"rules": list(rules)},
    }


FAIL_IP = {"name": "fail-ip", "key": ["ip"], "counts": "failed_logins", "capacity": 10,
           "refill": {"tokens": 10, "every": "15m"}, "ban": True}
USERS_IP = {"name": "users-ip", "key": ["ip"], "counts": "usernames", "capacity": 5,
            "refill": {"tokens": 5, "every": "15m"}, "ban": True}
FAIL_FP = {"name": "fail-fp", "key": ["fingerprint"], "counts": "failed_logins", "capacity": 20,
           "refill": {"tokens": 20, "every": "15m"}, "ban": True}
FAIL_USER = {"name": "fail-user", "key": ["username"], "counts": "failed_logins", "capacity": 5,
             "refill": {"tokens": 5, "every": "15m"}}
ALL_RULES = (FAIL_IP, USERS_IP, FAIL_FP, FAIL_USER)


def start(envoy, service: LoginService, cfg: dict):
    service.start()
    return envoy(cfg, concurrency=WORKERS, extra_routes=[TO_UPSTREAM],
                 extra_clusters=[service.cluster("upstream")])


def login(e, ip: str, user: str, password: str, headers: dict | None = None, as_json: bool = False):
    h = {"x-forwarded-for": ip, **(headers or SCRIPT)}
    if as_json:
        h["content-type"] = "application/json"
        body = json.dumps({"username": user, "password": password}).encode()
    else:
        h["content-type"] = "application/x-www-form-urlencoded"
        body = f"username={user}&password={password}".encode()
    return e.request("POST", "/login", headers=h, body=body)


def real_user_mistypes_twice(e, ip: str, headers: dict) -> list[int]:
    statuses = [login(e, ip, REAL_USER, "correct horse battery stapel", headers)[0],
                login(e, ip, REAL_USER, "Correct horse battery staple", headers)[0],
                login(e, ip, REAL_USER, REAL_PASSWORD, headers)[0]]
    return statuses


def test_stuffing_from_a_few_addresses_is_stopped_and_the_real_user_is_not(envoy, service):
    e = start(envoy, service, config(*ALL_RULES))
    attackers = ["198.51.100.10", "198.51.100.11", "198.51.100.12"]
    refused: dict[str, int] = {}
    for i, (user, password) in enumerate(LEAKED[:150]):
        ip = attackers[i % len(attackers)]
        r = login(e, ip, user, password)
        if r[0] != 401:
            refused[harness.reason_of(r) or str(r[0])] = refused.get(harness.reason_of(r) or str(r[0]), 0) + 1
    reached = service.count()
    print(f"stuffing, 3 addresses x 50 usernames: {reached} of 150 attempts reached the upstream; refused {refused}")
    # Each address may try 5 usernames; their answers may land after a
    # sixth attempt went through another worker, never more than that.
    assert reached <= len(attackers) * 5, (reached, refused)
    assert set(refused) <= {"login.distinct_users", "ban.active"}, refused
    assert refused.get("ban.active", 0) > 0, refused
    # Meanwhile the real user, elsewhere, mistypes twice and gets in.
    assert real_user_mistypes_twice(e, "203.0.113.7", BROWSER) == [401, 401, 200]
    assert service.count(REAL_USER) == 3
    # Every 401 the upstream gave is a failed login in the metrics: the
    # attempts that reached it, and the real user's two mistypes.
    failed = harness.palisade_counter(e.prometheus(), "palisade_failed_logins_total", route="login")
    assert failed == reached + 2, (failed, reached)


def test_stuffing_from_rotating_addresses_is_stopped_by_fingerprint(envoy, service):
    e = start(envoy, service, config(*ALL_RULES))
    # Two attempts from each of 100 addresses, one client software.
    statuses: dict[int, int] = {}
    for i, (user, password) in enumerate(LEAKED[:200]):
        ip = f"10.{i // 2 // 250}.{(i // 2) % 250}.9"
        r = login(e, ip, user, password)
        statuses[r[0]] = statuses.get(r[0], 0) + 1
    reached = service.count()
    print(f"rotating addresses, one fingerprint: {reached} of 200 attempts reached the upstream; statuses {statuses}")
    assert reached <= FAIL_FP["capacity"] + WORKERS, (reached, statuses)
    # A browser user on one of the attacker's networks still logs in.
    assert real_user_mistypes_twice(e, "10.0.0.9", BROWSER) == [401, 401, 200]


def test_a_username_under_attack_stays_open_to_its_owner(envoy, service):
    e = start(envoy, service, config(*ALL_RULES))
    home = "203.0.113.80"
    assert login(e, home, REAL_USER, REAL_PASSWORD, BROWSER)[0] == 200
    # Password spraying at one account from many networks and browsers.
    reasons: dict[str, int] = {}
    for i in range(40):
        headers = {**BROWSER, "user-agent": BROWSER["user-agent"] + f" build/{i}"}
        r = login(e, f"192.0.2.{10 + i}", REAL_USER.upper(), f"guess-{i}", headers, as_json=i % 2 == 0)
        key = harness.reason_of(r) or str(r[0])
        reasons[key] = reasons.get(key, 0) + 1
    attempts = service.count(REAL_USER) + service.count(REAL_USER.upper()) - 1
    print(f"spraying one account from 40 networks: {attempts} guesses reached the upstream; {reasons}")
    assert attempts <= FAIL_USER["capacity"], reasons
    assert reasons.get("login.failures_user", 0) >= 30, reasons
    # A stranger is refused for that account; the owner at home is not.
    r = login(e, "192.0.2.200", REAL_USER, REAL_PASSWORD, BROWSER)
    assert (r[0], harness.reason_of(r)) == (429, "login.failures_user"), r
    assert login(e, home, REAL_USER, REAL_PASSWORD, BROWSER)[0] == 200


def test_limits_hold_across_workers_and_a_success_does_not_lift_a_ban(envoy, service):
    e = start(envoy, service, config(FAIL_IP))
    ip = "198.51.100.77"
    threads = []
    results: list[int] = []
    lock = threading.Lock()

    def attempt(n: int) -> None:
        r = login(e, ip, f"u{n}", "wrong")
        with lock:
            results.append(r[0])

    for n in range(10):
        threads.append(threading.Thread(target=attempt, args=(n,)))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [401] * 10, results
    # Exhausted: refused before the upstream until banned (3 strikes).
    seen = [harness.reason_of(login(e, ip, "mallory", "mallory-pw")) for _ in range(4)]
    # The third strike bans; it is still answered as the throttle it is.
    assert seen == ["login.failures_ip"] * 3 + ["ban.active"], seen
    assert service.count("mallory") == 0
    assert service.count() == 10


def test_monitor_mode_counts_without_refusing(envoy, service):
    e = start(envoy, service, config(*ALL_RULES, mode="monitor"))
    for user, password in LEAKED[:30]:
        assert login(e, "198.51.100.30", user, password)[0] == 401
    assert service.count() == 30
    log = e.wait_for_log('"reason":"login.distinct_users"', timeout=10)
    assert '"action":"monitor"' in log
    assert '"action":"flag"' in log, "failed logins flagged from the upstream's answers"


def test_passwords_and_usernames_never_reach_the_log(envoy, service):
    e = start(envoy, service, config(FAIL_IP, USERS_IP, FAIL_USER))
    used = LEAKED[:40]
    for i, (user, password) in enumerate(used):
        login(e, f"198.51.100.{40 + i % 4}", user, password, as_json=i % 2 == 1)
    login(e, "203.0.113.9", REAL_USER, REAL_PASSWORD, BROWSER)
    log = e.wait_for_log('"reason":"login.distinct_users"', timeout=10)
    assert '"username_hash":"' in log
    secrets = [p for _, p in used] + [REAL_PASSWORD] + [u for u, _ in used] + [REAL_USER]
    found = [s for s in secrets if s in log]
    assert not found, f"{len(found)} credentials in Envoy's log"
