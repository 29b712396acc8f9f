"""nginx/kong/palisade.meta.json: Kong's JSON Schema of palisade's configuration,
cross-checked against palisade itself.

The schema is written by hand from README's configuration reference; these
tests keep it from drifting from the Rust config types (src/config.rs) by
asking palisade-check - the filter's own on_configure validation - about the
same documents:

* every configuration palisade accepts, the schema accepts (README samples,
  shipped configurations, literal configurations of the integration tests, a
  curated corpus of edge cases, and systematic mutations of two complete
  configurations). A schema that refused a valid configuration would make
  Kong refuse a deployment palisade is fine with.
* a curated corpus of invalid configurations (unknown fields, wrong types,
  zero capacity, bad durations, bad names, missing required fields, values
  out of range) is rejected by both.
* where palisade rejects and the schema accepts, the reason is one of the
  checks a JSON Schema cannot express (GAPS below); any other disagreement
  fails. So schema-rejects is a subset of palisade-rejects, and the gap
  between them is documented here and in nginx/README.md.
* every object in the schema is closed (additionalProperties: false) and its
  fields are exactly those README documents: when README grows a section
  (`signatures` is next), these tests fail until the schema has it.
"""

from __future__ import annotations

import base64
import copy
import json
import re
from typing import Any, Iterator

import jsonschema
import pytest

import deploy

# ---------------------------------------------------------------------------
# Checks palisade makes that the schema cannot (JSON Schema draft 4, which is
# what Kong validates with): the palisade-check messages that may come with a
# configuration the schema accepts. Each is documented in nginx/README.md.
# ---------------------------------------------------------------------------
GAPS = {
    "unique route names": r"duplicate route name",
    "unique rule names": r"duplicate rule name",
    "route names in rules and policies name defined routes": r"no route class named",
    "a rule keyed on user needs user.header": r"no `user\.header` is configured",
    "regex is a valid regular expression": r"invalid regular expression",
    "bans.max is not shorter than bans.base": r"must not be shorter than bans\.base",
    "durations are at most 30 days": r"longer than 30 days|does not start with a whole number",
    "a rule keyed on key_id needs a signature policy": r"no `signatures\.policies` verify",
    "secrets are standard base64 of 32 bytes or more": r"is not valid standard base64|a secret must be at least 32 bytes",
    "an env secret names a variable set where palisade runs": r"is not set in the wasm VM",
    "a route class is in one signature policy at most": r"already has a signature policy",
    "names and tokens end at the end of the string ($ matches before a final newline)": r"not a valid name|not a valid HTTP header name|not an upper-case HTTP method",
}


def _gap_of(message: str) -> str | None:
    for name, pattern in GAPS.items():
        if re.search(pattern, message):
            return name
    return None


SECRET = base64.b64encode(b"palisade-deploy-check-secret-32b").decode()  # 32 bytes, test only
SHORT_SECRET = base64.b64encode(b"31 bytes are not quite enough!!").decode()
# Environment variables palisade-check gets, standing for a Kubernetes
# Secret mapped into the VM's environment: one for the curated corpus, and
# random test keys for the shipped configurations' own (deploy.random_secret_env).
SECRET_ENV = {"PALISADE_DEPLOY_CHECK_SECRET": SECRET, **deploy.random_secret_env()}

# (id, configuration) palisade accepts: the schema must accept them too.
VALID = [
    ("empty", {}),
    (
        "everything",
        {
            "version": 1, "mode": "monitor", "failure_mode": "allow",
            "client_ip": {"source": "x-forwarded-for", "trusted_hops": 2},
            "user": {"header": "X-User-Id"},
            "routes": [
                {"name": "login", "prefix": "/login", "methods": ["POST"]},
                {"name": "exact", "path": "/health"},
                {"name": "search", "regex": "^/api/v[0-9]+/search"},
            ],
            "rate_limits": {"mode": "enforce", "slots": 1000, "quota_headers": True, "rules": [
                {"name": "login-ip", "key": ["ip", "route"], "routes": ["login", "default"], "capacity": 5,
                 "refill": {"tokens": 5, "every": "1m"}, "ban": True},
                {"name": "users", "key": ["user"], "capacity": 50, "refill": "none"},
            ]},
            "bans": {"mode": "enforce", "after": 2, "base": "1s", "factor": 1.5, "max": "1m", "decay": "30s"},
            "signatures": {
                "mode": "monitor",
                "keys": [{"id": "partner-1", "secret": {"base64": SECRET}},
                         {"id": "partner-1", "secret": {"env": "PALISADE_DEPLOY_CHECK_SECRET"}}],
                "max_body_bytes": 65536,
                "replay_slots": 4096,
                "policies": [
                    {"routes": ["search"], "components": ["@method", "@path", "content-digest"], "max_age": "2m",
                     "clock_skew": "10s", "require_nonce": True, "replay": True, "require_digest": True,
                     "label": "sig1", "tag": "palisade"},
                    {"routes": ["exact"]},
                ],
            },
        },
    ),
    (
        "explicit-nulls",
        {
            "user": None,
            "client_ip": {"source": "peer", "trusted_hops": None},
            "routes": [{"name": "a", "prefix": "/", "path": None, "regex": None, "methods": None}],
            "rate_limits": {"mode": None, "slots": None, "rules": [
                {"name": "r", "key": ["ip"], "routes": None, "capacity": 1, "refill": "none"}]},
            "bans": {"mode": None, "after": None, "base": None, "factor": None, "max": None, "decay": None},
        },
    ),
    ("defaults-spelled-out", {"version": 1, "mode": "enforce", "failure_mode": "deny", "client_ip": {"source": "peer"},
                              "routes": [], "rate_limits": {"quota_headers": False, "rules": []}, "bans": {}}),
    ("duration-units", {"bans": {"base": "500ms", "max": "2d", "decay": "1h"},
                        "rate_limits": {"rules": [{"name": "a", "key": ["ip"], "capacity": 1,
                                                   "refill": {"tokens": 1, "every": "0010s"}}]}}),
    ("duration-30d", {"bans": {"base": "30d", "max": "30d", "decay": "720h"}}),
    ("bounds-low", {"client_ip": {"source": "x-forwarded-for", "trusted_hops": 1},
                    "rate_limits": {"slots": 16, "rules": [{"name": "a", "key": ["ip"], "capacity": 1,
                                                            "refill": {"tokens": 1, "every": "1ms"}}]},
                    "bans": {"after": 1, "factor": 1}}),
    ("bounds-high", {"client_ip": {"source": "x-forwarded-for", "trusted_hops": 16},
                     "rate_limits": {"slots": 4194304, "rules": [{"name": "a", "key": ["ip"], "capacity": 4294967295,
                                                                  "refill": {"tokens": 4294967295, "every": "1s"}}]},
                     "bans": {"after": 10000, "factor": 100}}),
    ("names", {"routes": [{"name": "a" * 32, "prefix": "/a"}, {"name": "b_c-9", "path": "/b"}],
               "rate_limits": {"rules": [{"name": "z" * 32, "key": ["route"], "routes": ["a" * 32, "default"],
                                          "capacity": 1, "refill": "none"}]}}),
    ("header-and-methods", {"user": {"header": "x-user_id.1~"},
                            "routes": [{"name": "m", "prefix": "/", "methods": ["GET", "POST", "M-SEARCH"]}],
                            "rate_limits": {"rules": [{"name": "k", "key": ["ip", "user", "route"], "capacity": 3,
                                                       "refill": "none"}]}}),
    ("empty-regex", {"routes": [{"name": "all", "regex": ""}]}),
    ("signatures-nulls", {"routes": [{"name": "a", "prefix": "/"}],
                          "signatures": {"mode": None, "max_body_bytes": None, "replay_slots": None,
                                         "keys": [{"id": "k", "secret": {"base64": SECRET}}],
                                         "policies": [{"routes": ["a"], "components": None, "max_age": None,
                                                       "clock_skew": None, "label": None, "tag": None}]}}),
    ("signatures-bounds", {"signatures": {"max_body_bytes": 67108864, "replay_slots": 16,
                                          "keys": [{"id": " ~" * 128, "secret": {"base64": SECRET}}],
                                          "policies": [{"routes": ["default"], "components": [], "label": "*x.y_z-1",
                                                        "tag": ""}]}}),
    ("key-id-rule", {"signatures": {"keys": [{"id": "k", "secret": {"env": "PALISADE_DEPLOY_CHECK_SECRET"}}],
                                    "policies": [{"routes": ["default"]}]},
                     "rate_limits": {"rules": [{"name": "per-key", "key": ["key_id"], "capacity": 10, "refill": "none"}]}}),
    ("keys-without-policies", {"signatures": {"keys": [{"id": "k", "secret": {"base64": SECRET}}]}}),
]

# (id, configuration) both must reject: what a JSON Schema can say.
INVALID = [
    # unknown fields, at every level
    ("unknown-top", {"bogus": 1}),
    ("unknown-client-ip", {"client_ip": {"source": "peer", "hops": 1}}),
    ("unknown-user", {"user": {"header": "x", "hash": True}}),
    ("unknown-route", {"routes": [{"name": "a", "prefix": "/", "method": ["GET"]}]}),
    ("unknown-rate-limits", {"rate_limits": {"rule": []}}),
    ("unknown-rule", {"rate_limits": {"rules": [{"name": "a", "key": ["ip"], "capacity": 1, "refill": "none", "burst": 2}]}}),
    ("unknown-refill", {"rate_limits": {"rules": [{"name": "a", "key": ["ip"], "capacity": 1,
                                                   "refill": {"tokens": 1, "every": "1s", "x": 1}}]}}),
    ("unknown-bans", {"bans": {"lenght": "1s"}}),
    # wrong types
    ("not-an-object", []),
    ("version-string", {"version": "1"}),
    ("version-float", {"version": 1.0}),
    ("version-2", {"version": 2}),
    ("mode-unknown", {"mode": "block"}),
    ("mode-capitalised", {"mode": "Enforce"}),
    ("mode-null", {"mode": None}),
    ("mode-as-map", {"mode": {"enforce": None}}),
    ("source-as-map", {"client_ip": {"source": {"x-forwarded-for": None}, "trusted_hops": 1}}),
    ("key-part-as-map", {"rate_limits": {"rules": [{"name": "a", "key": [{"ip": None}], "capacity": 1, "refill": "none"}]}}),
    ("failure-mode-unknown", {"failure_mode": "open"}),
    ("client-ip-null", {"client_ip": None}),
    ("client-ip-array", {"client_ip": []}),
    ("source-unknown", {"client_ip": {"source": "header"}}),
    ("hops-string", {"client_ip": {"source": "x-forwarded-for", "trusted_hops": "1"}}),
    ("hops-float", {"client_ip": {"source": "x-forwarded-for", "trusted_hops": 1.5}}),
    ("user-string", {"user": "x-user"}),
    ("user-header-number", {"user": {"header": 1}}),
    ("routes-object", {"routes": {}}),
    ("routes-null", {"routes": None}),
    ("route-name-number", {"routes": [{"name": 1, "prefix": "/"}]}),
    ("prefix-number", {"routes": [{"name": "a", "prefix": 1}]}),
    ("methods-string", {"routes": [{"name": "a", "prefix": "/", "methods": "GET"}]}),
    ("methods-number", {"routes": [{"name": "a", "prefix": "/", "methods": [1]}]}),
    ("rate-limits-null", {"rate_limits": None}),
    ("quota-headers-string", {"rate_limits": {"quota_headers": "yes"}}),
    ("quota-headers-null", {"rate_limits": {"quota_headers": None}}),
    ("rules-object", {"rate_limits": {"rules": {}}}),
    ("key-string", {"rate_limits": {"rules": [{"name": "a", "key": "ip", "capacity": 1, "refill": "none"}]}}),
    ("key-unknown", {"rate_limits": {"rules": [{"name": "a", "key": ["mac"], "capacity": 1, "refill": "none"}]}}),
    ("capacity-string", {"rate_limits": {"rules": [{"name": "a", "key": ["ip"], "capacity": "ten", "refill": "none"}]}}),
    ("capacity-float", {"rate_limits": {"rules": [{"name": "a", "key": ["ip"], "capacity": 1.0, "refill": "none"}]}}),
    ("capacity-negative", {"rate_limits": {"rules": [{"name": "a", "key": ["ip"], "capacity": -1, "refill": "none"}]}}),
    ("capacity-overflow", {"rate_limits": {"rules": [{"name": "a", "key": ["ip"], "capacity": 4294967296, "refill": "none"}]}}),
    ("refill-word", {"rate_limits": {"rules": [{"name": "a", "key": ["ip"], "capacity": 1, "refill": "daily"}]}}),
    ("refill-number", {"rate_limits": {"rules": [{"name": "a", "key": ["ip"], "capacity": 1, "refill": 5}]}}),
    ("refill-array", {"rate_limits": {"rules": [{"name": "a", "key": ["ip"], "capacity": 1, "refill": []}]}}),
    ("tokens-string", {"rate_limits": {"rules": [{"name": "a", "key": ["ip"], "capacity": 1,
                                                  "refill": {"tokens": "1", "every": "1s"}}]}}),
    ("ban-string", {"rate_limits": {"rules": [{"name": "a", "key": ["ip"], "capacity": 1, "refill": "none", "ban": "true"}]}}),
    ("ban-null", {"rate_limits": {"rules": [{"name": "a", "key": ["ip"], "capacity": 1, "refill": "none", "ban": None}]}}),
    ("bans-null", {"bans": None}),
    ("bans-array", {"bans": [3]}),
    ("after-string", {"bans": {"after": "3"}}),
    ("factor-string", {"bans": {"factor": "2"}}),
    ("base-number", {"bans": {"base": 30}}),
    # zero capacity / tokens
    ("capacity-zero", {"rate_limits": {"rules": [{"name": "a", "key": ["ip"], "capacity": 0, "refill": "none"}]}}),
    ("tokens-zero", {"rate_limits": {"rules": [{"name": "a", "key": ["ip"], "capacity": 1,
                                                "refill": {"tokens": 0, "every": "1s"}}]}}),
    # bad durations
    *[
        (f"duration-{i}", {"bans": {"base": bad}})
        for i, bad in enumerate(["5", "s", "0s", "00ms", "-1s", "1.5s", "5 s", "5sec", "1M", "", "1S", "+1s", " 1s", "1s "])
    ],
    # bad names
    *[
        (f"rule-name-{i}", {"rate_limits": {"rules": [{"name": bad, "key": ["ip"], "capacity": 1, "refill": "none"}]}})
        for i, bad in enumerate(["Bad Name", "", "a" * 33, "login!", "LOGIN", "é", "a.b"])
    ],
    ("route-name-default", {"routes": [{"name": "default", "prefix": "/"}]}),
    ("route-name-upper", {"routes": [{"name": "Login", "prefix": "/"}]}),
    ("rule-routes-bad-name", {"routes": [{"name": "a", "prefix": "/"}],
                              "rate_limits": {"rules": [{"name": "r", "key": ["ip"], "routes": ["A b"], "capacity": 1,
                                                         "refill": "none"}]}}),
    # missing required fields
    ("rule-no-name", {"rate_limits": {"rules": [{"key": ["ip"], "capacity": 1, "refill": "none"}]}}),
    ("rule-no-key", {"rate_limits": {"rules": [{"name": "a", "capacity": 1, "refill": "none"}]}}),
    ("rule-no-capacity", {"rate_limits": {"rules": [{"name": "a", "key": ["ip"], "refill": "none"}]}}),
    ("rule-no-refill", {"rate_limits": {"rules": [{"name": "a", "key": ["ip"], "capacity": 1}]}}),
    ("refill-no-tokens", {"rate_limits": {"rules": [{"name": "a", "key": ["ip"], "capacity": 1, "refill": {"every": "1s"}}]}}),
    ("refill-no-every", {"rate_limits": {"rules": [{"name": "a", "key": ["ip"], "capacity": 1, "refill": {"tokens": 1}}]}}),
    ("route-no-name", {"routes": [{"prefix": "/"}]}),
    ("route-no-matcher", {"routes": [{"name": "r"}]}),
    ("route-two-matchers", {"routes": [{"name": "r", "prefix": "/a", "path": "/b"}]}),
    ("route-three-matchers", {"routes": [{"name": "r", "prefix": "/a", "path": "/b", "regex": "c"}]}),
    ("route-null-matchers", {"routes": [{"name": "r", "prefix": None}]}),
    ("user-no-header", {"user": {}}),
    ("xff-no-hops", {"client_ip": {"source": "x-forwarded-for"}}),
    ("peer-with-hops", {"client_ip": {"trusted_hops": 1}}),
    # out of range and malformed values
    ("hops-zero", {"client_ip": {"source": "x-forwarded-for", "trusted_hops": 0}}),
    ("hops-17", {"client_ip": {"source": "x-forwarded-for", "trusted_hops": 17}}),
    ("slots-8", {"rate_limits": {"slots": 8}}),
    ("slots-too-many", {"rate_limits": {"slots": 4194305}}),
    ("slots-negative", {"rate_limits": {"slots": -1}}),
    ("after-zero", {"bans": {"after": 0}}),
    ("after-10001", {"bans": {"after": 10001}}),
    ("factor-half", {"bans": {"factor": 0.5}}),
    ("factor-101", {"bans": {"factor": 101}}),
    ("methods-empty", {"routes": [{"name": "a", "prefix": "/", "methods": []}]}),
    ("methods-lower", {"routes": [{"name": "a", "prefix": "/", "methods": ["post"]}]}),
    ("prefix-no-slash", {"routes": [{"name": "a", "prefix": "a"}]}),
    ("path-empty", {"routes": [{"name": "a", "path": ""}]}),
    ("rule-routes-empty", {"routes": [{"name": "a", "prefix": "/"}],
                           "rate_limits": {"rules": [{"name": "r", "key": ["ip"], "routes": [], "capacity": 1,
                                                      "refill": "none"}]}}),
    ("key-empty", {"rate_limits": {"rules": [{"name": "a", "key": [], "capacity": 1, "refill": "none"}]}}),
    ("key-twice", {"rate_limits": {"rules": [{"name": "a", "key": ["ip", "ip"], "capacity": 1, "refill": "none"}]}}),
    ("header-space", {"user": {"header": "x user"}}),
    ("header-empty", {"user": {"header": ""}}),
    ("header-non-ascii", {"user": {"header": "x-ü"}}),
    ("too-many-routes", {"routes": [{"name": f"r{i}", "prefix": f"/{i}"} for i in range(256)]}),
    # signatures
    ("unknown-signatures", {"signatures": {"key": []}}),
    ("unknown-signing-key", {"signatures": {"keys": [{"id": "k", "secret": {"base64": SECRET}, "alg": "hmac"}]}}),
    ("unknown-policy", {"signatures": {"keys": [{"id": "k", "secret": {"base64": SECRET}}],
                                       "policies": [{"routes": ["default"], "nonce": True}]}}),
    ("signatures-null", {"signatures": None}),
    ("keys-null", {"signatures": {"keys": None}}),
    ("policies-null", {"signatures": {"policies": None}}),
    ("secret-two-sources", {"signatures": {"keys": [{"id": "k", "secret": {"base64": SECRET, "env": "X"}}]}}),
    ("secret-no-source", {"signatures": {"keys": [{"id": "k", "secret": {}}]}}),
    ("secret-string", {"signatures": {"keys": [{"id": "k", "secret": SECRET}]}}),
    ("secret-file", {"signatures": {"keys": [{"id": "k", "secret": {"file": "/etc/palisade/key"}}]}}),
    ("secret-base64-number", {"signatures": {"keys": [{"id": "k", "secret": {"base64": 1}}]}}),
    ("key-no-id", {"signatures": {"keys": [{"secret": {"base64": SECRET}}]}}),
    ("key-no-secret", {"signatures": {"keys": [{"id": "k"}]}}),
    ("key-id-empty", {"signatures": {"keys": [{"id": "", "secret": {"base64": SECRET}}]}}),
    ("key-id-non-ascii", {"signatures": {"keys": [{"id": "clé", "secret": {"base64": SECRET}}]}}),
    ("key-id-too-long", {"signatures": {"keys": [{"id": "k" * 257, "secret": {"base64": SECRET}}]}}),
    ("max-body-zero", {"signatures": {"max_body_bytes": 0}}),
    ("max-body-too-big", {"signatures": {"max_body_bytes": 67108865}}),
    ("replay-slots-8", {"signatures": {"replay_slots": 8}}),
    ("policies-without-keys", {"signatures": {"policies": [{"routes": ["default"]}]}}),
    *[
        (f"policy-{name}", {"signatures": {"keys": [{"id": "k", "secret": {"base64": SECRET}}],
                                           "policies": [dict({"routes": ["default"]}, **policy)]}})
        for name, policy in [
            ("no-routes", {"routes": None}),
            ("routes-empty", {"routes": []}),
            ("routes-string", {"routes": "default"}),
            ("components-string", {"components": "@method"}),
            ("component-upper", {"components": ["Content-Type"]}),
            ("component-unknown-derived", {"components": ["@status"]}),
            ("component-twice", {"components": ["@path", "@path"]}),
            ("label-upper", {"label": "Sig1"}),
            ("label-digit-first", {"label": "1sig"}),
            ("tag-non-ascii", {"tag": "é"}),
            ("max-age-bad", {"max_age": "5 minutes"}),
            ("require-nonce-null", {"require_nonce": None}),
            ("replay-string", {"replay": "yes"}),
            ("require-digest-number", {"require_digest": 1}),
        ]
    ],
    ("key-unknown-part", {"rate_limits": {"rules": [{"name": "a", "key": ["keyid"], "capacity": 1, "refill": "none"}]}}),
]

# (id, configuration, gap) palisade rejects and no JSON Schema can: the
# schema accepts these, and the test keeps it that way so the list (and
# nginx/README.md) stays true. If the schema learns to reject one, move it to
# INVALID.
SEMANTIC = [
    ("duplicate-route", {"routes": [{"name": "r", "prefix": "/a"}, {"name": "r", "prefix": "/b"}]},
     "unique route names"),
    ("duplicate-rule", {"rate_limits": {"rules": [{"name": "a", "key": ["ip"], "capacity": 1, "refill": "none"},
                                                  {"name": "a", "key": ["ip"], "capacity": 2, "refill": "none"}]}},
     "unique rule names"),
    ("undefined-route", {"rate_limits": {"rules": [{"name": "a", "key": ["ip"], "routes": ["nowhere"], "capacity": 1,
                                                   "refill": "none"}]}},
     "route names in rules and policies name defined routes"),
    ("user-key-without-header", {"rate_limits": {"rules": [{"name": "a", "key": ["user"], "capacity": 1, "refill": "none"}]}},
     "a rule keyed on user needs user.header"),
    ("bad-regex", {"routes": [{"name": "r", "regex": "(unclosed"}]}, "regex is a valid regular expression"),
    ("max-below-base", {"bans": {"base": "1h", "max": "1m"}}, "bans.max is not shorter than bans.base"),
    ("duration-31d", {"bans": {"decay": "31d"}}, "durations are at most 30 days"),
    ("duration-721h", {"bans": {"base": "721h", "max": "721h"}}, "durations are at most 30 days"),
    ("duration-overflow", {"bans": {"decay": "99999999999999999999s"}}, "durations are at most 30 days"),
    ("name-trailing-newline", {"routes": [{"name": "login\n", "prefix": "/"}]},
     "names and tokens end at the end of the string ($ matches before a final newline)"),
    ("key-id-rule-without-signatures", {"rate_limits": {"rules": [{"name": "a", "key": ["key_id"], "capacity": 1,
                                                                   "refill": "none"}]}},
     "a rule keyed on key_id needs a signature policy"),
    ("secret-short", {"signatures": {"keys": [{"id": "k", "secret": {"base64": SHORT_SECRET}}]}},
     "secrets are standard base64 of 32 bytes or more"),
    ("secret-not-base64", {"signatures": {"keys": [{"id": "k", "secret": {"base64": "not base64!"}}]}},
     "secrets are standard base64 of 32 bytes or more"),
    ("secret-env-unset", {"signatures": {"keys": [{"id": "k", "secret": {"env": "PALISADE_DEPLOY_CHECK_UNSET"}}]}},
     "an env secret names a variable set where palisade runs"),
    ("route-in-two-policies", {"signatures": {"keys": [{"id": "k", "secret": {"base64": SECRET}}],
                                              "policies": [{"routes": ["default"]}, {"routes": ["default"]}]}},
     "a route class is in one signature policy at most"),
    ("policy-undefined-route", {"signatures": {"keys": [{"id": "k", "secret": {"base64": SECRET}}],
                                               "policies": [{"routes": ["nowhere"]}]}},
     "route names in rules and policies name defined routes"),
]

# Configurations palisade accepts that the schema rejects on purpose. Keep
# this list empty if you can; each entry says why it is not a schema bug.
KNOWN_DEVIATIONS: list[tuple[str, dict]] = [
]


@pytest.fixture(scope="module")
def validator(kong_schema):
    return jsonschema.Draft4Validator(kong_schema)


def schema_errors(validator, doc) -> list[str]:
    return sorted(f"{'/'.join(map(str, e.absolute_path)) or '.'}: {e.message}" for e in validator.iter_errors(doc))


# ---------------------------------------------------------------------------
# The meta file itself
# ---------------------------------------------------------------------------
def test_meta_file_is_what_kong_loads():
    meta = json.loads(deploy.KONG_META.read_text())
    assert set(meta) == {"config_schema"}, f"Kong's filter metadata has only config_schema: {sorted(meta)}"
    schema = meta["config_schema"]
    # Kong refuses to start on a config_schema that is not a valid draft-4
    # schema ("file contains invalid metadata"), or that names another draft.
    assert schema.get("$schema") == "http://json-schema.org/draft-04/schema#"
    jsonschema.Draft4Validator.check_schema(schema)
    assert schema["type"] == "object"
    assert "test_kong_schema.py" in schema["description"], "the drift note belongs in the schema's description"


def _subschemas(schema: Any, path: str = "") -> Iterator[tuple[str, dict]]:
    if isinstance(schema, dict):
        yield path or ".", schema
        for key in ("properties", "patternProperties", "definitions"):
            for name, sub in (schema.get(key) or {}).items():
                yield from _subschemas(sub, f"{path}.{name}")
        for key in ("items", "not", "additionalProperties"):
            if isinstance(schema.get(key), dict):
                yield from _subschemas(schema[key], f"{path}{'[]' if key == 'items' else '.' + key}")
        for key in ("oneOf", "anyOf", "allOf"):
            for i, sub in enumerate(schema.get(key) or []):
                yield from _subschemas(sub, f"{path}.{key}[{i}]")


def test_every_object_in_the_schema_is_closed(kong_schema):
    open_objects = []
    for path, node in _subschemas(kong_schema):
        types = node.get("type")
        types = types if isinstance(types, list) else [types]
        if "object" in types and node.get("additionalProperties") is not False:
            open_objects.append(path)
    assert not open_objects, f"objects without additionalProperties: false (palisade refuses unknown fields): {open_objects}"


def _readme_field_tables() -> dict[str, set[str]]:
    """README's Configuration field tables: {"client_ip": {...}, "routes[]": {...}, "": top level}."""
    readme = (deploy.REPO_ROOT / "README.md").read_text()
    section = readme.split("\n## Configuration\n", 1)[1].split("\n## ", 1)[0]
    tables: dict[str, set[str]] = {}
    for block in section.split("\n### ")[1:]:
        heading, _, body = block.partition("\n")
        heading = heading.strip()
        key = "" if heading.lower() == "top level" else heading.strip("`")
        fields: set[str] = set()
        for line in body.splitlines():
            if not line.startswith("| `"):
                continue
            first = re.split(r"(?<!\\)\|", line)[1]
            fields |= set(re.findall(r"`([a-z_]+)`", first))
        if fields:
            tables[key] = fields
    return tables


def _schema_at(schema: dict, dotted: str) -> dict:
    node = schema
    for part in [p for p in re.split(r"\.|(?=\[\])", dotted) if p]:
        if part == "[]":
            node = node["items"]
        else:
            node = node["properties"][part]
    return node


def test_schema_fields_are_readmes_fields(kong_schema):
    tables = _readme_field_tables()
    assert "" in tables and "rate_limits.rules[]" in tables, f"README's field tables not found: {sorted(tables)}"
    problems = []
    for section, fields in sorted(tables.items()):
        try:
            node = _schema_at(kong_schema, section)
        except KeyError:
            problems.append(f"README documents `{section or 'top level'}`, the schema has no such object")
            continue
        have = set(node.get("properties", {}))
        if fields != have:
            problems.append(
                f"`{section or 'top level'}`: README documents {sorted(fields - have)} the schema lacks; "
                f"schema has {sorted(have - fields)} README does not document"
            )
    # Objects README describes inline, in the type column of their parent's row.
    inline = {"user"}
    undocumented = sorted(
        name for name, node in kong_schema["properties"].items()
        if node.get("properties") and name not in tables and name not in inline
    )
    if undocumented:
        problems.append(f"schema sections without a README table: {undocumented}")
    assert not problems, (
        "nginx/kong/palisade.meta.json is out of step with README's configuration reference "
        "(update the schema with the configuration):\n" + "\n".join(problems)
    )


# ---------------------------------------------------------------------------
# Differential: schema vs palisade-check
# ---------------------------------------------------------------------------
def _both(validator, palisade_check, docs: list[Any]):
    results = palisade_check([json.dumps(d) for d in docs], env=SECRET_ENV)
    return [(schema_errors(validator, d), r) for d, r in zip(docs, results)]


def test_curated_valid_configurations(validator, palisade_check):
    problems = []
    for (name, doc), (errors, result) in zip(VALID, _both(validator, palisade_check, [d for _, d in VALID])):
        if not result.ok:
            problems.append(f"{name}: palisade rejects a configuration listed as valid: {result.message}")
        if errors:
            problems.append(f"{name}: schema rejects: {errors}")
    assert not problems, "\n".join(problems)


def test_curated_invalid_configurations(validator, palisade_check):
    problems = []
    for (name, doc), (errors, result) in zip(INVALID, _both(validator, palisade_check, [d for _, d in INVALID])):
        if result.ok:
            problems.append(f"{name}: palisade accepts it (move it to VALID?)")
        if not errors:
            problems.append(f"{name}: schema accepts it; palisade says {result.message}")
    assert not problems, "\n".join(problems)


def test_semantic_gaps_are_what_they_say(validator, palisade_check):
    problems = []
    docs = [d for _, d, _ in SEMANTIC]
    for (name, doc, gap), (errors, result) in zip(SEMANTIC, _both(validator, palisade_check, docs)):
        assert gap in GAPS, gap
        if result.ok:
            problems.append(f"{name}: palisade accepts it")
        elif _gap_of(result.message) != gap:
            problems.append(f"{name}: palisade's reason {result.message!r} is not the gap {gap!r}")
        if errors:
            problems.append(f"{name}: the schema now rejects it ({errors}): move it to INVALID")
    assert not problems, "\n".join(problems)


def test_known_deviations_still_deviate(validator, palisade_check):
    problems = []
    docs = [d for _, d in KNOWN_DEVIATIONS]
    for (name, doc), (errors, result) in zip(KNOWN_DEVIATIONS, _both(validator, palisade_check, docs)):
        if not result.ok:
            problems.append(f"{name}: palisade now rejects it ({result.message}): move it to INVALID")
        if not errors:
            problems.append(f"{name}: the schema accepts it")
    assert not problems, "\n".join(problems)


def _agree(validator, palisade_check, labelled: list[tuple[str, Any]], *, all_rejected: bool = False) -> list[str]:
    """Problems where schema and palisade disagree beyond the documented gaps."""
    problems = []
    for (label, doc), (errors, result) in zip(labelled, _both(validator, palisade_check, [d for _, d in labelled])):
        if result.ok and errors:
            problems.append(f"{label}: palisade accepts, the schema rejects: {errors[:3]}")
        elif not result.ok and not errors and _gap_of(result.message) is None:
            problems.append(f"{label}: the schema accepts what palisade rejects ({result.message})")
        elif all_rejected and result.ok:
            problems.append(f"{label}: palisade accepts it")
    return problems


def test_shipped_documented_and_tested_configurations(validator, palisade_check):
    """README samples, shipped configurations and the integration tests' literal
    configurations: the schema agrees with palisade on each."""
    corpus = deploy.readme_samples() + deploy.shipped_configs() + deploy.integration_test_configs()
    assert len(corpus) >= 10
    labelled = [(c.label, json.loads(c.text)) for c in corpus]
    problems = _agree(validator, palisade_check, labelled)
    assert not problems, "\n".join(problems)


# Mutations of complete configurations -------------------------------------
REPLACEMENTS = [None, True, 0, -1, 1.5, "x", "1s", [], {}, ["x"], {"x": 1}]


def _positions(doc: Any, path: tuple = ()) -> Iterator[tuple]:
    yield path
    if isinstance(doc, dict):
        for k, v in doc.items():
            yield from _positions(v, path + (k,))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            yield from _positions(v, path + (i,))


def _get(doc: Any, path: tuple) -> Any:
    for p in path:
        doc = doc[p]
    return doc


def _with(doc: Any, path: tuple, value: Any) -> Any:
    out = copy.deepcopy(doc)
    if not path:
        return value
    _get(out, path[:-1])[path[-1]] = value
    return out


def _without(doc: Any, path: tuple) -> Any:
    out = copy.deepcopy(doc)
    parent = _get(out, path[:-1])
    del parent[path[-1]]
    return out


def _label(base: str, path: tuple, what: str) -> str:
    return f"{base}:{'.'.join(map(str, path)) or '.'} {what}"


def _bases() -> list[tuple[str, dict]]:
    demo = json.loads(deploy.from_envoy(deploy.SHIPPED_ENVOY[0])[0].text)
    return [("demo", demo), ("everything", dict(VALID)["everything"])]


def test_unknown_fields_are_rejected_everywhere(validator, palisade_check):
    labelled = []
    for base, doc in _bases():
        for path in _positions(doc):
            if isinstance(_get(doc, path), dict):
                target = copy.deepcopy(_get(doc, path))
                target["zz_unknown"] = 1
                labelled.append((_label(base, path, "+zz_unknown"), _with(doc, path, target)))
    assert len(labelled) >= 20
    problems = []
    for (label, doc), (errors, result) in zip(labelled, _both(validator, palisade_check, [d for _, d in labelled])):
        if result.ok or not errors:
            problems.append(f"{label}: palisade {'accepts' if result.ok else 'rejects'}, schema "
                            f"{'accepts' if not errors else 'rejects'}")
    assert not problems, "\n".join(problems)


def test_mutated_configurations(validator, palisade_check):
    """Every value of two complete configurations replaced by values of every
    JSON type, and every field removed: the schema never rejects what
    palisade accepts, and accepts what palisade rejects only for a
    documented gap."""
    labelled = []
    for base, doc in _bases():
        for path in _positions(doc):
            if path:
                labelled.append((_label(base, path, "removed"), _without(doc, path)))
            for value in REPLACEMENTS:
                if _get(doc, path) != value:
                    labelled.append((_label(base, path, f"= {json.dumps(value)}"), _with(doc, path, value)))
    assert len(labelled) >= 500
    problems = _agree(validator, palisade_check, labelled)
    assert not problems, f"{len(problems)} disagreements:\n" + "\n".join(problems[:40])
