"""The secret audit (harness.py, conftest.py) every Envoy of the suite goes
through at teardown: each credential and password a test sends is
remembered with the Envoy it went to, and must not be in palisade's
answers, Envoy's log or its stats. This test shows the audit sees what it
is meant to see."""

from __future__ import annotations

import json

CANARY = "audit-canary-token-0123456789"


def test_the_audit_remembers_what_was_sent_and_finds_it_where_it_must_not_be(envoy):
    e = envoy({"routes": [{"name": "api", "prefix": "/"}],
               "authorization": {"policies": [{"routes": ["api"], "credentials": ["api_key"]}]},
               "api_keys": {"header": "x-api-key", "keys": [{"id": "k", "sha256": "00" * 32}]}})
    r = e.request("GET", "/", {"x-api-key": CANARY, "cookie": f"session={CANARY}-cookie"})
    assert r[0] == 401, r
    e.request("POST", "/", {"content-type": "application/json"},
              json.dumps({"username": "alice", "password": "hunter2-but-longer"}).encode())
    assert e.secrets_sent == {CANARY, f"{CANARY}-cookie", "hunter2-but-longer"}
    # Nothing leaked so far (the teardown checks the same again) ...
    assert e.leaked_secrets(e.stats_text()) == []
    # ... and a secret in the stats or the log would be found.
    assert e.leaked_secrets(f"palisade_x.{CANARY}: 1") == [
        f"a {len(CANARY)}-character secret (aud…) is in the stats"
    ]
