"""Impossible travel on a real Envoy (4 workers): a user's verified token
used from a second country within ``geo.impossible_travel.within`` of the
last request from the first is refused with 403 ``geo.impossible_travel``,
whichever worker serves it; the owner keeps working, other users and
requests without a country are not compared, and monitor mode only logs
and counts. The tests set the trusted country header themselves, as an edge
would (test_geo.py covers Envoy's geoip filter writing it).
"""

from __future__ import annotations

import copy
import json

import harness
from demo_token import demo_provider, mint

WORKERS = 4

CONFIG = {
    "version": 1,
    "routes": [{"name": "api", "prefix": "/api/"}],
    "jwt": {"providers": [demo_provider()]},
    "authorization": {"policies": [{"routes": ["api"]}]},
    "geo": {"header": "x-geo-country", "impossible_travel": {"within": "1h", "slots": 1024}},
}


def call(e, token: str, country: str | None):
    headers = {"authorization": f"Bearer {token}"}
    if country:
        headers["x-geo-country"] = country
    # A new connection per request, so the requests spread over the workers.
    return e.request("GET", "/api/orders", headers=headers)


def findings(log: str, reason: str) -> list[dict]:
    events = [json.loads(line[line.index("{"):]) for line in log.splitlines()
              if '"event":"palisade.request"' in line]
    return [ev for ev in events if ev.get("reason") == reason]


def test_a_token_used_from_a_second_country_is_refused_while_its_owner_works(envoy):
    e = envoy(CONFIG, concurrency=WORKERS)
    alice = mint("alice")
    for _ in range(8):
        assert call(e, alice, "DE")[0] == 200
    workers = e.workers_with_connections()
    assert len(workers) >= 2, f"requests did not spread over workers: {workers}"
    stolen = [call(e, alice, "BR") for _ in range(8)]
    assert {(r[0], harness.reason_of(r)) for r in stolen} == {(403, "geo.impossible_travel")}, stolen
    # The owner keeps working from home, between the thief's attempts too.
    for _ in range(4):
        assert call(e, alice, "DE")[0] == 200
        assert call(e, alice, "BR")[0] == 403
    # Another user in Brazil, and alice without a country, are not compared.
    assert call(e, mint("bob"), "BR")[0] == 200
    assert call(e, alice, None)[0] == 200
    log = e.wait_for_log('"reason":"geo.impossible_travel"', timeout=10)
    flagged = findings(log, "geo.impossible_travel")
    assert flagged and all(ev["country"] == "BR" and ev["action"] == "deny" for ev in flagged), flagged
    assert alice not in log
    prom = e.prometheus()
    assert harness.palisade_counter(
        prom, "palisade_findings_total", stage="geo", reason="geo.impossible_travel",
        mode="enforce", route="api") == 12, harness.palisade_lines(prom)


def test_monitor_mode_counts_the_move_and_follows_the_user(envoy):
    config = copy.deepcopy(CONFIG)
    config["geo"]["impossible_travel"]["mode"] = "monitor"
    e = envoy(config, concurrency=WORKERS)
    carol = mint("carol")
    assert call(e, carol, "FR")[0] == 200
    assert call(e, carol, "JP")[0] == 200
    for _ in range(4):
        assert call(e, carol, "JP")[0] == 200
    log = e.wait_for_log('"reason":"geo.impossible_travel"', timeout=10)
    flagged = findings(log, "geo.impossible_travel")
    assert [(ev["country"], ev["action"]) for ev in flagged] == [("JP", "monitor")], flagged
    prom = e.prometheus()
    assert harness.palisade_counter(
        prom, "palisade_findings_total", reason="geo.impossible_travel", mode="monitor") == 1
