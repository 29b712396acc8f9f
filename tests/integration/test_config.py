"""(e) Invalid configurations are refused: Envoy does not start, and the log names the JSON path."""

from __future__ import annotations

import re

import pytest

import harness

GOOD_RULE = {"name": "a", "key": ["ip"], "capacity": 1, "refill": "none"}

# (id, configuration string or dict, pattern that must appear in a palisade error log line)
BAD = [
    ("bad-json", '{"version":1,', re.compile(r"(?i)json|parse|eof")),
    ("unknown-field", {"version": 1, "bogus": 1}, "bogus"),
    (
        "wrong-type",
        {"rate_limits": {"rules": [{"name": "a", "key": ["ip"], "capacity": "ten", "refill": "none"}]}},
        "rate_limits.rules[0].capacity",
    ),
    (
        "zero-capacity",
        {"rate_limits": {"rules": [{"name": "a", "key": ["ip"], "capacity": 0, "refill": "none"}]}},
        "rate_limits.rules[0].capacity",
    ),
    ("invalid-regex", {"routes": [{"name": "r", "regex": "(unclosed"}]}, "routes[0].regex"),
    (
        "unknown-route",
        {
            "routes": [{"name": "r", "prefix": "/r"}],
            "rate_limits": {"rules": [dict(GOOD_RULE, routes=["nope"])]},
        },
        "rules[0].routes[0]",
    ),
    ("empty", "", None),
]


def palisade_error_lines(log: str) -> list[str]:
    return [
        line
        for line in log.splitlines()
        if "palisade" in line and ("[error]" in line or "[critical]" in line)
    ]


def check_refused(rc: int, log: str, expect) -> None:
    errors = palisade_error_lines(log)
    tail = harness.tail(log, 25)
    assert rc != 0, f"Envoy exited 0 for a bad config.\n{tail}"
    wasm_errors = [line for line in errors if "invalid configuration" in line or "wasm log" in line]
    assert wasm_errors, f"no palisade error logged by the filter.\n{tail}"
    if expect is None:
        return
    if isinstance(expect, re.Pattern):
        assert any(expect.search(line) for line in wasm_errors), f"{expect.pattern!r} not in:\n" + "\n".join(wasm_errors)
    else:
        assert any(expect in line for line in wasm_errors), f"{expect!r} not in:\n" + "\n".join(wasm_errors)


@pytest.mark.parametrize("config,expect", [pytest.param(c, x, id=i) for i, c, x in BAD])
def test_bad_config_refused(expect_failure, config, expect):
    rc, log = expect_failure(config)
    check_refused(rc, log, expect)


@pytest.mark.parametrize(
    "config,expect", [pytest.param(c, x, id=i) for i, c, x in BAD if i in ("zero-capacity", "invalid-regex", "bad-json")]
)
def test_bad_config_fails_validate_mode(expect_failure, config, expect):
    rc, log = expect_failure(config, mode="validate")
    check_refused(rc, log, expect)


def test_good_config_passes_validate_mode(expect_failure):
    """Guard against the negative tests passing because every config fails."""
    cfg = {
        "version": 1,
        "routes": [{"name": "r", "regex": "^/r/[0-9]+$", "methods": ["GET"]}],
        "rate_limits": {"rules": [dict(GOOD_RULE, routes=["r"])]},
    }
    rc, log = expect_failure(cfg, mode="validate")
    assert rc == 0, harness.tail(log, 25)
    assert not [l for l in palisade_error_lines(log) if "invalid configuration" in l]
