"""Configuration reload under traffic (issue 17, item 3): palisade's
configuration replaced at run time the way a production Envoy gets it, by
LDS (here from a watched file; xDS from a control plane goes through the same
listener update), while clients keep sending requests.

Envoy runs with 4 workers, ``--drain-strategy immediate`` and
``--drain-time-s 2``: when a listener's filter chain changes, Envoy updates
the listener in place (same socket, same port), new connections get the new
filter chain, and every connection of the old one is drained at once (HTTP/1.1:
``connection: close`` on its next response) and closed when the 2 s are up.
That makes the switch deterministic: after :meth:`wait_update_applied` every
connection runs the new configuration. A client on a drained keep-alive
connection sees either that ``connection: close`` or the connection closed
under it; it reconnects, retries, and the test counts it.

What is proven:

* under continuous traffic (keep-alive and new connections) a changed
  configuration takes effect, and every answer of the whole run is 200 or a
  deliberate palisade refusal with its reason code;
* shared state carries over: the tables live in the VM's shared data (same
  ``vm_id``, same filter ``name``), so a ban and an exhausted bucket of an
  unchanged rule hold across the reload, also when rules are added or
  reordered; a rule whose limits change (capacity, refill) starts fresh
  buckets, and with them fresh ban records (``stages/limits/mod.rs``,
  ``slot_of``); a changed table size (``rate_limits.slots``) moves each key
  to the home page ``hash mod pages`` of the new size, so only the keys whose
  home page index is the same in both sizes find their record; going back to
  the old size finds every old record again (pages are never deleted);
* an invalid configuration (capacity 0, an unknown field, broken JSON) is
  refused by Envoy (``update_rejected``), the log names the JSON path of the
  error, the old configuration keeps serving with its limits and bans, and no
  wasm VM fails; a valid configuration after that is still accepted.
"""

from __future__ import annotations

import collections
import copy
import http.client
import itertools
import re
import threading
import time

import harness

DRAIN_ARGS = ["--drain-strategy", "immediate", "--drain-time-s", "2"]

ROUTES = [
    {"name": "login", "prefix": "/login"},
    {"name": "api", "prefix": "/api/"},
    {"name": "search", "prefix": "/search"},
]
LOGIN_RULE = {
    "name": "login-ip",
    "key": ["ip"],
    "routes": ["login"],
    "capacity": 1,
    "refill": {"tokens": 1, "every": "1h"},
    "ban": True,
}
HOARD_RULE = {"name": "hoard-ip", "key": ["ip"], "routes": ["api"], "capacity": 3, "refill": "none"}
SEARCH_RULE = {"name": "search-ip", "key": ["ip"], "routes": ["search"], "capacity": 2, "refill": "none"}
# Traffic of the load threads: generous, but palisade reads and writes its bucket.
BULK_RULE = {
    "name": "bulk-ip",
    "key": ["ip"],
    "routes": ["default"],
    "capacity": 1000000,
    "refill": {"tokens": 1000000, "every": "1s"},
}


def config(*rules: dict, slots: int = 1024) -> dict:
    return {
        "version": 1,
        "client_ip": {"source": "x-forwarded-for", "trusted_hops": 1},
        "routes": ROUTES,
        "rate_limits": {"slots": slots, "rules": [copy.deepcopy(r) for r in rules]},
        "bans": {"after": 1, "base": "10m", "factor": 2.0, "max": "1h", "decay": "10m"},
    }


CONFIG_A = config(LOGIN_RULE, HOARD_RULE, BULK_RULE)
# A new rule on an existing route, placed first: every other rule's index shifts.
CONFIG_B = config(SEARCH_RULE, BULK_RULE, HOARD_RULE, LOGIN_RULE)

# (status, reason) of every answer the traffic may get.
DELIBERATE = {
    (200, None),
    (429, "rl.exhausted"),
    (403, "ban.active"),
    # README: shared data failing or sustained write contention, failure_mode deny.
    (503, "store.unavailable"),
}

_ips = itertools.count(1)


def fresh_ip() -> str:
    """A client address no other request of this module has used."""
    n = next(_ips)
    return f"198.18.{n // 250}.{n % 250 + 1}"


def ask(e: harness.EnvoyInstance, path: str, ip: str) -> harness.Response:
    """One request on a fresh connection (so it runs the listener's current filter chain)."""
    return e.request("GET", path, {"x-forwarded-for": ip})


def show(r: harness.Response) -> str:
    status, headers, body = r
    return f"{status} {harness.reason_of(r)} retry-after={headers.get('retry-after')}"


def answers(e: harness.EnvoyInstance, path: str, ip: str, n: int) -> list[tuple[int, str | None]]:
    return [(r[0], harness.reason_of(r)) for r in (ask(e, path, ip) for _ in range(n))]


def start(envoy, cfg: dict) -> harness.EnvoyInstance:
    return envoy(cfg, concurrency=4, lds=True, extra_args=DRAIN_ARGS)


def reload(e: harness.EnvoyInstance, cfg: dict | str) -> None:
    assert e.replace_palisade_config(cfg), "Envoy rejected a valid listener update:\n" + e.log_tail(20)
    e.wait_update_applied()


def ban(e: harness.EnvoyInstance, ip: str) -> int:
    """Gets ``ip`` banned by the login rule; returns the ban's Retry-After."""
    first = ask(e, "/login", ip)
    assert first[0] == 200, show(first)
    strike = ask(e, "/login", ip)
    # With `after: 1` the strike itself may already be answered by the ban.
    assert (strike[0], harness.reason_of(strike)) in {(429, "rl.exhausted"), (403, "ban.active")}, show(strike)
    r = ask(e, "/login", ip)
    assert (r[0], harness.reason_of(r)) == (403, "ban.active"), show(r)
    return retry_after(r)


def retry_after(r: harness.Response) -> int:
    value = r[1].get("retry-after", "")
    assert value.isdigit(), f"no integer Retry-After: {show(r)}"
    return int(value)


def exhaust(e: harness.EnvoyInstance, ip: str) -> None:
    """Empties ``ip``'s bucket of the hoard rule (capacity 3, no refill)."""
    got = answers(e, "/api/items", ip, 4)
    assert got == [(200, None)] * 3 + [(429, "rl.exhausted")], got


# --------------------------------------------------------------------------
# Log checks
# --------------------------------------------------------------------------
# What a wasm VM failing looks like in Envoy's log: the patterns of
# test_hostile.py's aftermath check.
VM_FAILURE = re.compile(
    r"panicked at|panic|Function: proxy_on_\w+ failed|failed to load|wasm vm crash|VM (?:has )?crash|VM failed|"
    r"RuntimeError|unreachable|Uncaught|abort|out of bounds|fail closed|stack overflow",
    re.IGNORECASE,
)
# What Envoy logs, on its own, for a configuration palisade refuses
# (on_configure returns false): the canary VM that tried it is failed and
# dropped ("base Wasm plugin"), the plugin is not created, and each thread
# that already looked at the new filter configuration says it would fail
# closed. That configuration is never installed: no request goes through it,
# and the VMs serving the old configuration are other VMs.
REFUSED_CANARY = "Wasm VM failed Failed to configure base Wasm plugin"
REFUSED_PLUGIN = "Plugin palisade failed to load"
FAIL_CLOSED = "Plugin configured to fail closed failed to load"
REFUSAL_LINES = (REFUSED_CANARY, REFUSED_PLUGIN, FAIL_CLOSED)


def vm_failures(log: str) -> list[str]:
    """Wasm failure lines other than those of a refused configuration."""
    return [
        line
        for line in log.splitlines()
        if "wasm" in line.lower() and VM_FAILURE.search(line) and not any(r in line for r in REFUSAL_LINES)
    ]


def wait_refusals(e: harness.EnvoyInstance, n: int) -> str:
    """Waits (log flush) until the log shows ``n`` refused plugin configurations; returns the log."""
    deadline = time.monotonic() + 10
    log = e.log_text()
    while log.count(REFUSED_PLUGIN) < n and time.monotonic() < deadline:
        time.sleep(0.1)
        log = e.log_text()
    return log


def palisade_config_errors(log: str) -> list[str]:
    return [line for line in log.splitlines() if "palisade: invalid configuration at" in line]


# --------------------------------------------------------------------------
# (a) reload under continuous traffic
# --------------------------------------------------------------------------
class Traffic:
    """Client threads sending requests until stopped, each from its own
    address: ``keepalive`` threads on one HTTP/1.1 connection (a new one only
    when Envoy closes it), the others a new connection per request. One
    thread hammers the login route and gets banned: deliberate refusals all
    through the run."""

    def __init__(self, port: int, keepalive: int = 3, fresh: int = 3) -> None:
        self.port = port
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.seen: collections.Counter = collections.Counter()
        self.unexpected: list[str] = []
        self.errors: list[str] = []
        self.drained = collections.Counter()  # keep-alive closes by Envoy: how seen
        self.counts: dict[str, int] = {}
        plan = [("keepalive", "/bulk") for _ in range(keepalive)]
        plan += [("fresh", "/bulk") for _ in range(fresh)]
        plan += [("keepalive", "/login")]
        self.threads = [
            threading.Thread(target=self._run, args=(f"{kind}-{i}", kind == "keepalive", path, fresh_ip()), daemon=True)
            for i, (kind, path) in enumerate(plan)
        ]

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def finish(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=60)
        assert not any(t.is_alive() for t in self.threads), "a traffic thread did not stop"

    def wait_each(self, more: int, timeout: float = 120.0) -> None:
        """Waits until every thread has had ``more`` answers beyond its count now."""
        with self.lock:
            target = {t.name: self.counts.get(t.name, 0) + more for t in self.threads}
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if all(self.counts.get(name, 0) >= n for name, n in target.items()):
                    return
                if self.errors:
                    break
            time.sleep(0.05)
        with self.lock:
            raise AssertionError(f"traffic stalled: counts {self.counts}, wanted {target}; errors {self.errors[:3]}")

    def _record(self, name: str, r: harness.Response) -> None:
        key = (r[0], harness.reason_of(r))
        with self.lock:
            self.seen[key] += 1
            self.counts[name] = self.counts.get(name, 0) + 1
            if key not in DELIBERATE:
                self.unexpected.append(f"{name}: {r[0]} {r[2][:120]!r}")

    def _run(self, name: str, keepalive: bool, path: str, ip: str) -> None:
        threading.current_thread().name = name
        conn: http.client.HTTPConnection | None = None
        served = 0  # answers on the current keep-alive connection
        try:
            while not self.stop.is_set():
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
                    served = 0
                try:
                    r = harness.http_request(self.port, "GET", path, {"x-forwarded-for": ip}, conn=conn)
                except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError) as exc:
                    conn.close()
                    conn = None
                    if keepalive and served > 0:
                        # Envoy closed a drained keep-alive connection between two requests: retry.
                        with self.lock:
                            self.drained["closed"] += 1
                        continue
                    raise AssertionError(f"{name}: {exc!r} on a new connection") from exc
                served += 1
                self._record(name, r)
                if not keepalive or r[1].get("connection", "").lower() == "close":
                    if keepalive:
                        with self.lock:
                            self.drained["connection: close"] += 1
                    conn.close()
                    conn = None
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            with self.lock:
                self.errors.append(f"{name}: {exc!r}")
        finally:
            if conn is not None:
                conn.close()


def test_reload_under_traffic_takes_effect_and_every_answer_is_deliberate(envoy):
    e = start(envoy, CONFIG_A)
    traffic = Traffic(e.port)
    traffic.start()
    try:
        traffic.wait_each(20)
        before_workers = e.workers_with_connections()

        # Config A has no rule on /search: a client is never limited there.
        early = fresh_ip()
        assert answers(e, "/search", early, 4) == [(200, None)] * 4

        reload(e, CONFIG_B)
        traffic.wait_each(20)

        # The new rule (capacity 2, no refill) holds for new connections, on
        # every worker they land on, for a client never seen and for one that
        # used the route under the old configuration.
        for ip in (fresh_ip(), early):
            got = [ask(e, "/search", ip) for _ in range(4)]
            assert [(r[0], harness.reason_of(r)) for r in got] == [(200, None)] * 2 + [(429, "rl.exhausted")] * 2, [
                show(r) for r in got
            ]
            assert "search-ip" in got[-1][1].get("ratelimit-policy", ""), got[-1][1]
        traffic.wait_each(20)
    finally:
        traffic.finish()

    assert not traffic.errors, traffic.errors[:5]
    assert not traffic.unexpected, f"{len(traffic.unexpected)} answers not deliberate: {traffic.unexpected[:5]}"
    # The login thread was banned during the run: the refusals were real.
    assert traffic.seen[(403, "ban.active")] > 0, dict(traffic.seen)
    # Every keep-alive connection open at the reload was drained (immediate
    # strategy), and its thread carried on on a new connection.
    assert sum(traffic.drained.values()) >= 4, dict(traffic.drained)
    # Updated in place: same listening socket, same port (the harness checks the port).
    assert e.stats().get("listener_manager.listener_in_place_updated") == 1
    workers = e.workers_with_connections()
    assert len(workers) >= 2, f"connections reached only workers {workers}"
    log = e.log_text()
    assert not vm_failures(log), vm_failures(log)[:10]
    print(
        f"\nanswers: {dict(traffic.seen)}; drained keep-alive connections: {dict(traffic.drained)}; "
        f"per thread: {traffic.counts}; connections per worker before {before_workers}, after {workers}; "
        f"lds: {e.lds_counts()}"
    )


# --------------------------------------------------------------------------
# (b) state across the reload
# --------------------------------------------------------------------------
def test_ban_and_exhausted_bucket_survive_a_reload_that_adds_and_reorders_rules(envoy):
    e = start(envoy, CONFIG_A)
    banned, hoarder, other = fresh_ip(), fresh_ip(), fresh_ip()
    ra_before = ban(e, banned)
    banned_at = time.monotonic()
    exhaust(e, hoarder)
    assert answers(e, "/api/items", other, 1) == [(200, None)]

    reload(e, CONFIG_B)

    # Several new connections: they spread over the workers.
    for _ in range(8):
        r = ask(e, "/login", banned)
        assert (r[0], harness.reason_of(r)) == (403, "ban.active"), show(r)
        ra = retry_after(r)
        elapsed = time.monotonic() - banned_at
        # Not reset to the full 600 s: the same ban, counting down.
        assert ra_before - elapsed - 2 <= ra <= ra_before, f"Retry-After {ra}, {ra_before} at the ban, {elapsed:.1f}s ago"
        r = ask(e, "/api/items", hoarder)
        assert (r[0], harness.reason_of(r)) == (429, "rl.exhausted"), show(r)
    # A bucket of the unchanged rule that was not empty keeps its level: 2 of 3 left.
    assert answers(e, "/api/items", other, 3) == [(200, None)] * 2 + [(429, "rl.exhausted")]


def test_a_rule_whose_limits_change_starts_fresh_buckets_but_keeps_its_bans(envoy):
    """A reload that changes a rule's capacity or refill gives every client
    a fresh bucket (a bucket's state only means something under its own
    limits) but keeps its ban and strikes: tightening a limit during an
    attack must not free the attackers already banned. A rule is known by
    its name: a renamed rule is a new rule and starts afresh."""
    e = start(envoy, CONFIG_A)
    banned, hoarder = fresh_ip(), fresh_ip()
    ban(e, banned)
    exhaust(e, hoarder)

    bigger_hoard = dict(HOARD_RULE, capacity=4)
    reload(e, config(LOGIN_RULE, bigger_hoard, BULK_RULE))
    # login-ip unchanged: still banned. hoard-ip changed: a fresh bucket of 4.
    r = ask(e, "/login", banned)
    assert (r[0], harness.reason_of(r)) == (403, "ban.active"), show(r)
    assert answers(e, "/api/items", hoarder, 5) == [(200, None)] * 4 + [(429, "rl.exhausted")]

    longer_refill = dict(LOGIN_RULE, refill={"tokens": 1, "every": "2h"})
    reload(e, config(longer_refill, bigger_hoard, BULK_RULE))
    r = ask(e, "/login", banned)
    assert (r[0], harness.reason_of(r)) == (403, "ban.active"), f"the changed rule freed its banned client: {show(r)}"
    assert answers(e, "/api/items", hoarder, 1) == [(429, "rl.exhausted")]

    # The name is the rule's identity: a renamed rule starts afresh, bans included.
    renamed = dict(bigger_hoard, name="hoard-ip-2")
    reload(e, config(longer_refill, renamed, BULK_RULE))
    assert answers(e, "/api/items", hoarder, 5) == [(200, None)] * 4 + [(429, "rl.exhausted")]
    renamed_login = dict(longer_refill, name="login-ip-2")
    reload(e, config(renamed_login, renamed, BULK_RULE))
    assert answers(e, "/login", banned, 1) == [(200, None)], "a renamed rule kept the old rule's ban"


def test_changing_the_table_size_keeps_only_keys_whose_home_page_stays(envoy):
    """Recorded behaviour: a key's home page is ``hash mod pages``
    (core/stage.rs ``Ctx::address``) and a lookup reads only there (and the
    alternates its spill entry names), so after ``rate_limits.slots`` changes
    from 64 (4 pages) to 128 (8 pages) a key finds its record only if its
    hash mod 8 is below 4: about half the keys keep their state, the others
    start afresh. Old pages are never deleted, so going back to 64 slots
    finds every key's old record again."""
    hold = {"name": "hold-ip", "key": ["ip"], "routes": ["api"], "capacity": 1, "refill": "none"}
    e = start(envoy, config(hold, slots=64))
    # 24 keys over 4 pages of 16 slots: none needs an alternate page.
    clients = [fresh_ip() for _ in range(24)]
    for ip in clients:
        assert answers(e, "/api/items", ip, 2) == [(200, None), (429, "rl.exhausted")]

    reload(e, config(hold, slots=128))
    after = {ip: answers(e, "/api/items", ip, 1)[0] for ip in clients}
    assert set(after.values()) <= {(200, None), (429, "rl.exhausted")}, after
    kept = [ip for ip, a in after.items() if a == (429, "rl.exhausted")]
    fresh = [ip for ip, a in after.items() if a == (200, None)]
    # Each key keeps its page with probability 1/2: all 24 alike is 2 in 2**24.
    assert kept and fresh, f"kept {len(kept)}, fresh {len(fresh)} of {len(clients)}"
    # A key that started afresh took its one token on its new page.
    for ip in fresh:
        assert answers(e, "/api/items", ip, 1) == [(429, "rl.exhausted")]

    reload(e, config(hold, slots=64))
    back = {ip: answers(e, "/api/items", ip, 1)[0] for ip in clients}
    assert set(back.values()) == {(429, "rl.exhausted")}, back
    print(f"\nslots 64 -> 128: {len(kept)} of {len(clients)} keys kept their record, {len(fresh)} started afresh")


# --------------------------------------------------------------------------
# (c, d) invalid configurations are refused, the old one keeps serving
# --------------------------------------------------------------------------
INVALID = [
    ("zero capacity", config(LOGIN_RULE, dict(HOARD_RULE, capacity=0), BULK_RULE), "rate_limits.rules[1].capacity"),
    ("unknown field", config(LOGIN_RULE, dict(HOARD_RULE, capasity=5), BULK_RULE), "rate_limits.rules[1].capasity"),
    ("JSON syntax error", harness.config_text(CONFIG_A)[:-1], "not valid JSON"),
]


def test_an_invalid_config_is_refused_and_the_old_one_keeps_serving(envoy):
    e = start(envoy, CONFIG_A)
    banned, hoarder = fresh_ip(), fresh_ip()
    ban(e, banned)
    exhaust(e, hoarder)
    success0, rejected0 = e.lds_counts()

    for n, (what, bad, path) in enumerate(INVALID, start=1):
        errors_before = len(palisade_config_errors(e.log_text()))
        assert e.replace_palisade_config(bad) is False, f"{what}: Envoy accepted it"
        assert e.lds_counts() == (success0, rejected0 + n), f"{what}: {e.lds_counts()}"
        log = e.wait_for_log(f"invalid configuration at `{path}`" if "." in path else path, timeout=10)
        new_errors = palisade_config_errors(log)[errors_before:]
        assert any(path in line for line in new_errors), f"{what}: {path!r} not in {new_errors}"

        # The old configuration still serves, with its state and its limits.
        r = ask(e, "/login", banned)
        assert (r[0], harness.reason_of(r)) == (403, "ban.active"), f"{what}: {show(r)}"
        assert answers(e, "/api/items", hoarder, 1) == [(429, "rl.exhausted")], what
        exhaust(e, fresh_ip())
        assert answers(e, "/search", fresh_ip(), 3) == [(200, None)] * 3, what
        assert e.port == e._listener_port()

    log = wait_refusals(e, len(INVALID))
    assert not vm_failures(log), vm_failures(log)[:10]
    # One refusal per invalid update, on the main thread.
    assert log.count(REFUSED_PLUGIN) == len(INVALID), [l for l in log.splitlines() if REFUSED_PLUGIN in l]
    assert log.count(REFUSED_CANARY) == len(INVALID), log.count(REFUSED_CANARY)
    # At most one "would fail closed" per thread (main and workers) and refusal.
    assert len(INVALID) <= log.count(FAIL_CLOSED) <= len(INVALID) * (e.concurrency + 1), log.count(FAIL_CLOSED)
    assert e.proc.poll() is None, "Envoy exited"


def test_a_valid_config_after_a_refused_one_is_accepted(envoy):
    e = start(envoy, CONFIG_A)
    banned = fresh_ip()
    ban(e, banned)

    assert e.replace_palisade_config(INVALID[0][1]) is False
    reload(e, CONFIG_B)
    assert e.lds_counts() == (2, 1), e.lds_counts()  # success: the initial load and this update

    # The new rule holds, and the state kept through the refusal and the update.
    assert answers(e, "/search", fresh_ip(), 3) == [(200, None)] * 2 + [(429, "rl.exhausted")]
    r = ask(e, "/login", banned)
    assert (r[0], harness.reason_of(r)) == (403, "ban.active"), show(r)
    log = wait_refusals(e, 1)
    assert log.count(REFUSED_PLUGIN) == 1
    assert not vm_failures(log), vm_failures(log)[:10]
