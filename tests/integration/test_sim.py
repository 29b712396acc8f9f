"""The traffic simulator (tests/sim) against the shipped demo configuration.

envoy/envoy.yaml runs as `make run` and `make demo` run it (same palisade
configuration, Envoy with two workers, envoy/demo_upstream.py behind it),
only on loopback ports the kernel picks.  palisade-sim then sends every
class of clients at once for SIM_SECONDS and writes its summary as JSON.

Thresholds:

* legitimate classes (browsers, signed API client): >= 99% allowed;
* attack classes whose defense the demo configuration has: mostly stopped,
  and never more allowed than the rule that covers them lets through;
* attack classes whose defense is not built yet (GAPS) are simulated and
  reported, not asserted: move a class from GAPS to the asserted ones when
  its defense lands in palisade and in the demo configuration.

The simulator binary comes from `make sim` (a prerequisite of `make
integration`): cargo build -p palisade-sim.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

import harness

SIM = Path(os.environ.get("PALISADE_SIM", harness.REPO_ROOT / "target" / "debug" / "palisade-sim"))
DEMO = harness.REPO_ROOT / "envoy" / "envoy.yaml"
SIM_SECONDS = 20

LEGITIMATE = ("browsers", "api-signed", "api-client")
# Attack classes not stopped by anything palisade has yet, and what would.
GAPS: dict[str, str] = {}
# Classes that stay under every per-IP limit, and the share of their
# requests the bot stage (and the demo's fingerprint-keyed login rule) must
# refuse. The residential scraper starts afresh on each address (~15
# requests): behaviour is kept per fingerprint and address prefix, so the
# first requests of each address pass before its sequential run shows.
BOT_CLASSES = {
    "stuffing-rotating": 0.9,
    "slow-scraper": 0.9,
    "machine-timing": 0.6,
    "residential-scraper": 0.3,
}
# The demo's rules (envoy/envoy.yaml) that the asserted attack classes run into.
LOGIN_IP = {"capacity": 5, "per_second": 5 / 60}  # login-ip, with bans
API_IP = {"capacity": 100, "per_second": 100.0}  # api-ip


# envoy/demo_upstream.py (as `make run` and `make demo` start it) with two
# socket settings its standard-library server lacks.  A listen backlog of 5
# drops part of the burst of connections Envoy opens when the simulator
# starts, and Envoy answers those requests 503 after its 1 s connect timeout;
# Nagle's algorithm adds about 40 ms to every keep-alive answer.  Both belong
# in demo_upstream.py itself; until then the test sets them here, so that an
# error it sees is palisade's.
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _demo_bootstrap(upstream_port: int) -> str:
    """envoy/envoy.yaml on loopback, kernel-picked ports, this build's wasm."""
    text = DEMO.read_text()
    ports = {"10000": "0", "10443": "0", "10444": "0", "9901": "0", "8081": str(upstream_port)}
    for old, new in ports.items():
        text, n = re.subn(rf"\bport_value: {old}\b", f"port_value: {new}", text)
        assert n == 1, f"envoy/envoy.yaml: expected port_value {old} once, found it {n} times"
    text, n = re.subn(r"\baddress: 0\.0\.0\.0\b", "address: 127.0.0.1", text)
    assert n == 3, f"envoy/envoy.yaml: expected three listeners on 0.0.0.0, found {n}"
    wasm = "filename: target/wasm32-wasip1/release/palisade.wasm"
    assert text.count(wasm) == 1, f"envoy/envoy.yaml: `{wasm}` not found once"
    return text.replace(wasm, f"filename: {harness.wasm_path()}")


def _wait(predicate, timeout: float, what: str, proc: subprocess.Popen, log: Path):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"Envoy exited ({proc.returncode}) while waiting for {what}:\n{harness.tail(log.read_text())}")
        try:
            value = predicate()
            if value:
                return value
        except OSError:
            pass
        time.sleep(0.1)
    pytest.fail(f"timed out waiting for {what}:\n{harness.tail(log.read_text())}")


@pytest.fixture(scope="module")
def demo_port(artefacts, tmp_path_factory):
    """Port of the demo's plain listener, with envoy/demo_upstream.py behind it."""
    envoy_bin, _ = artefacts
    for cert in ("target/tls/demo.crt", "target/tls/demo.key"):
        if not (harness.REPO_ROOT / cert).is_file():
            pytest.fail(f"{cert} missing: run `make tls-cert` (the demo's TLS listener needs it)")
    for cert in ("server.crt", "server.key", "ca.crt"):
        if not (harness.MTLS_DIR / cert).is_file():
            pytest.fail(f"{harness.MTLS_DIR / cert} missing: run `make mtls-certs` (the demo's mTLS listener needs it)")
    tmp = tmp_path_factory.mktemp("sim")
    upstream_port = _free_port()
    upstream = subprocess.Popen(
        [sys.executable, str(harness.REPO_ROOT / "envoy" / "demo_upstream.py"), "--port", str(upstream_port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    config = tmp / "envoy.yaml"
    config.write_text(_demo_bootstrap(upstream_port))
    admin_path, log = tmp / "admin.address", tmp / "envoy.log"
    with open(log, "w") as log_file:
        proc = subprocess.Popen(
            [str(envoy_bin), "-c", str(config), "--concurrency", "2", "--disable-hot-restart", "-l", "warning",
             "--admin-address-path", str(admin_path)],
            cwd=harness.REPO_ROOT,  # the demo's certificate paths are relative to the repo
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    try:
        admin = _wait(lambda: admin_path.exists() and admin_path.read_text().strip(), 30, "the admin address", proc, log)

        def plain_port():
            with urllib.request.urlopen(f"http://{admin}/listeners?format=json", timeout=2) as r:
                data = json.load(r)
            for s in data.get("listener_statuses", []):
                if s["name"] == "ingress":
                    return s["local_address"]["socket_address"]["port_value"]
            return None

        port = _wait(plain_port, 30, "the demo listener", proc, log)
        yield port
    finally:
        for p in (proc, upstream):
            p.terminate()
        for p in (proc, upstream):
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


@pytest.fixture(scope="module")
def summary(demo_port, tmp_path_factory) -> dict:
    if not SIM.is_file():
        pytest.fail(f"{SIM} missing: run `make sim` (cargo build -p palisade-sim)")
    out = tmp_path_factory.mktemp("sim-out") / "summary.json"
    proc = subprocess.run(
        [str(SIM), "--target", f"http://127.0.0.1:{demo_port}", "--duration", str(SIM_SECONDS),
         "--wait", "20", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=SIM_SECONDS + 90,
    )
    # The table shows with -s, and in the report of a failing test.
    print(proc.stdout)
    assert proc.returncode == 0, f"palisade-sim failed ({proc.returncode}):\n{proc.stderr}\n{proc.stdout}"
    return json.loads(out.read_text())


def _class(summary: dict, name: str) -> dict:
    by_name = {c["name"]: c for c in summary["classes"]}
    assert name in by_name, f"class {name} missing from the summary: {sorted(by_name)}"
    return by_name[name]


def _show(c: dict) -> str:
    return f"{c['name']}: {c['requests']} requests, counts {c['counts']}, statuses {c['statuses']}, reasons {c['reasons']}"


def test_every_class_is_simulated_and_reported(summary):
    names = [c["name"] for c in summary["classes"]]
    expected = {"browsers", "api-signed", "stuffing-few-ips", "stuffing-rotating", "scraper", "shared-token",
                "replay", "login-flood", "api-client", "slow-scraper", "machine-timing", "residential-scraper"}
    assert set(names) == expected, names
    for c in summary["classes"]:
        assert c["requests"] > 0, _show(c)
        shares = c["shares"]
        total = shares["allowed"] + shares["challenged"] + shares["throttled"] + shares["denied"] + shares["errors"]
        assert abs(total - 1.0) < 1e-9, _show(c)
        # Palisade answered everything: no 5xx, no transport errors.
        assert c["counts"]["errors"] == 0, f"{_show(c)}; errors: {c['error_samples']}"


@pytest.mark.parametrize("name", LEGITIMATE)
def test_legitimate_clients_are_allowed(summary, name):
    c = _class(summary, name)
    # Enough traffic for 99% to mean something: 20 s of each class's pace.
    assert c["requests"] >= {"browsers": 150, "api-signed": 15, "api-client": 30}[name], _show(c)
    assert c["shares"]["allowed"] >= 0.99, _show(c)


def _rule_budget(rule: dict, clients: int, seconds: float) -> float:
    """What a token bucket lets through for `clients` keys in `seconds` at most
    (plus one token per key for rounding at the edges)."""
    return clients * (rule["capacity"] + rule["per_second"] * seconds + 1)


@pytest.mark.parametrize("name", ["stuffing-few-ips", "login-flood"])
def test_login_attacks_from_few_addresses_are_stopped(summary, name):
    c = _class(summary, name)
    assert c["shares"]["stopped"] >= 0.9, _show(c)
    assert c["counts"]["allowed"] <= _rule_budget(LOGIN_IP, c["clients"], summary["elapsed_s"]), _show(c)
    # Keys that keep hammering are banned, not only throttled.
    assert c["reasons"].get("ban.active", 0) > 0, _show(c)


def test_scraper_gets_no_more_than_the_per_ip_api_limit(summary):
    c = _class(summary, "scraper")
    assert c["clients"] == 1, _show(c)
    assert c["counts"]["allowed"] <= _rule_budget(API_IP, 1, summary["elapsed_s"]), _show(c)
    assert c["shares"]["stopped"] >= 0.5, _show(c)
    # The per-IP limit, and the bot stage for what the bucket lets through.
    assert "rl.exhausted" in c["reasons"], _show(c)
    assert set(c["reasons"]) <= {"rl.exhausted", "bot.deny", "bot.challenge"}, _show(c)


@pytest.mark.parametrize("name", sorted(BOT_CLASSES))
def test_attacks_under_per_ip_limits_are_flagged_by_the_bot_stage(summary, name):
    c = _class(summary, name)
    assert c["shares"]["stopped"] >= BOT_CLASSES[name], _show(c)
    bot = sum(n for r, n in c["reasons"].items() if r.startswith("bot."))
    fingerprint_limited = c["reasons"].get("rl.exhausted", 0) if name == "stuffing-rotating" else 0
    assert bot + fingerprint_limited > 0, _show(c)


def test_a_token_shared_by_many_networks_is_refused_where_it_is_verified(summary):
    """The demo's token-networks rule (3 networks per token in 10 minutes,
    with bans) on /account, where the token is verified; the class's other
    half goes to /api, where the demo verifies no token."""
    c = _class(summary, "shared-token")
    assert c["reasons"].get("token.shared", 0) > 0, _show(c)
    assert c["shares"]["stopped"] >= 0.35, _show(c)
    assert set(c["reasons"]) <= {"token.shared", "ban.active", "bot.deny", "bot.challenge"}, _show(c)


def test_replayed_signed_request_is_refused_after_the_original(summary):
    c = _class(summary, "replay")
    assert c["requests"] >= 20, _show(c)
    assert c["counts"]["allowed"] <= 1, _show(c)
    assert c["counts"]["denied"] >= c["requests"] - 1, _show(c)
    assert c["reasons"].get("sig.replay", 0) >= c["requests"] - 1, _show(c)


@pytest.mark.parametrize("name", sorted(GAPS))
def test_gap_classes_are_reported(summary, name):
    """No threshold yet (see GAPS): the class runs and its numbers are shown."""
    c = _class(summary, name)
    assert c["kind"] == "attack" and c["stopped_by"], _show(c)
    # What is measured is the missing defense, not a broken client: the
    # shared token is a valid one of the demo issuer.
    assert not [r for r in c["reasons"] if r.startswith(("jwt.", "auth"))], _show(c)
    print(f"gap: {_show(c)}; shares {c['shares']}; {GAPS[name]}")
