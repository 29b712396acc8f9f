"""Anomaly detection against the real Envoy (2 workers): both workers feed
one baseline per route class through shared data; a spike of requests or
of upstream 5xx answers after steady traffic raises one ``palisade.anomaly``
event and ``palisade_anomalies_total``, steady traffic raises nothing.

Traffic is paced by sleeping after each request (never catching up), so a
slow machine only lowers a window's count: a spike is always the test's."""

from __future__ import annotations

import json
import time
from typing import Callable

from harness import COUNTER_FLUSH_S, palisade_counter, palisade_lines

# 2 s windows judged 2 s after they end; 3 windows of warm-up.
CONFIG = {
    "routes": [{"name": "api", "prefix": "/api/"}],
    "anomaly": {
        "defaults": {
            "window": "2s",
            "warmup_windows": 3,
            "baseline_windows": 10,
            "deviations": 4,
            "min_requests": 5,
            "hold": "4s",
        },
        "routes": {"default": {"disable": True}},
    },
}
# The "upstream" of /api/broken answers 503 (a direct_response, as every
# route of the test Envoy).
BROKEN = [{"match": {"prefix": "/api/broken"}, "direct_response": {"status": 503}}]

STEADY_GAP_S = 0.12  # about 8 requests a second, 16 a window


def steady(proxy, seconds: float, send: Callable[[int], tuple] | None = None) -> list[int]:
    """Paced requests for `seconds` (`send(n)` makes the n-th, by default
    GET /api/items); their statuses."""
    send = send or (lambda _n: proxy.request("GET", "/api/items"))
    statuses = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        statuses.append(send(len(statuses))[0])
        time.sleep(STEADY_GAP_S)
    return statuses


def at_window_start() -> None:
    """Waits for the next window (whole 2 s of Unix time, as the proxy's
    clock counts them), so that a burst sent now is not split over two."""
    time.sleep(2 - time.time() % 2)


def anomaly_events(log: str) -> list[dict]:
    """The ``palisade.anomaly`` events in a proxy's log."""
    events = []
    for line in log.splitlines():
        if '"event":"palisade.anomaly"' in line:
            events.append(json.loads(line[line.index("{") :]))
    return events


def wait_for_event(log: Callable[[], str], action: str, signal: str, timeout: float = 10.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for event in anomaly_events(log()):
            if event["action"] == action and event["signal"] == signal:
                return event
        time.sleep(0.25)
    raise AssertionError(f"no {action} event for {signal}; events: {anomaly_events(log())}")


def test_a_request_spike_starts_an_anomaly_that_ends_after_the_hold(envoy):
    e = envoy(CONFIG)
    steady(e, 10)
    assert anomaly_events(e.log_text()) == [], "steady traffic is not an anomaly"
    at_window_start()
    for _ in range(150):  # ten times the rate, across both workers
        assert e.request("GET", "/api/items")[0] == 200
    steady(e, 4)
    event = wait_for_event(e.log_text, "start", "rate")
    assert event["route"] == "api" and event["reason"] == "anomaly.rate", event
    assert event["observed"] >= 100 > 4 * event["baseline"], event
    time.sleep(COUNTER_FLUSH_S)
    prom = e.prometheus()
    assert palisade_counter(prom, "palisade_anomalies_total", route="api", signal="rate") == 1, palisade_lines(prom)
    wait_for_event(e.log_text, "end", "rate", timeout=15)
    starts = [ev for ev in anomaly_events(e.log_text()) if ev["action"] == "start"]
    assert [ev["signal"] for ev in starts] == ["rate"], "one anomaly, reported by one worker"


def test_an_upstream_error_burst_is_an_errors_anomaly(envoy):
    e = envoy(CONFIG, extra_routes=BROKEN)
    steady(e, 9)
    # One window of failing answers at the steady pace.
    at_window_start()
    statuses = steady(e, 1.7, lambda _n: e.request("GET", "/api/broken"))
    assert set(statuses) == {503}, statuses
    steady(e, 4)
    event = wait_for_event(e.log_text, "start", "errors")
    assert event["observed"] > 0.5 and event["baseline"] < 0.1, event
    assert all(ev["signal"] == "errors" for ev in anomaly_events(e.log_text())), anomaly_events(e.log_text())


def test_steady_traffic_raises_nothing(envoy):
    e = envoy(CONFIG, extra_routes=BROKEN)
    # Steady with a steady share of errors: every fifth request fails.
    n = len(steady(e, 20, lambda i: e.request("GET", "/api/broken" if i % 5 == 0 else "/api/items")))
    time.sleep(3)
    assert anomaly_events(e.log_text()) == []
    prom = e.prometheus()
    assert palisade_counter(prom, "palisade_anomalies_total") == 0, palisade_lines(prom)
    # The traffic went through palisade on the watched class.
    assert palisade_counter(prom, "palisade_requests_total", route="api") >= n - 10, palisade_lines(prom)


TIGHTENING = {
    **CONFIG,
    "user": {"header": "x-user"},
    "rate_limits": {
        "rules": [
            {"name": "per-user", "key": ["user"], "routes": ["api"], "capacity": 6, "refill": {"tokens": 1, "every": "1h"}}
        ]
    },
    # An anomaly is known 2-3 s after its window ends: hold it for 10 s.
    "anomaly": {**CONFIG["anomaly"], "defaults": {**CONFIG["anomaly"]["defaults"], "tighten_by": 3, "hold": "10s"}},
}


def allowed_for_new_user(e, user: str) -> int:
    statuses = [e.request("GET", "/api/items", {"x-user": user})[0] for _ in range(8)]
    assert set(statuses) <= {200, 429}, statuses
    return statuses.count(200)


def check_tightening(proxy, log: Callable[[], str]) -> None:
    """Steady traffic from many users, a spike, then a fresh user's
    allowance before, during and after the anomaly (Envoy and NGINX)."""
    steady(proxy, 9, lambda i: proxy.request("GET", "/api/items", {"x-user": f"steady-{i}"}))
    assert allowed_for_new_user(proxy, "before") == 6
    for i in range(150):
        proxy.request("GET", "/api/items", {"x-user": f"spike-{i}"})
    wait_for_event(log, "start", "rate")
    time.sleep(COUNTER_FLUSH_S)  # every worker has read the record on its tick
    assert allowed_for_new_user(proxy, "during") == 2, "limits divided by tighten_by"
    wait_for_event(log, "end", "rate", timeout=20)
    time.sleep(COUNTER_FLUSH_S)
    assert allowed_for_new_user(proxy, "after") == 6, "relaxed once the anomaly ended"


def test_limits_tighten_while_the_anomaly_lasts_and_relax_after(envoy):
    e = envoy(TIGHTENING)
    check_tightening(e, e.log_text)
