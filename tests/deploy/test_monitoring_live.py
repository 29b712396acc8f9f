"""The operations kit against live data: Debian's Prometheus (the
`prometheus` binary of the package `make deploy-setup` installs) scrapes a
real Envoy running palisade.wasm, and every query of the Grafana dashboard
and every alert rule's data must find series there.

test_monitoring.py checks the kit on paper (promtool parses the queries, the
rules' unit tests feed them made-up series); this module checks that the
series they read are the ones a real Envoy exports, with the labels the
shipped Envoy configuration gives them:

* Envoy A (the harness, 2 workers, with the `stats_tags` of the shipped
  envoy/envoy.yaml) gets traffic that moves every palisade metric: allowed,
  denied, throttled, challenged and errored requests; enforced and
  monitor-mode findings; a ban; failed logins (a login service upstream);
  remote key sets and reputation lists that load and ones that fail (local
  servers; 404s); a refresh-token table filled past its limit (503s, decision
  `error`); HTTP/2 bursts on one rate-limit key from every worker
  (compare-and-swap retries); a global rule counted by palisade's rate-limit
  service on a Redis (calls answered, then calls failing while the service
  is stopped). The slot-table gauges come with the tables.
* Envoy B runs the `anomaly` section: steady traffic on a route class, then
  a spike. It is its own Envoy so that a build that refuses the section
  fails the anomaly cases only (with Envoy's error), not the rest.
* Prometheus runs envoy/prometheus.yml with its alerting rules, scraping
  every second: A, B, and a target nobody listens on (the `up == 0` alert).

A's traffic comes in two rounds with scrapes between: palisade creates a
counter the first time it moves, so the round that creates a series is its
first sample, and only the second round's increments make rates.

Then, through Prometheus' HTTP API ("returns data": a result with at least
one finite value; a ratio of rates of series that never moved is NaN):

* each dashboard query (``test_monitoring.dashboard_queries``, `$route` as
  the route classes `label_values` finds, `$__rate_interval` 1m, `$__range`
  5m) returns data; a query with a constant fallback (``or vector(0)``)
  must also return data without it, or it would pass on the fallback alone;
* each alert expression's data queries (:func:`data_queries`: the
  expression split mechanically at its set operators and comparisons with a
  number) return data: an alert that does not fire is rightly empty, the
  series it reads must not be;
* the alerts this traffic really raises are active in Prometheus' rule
  engine (pending: their `for` has not elapsed), the fail-open alert is not,
  and every rule evaluates without error.

What cannot be produced live: the fail-open findings (`store_unavailable`:
every compare-and-swap of a request lost, rare and not on demand;
`host_unavailable`: Envoy failing to hand over headers or the clock). Their
queries are evaluated with the reason matcher replaced by a monitor-mode
finding this traffic does produce (:data:`FAIL_OPEN_STAND_IN`): the labels
and the mode are checked live, the two reason values are not.

About 35 s. Alone: make check-deploy DEPLOY_PYTEST_ARGS='-k monitoring_live'
(or .venv/bin/python -m pytest tests/deploy/test_monitoring_live.py once
make build and make deploy-setup have run).
"""

from __future__ import annotations

import base64
import collections
import json
import math
import re
import secrets
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

import deploy
from test_envoy import _free_port, _wait
from test_monitoring import ALERTS, METRICS, PROMETHEUS, alert_rules, dashboard_queries, prometheus_tool

sys.path.insert(0, str(deploy.REPO_ROOT / "tests" / "integration"))
try:
    import cluster
    import harness
    import suite_support
    from demo_token import demo_provider, mint
    from jwks_server import JwksServer
    from test_bot import SECRET_B64, challenged, header_set
    from test_bot import send as send_with_header_order
    from test_contention import Burst, get, xff
    from test_login import LoginService
    from test_reputation import LIST_PATH, ListServer
finally:
    sys.path.pop(0)

SHIPPED_ENVOY_YAML = deploy.REPO_ROOT / "envoy" / "envoy.yaml"

# --------------------------------------------------------------------------
# Alert expressions: the parts that read data
# --------------------------------------------------------------------------
_SET_OPERATORS = (re.compile(r"\bor\b"), re.compile(r"\b(?:and|unless)\b"))
_COMPARISON = re.compile(r"==|!=|>=|<=|>|<")
# What may follow a binary operator before its right operand.
_MODIFIERS = re.compile(
    r"^\s*(?:bool\b\s*)?(?:(?:on|ignoring)\s*\([^)]*\)\s*)?(?:(?:group_left|group_right)\b\s*(?:\([^)]*\))?\s*)?"
)
_NUMBER = re.compile(r"[-+]?(?:(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|0x[0-9a-fA-F]+|Inf|NaN)", re.IGNORECASE)


def _flat(expr: str) -> str:
    """``expr`` with everything inside brackets (``()``, ``{}``, ``[]``) and
    string literals blanked out, the outermost brackets kept: operators and
    keywords left in it are at the top level. Raises ValueError on an
    unbalanced bracket or an unterminated string."""
    out: list[str] = []
    depth, quote, escaped = 0, "", False
    for c in expr:
        if quote:
            out.append(" ")
            if escaped:
                escaped = False
            elif c == "\\" and quote != "`":
                escaped = True
            elif c == quote:
                quote = ""
        elif c in "\"'`":
            quote = c
            out.append(" ")
        elif c in "([{":
            out.append(c if depth == 0 else " ")
            depth += 1
        elif c in ")]}":
            depth -= 1
            if depth < 0:
                raise ValueError(f"unbalanced {c!r} in {expr!r}")
            out.append(c if depth == 0 else " ")
        else:
            out.append(c if depth == 0 else " ")
    if depth or quote:
        raise ValueError(f"unbalanced brackets or quotes in {expr!r}")
    return "".join(out)


def _strip_parens(expr: str) -> str:
    """``expr`` without brackets around the whole of it."""
    expr = expr.strip()
    while expr.startswith("("):
        flat = _flat(expr)
        if flat.find(")") != len(expr) - 1:
            break
        expr = expr[1:-1].strip()
    return expr


def _split(expr: str, flat: str, pattern: re.Pattern) -> list[str]:
    """``expr`` cut at the top-level matches of ``pattern`` (found in ``flat``)."""
    parts, start = [], 0
    for m in pattern.finditer(flat):
        parts.append(expr[start : m.start()])
        start = m.end()
    return parts + [expr[start:]]


def data_queries(expr: str) -> list[str]:
    """The queries that read data in an alert expression, in order.

    Mechanical, by PromQL's precedence (lowest first): the expression is cut
    at its top-level ``or``, then ``and``/``unless``, then comparison
    operators (top level: outside every bracket and string); the modifiers
    of an operator (``on(..)``, ``ignoring(..)``, ``group_left``, ``bool``)
    are dropped from its right operand; an operand of a comparison that is a
    number is a threshold and dropped; each remaining operand is split again.
    What is left has no top-level set operator or comparison: an expression
    of aggregations, functions and arithmetic over selectors, whose result
    is what the alert compares or combines. Brackets around a whole operand
    are removed. Nested set operators (``sum(x unless x offset 5m)``) stay:
    that is one query."""
    expr = _strip_parens(expr)
    flat = _flat(expr)
    for pattern in (*_SET_OPERATORS, _COMPARISON):
        parts = _split(expr, flat, pattern)
        if len(parts) == 1:
            continue
        out: list[str] = []
        for i, part in enumerate(parts):
            if i:
                part = part[_MODIFIERS.match(part).end() :]
            if not part.strip():
                raise ValueError(f"an operator without an operand in {expr!r}")
            if pattern is _COMPARISON and _NUMBER.fullmatch(_strip_parens(part)):
                continue
            out += data_queries(part)
        return out
    return [expr]


@pytest.mark.parametrize(
    "expr, want",
    [
        ('up{job="envoy"} == 0', ['up{job="envoy"}']),
        ("sum by (rule) (increase(x[5m])) > 20", ["sum by (rule) (increase(x[5m]))"]),
        ("a / b > 0.01\nand\nc >= 0.02", ["a / b", "c"]),
        ("x >= 2 unless on (provider) y > 0", ["x", "y"]),
        ("(a / b > 0.9)\nor\n(c{t=\"r\"} / d{t=\"r\"} > 0.75)", ["a / b", 'c{t="r"} / d{t="r"}']),
        ("sum by (r) (x > 0) or sum by (r) (x unless x offset 5m)",
         ["sum by (r) (x > 0)", "sum by (r) (x unless x offset 5m)"]),
        # Operators inside strings and brackets are not the expression's.
        ('x{a=~"b|or > c", d!="e"} > 1', ['x{a=~"b|or > c", d!="e"}']),
        ("rate(x[5m:1m]) < -1e3", ["rate(x[5m:1m])"]),
        # Thresholds on the left, bool, a comparison of two queries.
        ("0.5 < a", ["a"]),
        ("a > bool 0", ["a"]),
        ("a > on (l) group_left (m) b", ["a", "b"]),
        ("a + on(l) group_left(m) b", ["a + on(l) group_left(m) b"]),
        (" ( (x) ) ", ["x"]),
        ("(a) / (b)", ["(a) / (b)"]),
        ("sum(x) or vector(0)", ["sum(x)", "vector(0)"]),
    ],
)  # fmt: skip
def test_data_queries_splits_at_top_level_operators(expr, want):
    assert data_queries(expr) == want


@pytest.mark.parametrize("expr", ["sum(x", "x{a=\"b}", "x > ", "a and"])
def test_data_queries_refuses_what_it_cannot_split(expr):
    with pytest.raises(ValueError):
        data_queries(expr)


def test_every_alert_yields_data_queries_that_split_no_further():
    for name, rule in alert_rules().items():
        queries = data_queries(rule["expr"])
        assert queries, name
        for q in queries:
            assert data_queries(q) == [q], f"{name}: {q!r} still has a top-level operator"
            assert re.search(r"\b(?:palisade_[a-z_]+|up)\b", q), f"{name}: {q!r} reads no metric"


# --------------------------------------------------------------------------
# What is evaluated
# --------------------------------------------------------------------------
# The fail-open findings (README, failure_mode allow) cannot be produced on
# a live Envoy: store_unavailable needs every compare-and-swap of a request
# to lose, host_unavailable a host that does not hand over the headers or
# the clock. Their queries read this monitor-mode finding instead.
FAIL_OPEN_MATCHER = 'reason=~"store_unavailable|host_unavailable"'
FAIL_OPEN_STAND_IN = 'reason=~"reputation_deny"'
# A constant a dashboard query falls back to when there is no series.
_FALLBACK = re.compile(r"\s*\bor\s+vector\(\s*[-+]?[\d.]+\s*\)")


def with_stand_in(expr: str) -> str:
    return expr.replace(FAIL_OPEN_MATCHER, FAIL_OPEN_STAND_IN)


def without_fallback(expr: str) -> str:
    return _FALLBACK.sub("", expr)


def _case_id(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-")


def _dashboard_cases() -> list:
    return [pytest.param(title, ref, id=_case_id(f"{title} {ref}")) for title, ref, _ in dashboard_queries()]


def _alert_cases() -> list:
    return [
        pytest.param(name, i, id=f"{name}-{i}")
        for name, rule in alert_rules().items()
        for i in range(len(data_queries(rule["expr"])))
    ]


# --------------------------------------------------------------------------
# Envoy A: every palisade metric but the anomalies
# --------------------------------------------------------------------------
JWKS_PATH = "/.well-known/jwks.json"
REFRESH_SLOTS = 16  # the smallest table (one page): a few more tokens fill it
API_CAPACITY = 2
CAS_BURSTS_S = 2.0
FETCH = {"refresh": "1h", "min_refetch": "1s", "timeout": "1s"}  # a failed fetch is retried every second


def _remote(path: str) -> dict:
    return {"remote": {"cluster": "jwks", "authority": "idp.example", "path": path, **FETCH}}


CONFIG = {
    "version": 1,
    "client_ip": {"source": "x-forwarded-for", "trusted_hops": 1},
    "routes": [
        {"name": "api", "prefix": "/api/"},
        {"name": "hot", "prefix": "/hot"},
        {"name": "login", "path": "/login", "methods": ["POST"]},
        {"name": "account", "prefix": "/account"},
        {"name": "token", "path": "/oauth/token", "methods": ["POST"]},
        {"name": "bot", "prefix": "/bot"},
    ],
    # Every slot table small (one to four pages): palisade's occupancy
    # gauges sample 64 pages a tick, round robin over the tables, so these
    # are read whole within a second (with the defaults, 9,000 pages, the
    # refresh-token table's gauge would wait minutes for its turn).
    "rate_limits": {
        "slots": 64,
        "rules": [
            {"name": "api-ip", "key": ["ip"], "routes": ["api"], "capacity": API_CAPACITY, "refill": "none",
             "ban": True},
            # One bucket for every request of the route: its compare-and-swaps collide across workers.
            {"name": "hot-all", "key": ["route"], "routes": ["hot"], "capacity": 1000000, "refill": "none"},
            {"name": "login-fail-ip", "key": ["ip"], "counts": "failed_logins", "capacity": 10,
             "refill": {"tokens": 10, "every": "15m"}},
        ]
    },
    "bans": {"after": 2, "base": "10m"},
    "login": {"routes": ["login"], "username_field": "username", "failure_statuses": [401], "slots": 16},
    "jwt": {
        "providers": [
            demo_provider(name="idp", jwks=_remote(JWKS_PATH)),  # the demo issuer: mint() signs for it
            demo_provider(name="broken", issuer="https://broken.example", jwks=_remote("/gone/jwks.json")),
        ],
        "refresh_tokens": {"routes": ["token"], "slots": REFRESH_SLOTS},
    },
    "authorization": {"policies": [{"routes": ["account"]}]},
    # Monitor mode: an address on `drop` is let through, logged and counted.
    "reputation": {
        "mode": "monitor",
        "lists": [
            {"name": "drop", "action": "deny", "remote": {"cluster": "lists", "path": LIST_PATH, **FETCH}},
            {"name": "feed", "action": "deny", "remote": {"cluster": "lists", "path": "/lists/gone.txt", **FETCH}},
        ],
    },
    "bot": {"routes": ["bot"], "challenge": {"secret": {"base64": SECRET_B64}, "difficulty": 8},
            "behaviour": {"slots": 16}},
    # The global mode: `glob` is counted by the rate-limit service too.
    "global": {"cluster": "ratelimit", "timeout": "300ms", "failure_mode": "deny",
               "key_secret": {"base64": base64.b64encode(secrets.token_bytes(32)).decode()}},
}  # fmt: skip
CONFIG["routes"].append({"name": "glob", "prefix": "/glob"})
CONFIG["rate_limits"]["rules"].append(
    {"name": "glob-ip", "key": ["ip"], "routes": ["glob"], "capacity": 3, "refill": {"tokens": 3, "every": "1h"},
     "scope": "global"}
)
LISTED_IP = "203.0.113.9"  # on the `drop` list

# --------------------------------------------------------------------------
# Envoy B: the anomaly section, a spike after steady traffic
# --------------------------------------------------------------------------
# 2 s windows (the shortest palisade takes: counts reach shared data on a
# 1 s tick), each judged about 2 s after it ends; 3 windows of warm-up.
ANOMALY_CONFIG = {
    "version": 1,
    "routes": [{"name": "spiky", "prefix": "/spiky"}, {"name": "quiet", "prefix": "/quiet"}],
    "anomaly": {
        "defaults": {"window": "2s", "warmup_windows": 3, "baseline_windows": 10, "deviations": 3,
                     "min_requests": 5},
        "routes": {"quiet": {"disable": True}},
    },
}  # fmt: skip
# Steady: about 8 requests a second on each class (paced by a pause after
# each request, never catching up: a slow machine only lowers a window's
# count), then the spike, then steady again until the spike's window is judged.
STEADY_S, STEADY_GAP_S, SPIKE, AFTER_S = 10.0, 0.12, 150, 5.0

# What the traffic must have produced, per metric the kit reads.
EXPECTED_SERIES: dict[str, list[dict[str, str]]] = {
    "palisade_requests_total": [{"decision": d} for d in ("allow", "deny", "throttle", "challenge", "error")],
    "palisade_findings_total": [{"mode": "enforce"}, {"mode": "monitor", "reason": "reputation_deny"}],
    "palisade_bans_total": [{"rule": "api-ip"}],
    "palisade_failed_logins_total": [{"route": "login"}],
    "palisade_shared_data_cas_retries_total": [{}],
    "palisade_jwks_fetches_total": [{"provider": "idp", "result": "ok"}, {"provider": "broken", "result": "failed"}],
    "palisade_list_fetches_total": [{"list": "drop", "result": "ok"}, {"list": "feed", "result": "failed"}],
    "palisade_anomalies_total": [{"route": "spiky", "signal": "rate"}],
    # Tables by their `table` label (Policy::slot_tables): the rate-limit rules', the refresh tokens'.
    "palisade_table_slots_used": [{"table": "rate_limits"}, {"table": "refresh_tokens"}],
    "palisade_table_slots": [{"table": "rate_limits"}, {"table": "refresh_tokens"}],
    "palisade_global_calls_total": [{"result": "ok"}, {"result": "error"}],
}


# --------------------------------------------------------------------------
# The stack
# --------------------------------------------------------------------------
@dataclass
class Stack:
    url: str  # Prometheus
    a: harness.EnvoyInstance
    b: harness.EnvoyInstance | None
    b_error: str
    dead: str  # the target nobody listens on
    notes: dict[str, str] = field(default_factory=dict)

    def instance(self, e: harness.EnvoyInstance) -> str:
        return f"127.0.0.1:{e.admin_port}"

    def wait_for_scrapes(self, e: harness.EnvoyInstance) -> None:
        """Until Prometheus has scraped ``e`` twice since every worker
        handed its counts over."""
        time.sleep(harness.COUNTER_FLUSH_S)
        since = time.time()
        _wait(lambda: self.query(f'timestamp(up{{instance="{self.instance(e)}"}}) > {since + 1}'), 15,
              f"two scrapes of {self.instance(e)}")  # fmt: skip

    def api(self, path: str, **params) -> object:
        query = urllib.parse.urlencode(params, doseq=True)
        try:
            with urllib.request.urlopen(f"{self.url}{path}?{query}", timeout=10) as r:
                doc = json.load(r)
        except urllib.error.HTTPError as e:
            doc = json.loads(e.read() or b"{}")
        assert doc.get("status") == "success", f"Prometheus {path} {params}: {doc}"
        return doc["data"]

    def query(self, expr: str) -> list[dict]:
        data = self.api("/api/v1/query", query=expr)
        if data["resultType"] == "scalar":
            return [{"metric": {}, "value": data["result"]}]
        assert data["resultType"] == "vector", f"{expr}: a {data['resultType']} result"
        return data["result"]

    def exported(self, names: list[str]) -> str:
        """The lines of the Envoys' /stats/prometheus whose metric starts with
        one of ``names`` (tags still in the name show a missing stats tag)."""
        lines = []
        for e in (self.a, self.b):
            if e is None:
                continue
            text = e.admin("/stats/prometheus")
            lines += [f"  {line}" for line in text.splitlines() if any(line.startswith(n) for n in names)]
        return "\n".join(lines) or "  (none)"


def _shipped_stats_config() -> dict:
    return yaml.safe_load(SHIPPED_ENVOY_YAML.read_text())["stats_config"]


def _envoy(config: dict, workdir: Path, **kwargs) -> harness.EnvoyInstance:
    """A harness Envoy whose stats configuration is the shipped one (the
    labels the dashboard and the alerts read come from its stats_tags)."""
    inst = harness.EnvoyInstance(config, workdir=workdir, **kwargs)
    boot = json.loads(inst.config_path.read_text())
    boot["stats_config"] = _shipped_stats_config()
    inst.config_path.write_text(json.dumps(boot, indent=2))
    return inst


def _prometheus_config(path: Path, targets: list[str]) -> None:
    """envoy/prometheus.yml (its job, path and labels) scraping ``targets``
    every second, with the alerting rules evaluated every second."""
    cfg = yaml.safe_load(PROMETHEUS.read_text())
    cfg["global"].update(scrape_interval="1s", scrape_timeout="1s", evaluation_interval="1s")
    cfg["rule_files"] = [str(ALERTS)]
    (job,) = cfg["scrape_configs"]
    labels = job["static_configs"][0].get("labels", {})
    job["static_configs"] = [{"targets": targets, "labels": labels}]
    path.write_text(yaml.safe_dump(cfg))


def _start_prometheus(binary: str, directory: Path, targets: list[str], cleanup: ExitStack) -> str:
    directory.mkdir(parents=True)
    _prometheus_config(directory / "prometheus.yml", targets)
    port = _free_port()
    log = open(directory / "prometheus.log", "wb")
    cleanup.callback(log.close)
    proc = subprocess.Popen(
        [binary, f"--config.file={directory / 'prometheus.yml'}", f"--storage.tsdb.path={directory / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}"],
        stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    cleanup.callback(_stop, proc)
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        if proc.poll() is not None:
            tail = (directory / "prometheus.log").read_text(errors="replace")[-3000:]
            raise AssertionError(f"prometheus exited with code {proc.returncode}:\n{tail}")
        with urllib.request.urlopen(f"{url}/-/ready", timeout=1) as r:
            return r.status == 200

    _wait(ready, 30, f"Prometheus ready on {url} (log: {directory / 'prometheus.log'})")
    return url


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


def _counter(e: harness.EnvoyInstance, metric: str, **tags: str) -> float:
    return harness.palisade_counter(e.admin("/stats/prometheus"), metric, **tags)


def _outcome(resp: harness.Response) -> tuple[int, str | None]:
    return resp[0], harness.reason_of(resp)


def _once_a(e: harness.EnvoyInstance) -> None:
    """What needs the remote key set and list in: they are fetched at start."""
    _wait(lambda: _counter(e, "palisade_jwks_fetches_total", provider="idp", result="ok") >= 1, 10,
          "the idp key set fetched")  # fmt: skip
    token = {"authorization": f"Bearer {mint('alice')}", "x-forwarded-for": "192.0.2.2"}
    _wait(lambda: e.request("GET", "/account", token)[0] == 200, 10, "a valid token accepted")
    _wait(lambda: e.request("GET", "/listed", {"x-forwarded-for": LISTED_IP})[0] == 200
          and _counter(e, "palisade_findings_total", reason="reputation_deny", mode="monitor") >= 1, 10,
          "the `drop` list loaded: a monitor-mode reputation_deny finding")  # fmt: skip


def _round_a(e: harness.EnvoyInstance, n: int, notes: dict[str, str], rls: cluster.RateLimitService) -> None:
    """One round of traffic that moves every palisade counter of Envoy A.
    Each step checks the answers it is meant to get, so a query that finds
    nothing later is not a step that silently did something else."""

    def ip(last: int) -> dict[str, str]:
        return {"x-forwarded-for": f"192.0.{2 + n}.{last}"}  # fresh clients each round

    # allow
    for i in range(5):
        assert e.request("GET", f"/home/{i}", ip(1))[0] == 200
    # throttle, then deny: a ban after two strikes on api-ip.
    got = [_outcome(e.request("GET", f"/api/{i}", ip(50))) for i in range(6)]
    assert got[:API_CAPACITY] == [(200, None)] * API_CAPACITY, got
    assert (429, "rl.exhausted") in got and got[-1] == (403, "ban.active"), got
    # deny: a protected route without a token.
    assert _outcome(e.request("GET", "/account", ip(2))) == (401, "auth.missing")
    # challenge: a script on the bot route.
    challenged(send_with_header_order(e, header_set("python_requests"), "/bot/x", ip=f"192.0.{2 + n}.3"))
    # Failed logins: the login service answers 401 to a wrong password.
    for i in range(3):
        r = e.request("POST", "/login", {**ip(20), "content-type": "application/x-www-form-urlencoded"},
                      f"username=alice&password=wrong-password-{i}".encode())  # fmt: skip
        assert r[0] == 401, _outcome(r)
    # error: distinct refresh tokens until the table is full (503
    # oauth.refresh_capacity); deny: one token presented twice.
    form = {**ip(4), "content-type": "application/x-www-form-urlencoded"}

    def grant(i: int) -> tuple[int, str | None]:
        body = f"grant_type=refresh_token&refresh_token=rt-{e.port}-{i}".encode()
        return _outcome(e.request("POST", "/oauth/token", form, body))

    grants = [grant(i) for i in (range(REFRESH_SLOTS + 4) if n == 0 else range(100, 103))]
    assert grants[-1] == (503, "oauth.refresh_capacity") and set(grants) <= {(200, None), grants[-1]}, grants
    assert grant(0) == (400, "oauth.refresh_reuse")  # accepted in the first round
    # The global mode: calls the rate-limit service answers, then calls
    # while it is stopped (503 global.unavailable, failure_mode deny).
    for i in range(2):
        assert _outcome(e.request("GET", f"/glob/{i}", ip(30))) == (200, None)
    rls.stop()
    try:
        for i in range(2):
            assert _outcome(e.request("GET", f"/glob/{i}", ip(31))) == (503, "global.unavailable")
    finally:
        rls.start()
    # Monitor-mode finding: an address on the `drop` list, let through.
    assert e.request("GET", "/listed", {"x-forwarded-for": LISTED_IP})[0] == 200
    # Compare-and-swap retries: HTTP/2 bursts on the one bucket of `hot`,
    # over connections spread on both workers, for a few seconds. A retry is
    # a race no request can call for; sustained bursts make some near
    # certain (dozens in 2 s on 2 cores), single bursts do not.
    burst = Burst(e)
    sent = 0
    for attempt in range(1, 4):
        until = time.monotonic() + CAS_BURSTS_S
        while time.monotonic() < until:
            results = burst.run([get(f"/hot/{i}", {"x-forwarded-for": xff(i)}) for i in range(300)])
            assert {_outcome(r) for r in results} == {(200, None)}, collections.Counter(_outcome(r) for r in results)
            sent += len(results)
        time.sleep(harness.COUNTER_FLUSH_S)
        retries = _counter(e, "palisade_shared_data_cas_retries_total")
        notes[f"cas, round {n}"] = f"{retries:.0f} compare-and-swap retries in all, {sent} requests to `hot`"
        if retries or n:
            break


def _drive_b(e: harness.EnvoyInstance) -> None:
    """Steady requests on `spiky` and on `quiet` (not watched), a spike on
    `spiky`, steady again. Fresh connections: both workers see requests."""

    def steady(seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            for path in ("/spiky/items", "/quiet/items"):
                assert e.request("GET", path)[0] == 200
            time.sleep(STEADY_GAP_S)

    steady(STEADY_S)
    for i in range(SPIKE):
        assert e.request("GET", f"/spiky/spike-{i}")[0] == 200
    steady(AFTER_S)


@pytest.fixture(scope="module")
def prometheus_binary() -> str:
    return prometheus_tool("prometheus")


@pytest.fixture(scope="module")
def stack(tmp_path_factory, prometheus_binary) -> Stack:
    suite_support.require_artefacts(harness.envoy_binary, harness.wasm_path)
    tmp = tmp_path_factory.mktemp("monitoring_live")
    with ExitStack() as cleanup:
        jwks = JwksServer(demo_provider()["jwks"]["inline"]["keys"], path=JWKS_PATH).start()
        cleanup.callback(jwks.stop)
        lists = ListServer(f"# drop list\n{LISTED_IP.rsplit('.', 1)[0]}.0/24\n").start()
        cleanup.callback(lists.stop)
        logins = LoginService({"alice": "the right password"}).start()
        cleanup.callback(logins.stop)
        redis = cluster.Redis(tmp / "redis").start()
        cleanup.callback(redis.stop)
        rls = cluster.RateLimitService(tmp / "rls", redis.url).start()
        cleanup.callback(rls.stop)

        a = _envoy(
            CONFIG, tmp / "envoy_a",
            extra_routes=[{"match": {"path": "/login"}, "route": {"cluster": "upstream"}}],
            extra_clusters=[jwks.cluster("jwks"), lists.cluster("lists"), logins.cluster("upstream"),
                            rls.cluster(CONFIG["global"]["cluster"])],
        )  # fmt: skip
        cleanup.callback(a.stop)
        suite_support.start_or_fail(a)
        b: harness.EnvoyInstance | None = _envoy(ANOMALY_CONFIG, tmp / "envoy_b")
        cleanup.callback(b.stop)
        b_error = ""
        try:
            b.start()
        except harness.HarnessError as e:
            b_error, b = str(e), None

        dead = f"127.0.0.1:{_free_port()}"
        targets = [f"127.0.0.1:{e.admin_port}" for e in (a, b) if e is not None] + [dead]
        url = _start_prometheus(prometheus_binary, tmp / "prometheus", targets, cleanup)
        s = Stack(url, a, b, b_error, dead)

        # B's traffic (paced, about 15 s) runs meanwhile A's. A's in two
        # rounds with a scrape between: palisade creates a counter when it
        # first moves, so the round that creates it is only the first
        # sample; rates need the second round's increments.
        with ThreadPoolExecutor(1) as pool:
            b_traffic = pool.submit(_drive_b, b) if b is not None else None
            _once_a(a)
            for n in range(2):
                _round_a(a, n, s.notes, rls)
                s.wait_for_scrapes(a)
            if b_traffic is not None:
                b_traffic.result()
        if b is not None:
            try:
                _wait(lambda: _counter(b, "palisade_anomalies_total"), 8, "an anomaly counted")
            except AssertionError as e:
                s.notes["anomaly"] = f"{e}; Envoy B log tail:\n{b.log_tail(20)}"
            s.wait_for_scrapes(b)
        yield s


def _finite(result: list[dict]) -> bool:
    return any(math.isfinite(float(r["value"][1])) for r in result)


def _check_new_sources(stack: Stack, expr: str) -> None:
    """A case that reads the anomalies fails with Envoy B's error when B did not start."""
    if re.search(r"\bpalisade_anomalies_total\b", expr) and stack.b is None:
        pytest.fail(f"the Envoy with the `anomaly` section did not start:\n{stack.b_error[-3000:]}", pytrace=False)


def _no_data(stack: Stack, expr: str, what: str) -> str:
    names = sorted(set(re.findall(r"\bpalisade_[a-z_]+\b", expr)))
    have = stack.query('count by (__name__) ({__name__=~"palisade_.+"})')
    notes = "".join(f"\n{k}: {v}" for k, v in stack.notes.items())
    return (
        f"{what} returned no data:\n  {expr}\n"
        f"metrics Prometheus has: {sorted(r['metric']['__name__'] for r in have)}\n"
        f"the Envoys export (a tag still in the name: its stats_tags entry is missing in envoy/envoy.yaml):\n"
        f"{stack.exported(names)}{notes}"
    )


# --------------------------------------------------------------------------
# The tests
# --------------------------------------------------------------------------
def test_expected_series_cover_every_metric_the_kit_reads():
    assert EXPECTED_SERIES.keys() == METRICS.keys()


@pytest.mark.parametrize("metric", list(EXPECTED_SERIES))
def test_traffic_produced_the_series(stack, metric):
    """Each series the traffic is meant to produce is in Prometheus, with
    the labels the kit reads."""
    _check_new_sources(stack, metric)
    for labels in EXPECTED_SERIES[metric]:
        selector = metric + "{" + ", ".join(f'{k}="{v}"' for k, v in labels.items()) + "}"
        assert stack.query(selector), _no_data(stack, selector, "the series")


def test_route_variable_lists_the_route_classes(stack):
    """The dashboard's `route` variable (label_values(palisade_requests_total, route))."""
    routes = set(stack.api("/api/v1/label/route/values", **{"match[]": "palisade_requests_total"}))
    assert {"default", "api", "login", "account", "token", "bot", "hot"} <= routes, routes


@pytest.mark.parametrize("title, ref", _dashboard_cases())
def test_dashboard_query_returns_data(stack, title, ref):
    routes = stack.api("/api/v1/label/route/values", **{"match[]": "palisade_requests_total"})
    # Grafana's rendering of a multi-value selection: (a|b|c) (route names
    # are a-z 0-9 _ -: nothing to escape).
    chosen = "(" + "|".join(sorted(routes)) + ")"
    queries = {(t, r): q for t, r, q in dashboard_queries(route=chosen, rate_interval="1m", range_="5m")}
    expr = queries[(title, ref)]
    _check_new_sources(stack, expr)
    result = stack.query(expr)
    assert result and _finite(result), _no_data(stack, expr, f"panel {title!r} {ref}")
    bare = with_stand_in(without_fallback(expr))
    if bare != expr:
        result = stack.query(bare)
        assert result and _finite(result), _no_data(stack, bare, f"panel {title!r} {ref} without its fallback")


@pytest.mark.parametrize("name, index", _alert_cases())
def test_alert_data_query_returns_data(stack, name, index):
    expr = with_stand_in(data_queries(alert_rules()[name]["expr"])[index])
    _check_new_sources(stack, expr)
    result = stack.query(expr)
    assert result and _finite(result), _no_data(stack, expr, f"{name}'s data query #{index}")


def test_fail_open_stand_in_is_only_where_the_fail_open_reasons_are():
    """The stand-in replaces the fail-open matcher only; it is there."""
    exprs = [r["expr"] for r in alert_rules().values()] + [q for _, _, q in dashboard_queries()]
    assert [e for e in exprs if FAIL_OPEN_MATCHER in e], "no query reads the fail-open reasons any more"
    for e in exprs:
        assert (with_stand_in(e) != e) == (FAIL_OPEN_MATCHER in e)


def test_rules_evaluate_without_error(stack):
    def rules() -> dict[str, dict]:
        return {r["name"]: r for g in stack.api("/api/v1/rules")["groups"] for r in g["rules"]}

    def evaluated() -> dict[str, dict] | None:
        """The rules once each was evaluated (one never evaluated says 0001-01-01)."""
        now = rules()
        return now if all(r["lastEvaluation"] > "2000" for r in now.values()) else None

    assert rules().keys() == alert_rules().keys()
    bad = {n: r.get("lastError") for n, r in _wait(evaluated, 10, "every rule evaluated").items()
           if r.get("health") != "ok"}  # fmt: skip
    assert not bad, f"rules that fail on live data: {bad}"


# (alert, labels it must carry): alerts this traffic raises. Active means
# pending here: each has a `for` longer than the test.
ACTIVE = [
    pytest.param("PalisadeJwksRefreshFailing", {"provider": "broken"}, id="jwks-broken"),
    pytest.param("PalisadeListRefreshFailing", {"list": "feed"}, id="list-feed"),
    pytest.param("PalisadeMetricsDown", {"job": "envoy"}, id="metrics-down"),
    pytest.param("PalisadeTableNearFull", {"table": "refresh_tokens"}, id="table-refresh-tokens"),
    pytest.param("PalisadeAnomaly", {"route": "spiky", "signal": "rate"}, id="anomaly-spiky"),
]


def _active(stack: Stack) -> list[dict]:
    return stack.api("/api/v1/alerts")["alerts"]


@pytest.mark.parametrize("alert, labels", ACTIVE)
def test_alert_is_active_on_live_traffic(stack, alert, labels):
    expr = alert_rules()[alert]["expr"]
    _check_new_sources(stack, expr)
    if alert == "PalisadeMetricsDown":
        labels = {**labels, "instance": stack.dead}

    def mine() -> list[dict]:
        return [a for a in _active(stack) if a["labels"].get("alertname") == alert
                and labels.items() <= a["labels"].items()]  # fmt: skip

    try:
        found = _wait(mine, 10, f"{alert} {labels} active")
    except AssertionError:
        active = [a["labels"] for a in _active(stack)]
        pytest.fail(f"{alert} with {labels} is not active; active: {active}\n{_no_data(stack, expr, alert)}",
                    pytrace=False)  # fmt: skip
    assert all(a["state"] in ("pending", "firing") for a in found), found
    if alert == "PalisadeJwksRefreshFailing":
        assert not [a for a in _active(stack) if a["labels"].get("provider") == "idp"], "the healthy provider alerts"
    if alert == "PalisadeListRefreshFailing":
        assert not [a for a in _active(stack) if a["labels"].get("list") == "drop"], "the healthy list alerts"
    if alert == "PalisadeMetricsDown":
        up = [a for a in _active(stack) if a["labels"].get("alertname") == alert]
        assert {a["labels"]["instance"] for a in up} == {stack.dead}, up


def test_fail_open_alert_stays_quiet_on_other_monitor_findings(stack):
    """Monitor-mode findings of another reason (the stand-in's) are in, and
    the fail-open alert, which reads its two reasons only, is not active."""
    assert stack.query(f'palisade_findings_total{{mode="monitor", {FAIL_OPEN_STAND_IN}}}')
    assert not [a for a in _active(stack) if a["labels"].get("alertname") == "PalisadeFailOpen"]


@pytest.mark.parametrize(
    "expr",
    [
        'palisade_requests_total{decision="allowed"}',  # a decision palisade does not write
        'palisade_findings_total{reason="rl.exhausted"}',  # reasons are written with `_` for `.`
        'sum by (provider) (increase(palisade_jwks_fetches_total{result="failure"}[30m]))',
        'palisade_table_slots_used{table="no_such_table"}',
    ],
)
def test_a_query_for_what_palisade_does_not_export_finds_nothing(stack, expr):
    """Negative control of the checks above: a mistake in a label value
    gives an empty result, which they would report."""
    assert stack.query(expr) == []
