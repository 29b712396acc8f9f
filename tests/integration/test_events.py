"""Security events against the real Envoy: one versioned, timestamped JSON
line per request with findings, carrying every reason code of the request
(README, Security events), and none for a clean request."""

from __future__ import annotations

import datetime
import json
import time

CONFIG = {
    "client_ip": {"source": "x-forwarded-for", "trusted_hops": 1},
    "routes": [{"name": "search", "prefix": "/search"}],
    "validation": {"defaults": {"mode": "monitor"}},
    "rate_limits": {
        "rules": [
            {"name": "search-ip", "key": ["ip"], "routes": ["search"], "capacity": 1, "refill": {"tokens": 1, "every": "1h"}}
        ]
    },
}


def request_events(log: str) -> list[dict]:
    return [json.loads(line[line.index("{") :]) for line in log.splitlines() if '"event":"palisade.request"' in line]


def test_one_event_per_request_with_every_reason_code(envoy):
    e = envoy(CONFIG)
    client = {"x-forwarded-for": "198.51.100.20", "x-request-id": "evt-1"}
    assert e.request("GET", "/search?q=shoes", client)[0] == 200
    assert request_events(e.log_text()) == [], "a clean request writes nothing"
    # SQL injection (monitored) on the second request, which the limit refuses.
    before = time.time()
    attack = {**client, "x-request-id": "evt-2"}
    assert e.request("GET", "/search?q=1%27%20OR%20%271%27%3D%271", attack)[0] == 429
    e.wait_for_log('"request_id":"evt-2"')
    (event,) = request_events(e.log_text())
    assert event["schema"] == 1 and event["action"] == "deny", event
    assert (event["reason"], event["stage"], event["rule"]) == ("rl.exhausted", "ratelimit", "search-ip"), event
    assert event["reasons"] == ["validation.sqli", "rl.exhausted"], event
    assert [(f["reason"], f["mode"]) for f in event["findings"]] == [
        ("validation.sqli", "monitor"),
        ("rl.exhausted", "enforce"),
    ], event
    assert (event["route"], event["client_ip"], event["request_id"]) == ("search", "198.51.100.20", "evt-2"), event
    ts = datetime.datetime.fromisoformat(event["ts"].replace("Z", "+00:00"))
    assert ts.tzinfo is not None and abs(ts.timestamp() - before) < 30, event["ts"]


def test_monitor_only_findings_are_one_monitor_event(envoy):
    e = envoy({**CONFIG, "rate_limits": {"rules": []}})
    r = e.request("GET", "/search?q=%3Cscript%3Ealert(1)%3C/script%3E&p=../../etc/passwd", {"x-request-id": "evt-3"})
    assert r[0] == 200, r
    e.wait_for_log('"request_id":"evt-3"')
    (event,) = request_events(e.log_text())
    assert event["action"] == "monitor" and set(event["reasons"]) >= {"validation.xss", "validation.traversal"}, event
    assert all(f["mode"] == "monitor" for f in event["findings"]), event
