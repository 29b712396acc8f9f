"""Reputation lists through a real Envoy (4 workers): inline IPv4/IPv6 deny
lists, allow lists over deny lists, lists restricted to route classes, and
remote lists served by an in-test HTTP server (loaded, refreshed, kept on
fetch failure, ``without_list`` before the first load, a 100,000-prefix list).

The client address is chosen with X-Forwarded-For (``trusted_hops: 1``), as
in test_client_ip.py. Each check sends several requests on fresh
connections so that they land on more than one worker: a list fetched by one
worker must be enforced by all of them.
"""

from __future__ import annotations

import ipaddress
import json
import random
import time

import harness
import pytest
from jwks_server import LocalServer

CONCURRENCY = 4
# Requests per check, each on its own connection (spread over the workers).
SPREAD = 12
LIST_PATH = "/lists/drop.txt"


def config(lists: list[dict], **extra) -> dict:
    return {
        "client_ip": {"source": "x-forwarded-for", "trusted_hops": 1},
        "routes": [{"name": "login", "prefix": "/login"}],
        "reputation": {"lists": lists},
        **extra,
    }


def send(e: harness.EnvoyInstance, ip: str, path: str = "/api") -> harness.Response:
    return e.request("GET", path, {"x-forwarded-for": ip})


def statuses(e: harness.EnvoyInstance, ip: str, path: str = "/api", n: int = SPREAD) -> set[tuple[int, str | None]]:
    """The (status, reason) pairs ``n`` requests from ``ip`` got."""
    return {(r[0], harness.reason_of(r)) for r in (send(e, ip, path) for _ in range(n))}


DENIED = {(403, "reputation.deny")}
PASSED = {(200, None)}


def wait_until(e: harness.EnvoyInstance, ip: str, want: set, timeout: float, path: str = "/api") -> float:
    """Seconds until every one of SPREAD requests from ``ip`` gets ``want``."""
    start = time.monotonic()
    deadline = start + timeout
    seen: set = set()
    while time.monotonic() < deadline:
        seen = statuses(e, ip, path)
        if seen == want:
            return time.monotonic() - start
        time.sleep(0.25)
    raise AssertionError(f"{ip} on {path}: still {seen} after {timeout}s, wanted {want}")


def finding_events(e: harness.EnvoyInstance) -> list[dict]:
    events = []
    for line in e.log_text().splitlines():
        start = line.find('{"')
        if "palisade.request" not in line or start < 0:
            continue
        try:
            events.append(json.loads(line[start:]))
        except ValueError:
            continue
    return events


class ListServer(LocalServer):
    """Serves a text list at LIST_PATH that a test swaps (:meth:`serve`) or
    makes fail (:meth:`fail`); counts the fetches."""

    def __init__(self, text: str = "") -> None:
        super().__init__()
        self._text = text.encode()
        self._status = 200
        self.fetches = 0

    def serve(self, text: str) -> None:
        with self.lock:
            self._text, self._status = text.encode(), 200

    def fail(self, status: int = 500) -> None:
        with self.lock:
            self._status = status

    @property
    def fetch_count(self) -> int:
        with self.lock:
            return self.fetches

    def wait_for_fetches(self, after: int, count: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.fetch_count < after + count:
            time.sleep(0.1)
        assert self.fetch_count >= after + count, f"{self.fetch_count - after} fetches in {timeout}s, wanted {count}"

    def answer(self, handler, body):
        if handler.path.split("?", 1)[0] != LIST_PATH:
            return 404, "text/plain", b"not found"
        with self.lock:
            self.fetches += 1
            if self._status != 200:
                return self._status, "text/plain", b"unavailable"
            return 200, "text/plain", self._text


@pytest.fixture
def lists():
    server = ListServer("# drop list\n203.0.113.0/24\n2001:db8:bad::/48 ; v6\n").start()
    yield server
    server.stop()


def remote_list(without_list: str = "allow", refresh: str = "2s", **over) -> dict:
    return {
        "name": "drop",
        "action": "deny",
        "remote": {
            "cluster": "lists",
            "path": LIST_PATH,
            "authority": "lists.example",
            "refresh": refresh,
            "min_refetch": "2s",
            "timeout": "2s",
            **over,
        },
        "without_list": without_list,
    }


def remote_envoy(envoy, server: ListServer, lists: list[dict]) -> harness.EnvoyInstance:
    return envoy(config(lists), concurrency=CONCURRENCY, extra_clusters=[server.cluster("lists")])


# -- inline lists ------------------------------------------------------------------


INLINE = [
    {"name": "blocked", "action": "deny", "cidrs": ["203.0.113.0/24", "2001:db8::/32", "192.0.2.66"]},
    {"name": "login-abuse", "action": "deny", "routes": ["login"], "cidrs": ["198.51.100.0/24"]},
    {"name": "office", "action": "allow", "cidrs": ["203.0.113.8/29", "2001:db8:1::/48"]},
]


def test_inline_ipv4_and_ipv6_deny_lists(envoy):
    e = envoy(config(INLINE), concurrency=CONCURRENCY)
    for ip in ("203.0.113.5", "203.0.113.255", "192.0.2.66", "2001:db8::5", "2001:db8:ffff::1", "::ffff:203.0.113.5"):
        assert statuses(e, ip) == DENIED, ip
    for ip in ("203.0.114.5", "192.0.2.65", "2001:db9::5", "::ffff:203.0.114.5"):
        assert statuses(e, ip) == PASSED, ip
    r = send(e, "203.0.113.5")
    body = json.loads(r[2])
    assert body["error"] == "forbidden" and body["reason"] == "reputation.deny"
    # The security event names the list (the event's `rule`) and the stage.
    events = deny_events(e)
    assert events, "no reputation.deny event in the log"
    assert {ev.get("rule") for ev in events} == {"blocked"}
    assert {ev.get("stage") for ev in events} == {"reputation"}
    assert {ev.get("action") for ev in events} == {"deny"}


def deny_events(e) -> list[dict]:
    """The `reputation.deny` security events, waited for (the log is flushed every 100 ms)."""
    deadline = time.monotonic() + 10
    while True:
        events = [ev for ev in finding_events(e) if ev.get("reason") == "reputation.deny"]
        if events or time.monotonic() > deadline:
            return events
        time.sleep(0.2)


def test_allow_lists_win_and_routes_restrict_a_list(envoy):
    e = envoy(
        config(
            INLINE,
            rate_limits={"rules": [{"name": "per-ip", "key": ["ip"], "capacity": 3, "refill": {"tokens": 1, "every": "1h"}}]},
        ),
        concurrency=CONCURRENCY,
    )
    # On `office` (allow) inside `blocked` (deny): not denied by reputation ...
    assert statuses(e, "203.0.113.9", n=3) == PASSED
    # ... but not exempt from the other stages: its ip bucket runs out.
    r = send(e, "203.0.113.9")
    assert (r[0], harness.reason_of(r)) == (429, "rl.exhausted")
    assert statuses(e, "2001:db8:1::9", n=3) == PASSED
    # `login-abuse` applies to the login route class only.
    assert statuses(e, "198.51.100.20", "/login", n=2) == DENIED
    assert statuses(e, "198.51.100.21", "/api", n=3) == PASSED
    # `blocked` applies everywhere.
    assert statuses(e, "203.0.113.1", "/login", n=4) == DENIED


def test_monitor_mode_logs_without_denying(envoy):
    e = envoy({**config(INLINE), "reputation": {"mode": "monitor", "lists": INLINE}}, concurrency=2)
    assert statuses(e, "203.0.113.5", n=4) == PASSED
    events = deny_events(e)
    assert events and {ev.get("action") for ev in events} == {"monitor"}


@pytest.mark.parametrize(
    ("cidrs", "path"),
    [
        (["10.0.0.0/8", "2001:db8::/32", "::/0", "203.0.113.0/33"], "reputation.lists[0].cidrs[3]"),
        (["10.0.0.0/8", "not-an-address"], "reputation.lists[0].cidrs[1]"),
    ],
)
def test_a_bad_inline_prefix_is_refused_naming_its_path(expect_failure, cidrs, path):
    rc, log = expect_failure(config([{"name": "x", "action": "deny", "cidrs": cidrs}]), mode="validate")
    assert rc != 0, harness.tail(log, 25)
    assert path in log, harness.tail(log, 25)


# -- remote lists ------------------------------------------------------------------


def test_remote_list_loads_refreshes_and_keeps_the_last_good_list(envoy, lists):
    e = remote_envoy(envoy, lists, [remote_list()])
    wait_until(e, "203.0.113.7", DENIED, 30)
    assert statuses(e, "2001:db8:bad::1") == DENIED
    assert statuses(e, "198.51.100.7") == PASSED
    # One fetch per interval for the whole process, not one per worker.
    start, first = time.monotonic(), lists.fetch_count
    time.sleep(6.5)
    made = lists.fetch_count - first
    assert 1 <= made <= 4, f"{made} fetches in {time.monotonic() - start:.1f}s with refresh 2s and 4 workers"

    # Refresh: an address added to the served list becomes denied.
    lists.serve("203.0.113.0/24\n198.51.100.7\n")
    wait_until(e, "198.51.100.7", DENIED, 30)
    # Each worker installs the new list on its own 1 s tick: the requests
    # above may all have reached workers that had, while another still
    # answers from the old list (a CI run caught one such worker).
    wait_until(e, "2001:db8:bad::1", PASSED, 5)

    # Fetch failures (HTTP errors, then the server down) keep the last good list.
    lists.fail(503)
    lists.wait_for_fetches(lists.fetch_count, 2, 30)
    assert statuses(e, "198.51.100.7") == DENIED
    assert statuses(e, "203.0.113.7") == DENIED
    lists.stop()
    time.sleep(5)
    assert statuses(e, "198.51.100.7") == DENIED
    failed = harness.palisade_counter(e.prometheus(), "palisade_list_fetches_total", list="drop", result="failed")
    ok = harness.palisade_counter(e.prometheus(), "palisade_list_fetches_total", list="drop", result="ok")
    assert failed >= 2 and ok >= 2, (failed, ok)
    assert "the last good list stays in use" in e.log_text()


def test_a_document_with_no_prefix_keeps_the_last_good_list(envoy, lists):
    e = remote_envoy(envoy, lists, [remote_list()])
    wait_until(e, "203.0.113.7", DENIED, 30)
    # An error page served with 200: lines that are not prefixes, none that is.
    lists.serve("<html>\n<body>maintenance</body>\n</html>\n")
    lists.wait_for_fetches(lists.fetch_count, 2, 30)
    assert statuses(e, "203.0.113.7") == DENIED
    e.wait_for_log("the fetched document has no prefix", timeout=10)
    # Bad lines beside good ones are skipped and counted in one log line.
    lists.serve("# new\n192.0.2.0/24\nbogus\n10.0.0.0/99\n")
    wait_until(e, "192.0.2.9", DENIED, 30)
    assert statuses(e, "203.0.113.7") == PASSED
    e.wait_for_log("2 lines are not a prefix and were skipped (the first is line 3)", timeout=10)


@pytest.mark.parametrize("without_list", ["deny", "allow"])
def test_before_the_first_load(envoy, lists, without_list):
    lists.fail(500)
    e = remote_envoy(envoy, lists, [remote_list(without_list)])
    lists.wait_for_fetches(0, 1, 30)
    if without_list == "deny":
        assert statuses(e, "192.0.2.1") == {(503, "reputation.no_list")}
    else:
        assert statuses(e, "203.0.113.7") == PASSED
    lists.serve("203.0.113.0/24\n")
    wait_until(e, "203.0.113.7", DENIED, 30)
    assert statuses(e, "192.0.2.1") == PASSED


def big_list(n: int, rng: random.Random) -> tuple[str, list[str]]:
    """``n`` distinct prefixes (3/4 IPv4 /24 outside 203.0.113.0/24, 1/4 IPv6 /48)."""
    v4: set[int] = set()
    v6: set[int] = set()
    while len(v4) < n * 3 // 4:
        net = rng.getrandbits(24)
        if net != 0xCB0071:  # 203.0.113
            v4.add(net)
    while len(v6) < n - len(v4):
        v6.add(rng.getrandbits(48))
    lines = [f"{ipaddress.IPv4Address(x << 8)}/24" for x in v4]
    lines += [f"{ipaddress.IPv6Address(x << 80)}/48" for x in v6]
    rng.shuffle(lines)
    samples = [lines[i] for i in range(0, len(lines), len(lines) // 8)]
    return "\n".join(lines) + "\n", samples


def test_a_100k_prefix_remote_list_loads_and_is_enforced(envoy, lists):
    text, samples = big_list(100_000, random.Random(13))
    lists.serve(text)
    start = time.monotonic()
    e = remote_envoy(envoy, lists, [remote_list(refresh="1h")])
    started = time.monotonic()
    sample_ip = str(ipaddress.ip_network(samples[0]).network_address + 1)
    waited = wait_until(e, sample_ip, DENIED, 60)
    for prefix in samples:
        ip = str(ipaddress.ip_network(prefix).network_address + 1)
        assert statuses(e, ip, n=4) == DENIED, prefix
    assert statuses(e, "203.0.113.7") == PASSED
    log = e.log_text()
    assert "(100000 prefixes)" in log, harness.tail(log, 20)
    print(
        f"\n100k-prefix remote list: {len(text)} bytes of text; Envoy up in {started - start:.1f}s, "
        f"list enforced on every worker {waited:.1f}s later; Envoy RSS {e.rss_bytes()} bytes"
    )
