"""Anomaly detection on NGINX (ngx_wasm_module, 2 worker processes): both
workers feed one baseline through the shm_kv zone on their own ticks; a
spike raises one ``palisade.anomaly`` event in the error log, steady
traffic none, as on Envoy (tests/integration/test_anomaly.py). NGINX has no
palisade metrics (README), so the event is what is checked."""

from __future__ import annotations

import time

from test_anomaly import (
    CONFIG,
    TIGHTENING,
    anomaly_events,
    at_window_start,
    check_tightening,
    steady,
    wait_for_event,
)


def test_a_request_spike_across_workers_is_one_anomaly_on_nginx(nginx, upstream):
    inst = nginx(CONFIG)
    steady(inst, 10)
    assert anomaly_events(inst.error_log()) == []
    at_window_start()
    for _ in range(150):
        assert inst.request("GET", "/api/items")[0] == 200
    steady(inst, 4)
    event = wait_for_event(inst.error_log, "start", "rate")
    assert event["route"] == "api" and event["observed"] >= 100 > 4 * event["baseline"], event
    served = inst.served_by("/api/items")
    assert len(served) == 2, f"requests per worker {served}: both workers must take part"
    starts = [ev for ev in anomaly_events(inst.error_log()) if ev["action"] == "start"]
    assert [ev["signal"] for ev in starts] == ["rate"], starts
    inst.assert_healthy()


def test_steady_traffic_raises_nothing_on_nginx(nginx, upstream):
    inst = nginx(CONFIG)
    statuses = steady(inst, 16)
    assert set(statuses) == {200}, statuses
    time.sleep(3)
    assert anomaly_events(inst.error_log()) == []
    inst.assert_healthy()


def test_limits_tighten_during_an_anomaly_on_nginx(nginx, upstream):
    inst = nginx(TIGHTENING)
    check_tightening(inst, inst.error_log)
    inst.assert_healthy()
