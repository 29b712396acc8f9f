"""tests/train/train.py against synthetic palisade.bot events in an Envoy-like log.

    .venv/bin/python -m pytest tests/train
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import train  # noqa: E402

# What `palisade-sim --list` prints: name, kind, description.
LISTING = """\
browsers             legitimate people in browsers
api-client           legitimate an SDK with a bearer token
slow-scraper         attack     headless Chrome walking ids
machine-timing       attack     a metronome
residential-scraper  attack     rotating addresses
"""
# Each attack class lights up its own signals; the legitimate classes none.
ATTACK_SIGNALS = {
    "slow-scraper": ("headless_ua", "sequential_ids"),
    "machine-timing": ("machine_timing",),
    "residential-scraper": ("sequential_ids", "flow"),
}
LEGITIMATE = ("browsers", "api-client")
PREFIX = "[2026-12-01 18:00:00.000][4242][warning][wasm] [source/extensions/common/wasm/context.cc:1204] wasm log palisade palisade: "


def event(cls: str, thread: int, n: int, client: str, signals: dict[str, float], score: int = 10) -> dict:
    return {
        "event": "palisade.bot",
        "request_id": f"{cls}-{thread}-{n}",
        "route": "api",
        "client_ip": client,
        "fingerprint": "0123456789abcdef",
        "score": score,
        "action": "allow",
        "signals": {name: signals.get(name, 0.0) for name in train.SIGNALS},
    }


def synthetic(rng: random.Random, clients_per_class: int = 10, per_client: int = 20) -> list[dict]:
    events = []
    for block, cls in enumerate((*LEGITIMATE, *ATTACK_SIGNALS)):
        for c in range(clients_per_class):
            client = f"127.{32 + block}.0.{c + 1}"
            for n in range(per_client):
                signals = {name: round(rng.uniform(0.0, 0.15), 3) for name in train.SIGNALS}
                for name in ATTACK_SIGNALS.get(cls, ()):
                    signals[name] = round(rng.uniform(0.6, 1.0), 3)
                events.append(event(cls, c % 3, c * per_client + n, client, signals))
    return events


def write_log(path: Path, events: list[dict], extra: list[str] = ()) -> Path:
    lines = [PREFIX + json.dumps(e, separators=(",", ":")) for e in events]
    lines += list(extra)
    # Envoy's other lines: no palisade.bot in them.
    lines.insert(0, "[2026-12-01 18:00:00.000][1][info][main] [source/server/server.cc:1] starting main dispatch loop")
    lines.insert(1, PREFIX + json.dumps({"event": "palisade.request", "reason": "rl.exhausted"}))
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def listing(tmp_path) -> Path:
    p = tmp_path / "classes.txt"
    p.write_text(LISTING)
    return p


def run(tmp_path: Path, listing: Path, log: Path, *more: str) -> dict:
    out = tmp_path / "model.json"
    assert train.main(["--log", str(log), "--classes", str(listing), "--out", str(out), *more]) == 0
    return json.loads(out.read_text())


def test_separable_events_give_positive_attack_weights_and_high_precision_recall(tmp_path, listing, capsys):
    log = write_log(tmp_path / "envoy.log", synthetic(random.Random(7)))
    data = train.read_log(log, train.class_kinds(listing=listing))
    assert len(data.samples) == 5 * 10 * 20 and data.malformed == 0 and not data.unlabelled

    result = train.train(data, tmp_path / "model.json", challenge=60)
    model = result["model"]["bot"]["model"]
    assert set(model["weights"]) == set(train.SIGNALS)
    for names in ATTACK_SIGNALS.values():
        for name in names:
            assert model["weights"][name] > 0, (name, model)
    assert model["bias"] < 0, model
    for at in ("at_50", "at_challenge"):
        held = result["held_out"][at]
        assert held["precision"] > 0.9 and held["recall"] > 0.9, (at, held)
    # Every class has held-out clients; none of them is in both sets.
    assert set(result["held_out"]["at_50"]["per_class"]) == {*LEGITIMATE, *ATTACK_SIGNALS}
    out = capsys.readouterr().out
    assert "precision" in out and "recall" in out and "F1" in out, out
    # Written as the configuration fragment, weights rounded to 3 decimals.
    written = json.loads((tmp_path / "model.json").read_text())
    assert written == result["model"]
    for w in [model["bias"], *model["weights"].values()]:
        assert round(w, 3) == w


def test_clients_are_never_in_both_sets():
    samples = [
        train.Sample([0.0] * len(train.SIGNALS), label, f"10.0.{label}.{c}", cls, None)
        for cls, label, clients in (("a", 0, 10), ("b", 1, 7), ("solo", 1, 1))
        for c in range(clients)
        for _ in range(3)
    ]
    tr, held = train.split_by_client(samples, seed=3)
    assert not {s.client for s in tr} & {s.client for s in held}
    assert len(tr) + len(held) == len(samples)
    held_classes = {s.cls for s in held}
    assert held_classes == {"a", "b"}, held_classes  # the one-client class is trained on only
    assert 2 <= len({s.client for s in held if s.cls == "a"}) <= 4


def test_event_without_a_known_label_is_ignored(tmp_path, listing, capsys):
    rng = random.Random(1)
    events = synthetic(rng, clients_per_class=4, per_client=5)
    unknown = [
        event("some-other-tool", 0, 1, "127.99.0.1", {"automation_ua": 1.0}),
        {**event("browsers", 0, 1, "127.99.0.2", {}), "request_id": "5f0c2a1e-7d9b-4c1a-9e3f-0a1b2c3d4e5f"},
        {**event("browsers", 0, 1, "127.99.0.3", {}), "request_id": ""},
    ]
    log = write_log(tmp_path / "envoy.log", events + unknown)
    data = train.read_log(log, train.class_kinds(listing=listing))
    assert len(data.samples) == len(events)
    assert sum(data.unlabelled.values()) == 3
    assert "127.99.0.1" not in {s.client for s in data.samples}
    train.train(data, tmp_path / "m.json", challenge=None)
    out = capsys.readouterr().out
    assert "ignored (no known label): 3" in out, out


def test_malformed_lines_are_skipped_and_counted(tmp_path, listing, capsys):
    events = synthetic(random.Random(2), clients_per_class=4, per_client=5)
    bad = [
        PREFIX + '{"event":"palisade.bot","request_id":"browsers-0-1","signals":{',  # cut off
        PREFIX + json.dumps({**event("browsers", 0, 9, "127.32.0.9", {}), "signals": {"automation_ua": "high"}}),
        PREFIX + json.dumps({**event("slow-scraper", 0, 9, "127.41.0.9", {}), "signals": {"headless_ua": 1.5}}),
        PREFIX + json.dumps({k: v for k, v in event("browsers", 0, 8, "", {}).items()}),  # empty client_ip
    ]
    log = write_log(tmp_path / "envoy.log", events, extra=bad)
    run(tmp_path, listing, log)
    out = capsys.readouterr().out
    assert "skipped 4 malformed line(s)" in out, out
    assert f"events: {len(events)} labelled" in out, out


def test_labelled_file_is_added_and_checked(tmp_path, listing, capsys):
    events = synthetic(random.Random(3), clients_per_class=4, per_client=5)
    log = write_log(tmp_path / "envoy.log", events)
    labelled = tmp_path / "labelled.jsonl"
    rows = [
        {**event("x", 0, 1, "203.0.113.1", {"automation_ua": 1.0}), "label": 1},
        {**event("x", 0, 2, "203.0.113.2", {}), "label": 0},
        {**event("x", 0, 3, "203.0.113.3", {}), "label": 2},  # no known label
        {**event("x", 0, 4, "203.0.113.4", {}), "label": True},  # not 0|1
    ]
    labelled.write_text("\n".join(json.dumps(r) for r in rows) + "\nnot json\n")
    data = train.read_labelled(labelled)
    assert [s.label for s in data.samples] == [1, 0]
    assert sum(data.unlabelled.values()) == 2 and data.malformed == 1
    run(tmp_path, listing, log, "--labelled", str(labelled))
    out = capsys.readouterr().out
    assert f"events: {len(events) + 2} labelled" in out and "labelled/attack 1, labelled/legitimate 1" in out, out
    assert "skipped 1 malformed line(s)" in out, out


def test_one_label_only_is_refused(tmp_path, listing):
    events = [e for e in synthetic(random.Random(4), 3, 3) if e["request_id"].startswith("browsers")]
    log = write_log(tmp_path / "envoy.log", events)
    with pytest.raises(SystemExit, match="both labels"):
        run(tmp_path, listing, log)


def test_kinds_come_from_the_listing(listing):
    kinds = train.class_kinds(listing=listing)
    assert kinds == {"browsers": 0, "api-client": 0, "slow-scraper": 1, "machine-timing": 1, "residential-scraper": 1}


@pytest.mark.skipif(not train.DEFAULT_SIM.is_file(), reason="palisade-sim not built (make sim)")
def test_kinds_of_the_real_simulator():
    kinds = train.class_kinds()
    assert kinds["browsers"] == 0 and kinds["api-client"] == 0
    assert kinds["slow-scraper"] == 1 and kinds["residential-scraper"] == 1 and kinds["machine-timing"] == 1


def test_bot_event_is_found_at_the_end_of_a_log_line():
    e = event("browsers", 1, 2, "127.32.0.1", {"flow": 0.5})
    # Keys in any order (serde_json sorts them), brackets earlier in the line.
    line = "[2026][1][warning][wasm] [context.cc:1] wasm log palisade palisade: " + json.dumps(e, sort_keys=True)
    assert train.bot_event(line) == e
    assert train.bot_event("[info] nothing here") is None
    with pytest.raises(ValueError):
        train.bot_event('[warning] {"event":"palisade.bot", broken')


def test_training_config_reaches_the_bot_stage_with_every_request(tmp_path):
    import yaml

    import run_train

    demo = yaml.safe_load(run_train.DEMO.read_text())
    bootstrap, palisade = run_train.training_config(demo, 4242, tmp_path / "palisade.wasm")
    assert "rate_limits" not in palisade and "bans" not in palisade
    assert palisade["bot"]["mode"] == "monitor" and palisade["bot"]["events"] == "all"
    # The demo's routes and other stages stay.
    assert {r["name"] for r in palisade["routes"]} >= {"login", "api", "payments", "account"}
    assert "jwt" in palisade and "signatures" in palisade
    [listener] = bootstrap["static_resources"]["listeners"]
    assert listener["address"]["socket_address"] == {"address": "127.0.0.1", "port_value": 0}
    hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
    assert hcm["preserve_external_request_id"] is True
    wasm = [f for f in hcm["http_filters"] if f["name"] == "palisade"][0]["typed_config"]["config"]
    assert wasm["vm_config"]["code"]["local"]["filename"] == str(tmp_path / "palisade.wasm")
    assert json.loads(wasm["configuration"]["value"]) == palisade
    cluster = bootstrap["static_resources"]["clusters"][0]
    assert cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"][
        "port_value"] == 4242
    assert run_train.challenge_threshold({"bot": {"thresholds": {"challenge": 55}}}) == 55
    assert run_train.challenge_threshold({"bot": {"thresholds": {"challenge": 101}}}) == 60
    assert run_train.challenge_threshold({}) == 60


def test_a_signal_that_never_varies_gets_no_weight_and_extra_signals_are_not_trained(tmp_path, listing, capsys):
    events = synthetic(random.Random(5), clients_per_class=5, per_client=6)
    for e in events:
        e["signals"]["distinct_paths"] = 0.0  # not measured
        e["signals"]["challenge_passed"] = 0.0  # palisade's, not in the model
    log = write_log(tmp_path / "envoy.log", events)
    model = run(tmp_path, listing, log)["bot"]["model"]
    assert "distinct_paths" not in model["weights"] and "challenge_passed" not in model["weights"]
    assert set(model["weights"]) == set(train.SIGNALS) - {"distinct_paths"}
    out = capsys.readouterr().out
    assert "left out of the model (palisade keeps its weights for them): distinct_paths" in out, out
    assert "signals not trained (palisade keeps its weights for them): challenge_passed" in out, out


PALISADE_CHECK = Path(__file__).resolve().parents[2] / "target" / "debug" / "palisade-check"


def test_the_written_fragment_is_a_configuration_palisade_loads(tmp_path, listing):
    """What `make train` writes goes into the `bot` section as is:
    palisade-check (the filter's own parser) accepts it, and refuses it
    once a weight names no signal."""
    import subprocess

    if not PALISADE_CHECK.exists():
        pytest.fail(f"{PALISADE_CHECK} missing: run `make palisade-check`")
    log = write_log(tmp_path / "envoy.log", synthetic(random.Random(11)))
    fragment = run(tmp_path, listing, log)
    config = tmp_path / "palisade.json"
    config.write_text(json.dumps({"bot": {**fragment["bot"], "mode": "monitor"}}))
    checked = subprocess.run([str(PALISADE_CHECK), str(config)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    fragment["bot"]["model"]["weights"]["mouse_moves"] = 1.0
    config.write_text(json.dumps(fragment))
    refused = subprocess.run([str(PALISADE_CHECK), str(config)], capture_output=True, text=True)
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert "bot.model.weights.mouse_moves" in refused.stdout + refused.stderr
