"""The operations kit: envoy/prometheus.yml with the alerting rules of
envoy/prometheus/alerts.yml, and the Grafana dashboard
envoy/grafana/palisade-dashboard.json.

* Prometheus' own checker, promtool (Debian's prometheus package), checks the
  configuration and the rules, and runs the rules' unit tests
  (alerts_test.yml); each alert the issue asks for must exist, and every
  alert must have a case where it fires and one where it must not, the
  latter shown to fail when the alert fires on everything.
* The dashboard is type-checked by TypeScript against the types Grafana
  publishes in @grafana/schema (the dashboard model, and each panel's
  options against its visualization's), pinned in package.json; its
  queries are parsed by promtool (as recording rules).
* Every metric and label the rules and the dashboard use is one palisade
  exports (METRICS, which README's Metrics table must agree with).
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

import deploy

ENVOY = deploy.REPO_ROOT / "envoy"
PROMETHEUS = ENVOY / "prometheus.yml"
ALERTS = ENVOY / "prometheus" / "alerts.yml"
ALERTS_TEST = ENVOY / "prometheus" / "alerts_test.yml"
DASHBOARD = ENVOY / "grafana" / "palisade-dashboard.json"
NODE_MODULES = deploy.DEPLOY_DIR / "node_modules"

# What palisade exports at /stats/prometheus, with its labels (Envoy's
# stats_tags; custom wasm metrics keep their names, without `envoy_`).
METRICS: dict[str, set[str]] = {
    "palisade_requests_total": {"decision", "route"},
    "palisade_findings_total": {"stage", "reason", "mode", "route"},
    "palisade_bans_total": {"rule"},
    "palisade_shared_data_cas_retries_total": set(),
    "palisade_jwks_fetches_total": {"provider", "result"},
    "palisade_list_fetches_total": {"list", "result"},
    "palisade_anomalies_total": {"route", "signal"},
    "palisade_table_slots_used": {"table"},
    "palisade_table_slots": {"table"},
    "palisade_failed_logins_total": {"route"},
    "palisade_global_calls_total": {"result"},
}
# Asked for by the issue; more may exist.
ISSUE_ALERTS = {
    "PalisadeBanStorm", "PalisadeAnomaly", "PalisadeJwksRefreshFailing", "PalisadeListRefreshFailing",
    "PalisadeFailOpen", "PalisadeTableNearFull",
}  # fmt: skip
# Panel types whose options are checked against @grafana/schema.
PANEL_TYPES = {
    "timeseries": ("TimeSeriesPanelCfg_types.gen", "Viz<TimeSeriesOptions, TimeSeriesFieldConfig>"),
    "stat": ("StatPanelCfg_types.gen", "Viz<StatOptions>"),
    "bargauge": ("BarGaugePanelCfg_types.gen", "Viz<BarGaugeOptions>"),
}


# --------------------------------------------------------------------------
# Tools
# --------------------------------------------------------------------------
def prometheus_tool(name: str) -> str:
    """A program of Debian's prometheus package (promtool, prometheus);
    the test fails when it is missing."""
    path = shutil.which(name)
    if not path:
        pytest.fail(
            f"{name} not found: run `make deploy-setup` (it installs Debian's prometheus package: "
            "apt-get install --no-install-recommends prometheus)",
            pytrace=False,
        )
    return path


@pytest.fixture(scope="session")
def promtool() -> str:
    return prometheus_tool("promtool")


@pytest.fixture(scope="session")
def tsc(node) -> list[str]:
    script = NODE_MODULES / "typescript" / "bin" / "tsc"
    if not (script.is_file() and (NODE_MODULES / "@grafana" / "schema").is_dir()):
        pytest.fail("typescript or @grafana/schema missing in tests/deploy/node_modules: run `make deploy-setup`",
                    pytrace=False)
    return [node, str(script)]


def _run(cmd: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=cwd)


# --------------------------------------------------------------------------
# PromQL, as far as the checks need it
# --------------------------------------------------------------------------
def target_labels() -> set[str]:
    """Labels Prometheus adds to every series of the compose scrape job."""
    (job,) = yaml.safe_load(PROMETHEUS.read_text())["scrape_configs"]
    return {"job", "instance"} | {k for s in job["static_configs"] for k in s.get("labels", {})}


def metric_names(expr: str) -> set[str]:
    return set(re.findall(r"\b(palisade_[a-z_]+|up)\b(?!\s*\()", expr))


def _selector_labels(expr: str) -> dict[str, set[str]]:
    """Label names matched in each metric's selectors."""
    out: dict[str, set[str]] = {}
    for name, body in re.findall(r"\b(palisade_[a-z_]+|up)\s*\{([^}]*)\}", expr):
        out.setdefault(name, set()).update(re.findall(r"([a-zA-Z_]\w*)\s*(?:=~|!~|!=|=)", body))
    return out


def grouping_labels(expr: str) -> set[str]:
    """Labels named by by/without/on/ignoring/group_left/group_right."""
    lists = re.findall(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)", expr)
    return {label.strip() for lst in lists for label in lst.split(",") if label.strip()}


def label_problems(expr: str) -> list[str]:
    """Unknown metrics, and labels a metric does not have."""
    problems = []
    names = metric_names(expr)
    known = {**METRICS, "up": set()}
    for name in sorted(names - known.keys()):
        problems.append(f"{name} is not a metric palisade exports")
    for name, labels in _selector_labels(expr).items():
        for label in sorted(labels - known.get(name, set()) - target_labels()):
            problems.append(f"{name} has no label {label}")
    available = set().union(*(known.get(n, set()) for n in names), target_labels())
    for label in sorted(grouping_labels(expr) - available):
        problems.append(f"no metric of the expression has the label {label}")
    return problems


# --------------------------------------------------------------------------
# Prometheus configuration and rules
# --------------------------------------------------------------------------
def alert_rules() -> dict[str, dict]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return {r["alert"]: r for g in groups for r in g["rules"] if "alert" in r}


def test_promtool_checks_the_config_and_its_rule_file(promtool, tmp_path):
    """Run from elsewhere: the rule path resolves against prometheus.yml's
    directory, as in the container (test_compose checks the mount)."""
    proc = _run([promtool, "check", "config", str(PROMETHEUS)], cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"Checking {ALERTS}" in proc.stdout, proc.stdout
    assert re.search(rf"SUCCESS: {len(alert_rules())} rules found", proc.stdout), proc.stdout


def test_promtool_checks_the_rules(promtool):
    proc = _run([promtool, "check", "rules", str(ALERTS)])
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_alert_unit_tests_pass(promtool):
    proc = _run([promtool, "test", "rules", str(ALERTS_TEST)])
    assert proc.returncode == 0 and "SUCCESS" in proc.stdout, proc.stdout + proc.stderr


def test_alerts_asked_for_exist_and_are_well_formed():
    rules = alert_rules()
    assert ISSUE_ALERTS <= rules.keys(), f"missing alerts: {sorted(ISSUE_ALERTS - rules.keys())}"
    assert [g["name"] for g in yaml.safe_load(ALERTS.read_text())["groups"]] == ["palisade"]
    for name, rule in rules.items():
        assert re.fullmatch(r"\d+[smh]", str(rule.get("for", ""))), f"{name}: no `for:`"
        assert rule.get("labels", {}).get("severity") in ("warning", "critical"), f"{name}: severity"
        assert {"summary", "description"} <= rule.get("annotations", {}).keys(), f"{name}: annotations"
        assert not label_problems(rule["expr"]), f"{name}: {label_problems(rule['expr'])}"


def _unit_cases() -> list[tuple[dict, dict]]:
    """(test group, alert_rule_test entry) of alerts_test.yml."""
    doc = yaml.safe_load(ALERTS_TEST.read_text())
    return [(group, case) for group in doc["tests"] for case in group.get("alert_rule_test", [])]


def test_every_alert_has_a_firing_and_a_quiet_unit_test():
    doc = yaml.safe_load(ALERTS_TEST.read_text())
    assert [(ALERTS_TEST.parent / f).resolve() for f in doc["rule_files"]] == [ALERTS]
    rules = alert_rules()
    cases = _unit_cases()
    unknown = {c["alertname"] for _, c in cases} - rules.keys()
    assert not unknown, f"unit tests of alerts that do not exist (they pass vacuously): {unknown}"
    for name in rules:
        mine = [c for _, c in cases if c["alertname"] == name]
        firing = [a for c in mine for a in c.get("exp_alerts") or []]
        assert firing, f"{name}: no unit test where it fires"
        for alert in firing:
            assert alert.get("exp_labels", {}).get("severity") and alert.get("exp_annotations"), (
                f"{name}: a firing case must give its labels and annotations"
            )
        assert any(not c.get("exp_alerts") for c in mine), f"{name}: no unit test where it must not fire"


def test_quiet_unit_tests_would_catch_an_alert_that_always_fires(promtool, tmp_path):
    """Negative control: with an alert's expression replaced by one true for
    every input series, the cases where it must not fire fail."""
    doc = yaml.safe_load(ALERTS_TEST.read_text())
    for name in alert_rules():
        rules = yaml.safe_load(ALERTS.read_text())
        for rule in rules["groups"][0]["rules"]:
            if rule.get("alert") == name:
                # Every input series, its name kept as a label (alerts drop __name__).
                rule["expr"] = 'label_replace({__name__=~"palisade_.+|up"}, "series", "$1", "__name__", "(.+)")'
        quiet = copy.deepcopy(doc)
        quiet["rule_files"] = ["mutated.yml"]
        for group in quiet["tests"]:
            group["alert_rule_test"] = [
                c for c in group.get("alert_rule_test", []) if c["alertname"] == name and not c.get("exp_alerts")
            ]
        quiet["tests"] = [g for g in quiet["tests"] if g["alert_rule_test"]]
        (tmp_path / "mutated.yml").write_text(yaml.safe_dump(rules))
        (tmp_path / "quiet_test.yml").write_text(yaml.safe_dump(quiet))
        proc = _run([promtool, "test", "rules", str(tmp_path / "quiet_test.yml")])
        assert proc.returncode != 0 and f"alertname: {name}" in proc.stdout + proc.stderr, (
            f"{name}: its must-not-fire cases pass even when it fires on everything:\n{proc.stdout}{proc.stderr}"
        )


def test_metrics_agree_with_the_readme():
    """README's Metrics table: every metric it lists is known here, with the
    same labels (metrics still missing from it are not checked)."""
    readme = (deploy.REPO_ROOT / "README.md").read_text()
    section = readme.split("\n## Metrics\n", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `(palisade_[a-z_]+)` \| ([^|]*) \|", section, re.M)
    assert rows, "no metric rows in README's Metrics table"
    for name, label_cell in rows:
        assert name in METRICS, f"README lists {name}: add it to METRICS, the alerts and the dashboard"
        labels = set(re.findall(r"`([a-z_]+)`", re.sub(r"\([^)]*\)", "", label_cell)))
        assert labels == METRICS[name], f"{name}: README says labels {labels}, METRICS {METRICS[name]}"


# --------------------------------------------------------------------------
# Grafana dashboard
# --------------------------------------------------------------------------
def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def panels(board: dict | None = None) -> list[dict]:
    """Every panel but rows (also those inside a collapsed row)."""
    out = []
    for p in (board or dashboard())["panels"]:
        out.extend(p.get("panels", []) if p["type"] == "row" else [p])
    return out


def dashboard_queries(route: str = ".*", rate_interval: str = "1m", range_: str = "1h") -> list[tuple[str, str, str]]:
    """(panel title, refId, PromQL) of every dashboard query, with Grafana's
    variables replaced by values Prometheus accepts."""
    subst = {"$route": route, "$__rate_interval": rate_interval, "$__range": range_}
    out = []
    for p in panels():
        for t in p["targets"]:
            expr = re.sub(r"\$\w+", lambda m: subst.get(m.group(0), m.group(0)), t["expr"])
            out.append((p["title"], t["refId"], expr))
    return out


def test_dashboard_variables_and_datasources():
    board = dashboard()
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    ds = {"type": "prometheus", "uid": "${datasource}"}
    route = variables["route"]
    assert route["type"] == "query" and route["datasource"] == ds
    assert route["query"] == "label_values(palisade_requests_total, route)"
    assert route["includeAll"] and route["allValue"] == ".*"
    for node in deploy.walk(board):
        if isinstance(node, dict) and isinstance(node.get("datasource"), dict):
            assert node["datasource"] == ds or node.get("builtIn") == 1, (
                f"data source {node['datasource']}: not the ${{datasource}} variable (it would not import elsewhere)"
            )
    ids = [p["id"] for p in board["panels"]] + [q["id"] for p in board["panels"] for q in p.get("panels", [])]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for p in panels(board):
        assert p["type"] in PANEL_TYPES, f"{p['title']}: panel type {p['type']} is not checked against the schema"
        assert p["datasource"] == ds, f"{p['title']}: datasource {p.get('datasource')}"
        assert p["targets"], f"{p['title']}: no query"
        refs = [t["refId"] for t in p["targets"]]
        assert len(refs) == len(set(refs)), f"{p['title']}: duplicate refId"
        g = p["gridPos"]
        assert g["x"] >= 0 and g["w"] > 0 and g["x"] + g["w"] <= 24, f"{p['title']}: gridPos {g}"


def test_dashboard_queries_use_palisade_metrics_and_labels():
    used: set[str] = set()
    for p in panels():
        for t in p["targets"]:
            expr = t["expr"]
            assert expr.strip() and t.get("datasource", p["datasource"]) == p["datasource"], f"{p['title']}"
            assert not label_problems(expr), f"{p['title']} {t['refId']}: {label_problems(expr)}"
            names = metric_names(expr)
            used |= names
            for name in names & {n for n, labels in METRICS.items() if "route" in labels}:
                for m in re.finditer(rf"\b{name}\b(\{{[^}}]*\}})?", expr):
                    assert 'route=~"$route"' in (m.group(1) or ""), (
                        f"{p['title']} {t['refId']}: {m.group(0)} is not filtered by the route variable"
                    )
            legend = set(re.findall(r"\{\{\s*(\w+)\s*\}\}", t.get("legendFormat", "")))
            by = grouping_labels(expr) or set().union(*(METRICS[n] for n in names), target_labels())
            assert legend <= by, f"{p['title']} {t['refId']}: legend {legend - by} not in the result's labels"
    assert used == METRICS.keys(), f"metrics without a panel: {sorted(METRICS.keys() - used)}"


def test_dashboard_queries_parse(promtool, tmp_path):
    """promtool has no offline query parser, but it parses every expression
    of a rule file: each query becomes a recording rule."""
    queries = dashboard_queries()
    rules = [{"record": f"dashboard:query_{i}", "expr": expr} for i, (_, _, expr) in enumerate(queries)]
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    proc = _run([promtool, "check", "rules", str(path)])
    assert proc.returncode == 0 and f"SUCCESS: {len(rules)} rules found" in proc.stdout, proc.stdout + proc.stderr
    # Negative control: promtool does refuse a broken query.
    path.write_text(yaml.safe_dump({"groups": [{"name": "d", "rules": [{"record": "x:y", "expr": "sum by (a (b)"}]}]}))
    assert _run([promtool, "check", "rules", str(path)]).returncode != 0


def _schema_ts(board: dict) -> str:
    """A TypeScript module holding the dashboard as an object literal of
    @grafana/schema's Dashboard type, and each panel's options, field config
    and queries as one of its visualization's types. JSON holds an enum's
    value, not the enum: Plain<T> turns string enums into their values. The
    package has no type for Prometheus queries: PromQuery adds the fields
    Grafana's Prometheus data source reads to its DataQuery."""
    composable = "@grafana/schema/dist/esm/raw/composable"
    lines = [
        "import type * as schema from '@grafana/schema';",
        f"import type {{ Options as TimeSeriesOptions, FieldConfig as TimeSeriesFieldConfig }} from "
        f"'{composable}/timeseries/panelcfg/x/{PANEL_TYPES['timeseries'][0]}';",
        f"import type {{ Options as StatOptions }} from '{composable}/stat/panelcfg/x/{PANEL_TYPES['stat'][0]}';",
        f"import type {{ Options as BarGaugeOptions }} from "
        f"'{composable}/bargauge/panelcfg/x/{PANEL_TYPES['bargauge'][0]}';",
        "type Plain<T> = T extends string ? `${T}` : T extends number | boolean | null | undefined ? T"
        " : T extends ReadonlyArray<infer U> ? Array<Plain<U>>"
        " : T extends object ? { [K in keyof T]: Plain<T[K]> } : T;",
        "type PromQuery = schema.DataQuery & { expr: string; legendFormat?: string; instant?: boolean;"
        " range?: boolean; editorMode?: 'code' | 'builder'; format?: 'time_series' | 'table' | 'heatmap';"
        " interval?: string };",
        "type Viz<O, F = Record<string, unknown>> ="
        " Plain<{ options: O; fieldConfig: schema.FieldConfigSource<F>; targets: PromQuery[] }>;",
        f"export const dashboard: Plain<schema.Dashboard> = {json.dumps(board, indent=1)};",
    ]
    for p in panels(board):
        viz = PANEL_TYPES.get(p["type"], ("", "never"))[1]
        body = {k: p.get(k) for k in ("options", "fieldConfig", "targets")}
        lines.append(f"export const panel_{p['id']}: {viz} = {json.dumps(body, indent=1)};")
    return "\n".join(lines) + "\n"


def _tsc(tsc: list[str], board: dict, directory: Path) -> subprocess.CompletedProcess:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "node_modules").symlink_to(NODE_MODULES, target_is_directory=True)
    (directory / "dashboard.ts").write_text(_schema_ts(board))
    options = {"strict": True, "noEmit": True, "target": "es2022", "module": "esnext",
               "moduleResolution": "bundler", "skipLibCheck": True, "types": []}  # fmt: skip
    (directory / "tsconfig.json").write_text(json.dumps({"compilerOptions": options, "files": ["dashboard.ts"]}))
    return _run([*tsc, "-p", str(directory / "tsconfig.json"), "--pretty", "false"])


def test_dashboard_matches_grafana_schema(tsc, node, tmp_path):
    pin = json.loads((deploy.DEPLOY_DIR / "package.json").read_text())["dependencies"]["@grafana/schema"]
    proc = _run([node, "--input-type=module", "-e",
                 "import { defaultDashboard } from '@grafana/schema';"
                 "import { createRequire } from 'node:module';"
                 "const v = createRequire(import.meta.url)('@grafana/schema/package.json').version;"
                 "console.log(JSON.stringify([v, defaultDashboard.schemaVersion]));"],
                cwd=deploy.DEPLOY_DIR)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    version, schema_version = json.loads(proc.stdout)
    assert version == pin, f"node_modules has @grafana/schema {version}, package.json {pin}: run `make deploy-setup`"
    assert dashboard()["schemaVersion"] == schema_version, f"schemaVersion of Grafana {version} is {schema_version}"
    proc = _tsc(tsc, dashboard(), tmp_path / "ts")
    assert proc.returncode == 0, f"the dashboard does not fit @grafana/schema {version}:\n{proc.stdout}{proc.stderr}"


@pytest.mark.parametrize(
    "mistake",
    ["misspelled dashboard field", "unknown legend mode", "stat option missing", "query without refId"],
)
def test_schema_check_rejects_mistakes(tsc, tmp_path, mistake):
    """Negative controls of the TypeScript check."""
    board = dashboard()
    stat = next(p for p in panels(board) if p["type"] == "stat")
    series = next(p for p in panels(board) if p["type"] == "timeseries")
    if mistake == "misspelled dashboard field":
        board["schemaVersoin"] = board.pop("schemaVersion")
    elif mistake == "unknown legend mode":
        series["options"]["legend"]["displayMode"] = "lists"
    elif mistake == "stat option missing":
        del stat["options"]["reduceOptions"]
    else:
        del series["targets"][0]["refId"]
    proc = _tsc(tsc, board, tmp_path / "ts")
    assert proc.returncode != 0 and "error TS" in proc.stdout, f"{mistake}: not refused\n{proc.stdout}"
