#!/usr/bin/env python3
"""`make train`: simulator traffic through palisade's bot stage, then train.py.

1. Envoy's training configuration is generated from envoy/envoy.yaml: the
   plain listener only, on loopback with a kernel-picked port; the demo's
   routes and stages, but no rate limits and no bans (every request of every
   class must reach the bot stage), the bot stage in monitor mode with
   "events": "all" (one palisade.bot event per scored request), and
   preserve_external_request_id so that the simulator's x-request-id (which
   names its class) reaches palisade.  Written to <logs>/envoy-train.yaml.
2. envoy/demo_upstream.py and Envoy start; palisade-sim sends every class
   for --seconds; Envoy and the upstream stop.
3. train.py reads Envoy's log (<logs>/envoy.log), labels the events by
   class (kinds from `palisade-sim --list`), fits and writes the model.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))

import harness  # noqa: E402
import train  # noqa: E402

REPO_ROOT = train.REPO_ROOT
DEMO = REPO_ROOT / "envoy" / "envoy.yaml"
UPSTREAM = REPO_ROOT / "envoy" / "demo_upstream.py"
WASM_FILTER = "envoy.extensions.filters.http.wasm.v3.Wasm"
HCM = "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
# Stages that refuse a client for its volume: left out, so that every
# request reaches the bot stage and is scored.
VOLUME_SECTIONS = ("rate_limits", "bans")


def _type(typed_config: dict) -> str:
    return typed_config.get("@type", "").rsplit("/", 1)[-1]


def training_config(demo: dict, upstream_port: int, wasm: Path, bot: bool = True) -> tuple[dict, dict]:
    """The bootstrap for training and palisade's configuration in it."""
    listeners = demo["static_resources"]["listeners"]
    plain = [lst for lst in listeners if lst["name"] == "ingress"]
    if len(plain) != 1:
        raise SystemExit(f"{DEMO}: expected one listener named ingress")
    listener = plain[0]
    listener["address"]["socket_address"].update(address="127.0.0.1", port_value=0)
    demo["static_resources"]["listeners"] = [listener]
    demo["admin"]["address"]["socket_address"].update(address="127.0.0.1", port_value=0)
    for cluster in demo["static_resources"]["clusters"]:
        for ep in cluster["load_assignment"]["endpoints"]:
            for lb in ep["lb_endpoints"]:
                lb["endpoint"]["address"]["socket_address"]["port_value"] = upstream_port
    palisade = None
    for chain in listener["filter_chains"]:
        for nf in chain["filters"]:
            hcm = nf["typed_config"]
            if _type(hcm) != HCM:
                continue
            hcm["preserve_external_request_id"] = True
            for hf in hcm["http_filters"]:
                tc = hf.get("typed_config", {})
                if _type(tc) == WASM_FILTER and hf.get("name") == "palisade":
                    tc["config"]["vm_config"]["code"]["local"]["filename"] = str(wasm)
                    palisade = tc["config"]["configuration"]
    if palisade is None:
        raise SystemExit(f"{DEMO}: no palisade filter on the ingress listener")
    config = json.loads(palisade["value"])
    for section in VOLUME_SECTIONS:
        config.pop(section, None)
    if bot:
        config["bot"] = {**config.get("bot", {}), "mode": "monitor", "events": "all"}
    palisade["value"] = json.dumps(config, indent=2)
    return demo, config


# palisade's default challenge threshold (src/stages/bot/config.rs,
# DEFAULT_CHALLENGE) when the bot section names none.
DEFAULT_CHALLENGE = 60


def challenge_threshold(palisade_config: dict) -> int:
    """`bot.thresholds.challenge` of the configuration, else palisade's default."""
    thresholds = palisade_config.get("bot", {}).get("thresholds")
    value = thresholds.get("challenge") if isinstance(thresholds, dict) else None
    if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 100:
        return value
    return DEFAULT_CHALLENGE


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout: float, what: str, proc: subprocess.Popen, log: Path):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"Envoy exited ({proc.returncode}) while waiting for {what}:\n{harness.tail(log.read_text())}")
        try:
            value = predicate()
            if value:
                return value
        except OSError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"timed out waiting for {what}:\n{harness.tail(log.read_text())}")


def stop(*procs: subprocess.Popen) -> None:
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def run_traffic(args: argparse.Namespace) -> tuple[Path, Path, int]:
    logs: Path = args.logs
    logs.mkdir(parents=True, exist_ok=True)
    sim = args.sim
    if not sim.is_file():
        raise SystemExit(f"{sim} missing: run `make sim`")
    classes = logs / "classes.txt"
    classes.write_text(subprocess.run([str(sim), "--list"], check=True, capture_output=True, text=True).stdout)

    upstream_port = free_port()
    demo = yaml.safe_load(DEMO.read_text())
    bootstrap, palisade_config = training_config(demo, upstream_port, harness.wasm_path(), bot=not args.no_bot)
    config = logs / "envoy-train.yaml"
    config.write_text(
        "# Generated by tests/train/run_train.py from envoy/envoy.yaml: no rate limits or bans,\n"
        "# bot stage in monitor mode with all events. Do not edit: it is rewritten by every run.\n"
        + yaml.safe_dump(bootstrap, sort_keys=False)
    )
    log, admin_path = logs / "envoy.log", logs / "admin.address"
    admin_path.unlink(missing_ok=True)
    envoy_bin = harness.envoy_binary()
    print(f"Envoy with {config} (2 workers), demo upstream on 127.0.0.1:{upstream_port}; logs in {logs}/")
    with open(logs / "upstream.log", "w") as up_log:
        upstream = subprocess.Popen(
            [sys.executable, str(UPSTREAM), "--port", str(upstream_port)], stdout=up_log, stderr=subprocess.STDOUT
        )
    with open(log, "w") as log_file:
        envoy = subprocess.Popen(
            [str(envoy_bin), "-c", str(config), "--concurrency", "2", "--disable-hot-restart", "-l", "warning",
             "--admin-address-path", str(admin_path)],
            cwd=REPO_ROOT,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    try:
        admin = wait_for(lambda: admin_path.exists() and admin_path.read_text().strip(), 30, "the admin address",
                         envoy, log)

        def port():
            with urllib.request.urlopen(f"http://{admin}/listeners?format=json", timeout=2) as r:
                for s in json.load(r).get("listener_statuses", []):
                    if s["name"] == "ingress":
                        return s["local_address"]["socket_address"]["port_value"]
            return None

        listen = wait_for(port, 30, "the ingress listener", envoy, log)
        cmd = [str(sim), "--target", f"http://127.0.0.1:{listen}", "--duration", str(args.seconds), "--wait", "30",
               "--json", str(logs / "sim.json"), *shlex.split(args.sim_args)]
        print(f"palisade-sim: every class for {args.seconds} s")
        rc = subprocess.run(cmd, stdin=subprocess.DEVNULL).returncode
        if rc != 0:
            raise SystemExit(f"palisade-sim failed ({rc})")
        time.sleep(0.5)  # the last requests' log lines
    finally:
        stop(envoy, upstream)
    return log, classes, challenge_threshold(palisade_config)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=60.0, help="how long the simulator sends (default 60)")
    ap.add_argument("--out", type=Path, default=REPO_ROOT / "target" / "train" / "bot-model.json")
    ap.add_argument("--labelled", type=Path, help="operator-labelled events to add (JSON lines, \"label\": 0|1)")
    ap.add_argument("--challenge", type=int, help="challenge threshold to report at (default: the demo bot section's, else palisade's 60)")
    ap.add_argument("--logs", type=Path, default=REPO_ROOT / "target" / "train")
    ap.add_argument("--sim", type=Path, default=Path(os.environ.get("PALISADE_SIM", train.DEFAULT_SIM)))
    ap.add_argument("--sim-args", default="", help="extra palisade-sim options, e.g. '--seed 2'")
    ap.add_argument("--no-bot", action="store_true",
                    help="leave the bot section out (a palisade without a bot stage: no events, a dry run)")
    args = ap.parse_args(argv)
    log, classes, configured = run_traffic(args)
    challenge = args.challenge if args.challenge is not None else configured
    print(f"challenge threshold: {challenge}")
    train_args = ["--log", str(log), "--classes", str(classes), "--out", str(args.out)]
    if args.labelled:
        train_args += ["--labelled", str(args.labelled)]
    if challenge is not None:
        train_args += ["--challenge", str(challenge)]
    print(f"\ntrain.py {' '.join(train_args)}")
    return train.main(train_args)


if __name__ == "__main__":
    sys.exit(main())
