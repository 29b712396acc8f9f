"""(g) palisade counters at /stats/prometheus; (i) monitor mode."""

from __future__ import annotations

from harness import palisade_counter, palisade_lines

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
