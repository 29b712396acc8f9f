"""Geo rules: the client's country from a trusted header (`geo` section),
allow and deny lists per route class, what a request without a country
gets, and rate-limit rules that apply only to listed countries.

Most tests set the header themselves (the test Envoy forwards it as sent),
as a CDN in front would. The last ones run Envoy's REAL geoip filter with
a generated MaxMind database (tests/fixtures/geo/make_test_db.py), wired as
the shipped envoy/geoip.yaml wires it, and show that a client cannot choose
its own country: the geoip filter overwrites the header only when its
lookup finds the address, so the shipped wiring removes the client's copy
before it runs.
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import pytest
import yaml

import harness
import suite_support

sys.path.insert(0, str(harness.REPO_ROOT / "tests" / "fixtures" / "geo"))
import make_test_db  # noqa: E402

HEADER = "x-geo-country"
SHIPPED = harness.REPO_ROOT / "envoy" / "geoip.yaml"

# Addresses of the generated database (make_test_db.NETWORKS).
US_IP, KP_IP, UNKNOWN_IP = "192.0.2.7", "198.51.100.7", "203.0.113.7"

CONFIG = {
    "version": 1,
    "client_ip": {"source": "x-forwarded-for", "trusted_hops": 1},
    "routes": [
        {"name": "admin", "prefix": "/admin"},
        {"name": "login", "prefix": "/login"},
        {"name": "api", "prefix": "/api/"},
    ],
    "geo": {
        "header": HEADER,
        "rules": [
            {"routes": ["admin"], "allow": ["US", "CA"]},
            {"routes": ["login"], "deny": ["KP", "XX"]},
        ],
    },
    "rate_limits": {
        "rules": [
            {"name": "api-listed", "key": ["ip"], "routes": ["api"], "countries": ["KP"],
             "capacity": 2, "refill": "none"},
            {"name": "api-ip", "key": ["ip"], "routes": ["api"], "capacity": 20, "refill": "none"},
        ]
    },
}


def req(ip: str, country: str | None = None) -> dict[str, str]:
    headers = {"x-forwarded-for": ip}
    if country is not None:
        headers[HEADER] = country
    return headers


def assert_denied(resp: harness.Response, what: str) -> None:
    assert resp[0] == 403 and harness.reason_of(resp) == "geo.denied", (what, resp[0], resp[2])


def assert_allowed(resp: harness.Response, what: str) -> None:
    assert resp[0] == 200, (what, resp[0], resp[2])


def test_allow_and_deny_lists_per_route_class(envoy):
    e = envoy(CONFIG)
    # admin: only US and CA, in any case and with spaces around.
    for country in ("US", "ca", " US "):
        assert_allowed(e.request("GET", "/admin/users", req(US_IP, country)), f"admin {country!r}")
    for country in ("DE", "KP", "XX"):
        assert_denied(e.request("GET", "/admin/users", req(US_IP, country)), f"admin {country!r}")
    # login: everyone but KP and XX.
    for country in ("KP", "kp", "XX"):
        assert_denied(e.request("POST", "/login", req(US_IP, country)), f"login {country!r}")
    for country in ("US", "DE"):
        assert_allowed(e.request("POST", "/login", req(US_IP, country)), f"login {country!r}")
    # Route classes without a rule (api, default) are not checked.
    assert_allowed(e.request("GET", "/api/items", req(US_IP, "KP")), "api KP")
    assert_allowed(e.request("GET", "/", req(US_IP, "XX")), "default XX")


def test_a_request_without_a_country_follows_unknown(envoy):
    e = envoy(CONFIG)
    # Absent, empty, "--" (no lookup result), not two letters: no country.
    for country in (None, "", "--", "USA", "U5", "US,CA"):
        # admin's allow list does not name "unknown", login's deny list neither.
        assert_denied(e.request("GET", "/admin", req(US_IP, country)), f"admin {country!r}")
        assert_allowed(e.request("POST", "/login", req(US_IP, country)), f"login {country!r}")
    # "unknown" listed: a deny list refuses such requests, an allow list passes them.
    listed = copy.deepcopy(CONFIG)
    listed["geo"]["rules"] = [
        {"routes": ["admin"], "allow": ["US", "unknown"]},
        {"routes": ["login"], "deny": ["KP", "unknown"]},
    ]
    e2 = envoy(listed)
    assert_denied(e2.request("POST", "/login", req(US_IP)), "login, no country, unknown denied")
    assert_denied(e2.request("POST", "/login", req(US_IP, "--")), "login, --, unknown denied")
    assert_allowed(e2.request("POST", "/login", req(US_IP, "FR")), "login FR")
    assert_allowed(e2.request("GET", "/admin", req(US_IP)), "admin, no country, unknown allowed")
    assert_denied(e2.request("GET", "/admin", req(US_IP, "FR")), "admin FR")


def _api_until_throttled(e: harness.EnvoyInstance, ip: str, country: str, limit: int) -> tuple[list[int], harness.Response]:
    """`limit` + 1 requests, each on a fresh connection (spread over the
    workers): the statuses of the first `limit`, and the last response."""
    statuses = [e.request("GET", "/api/items", req(ip, country))[0] for _ in range(limit)]
    return statuses, e.request("GET", "/api/items", req(ip, country))


def test_a_listed_country_gets_the_stricter_limit(envoy):
    e = envoy(CONFIG, concurrency=4)
    # KP: the capacity-2 rule applies (and counts across the 4 workers).
    ok, last = _api_until_throttled(e, KP_IP, "KP", 2)
    assert ok == [200, 200], ok
    assert last[0] == 429 and harness.reason_of(last) == "rl.exhausted", last
    assert '"api-listed"' in last[1].get("ratelimit-policy", ""), last[1]
    # US, from another address: only the capacity-20 rule.
    ok, last = _api_until_throttled(e, US_IP, "US", 20)
    assert ok == [200] * 20, ok
    assert last[0] == 429 and '"api-ip"' in last[1].get("ratelimit-policy", ""), last
    # The KP rule keys by address, not country: another KP address has its own 2.
    other_kp = "198.51.100.8"
    assert [e.request("GET", "/api/items", req(other_kp, "KP"))[0] for _ in range(3)] == [200, 200, 429]


def test_monitor_mode_logs_the_country_and_lets_through(envoy):
    config = copy.deepcopy(CONFIG)
    config["geo"]["mode"] = "monitor"
    e = envoy(config)
    assert_allowed(e.request("GET", "/admin", req(US_IP, "de")), "monitored admin DE")
    log = e.wait_for_log('"reason":"geo.denied"', timeout=10)
    events = [json.loads(line[line.index("{"):]) for line in log.splitlines() if '"event":"palisade.request"' in line]
    geo = [ev for ev in events if ev.get("reason") == "geo.denied"]
    assert geo and geo[-1]["action"] == "monitor" and geo[-1]["country"] == "DE" and geo[-1]["stage"] == "geo", geo
    prom = e.prometheus()
    assert harness.palisade_counter(
        prom, "palisade_findings_total", stage="geo", reason="geo.denied", mode="monitor", route="admin"
    ) >= 1, harness.palisade_lines(prom)


# --------------------------------------------------------------------------
# Envoy's geoip filter with a generated MaxMind database.
# --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def country_db(tmp_path_factory) -> Path:
    return make_test_db.build(tmp_path_factory.mktemp("geo") / "test-country.mmdb")


def _shipped_filters() -> dict[str, dict]:
    boot = yaml.safe_load(SHIPPED.read_text())
    hcm = boot["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    return {f["name"]: f for f in hcm["http_filters"]}


def _geoip_filter(db: Path) -> dict:
    """The shipped geoip filter entry, reading `db`."""
    geoip = copy.deepcopy(_shipped_filters()["envoy.filters.http.geoip"])
    geoip["typed_config"]["provider"]["typed_config"]["country_db_path"] = str(db)
    return geoip


def test_without_the_removal_a_client_picks_its_country(envoy, country_db):
    """Envoy's behaviour the shipped wiring guards against: the geoip filter
    alone overwrites the header for an address its database knows, and
    leaves the client's copy when it does not."""
    e = envoy(CONFIG, pre_filters=[_geoip_filter(country_db)])
    # Known address: the database wins over the client's claim.
    assert_denied(e.request("GET", "/admin", req(KP_IP, "US")), "KP address claiming US")
    assert_allowed(e.request("GET", "/admin", req(US_IP, "KP")), "US address claiming KP")
    # Unknown address: the client's claim survives (this is the hole).
    assert_allowed(e.request("GET", "/admin", req(UNKNOWN_IP, "US")), "unknown address claiming US")


def test_with_the_shipped_removal_the_claim_is_dropped(envoy, country_db):
    removal = _shipped_filters()["envoy.filters.http.header_mutation"]
    assert removal["typed_config"]["mutations"]["request_mutations"] == [{"remove": HEADER}]
    e = envoy(CONFIG, pre_filters=[removal, _geoip_filter(country_db)])
    assert_denied(e.request("GET", "/admin", req(UNKNOWN_IP, "US")), "unknown address claiming US")
    assert_denied(e.request("GET", "/admin", req(UNKNOWN_IP)), "unknown address")
    assert_denied(e.request("GET", "/admin", req(KP_IP, "US")), "KP address claiming US")
    assert_allowed(e.request("GET", "/admin", req(US_IP, "KP")), "US address claiming KP")
    assert_allowed(e.request("GET", "/admin", req(US_IP)), "US address")
    # IPv6: 2001:db8:1::/48 is DE in the test database.
    assert_denied(e.request("GET", "/admin", req("2001:db8:1::7", "US")), "DE IPv6 address claiming US")


def _shipped_bootstrap(db: Path) -> str:
    """envoy/geoip.yaml as shipped, but on ports the kernel picks, with
    absolute paths, and Envoy answering itself instead of the demo upstream."""
    boot = yaml.safe_load(SHIPPED.read_text())
    boot["admin"]["address"]["socket_address"]["port_value"] = 0
    (listener,) = boot["static_resources"]["listeners"]
    listener["address"]["socket_address"].update(address="127.0.0.1", port_value=0)
    hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
    hcm["route_config"]["virtual_hosts"][0]["routes"] = [harness.OK_ROUTE]
    for f in hcm["http_filters"]:
        if f["name"] == "envoy.filters.http.geoip":
            f["typed_config"]["provider"]["typed_config"]["country_db_path"] = str(db)
        if f["name"] == "palisade":
            f["typed_config"]["config"]["vm_config"]["code"]["local"]["filename"] = str(harness.wasm_path())
    del boot["static_resources"]["clusters"]
    boot["stats_config"] = {"stats_tags": harness.PALISADE_STATS_TAGS}
    return json.dumps(boot, indent=2)


@pytest.fixture
def shipped_geoip(tmp_path, country_db, artefacts):
    inst = harness.EnvoyInstance("{}", concurrency=2, workdir=tmp_path / "shipped")
    inst.config_path.write_text(_shipped_bootstrap(country_db))
    yield suite_support.start_or_fail(inst)
    inst.stop()


def test_the_shipped_geoip_demo_applies_country_rules(shipped_geoip):
    """envoy/geoip.yaml end to end: Envoy trusts one proxy hop, the geoip
    filter looks up the address that hop names, and palisade's rules see
    the country of that address, whatever the client claims."""
    e = shipped_geoip
    # /admin allows US and CA only, and no unknown country.
    assert_allowed(e.request("GET", "/admin", req(US_IP, "KP")), "US address")
    assert_denied(e.request("GET", "/admin", req(KP_IP, "US")), "KP address claiming US")
    assert_denied(e.request("GET", "/admin", req(UNKNOWN_IP, "US")), "unknown address claiming US")
    # POST /login refuses KP.
    assert_denied(e.request("POST", "/login", req(KP_IP)), "login from KP")
    assert_allowed(e.request("POST", "/login", req(US_IP)), "login from US")
    # /api/: KP and unknown addresses get 2 requests a minute, others 20.
    for ip in (KP_IP, UNKNOWN_IP):
        ok, last = _api_until_throttled(e, ip, "US", 2)
        assert ok == [200, 200] and last[0] == 429, (ip, ok, last)
        assert harness.reason_of(last) == "rl.exhausted" and '"api-listed"' in last[1].get("ratelimit-policy", ""), last
    ok, last = _api_until_throttled(e, US_IP, "KP", 20)
    assert ok == [200] * 20 and last[0] == 429 and '"api-ip"' in last[1].get("ratelimit-policy", ""), (ok, last)
