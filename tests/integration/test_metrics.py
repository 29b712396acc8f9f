"""(g) palisade counters at /stats/prometheus; (i) monitor mode."""

from __future__ import annotations

import time

from harness import palisade_counter, palisade_lines, parse_prometheus

CONFIG = {
    "version": 1,
    "routes": [{"name": "api", "prefix": "/api/"}],
    "rate_limits": {
        "rules": [
            {"name": "api-ip", "key": ["ip"], "routes": ["api"], "capacity": 1, "refill": {"tokens": 1, "every": "1h"}}
        ]
    },
}


def test_throttle_counter_in_prometheus(envoy):
    e = envoy(CONFIG)
    assert e.request("GET", "/api/x")[0] == 200
    assert e.request("GET", "/api/x")[0] == 429
    prom = e.prometheus()
    throttled = palisade_counter(prom, "palisade_requests_total", decision="throttle", route="api")
    allowed = palisade_counter(prom, "palisade_requests_total", decision="allow", route="api")
    assert throttled >= 1, f"no throttle counter; palisade lines:\n{palisade_lines(prom)}"
    assert allowed >= 1, f"no allow counter; palisade lines:\n{palisade_lines(prom)}"
    exhausted = palisade_counter(prom, "palisade_findings_total", reason="rl.exhausted", mode="enforce")
    assert exhausted >= 1, f"no findings counter; palisade lines:\n{palisade_lines(prom)}"


def test_monitor_mode_allows_and_counts(envoy):
    cfg = {
        "version": 1,
        "mode": "monitor",
        "rate_limits": {
            "rules": [{"name": "tight", "key": ["ip"], "capacity": 2, "refill": {"tokens": 1, "every": "10s"}}]
        },
    }
    e = envoy(cfg)
    before = palisade_counter(e.prometheus(), "palisade_findings_total", mode="monitor")
    statuses = [e.request("GET", "/a")[0] for _ in range(5)]
    assert statuses == [200] * 5, statuses
    prom = e.prometheus()
    after = palisade_counter(prom, "palisade_findings_total", mode="monitor")
    assert after > before, f"monitor findings did not increment ({before} -> {after}):\n{palisade_lines(prom)}"
    assert after - before >= 3, f"expected 3 monitor findings ({before} -> {after}):\n{palisade_lines(prom)}"


def _gauge(prom_text: str, metric: str, table: str) -> float | None:
    for name, labels, value in parse_prometheus(prom_text):
        if name.endswith(metric) and labels.get("table") == table:
            return value
    return None


def test_table_occupancy_gauges(envoy):
    """One worker at a time reads the slot pages (a lease in shared data)
    and sets palisade_table_slots_used / palisade_table_slots; a table of
    64 pages is read whole within a tick. Used means a record still carries
    information: 20 clients with partly spent buckets, 20 slots."""
    cfg = {
        "version": 1,
        "client_ip": {"source": "x-forwarded-for", "trusted_hops": 1},
        "rate_limits": {
            "slots": 1024,
            "rules": [{"name": "per-ip", "key": ["ip"], "capacity": 50, "refill": {"tokens": 1, "every": "1h"}}],
        },
    }
    e = envoy(cfg)
    for i in range(20):
        assert e.request("GET", "/x", {"x-forwarded-for": f"198.51.100.{i + 1}"})[0] == 200
    deadline = time.monotonic() + 10
    used = slots = None
    while time.monotonic() < deadline:
        prom = e.prometheus()
        used = _gauge(prom, "palisade_table_slots_used", "rate_limits")
        slots = _gauge(prom, "palisade_table_slots", "rate_limits")
        if used == 20:
            break
        time.sleep(0.5)
    assert (used, slots) == (20, 1024), palisade_lines(prom)
