#!/usr/bin/env python3
"""Fit the bot stage's model from palisade's own `palisade.bot` events.

Reads an Envoy log (palisade's events are JSON at the end of Envoy's wasm log
lines), labels each event by the simulator class in its request id
(`<class>-<thread>-<n>`, see tests/sim): attack class -> 1, legitimate -> 0;
the kind of each class comes from `palisade-sim --list`.  Operator-labelled
events (`--labelled f.jsonl`: one palisade.bot event a line, plus
`"label": 0|1`) are added as they are.

Held-out evaluation splits by client (client_ip): no client is in both the
training and the held-out set.  The model is scikit-learn's logistic
regression over the ten signals; palisade computes the same function,
score = round(100 * sigmoid(bias + sum(weight_i * signal_i))), so the fitted
intercept and coefficients are the bias and weights of the fragment written
to --out:

    {"bot": {"model": {"bias": b, "weights": {"automation_ua": w, ...}}}}

    python tests/train/train.py --log target/train/envoy.log --out target/train/bot-model.json
"""

from __future__ import annotations

import argparse
import json
import random
import re
import subprocess
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score, precision_score, recall_score

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_SIM = REPO_ROOT / "target" / "debug" / "palisade-sim"

# The bot stage's signals that traffic shows, in the order of the model's
# weights.  palisade's `challenge_passed` (a solved challenge, with a
# negative weight) is not among them: simulator traffic solves no
# challenges, so its shipped weight is kept (a fragment overrides only the
# weights it names).
SIGNALS = (
    "automation_ua",
    "headless_ua",
    "missing_browser_headers",
    "client_hints_mismatch",
    "sec_fetch_mismatch",
    "header_order",
    "machine_timing",
    "sequential_ids",
    "distinct_paths",
    "flow",
)
EVENT = "palisade.bot"
# `<class>-<thread>-<n>`, as palisade-sim writes x-request-id.
REQUEST_ID = re.compile(r"^(?P<cls>[A-Za-z0-9_-]+?)-(?P<thread>\d+)-(?P<n>\d+)$")
KINDS = {"legitimate": 0, "attack": 1}
# Regularization: C of scikit-learn (inverse strength); modest.
C = 1.0
HELD_OUT = 0.3


@dataclass
class Sample:
    features: list[float]
    label: int
    client: str
    cls: str
    score: int | None  # what palisade scored with its configured model


@dataclass
class Dataset:
    samples: list[Sample] = field(default_factory=list)
    malformed: int = 0
    unlabelled: Counter = field(default_factory=Counter)
    extra_signals: set = field(default_factory=set)

    def add(self, other: "Dataset") -> None:
        self.samples += other.samples
        self.malformed += other.malformed
        self.unlabelled += other.unlabelled
        self.extra_signals |= other.extra_signals


# ------------------------------------------------------------------ input ----
def class_kinds(sim: Path | None = None, listing: Path | None = None) -> dict[str, int]:
    """{class name: 0 (legitimate) | 1 (attack)} from `palisade-sim --list`
    (its output, or a file holding it): name, kind, description a line."""
    if listing is not None:
        text = listing.read_text()
    else:
        sim = sim or DEFAULT_SIM
        if not sim.is_file():
            raise SystemExit(f"{sim} missing: run `make sim`, or give --classes FILE (palisade-sim --list output)")
        text = subprocess.run([str(sim), "--list"], check=True, capture_output=True, text=True).stdout
    kinds = {}
    for line in text.splitlines():
        parts = line.split(None, 2)
        if len(parts) >= 2 and parts[1] in KINDS:
            kinds[parts[0]] = KINDS[parts[1]]
    if not kinds:
        raise SystemExit("no classes in the palisade-sim --list output")
    return kinds


def bot_event(line: str) -> dict | None:
    """The palisade.bot event at the end of a log line; None if the line has
    none.  ValueError if it names one that is not valid JSON."""
    if EVENT not in line:
        return None
    decoder = json.JSONDecoder()
    start = line.find("{")
    while start != -1:
        try:
            obj, _ = decoder.raw_decode(line, start)
        except ValueError:
            start = line.find("{", start + 1)
            continue
        if isinstance(obj, dict) and obj.get("event") == EVENT:
            return obj
        start = line.find("{", start + 1)
    raise ValueError("no palisade.bot JSON object")


def features_of(event: dict, data: Dataset) -> list[float]:
    signals = event.get("signals")
    if not isinstance(signals, dict):
        raise ValueError("no signals")
    out = []
    for name in SIGNALS:
        v = signals.get(name)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= v <= 1.0:
            raise ValueError(f"signal {name} missing or not in 0..1")
        out.append(float(v))
    data.extra_signals |= set(signals) - set(SIGNALS)
    return out


def sample_of(event: dict, label: int, cls: str, data: Dataset) -> Sample:
    client = event.get("client_ip")
    if not isinstance(client, str) or not client:
        raise ValueError("no client_ip")
    score = event.get("score")
    return Sample(features_of(event, data), label, client, cls, score if isinstance(score, int) else None)


def read_log(path: Path, kinds: dict[str, int]) -> Dataset:
    """palisade.bot events of an Envoy log, labelled by their request id's
    class; events of unknown classes (or without a simulator request id)
    are left out and counted."""
    data = Dataset()
    with open(path, errors="replace") as f:
        for line in f:
            try:
                event = bot_event(line)
                if event is None:
                    continue
                m = REQUEST_ID.match(str(event.get("request_id") or ""))
                cls = m.group("cls") if m else ""
                if cls not in kinds:
                    data.unlabelled[cls or "(no simulator request id)"] += 1
                    continue
                data.samples.append(sample_of(event, kinds[cls], cls, data))
            except ValueError:
                data.malformed += 1
    return data


def read_labelled(path: Path) -> Dataset:
    """An operator's labelled events: one JSON object a line, a palisade.bot
    event plus "label": 0 or 1."""
    data = Dataset()
    with open(path, errors="replace") as f:
        for line in f:
            if not line.strip():
                continue
            try:
                event = json.loads(line)
                if not isinstance(event, dict) or event.get("event") != EVENT:
                    raise ValueError("not a palisade.bot event")
                label = event.get("label")
                if label not in (0, 1) or isinstance(label, bool):
                    data.unlabelled["(labelled file: label not 0 or 1)"] += 1
                    continue
                cls = "labelled/attack" if label == 1 else "labelled/legitimate"
                data.samples.append(sample_of(event, int(label), cls, data))
            except ValueError:
                data.malformed += 1
    return data


# ---------------------------------------------------------------- fitting ----
def split_by_client(samples: list[Sample], seed: int) -> tuple[list[Sample], list[Sample]]:
    """About HELD_OUT of each class's clients held out, the rest for
    training; a client is never in both.  A class with one client only is
    trained on (nothing of it is held out)."""
    clients_of: dict[str, set[str]] = defaultdict(set)
    for s in samples:
        clients_of[s.cls].add(s.client)
    rng = random.Random(seed)
    held: set[str] = set()
    for cls in sorted(clients_of):
        clients = sorted(clients_of[cls])
        rng.shuffle(clients)
        k = round(len(clients) * HELD_OUT)
        if len(clients) >= 2:
            k = min(max(k, 1), len(clients) - 1)
        held |= set(clients[:k])
    train = [s for s in samples if s.client not in held]
    test = [s for s in samples if s.client in held]
    return train, test


def weights_of(samples: list[Sample]) -> np.ndarray:
    """Each class of a label weighs the same however many requests it sent
    (a 400/s scraper must not drown a 3/s one); each label's weights sum to
    its count, and class_weight="balanced" then evens out the labels."""
    per_class = Counter(s.cls for s in samples)
    per_label = Counter(s.label for s in samples)
    classes_per_label = Counter(label for label, _ in {(s.label, s.cls) for s in samples})
    return np.array(
        [per_label[s.label] / (classes_per_label[s.label] * per_class[s.cls]) for s in samples]
    )


@dataclass
class Fitted:
    model: LogisticRegression
    # Indexes (into SIGNALS) of the signals fitted: those that vary in the
    # training set.  A signal that never does (not measured, or the same
    # for every client) tells nothing: it gets no weight in the fragment,
    # and palisade keeps the weight it has.
    active: list[int]

    def scores(self, samples: list[Sample]) -> np.ndarray:
        """0..100, as palisade computes it with this model."""
        x = np.array([s.features for s in samples])[:, self.active]
        p = self.model.predict_proba(x)[:, 1]
        return np.rint(100 * p).astype(int)


def fit(samples: list[Sample]) -> Fitted:
    labels = {s.label for s in samples}
    if labels != {0, 1}:
        raise SystemExit(f"the training set needs both labels; it has {sorted(labels)}")
    x = np.array([s.features for s in samples])
    y = np.array([s.label for s in samples])
    active = [i for i in range(len(SIGNALS)) if np.ptp(x[:, i]) > 0]
    constant = [SIGNALS[i] for i in range(len(SIGNALS)) if i not in active]
    if constant:
        print(f"note: signals that never vary in the training set, left out of the model "
              f"(palisade keeps its weights for them): {', '.join(constant)}")
    if not active:
        raise SystemExit("no signal varies in the training set: nothing to learn")
    model = LogisticRegression(class_weight="balanced", C=C, max_iter=2000)
    model.fit(x[:, active], y, sample_weight=weights_of(samples))
    return Fitted(model, active)


def fragment(fitted: Fitted) -> dict:
    coef = dict(zip(fitted.active, fitted.model.coef_[0]))
    return {
        "bot": {
            "model": {
                "bias": round(float(fitted.model.intercept_[0]), 3),
                "weights": {SIGNALS[i]: round(float(coef[i]), 3) for i in fitted.active},
            }
        }
    }


# ---------------------------------------------------------------- metrics ----
def prf(y: list[int], predicted: list[int]) -> tuple[float, float, float]:
    return (
        precision_score(y, predicted, zero_division=0.0),
        recall_score(y, predicted, zero_division=0.0),
        f1_score(y, predicted, zero_division=0.0),
    )


def report(title: str, samples: list[Sample], s: np.ndarray, threshold: int) -> dict:
    """Precision/recall/F1 of `score >= threshold`, and per class the share
    flagged (detection for attack classes, false positives for legitimate)."""
    y = [x.label for x in samples]
    flagged = [int(v >= threshold) for v in s]
    p, r, f = prf(y, flagged)
    print(f"  {title} (score >= {threshold}): precision {p:.3f}  recall {r:.3f}  F1 {f:.3f}")
    per_class: dict[str, list[int]] = defaultdict(list)
    label_of: dict[str, int] = {}
    for x, fl in zip(samples, flagged):
        per_class[x.cls].append(fl)
        label_of[x.cls] = x.label
    lines = {}
    for cls in sorted(per_class, key=lambda c: (label_of[c], c)):
        fl = per_class[cls]
        what = "detection" if label_of[cls] else "false positives"
        share = sum(fl) / len(fl)
        print(f"      {cls:<20} {what:<16} {100 * share:5.1f}%  of {len(fl)}")
        lines[cls] = share
    return {"precision": p, "recall": r, "f1": f, "per_class": lines}


def summarize(data: Dataset) -> None:
    print(f"events: {len(data.samples)} labelled", end="")
    by = Counter(s.cls for s in data.samples)
    print(" (" + ", ".join(f"{c} {n}" for c, n in sorted(by.items())) + ")")
    if data.unlabelled:
        print(f"ignored (no known label): {sum(data.unlabelled.values())} "
              + ", ".join(f"{k} {v}" for k, v in sorted(data.unlabelled.items())))
    if data.malformed:
        print(f"skipped {data.malformed} malformed line(s)")
    if data.extra_signals:
        print(f"note: signals not trained (palisade keeps its weights for them): "
              f"{', '.join(sorted(data.extra_signals))}")


def train(data: Dataset, out: Path, challenge: int | None, seed: int = 1) -> dict:
    summarize(data)
    if not data.samples:
        raise SystemExit("no labelled palisade.bot events: is the bot stage on with \"events\": \"all\"?")
    train_set, held = split_by_client(data.samples, seed)
    print(f"split by client: {len(train_set)} training events from "
          f"{len({s.client for s in train_set})} clients, {len(held)} held-out events from "
          f"{len({s.client for s in held})} clients")
    model = fit(train_set)
    result: dict = {"model": fragment(model)}
    if held and {s.label for s in held} == {0, 1}:
        print("held-out:")
        s = model.scores(held)
        result["held_out"] = {"at_50": report("model's 0.5 point", held, s, 50)}
        if challenge is not None:
            result["held_out"]["at_challenge"] = report("challenge threshold", held, s, challenge)
        base = [x for x in held if x.score is not None]
        if challenge is not None and base:
            report("palisade's own scores (configured model), challenge threshold", base,
                   np.array([x.score for x in base]), challenge)
    else:
        print("held-out: not both labels among the held-out clients; no held-out figures")
    unheld = sorted({s.cls for s in train_set} - {s.cls for s in held})
    if unheld:
        print(f"classes with no held-out client (too few clients): {', '.join(unheld)}")
    print("training set (in-sample):")
    report("model's 0.5 point", train_set, model.scores(train_set), 50)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result["model"], indent=2) + "\n")
    model_text = json.dumps(result["model"]["bot"]["model"])
    print(f"model written to {out}: {model_text}")
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--log", type=Path, help="Envoy log with palisade.bot events (simulator traffic)")
    ap.add_argument("--labelled", type=Path, help="operator-labelled events, JSON lines with \"label\": 0|1")
    ap.add_argument("--out", type=Path, default=REPO_ROOT / "target" / "train" / "bot-model.json")
    ap.add_argument("--sim", type=Path, help=f"palisade-sim, for --list (default {DEFAULT_SIM})")
    ap.add_argument("--classes", type=Path, help="saved `palisade-sim --list` output instead of running it")
    ap.add_argument("--challenge", type=int, help="the configured challenge threshold (score 0..100)")
    ap.add_argument("--seed", type=int, default=1, help="seed of the held-out split")
    args = ap.parse_args(argv)
    if not args.log and not args.labelled:
        ap.error("give --log and/or --labelled")
    if args.challenge is not None and not 0 <= args.challenge <= 100:
        ap.error("--challenge is a score from 0 to 100")
    data = Dataset()
    if args.log:
        data.add(read_log(args.log, class_kinds(args.sim, args.classes)))
    if args.labelled:
        data.add(read_labelled(args.labelled))
    train(data, args.out, args.challenge, args.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
