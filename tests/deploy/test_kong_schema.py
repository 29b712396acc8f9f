"""nginx/kong/palisade.meta.json: Kong's JSON Schema of palisade's configuration,
cross-checked against palisade itself.

The schema is generated: the Rust configuration types (`RawConfig` in
src/config.rs and each stage's raw types) derive it, `palisade-check
--schema` prints it, and nginx/kong/kong_meta.py turns it into Kong's
draft-4 metadata (`make kong-schema`). The committed file must be what they
make today (a stale one fails here). The derives carry the constraints; these
tests check they are the right ones by asking palisade-check - the filter's
own on_configure validation - about the same documents:

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
  fields are exactly those README documents: a field the types have and
  README's tables lack, or the other way round, fails. The one exception is an inline
  JWK Set (`jwt.providers[].jwks.inline`), a document of another format
  whose members RFC 7517 leaves open, and which palisade reads as such.
"""

from __future__ import annotations

import base64
import copy
import hashlib
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
    "unique provider names": r"duplicate provider name",
    "unique API key ids and key hashes": r"duplicate key id|the same key hash is configured twice",
    "route names in rules, policies and refresh_tokens name defined routes": r"no route class named",
    "provider names in authorization policies name defined providers": r"no provider named",
    "a rule keyed on user needs user.header or an authorization policy": r"no `user\.header` is configured",
    "regex is a valid regular expression": r"invalid regular expression",
    "bans.max is not shorter than bans.base": r"must not be shorter than bans\.base",
    "a remote key set's min_refetch is not shorter than its timeout, refresh not shorter than min_refetch":
        r"must not be shorter than `timeout`|must not be shorter than `min_refetch`",
    "durations are at most 30 days": r"longer than 30 days|does not start with a whole number",
    "an anomaly window is between 2s and 1h": r"anomaly\.(defaults|routes\.[^.`]+)\.window`: between 2s and 1h",
    "a provider's clock_skew is at most 1 h, a key-set fetch's timeout at most 60 s":
        r"must be at most 3600 seconds|must be at most 60s",
    "a rule keyed on key_id needs a signature policy": r"no `signatures\.policies` verify",
    "a rule counting failures is keyed on ip and route only": r"a rule counting failures is checked before authentication",
    "secrets are standard base64 of 32 bytes or more": r"is not valid standard base64|a secret must be at least 32 bytes",
    "an env secret or key hash names a variable set where palisade runs": r"is not set in the wasm VM",
    "an env key hash holds 64 hex digits": r"sha256\.env`: must be the 64 hex digits",
    "inline JWK Set entries are valid keys (key material, sizes, at most 64 keys, one usable)": (
        r"invalid key parameters|RSA modulus shorter than 2048 bits|invalid (RSA|P-256|P-384|Ed25519) key"
        r"|symmetric key shorter than 32 bytes|too many keys in the set|must hold at least one key"
    ),
    "a route class is in one signature policy and one authorization policy at most":
        r"already has an? (signature|authorization) policy",
    "names and tokens end at the end of the string ($ matches before a final newline)": (
        r"not a valid name|not a valid HTTP header name|not an upper-case HTTP method"
        r"|\n` is not a valid cookie name|\n` is not host:port|has unknown unit `[^`]*\n`"
    ),
    # After the trailing-newline gap, whose message also ends in "is not host:port".
    "forward_claims headers are distinct and not x-palisade-user":
        r"is palisade's own identity header|already carries another claim",
    "a key-set address's host is a host name or address": r"` is not host:port",
    "roles of an API key are not empty": r"roles\[\d+\]`: must not be empty",
    "a rule counting logins needs the login section, a username-keyed one its username_field": (
        r"counts logins but there is no `login` section|needs the username of a login but `login\.username_field`"
        r"|keys on \"username\", which only rules with \"counts\": \"failed_logins\" know"
    ),
    "a rule keyed on token needs a JWT provider": r"keys on \"token\" but no `jwt\.providers` verify any token",
    # A route class's mtls policy is `defaults` with its own fields over it:
    # listed identities with "required": false, written there or inherited.
    "an mtls policy that lists identities requires a certificate": (
        r"is false while identities are listed|are listed while `required` is false"
    ),
}


def _gap_of(message: str) -> str | None:
    for name, pattern in GAPS.items():
        if re.search(pattern, message):
            return name
    return None


SECRET = base64.b64encode(b"palisade-deploy-check-secret-32b").decode()  # 32 bytes, test only
SHORT_SECRET = base64.b64encode(b"31 bytes are not quite enough!!").decode()
# API-key hashes (README, `api_keys`): SHA-256 of test-only keys, one inline
# and one read from the environment.
KEY_SHA256 = hashlib.sha256(b"palisade-deploy-check-api-key-a").hexdigest()
ENV_KEY_SHA256 = hashlib.sha256(b"palisade-deploy-check-api-key-b").hexdigest()
# Environment variables palisade-check gets, standing for a Kubernetes
# Secret mapped into the VM's environment: for the curated corpus (a signing
# secret, an API-key hash, a value that is no hash), and random test keys for
# the shipped configurations' own (deploy.random_secret_env).
SECRET_ENV = {
    "PALISADE_DEPLOY_CHECK_SECRET": SECRET,
    "PALISADE_DEPLOY_CHECK_KEY_SHA256": ENV_KEY_SHA256,
    "PALISADE_DEPLOY_CHECK_NOT_A_HASH": "not 64 hex digits",
    **deploy.random_secret_env(),
}

# Public keys for inline JWK Sets (README, `jwt.providers[]`), test only: the
# demo's Ed25519 key (RFC 8037's example), P-256, P-384 and RSA-2048 keys, a
# 32-byte HMAC key.
ED_JWK = {"kty": "OKP", "crv": "Ed25519", "kid": "ed-1", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}
EC_JWK = {"kty": "EC", "crv": "P-256", "kid": "ec-1", "x": "NBQSqy2LEwYiNVUo_QUX8xCfwzsSzJYZaiAOVkwJ5X4",
          "y": "JbqUGyAw6XAtGxqY3V2Kb6weACJ31CqWIEbYDaqFIDs"}
EC384_JWK = {"kty": "EC", "crv": "P-384", "kid": "ec384-1",
             "x": "7lFhv5gCCjr9rBhR6BVMyGIOoFjRCpFSQJemTcG2KmwGmdFSfd91eMUtOTdLpLdL",
             "y": "RUNmcfv3rhNM2_CG27tfmDyTFgjz08adWmRECuJkQRGvNfnKn_KahgWiAEx39mWZ"}
RSA_JWK = {"kty": "RSA", "kid": "rsa-1", "e": "AQAB",
           "n": "tWpc4ORy0OHzY25QpWr1yz9cr4wKbnMCwxZys3ij04Feo6l8S1bOiPV900EaPcGlIpbcbNXYeS9XsANNNxJ2Nw9JlozvFI7Yc"
                "JJRGh1al3wwCgbxZQfBwVdWemVKalmuXB_8nA_o5FmJHHHRyb-ZWg--JfnAvsANk5bNNZ0dLPM0B6FND_Y0XkXSyo389CdbcURy"
                "GYftOuZr_guYV1dMm18yLHLInGeKsEVDRk30iP1NdJQYpl1H2P455CYNXFC8MwqzaXwIBQ6ZxHldXgVaJ9Yrqp8mGpw1cwYFyRqn"
                "Hs6vnZEUa9J1SAe2j75yFzXMXd6voFlG6T43TDTcOySXww"}
OCT_JWK = {"kty": "oct", "kid": "hs-1",
           "k": base64.urlsafe_b64encode(b"palisade-deploy-check-hmac-key-32").decode().rstrip("=")}


def provider(**fields) -> dict:
    """A minimal valid token issuer, with `fields` replaced."""
    return {"name": "idp", "issuer": "https://idp.example", "algorithms": ["EdDSA"],
            "jwks": {"inline": {"keys": [ED_JWK]}}, **fields}


def remote(**fields) -> dict:
    """A provider whose key set is fetched, with `fields` of `jwks.remote` replaced."""
    return provider(algorithms=["RS256"], jwks={"remote": {"cluster": "idp_jwks", "path": "/jwks.json", **fields}})


def jwks(*keys: Any, algorithms: list[str] | None = None) -> dict:
    """A configuration with one provider whose inline key set is `keys`."""
    return {"jwt": {"providers": [provider(algorithms=algorithms or ["EdDSA", "ES256", "RS256"],
                                           jwks={"inline": {"keys": list(keys)}})]}}


def api_key(**fields) -> dict:
    """A configuration with one API key, with `fields` of the key replaced."""
    return {"api_keys": {"header": "x-api-key", "keys": [{"id": "partner", "sha256": KEY_SHA256, **fields}]}}


def authz(policy: dict, **sections) -> dict:
    """A configuration with one authorization policy on `default`, a token
    issuer and an API key (`sections` replace them)."""
    return {"jwt": {"providers": [provider()]}, **api_key(), **sections,
            "authorization": {"policies": [dict({"routes": ["default"]}, **policy)]}}


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
                {"name": "account", "prefix": "/account"},
                {"name": "partner", "prefix": "/partner/"},
                {"name": "token", "path": "/oauth/token", "methods": ["POST"]},
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
            "jwt": {
                "mode": "enforce",
                "from": [{"header": "Authorization", "prefix": "Bearer "}, {"header": "x-access-token"},
                         {"cookie": "access_token"}],
                "cache_entries": 4096,
                "without_keys": "allow",
                "providers": [
                    {"name": "inline-idp", "issuer": "https://idp.example", "audiences": ["orders"],
                     "algorithms": ["EdDSA", "ES256", "HS256"],
                     "jwks": {"inline": {"keys": [ED_JWK, EC_JWK, RSA_JWK, OCT_JWK]}},
                     "clock_skew": "10s", "max_lifetime": "15m", "max_age": "1h",
                     "required_claims": ["sub", "tenant"], "roles_claim": "realm_access.roles",
                     "forward_claims": [{"claim": "tenant", "header": "x-tenant"}]},
                    {"name": "remote-idp", "issuer": "https://login.example/", "algorithms": ["RS256", "PS256"],
                     "jwks": {"remote": {"address": "login.example:443", "authority": "login.example",
                                         "path": "/.well-known/jwks.json", "refresh": "10m", "min_refetch": "1m",
                                         "timeout": "5s"}}},
                ],
                "refresh_tokens": {"routes": ["token"], "remember": "14d", "slots": 1024},
            },
            "api_keys": {"header": "x-api-key", "keys": [
                {"id": "partner-a", "sha256": KEY_SHA256, "roles": ["partner"]},
                {"id": "partner-b", "sha256": {"env": "PALISADE_DEPLOY_CHECK_KEY_SHA256"}},
            ]},
            "authorization": {"mode": "monitor", "policies": [
                {"routes": ["account"]},
                {"routes": ["partner"], "credentials": ["api_key", "jwt"], "providers": ["inline-idp"],
                 "roles": ["partner"], "scopes": ["orders:read"], "amr": ["mfa"]},
            ]},
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
    # jwt, api_keys, authorization
    ("auth-empty-sections", {"jwt": {}, "api_keys": {}, "authorization": {}}),
    ("jwt-nulls", {"jwt": {"mode": None, "from": None, "cache_entries": None, "refresh_tokens": None,
                           "providers": [provider(clock_skew=None, max_lifetime=None, max_age=None, roles_claim=None)]}}),
    ("jwt-token-sources", {"jwt": {"from": [{"header": "authorization", "prefix": "Bearer ", "cookie": None},
                                            {"header": "X-Token", "prefix": None},
                                            {"cookie": "__Host-token", "header": None, "prefix": None}]}}),
    ("jwt-bounds-low", {"jwt": {"cache_entries": 0, "without_keys": "allow",
                                "providers": [provider(clock_skew="0", max_lifetime="1ms", max_age="1ms")],
                                "refresh_tokens": {"routes": ["default"], "remember": "1ms", "slots": 16}}}),
    ("jwt-bounds-high", {"jwt": {"cache_entries": 1048576,
                                 "providers": [provider(name=f"idp-{i}", issuer=f"https://idp-{i}.example",
                                                        clock_skew="3600s", max_lifetime="30d", max_age="720h")
                                               for i in range(16)],
                                 "refresh_tokens": {"routes": ["default"], "remember": "30d", "slots": 4194304}}}),
    ("jwt-clock-skew-zero", {"jwt": {"providers": [provider(name="a", issuer="a", clock_skew="0s"),
                                                   provider(name="b", issuer="b", clock_skew="0ms"),
                                                   provider(name="c", issuer="c", clock_skew="1h")]}}),
    ("jwt-provider-lists", {"jwt": {"providers": [provider(
        audiences=["orders", "https://api.example"], algorithms=["EdDSA", "RS256", "RS384", "RS512", "PS256", "PS384",
                                                                  "PS512", "ES256", "ES384"],
        required_claims=["sub", "https://example.com/tenant"], roles_claim="https://example.com/roles",
        forward_claims=[{"claim": "tenant", "header": "X-Tenant"}, {"claim": "realm_access.roles", "header": "x-roles"},
                        {"claim": "sub", "header": "x-user_id.1~"}])]}}),
    ("jwt-hs256", jwks(OCT_JWK, algorithms=["HS256"])),
    ("jwt-every-key-kind", jwks(ED_JWK, EC_JWK, EC384_JWK, RSA_JWK, OCT_JWK,
                                dict(ED_JWK, kid="ed-2", use="sig", alg="EdDSA"), dict(EC_JWK, kid="ec-2", alg="ES256"),
                                dict(EC384_JWK, kid="ec384-2", alg="ES384"),
                                *[dict(RSA_JWK, kid=alg, alg=alg) for alg in ("RS256", "RS384", "RS512", "PS256",
                                                                             "PS384", "PS512")],
                                dict(OCT_JWK, kid="hs-2", alg="HS256", use="sig"),
                                algorithms=["EdDSA", "ES256", "ES384", "RS256", "PS512", "HS256"])),
    ("jwks-open-members", {"jwt": {"providers": [provider(jwks={"inline": {
        "keys": [dict(ED_JWK, key_ops=["verify"], x5t="abc", ext=True)], "issuer": "https://idp.example"}})]}}),
    ("jwks-encryption-keys-skipped", jwks(ED_JWK, {"use": "enc"}, {"use": "enc", "kid": "e", "kty": "bogus", "alg": 1},
                                          algorithms=["EdDSA"])),
    ("jwks-remote-cluster", {"jwt": {"providers": [remote(
        cluster="idp_jwks", address=None, authority="idp.example", path="/.well-known/jwks.json",
        refresh="1h", min_refetch="1m", timeout="60s")]}}),
    ("jwks-remote-nulls", {"jwt": {"providers": [remote(authority=None, refresh=None, min_refetch=None, timeout=None)]}}),
    ("jwks-remote-equal-intervals", {"jwt": {"providers": [remote(refresh="5s", min_refetch="5s", timeout="5s")]}}),
    ("jwks-remote-addresses", {"jwt": {"providers": [
        remote(cluster=None, address=address, authority=authority)
        | {"name": f"idp-{i}", "issuer": f"https://idp-{i}.example"}
        for i, (address, authority) in enumerate([("idp.example:443", None), ("[::1]:8443", ""), ("10.0.0.1:1", None),
                                                  ("idp:65535", "idp"), ("idp:08080", None)])]}}),
    ("api-keys", {"api_keys": {"header": "X-Api-Key", "keys": [
        {"id": "a", "sha256": KEY_SHA256, "roles": ["partner", "reports"]},
        {"id": "b" * 32, "sha256": hashlib.sha256(b"b").hexdigest().upper()},
        {"id": "c_-9", "sha256": {"env": "PALISADE_DEPLOY_CHECK_KEY_SHA256"}, "roles": []},
    ]}}),
    ("api-key-hash-padded", api_key(sha256=f" {KEY_SHA256}\n")),
    ("api-key-hash-unicode-padded", api_key(sha256=f"\u00a0\u3000{KEY_SHA256}\u2029")),  # Rust's str::trim
    ("api-key-hash-env", api_key(sha256={"env": "PALISADE_DEPLOY_CHECK_KEY_SHA256"})),
    ("api-keys-header-only", {"api_keys": {"header": "x-api-key", "keys": []}}),
    ("api-keys-nulls", {"api_keys": {"header": None}}),
    ("authorization-nulls", authz({"credentials": None, "providers": None}) | {
        "authorization": {"mode": None, "policies": [{"routes": ["default"], "credentials": None, "providers": None}]}}),
    ("authorization-everything", {
        "routes": [{"name": "a", "prefix": "/a"}, {"name": "b", "prefix": "/b"}, {"name": "c", "prefix": "/c"}],
        "jwt": {"providers": [provider(name="one", issuer="1"), provider(name="two", issuer="2")]},
        **api_key(),
        "authorization": {"mode": "monitor", "policies": [
            {"routes": ["a", "default"]},
            {"routes": ["b"], "credentials": ["jwt", "api_key"], "providers": ["two"], "roles": ["admin", "ops"],
             "scopes": ["orders:read", "orders:write"], "amr": ["mfa", "hwk"]},
            {"routes": ["c"], "credentials": ["api_key", "api_key"], "roles": ["partner"]},
        ]}}),
    ("authorization-api-keys-only", {**api_key(), "authorization": {"policies": [
        {"routes": ["default"], "credentials": ["api_key"], "providers": None}]}}),
    ("authorization-jwt-only", {"jwt": {"providers": [provider()]}, "authorization": {"policies": [
        {"routes": ["default"], "credentials": ["jwt"], "providers": ["idp"]}]}}),
    ("user-key-from-authorization", {"jwt": {"providers": [provider()]},
                                     "authorization": {"policies": [{"routes": ["default"]}]},
                                     "rate_limits": {"rules": [{"name": "per-user", "key": ["user"], "capacity": 5,
                                                                "refill": "none"}]}}),
]

# (id, configuration) both must reject: what a JSON Schema can say.
INVALID = [
    ("api-key-empty-role", api_key(roles=[""])),
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
    # jwt
    ("unknown-jwt", {"jwt": {"provider": []}}),
    ("unknown-token-source", {"jwt": {"from": [{"header": "authorization", "scheme": "Bearer"}]}}),
    ("unknown-provider", {"jwt": {"providers": [provider(audience=["x"])]}}),
    ("unknown-jwks", {"jwt": {"providers": [provider(jwks={"file": "/etc/jwks.json"})]}}),
    ("unknown-jwks-member", {"jwt": {"providers": [provider(jwks={"inline": {"keys": [ED_JWK]}, "cache": True})]}}),
    ("unknown-remote", {"jwt": {"providers": [remote(url="https://idp.example/jwks.json")]}}),
    ("unknown-forward-claim", {"jwt": {"providers": [provider(forward_claims=[{"claim": "a", "header": "x-a",
                                                                               "join": ","}])]}}),
    ("unknown-refresh-tokens", {"jwt": {"refresh_tokens": {"routes": ["default"], "grant": "refresh_token"}}}),
    ("jwt-null", {"jwt": None}),
    ("jwt-array", {"jwt": []}),
    ("from-string", {"jwt": {"from": "authorization"}}),
    ("from-empty", {"jwt": {"from": []}}),
    ("from-item-string", {"jwt": {"from": ["authorization"]}}),
    ("from-header-number", {"jwt": {"from": [{"header": 1}]}}),
    ("from-header-and-cookie", {"jwt": {"from": [{"header": "a", "cookie": "b"}]}}),
    ("from-neither", {"jwt": {"from": [{}]}}),
    ("from-prefix-only", {"jwt": {"from": [{"prefix": "Bearer "}]}}),
    ("from-null-header", {"jwt": {"from": [{"header": None}]}}),
    ("from-cookie-prefix", {"jwt": {"from": [{"cookie": "c", "prefix": "Bearer "}]}}),
    ("from-prefix-empty", {"jwt": {"from": [{"header": "a", "prefix": ""}]}}),
    ("from-header-space", {"jwt": {"from": [{"header": "x token"}]}}),
    ("from-cookie-semicolon", {"jwt": {"from": [{"cookie": "a;b"}]}}),
    ("cache-entries-negative", {"jwt": {"cache_entries": -1}}),
    ("cache-entries-too-many", {"jwt": {"cache_entries": 1048577}}),
    ("cache-entries-string", {"jwt": {"cache_entries": "1024"}}),
    ("cache-entries-float", {"jwt": {"cache_entries": 1024.5}}),
    ("without-keys-unknown", {"jwt": {"without_keys": "open"}}),
    ("without-keys-null", {"jwt": {"without_keys": None}}),
    ("jwt-mode-unknown", {"jwt": {"mode": "audit"}}),
    ("providers-null", {"jwt": {"providers": None}}),
    ("providers-object", {"jwt": {"providers": {"idp": provider()}}}),
    ("providers-17", {"jwt": {"providers": [provider(name=f"p{i}", issuer=f"i{i}") for i in range(17)]}}),
    *[
        (f"provider-no-{field}", {"jwt": {"providers": [{k: v for k, v in provider().items() if k != field}]}})
        for field in ("name", "issuer", "algorithms", "jwks")
    ],
    *[
        (f"provider-{name}", {"jwt": {"providers": [provider(**fields)]}})
        for name, fields in [
            ("name-upper", {"name": "IdP"}),
            ("name-long", {"name": "i" * 33}),
            ("issuer-empty", {"issuer": ""}),
            ("issuer-number", {"issuer": 1}),
            ("issuer-null", {"issuer": None}),
            ("audiences-null", {"audiences": None}),
            ("audiences-string", {"audiences": "orders"}),
            ("audience-empty", {"audiences": ["orders", ""]}),
            ("algorithms-empty", {"algorithms": []}),
            ("algorithms-string", {"algorithms": "EdDSA"}),
            ("algorithm-none", {"algorithms": ["none"]}),
            ("algorithm-lower", {"algorithms": ["eddsa"]}),
            ("algorithm-es512", {"algorithms": ["ES512"]}),
            ("algorithm-twice", {"algorithms": ["EdDSA", "EdDSA"]}),
            ("jwks-null", {"jwks": None}),
            ("jwks-string", {"jwks": "inline"}),
            ("jwks-empty", {"jwks": {}}),
            ("jwks-both", {"jwks": {"inline": {"keys": [ED_JWK]}, "remote": {"cluster": "c", "path": "/"}}}),
            ("jwks-both-null-remote", {"jwks": {"inline": {"keys": [ED_JWK]}, "remote": None}}),
            ("inline-null", {"jwks": {"inline": None}}),
            ("inline-array", {"jwks": {"inline": [ED_JWK]}}),
            ("inline-no-keys", {"jwks": {"inline": {"key": [ED_JWK]}}}),
            ("inline-keys-empty", {"jwks": {"inline": {"keys": []}}}),
            ("inline-keys-object", {"jwks": {"inline": {"keys": {"ed": ED_JWK}}}}),
            ("clock-skew-negative", {"clock_skew": "-1s"}),
            ("clock-skew-number", {"clock_skew": 30}),
            ("clock-skew-00", {"clock_skew": "00"}),
            ("clock-skew-00s", {"clock_skew": "00s"}),
            ("max-lifetime-zero", {"max_lifetime": "0s"}),
            ("max-age-zero", {"max_age": "0"}),
            ("required-claims-null", {"required_claims": None}),
            ("required-claim-empty", {"required_claims": [""]}),
            ("required-claim-number", {"required_claims": [1]}),
            ("roles-claim-empty", {"roles_claim": ""}),
            ("roles-claim-array", {"roles_claim": ["roles"]}),
            ("forward-claims-null", {"forward_claims": None}),
            ("forward-claims-object", {"forward_claims": {"tenant": "x-tenant"}}),
            ("forward-claim-no-header", {"forward_claims": [{"claim": "tenant"}]}),
            ("forward-claim-no-claim", {"forward_claims": [{"header": "x-tenant"}]}),
            ("forward-claim-empty", {"forward_claims": [{"claim": "", "header": "x-tenant"}]}),
            ("forward-header-space", {"forward_claims": [{"claim": "a", "header": "x tenant"}]}),
            ("forward-header-pseudo", {"forward_claims": [{"claim": "a", "header": ":authority"}]}),
            *[(f"forward-header-{h.lower()}", {"forward_claims": [{"claim": "a", "header": h}]})
              for h in ("host", "Authorization", "COOKIE", "Content-Length", "transfer-encoding")],
        ]
    ],
    # inline JWK Sets: what palisade refuses of an entry's shape
    ("jwk-not-object", jwks(ED_JWK, "key")),
    ("jwk-kid-number", jwks(dict(ED_JWK, kid=1))),
    ("jwk-kid-null", jwks(dict(ED_JWK, kid=None))),
    ("jwk-enc-kid-number", jwks(ED_JWK, {"use": "enc", "kid": 7})),
    ("jwk-use-unknown", jwks(dict(ED_JWK, use="signature"))),
    ("jwk-use-null", jwks(dict(ED_JWK, use=None))),
    ("jwk-no-kty", jwks({k: v for k, v in ED_JWK.items() if k != "kty"})),
    ("jwk-kty-lower", jwks(dict(ED_JWK, kty="okp"))),
    ("jwk-kty-unknown", jwks(dict(ED_JWK, kty="AKP"))),
    ("jwk-alg-unknown", jwks(dict(ED_JWK, alg="Ed25519"))),
    ("jwk-alg-null", jwks(dict(ED_JWK, alg=None))),
    ("jwk-alg-mismatch-okp", jwks(dict(ED_JWK, alg="ES256"))),
    ("jwk-alg-mismatch-p256", jwks(dict(EC_JWK, alg="ES384"))),
    ("jwk-alg-mismatch-oct", jwks(dict(OCT_JWK, alg="RS256"))),
    ("jwk-alg-mismatch-rsa", jwks(dict(RSA_JWK, alg="ES256"))),
    ("jwk-alg-mismatch-p384", jwks(dict(EC384_JWK, alg="ES256"))),
    ("jwk-ec-curve", jwks(dict(EC_JWK, crv="P-521"))),
    ("jwk-ec-no-y", jwks({k: v for k, v in EC_JWK.items() if k != "y"})),
    ("jwk-okp-curve", jwks(dict(ED_JWK, crv="X25519"))),
    ("jwk-okp-x-number", jwks(dict(ED_JWK, x=1))),
    ("jwk-oct-no-k", jwks({"kty": "oct", "kid": "hs"})),
    ("jwk-rsa-no-e", jwks({"kty": "RSA", "n": "AQAB"})),
    ("jwk-okp-private", jwks(dict(ED_JWK, d="private"))),
    ("jwk-ec-private", jwks(dict(EC_JWK, d="private"))),
    *[(f"jwk-rsa-private-{member}", jwks(dict(RSA_JWK, **{member: "private"})))
      for member in ("d", "p", "q", "dp", "dq", "qi", "oth")],
    ("jwk-rsa-e-number", jwks(dict(RSA_JWK, e=65537))),
    # HS256 needs an inline oct key
    ("hs256-without-oct", jwks(ED_JWK, algorithms=["EdDSA", "HS256"])),
    ("hs256-oct-for-encryption", jwks(ED_JWK, dict(OCT_JWK, use="enc"), algorithms=["HS256"])),
    ("hs256-remote", {"jwt": {"providers": [remote() | {"algorithms": ["RS256", "HS256"]}]}}),
    # remote key sets
    *[
        (f"remote-{name}", {"jwt": {"providers": [remote(**fields)]}})
        for name, fields in [
            ("no-path", {"path": None}),
            ("path-relative", {"path": "jwks.json"}),
            ("path-number", {"path": 1}),
            ("cluster-and-address", {"address": "idp:443"}),
            ("neither", {"cluster": None}),
            ("cluster-empty", {"cluster": ""}),
            ("cluster-number", {"cluster": 1}),
            ("address-no-port", {"cluster": None, "address": "idp.example"}),
            ("address-port-zero", {"cluster": None, "address": "idp:0"}),
            ("address-port-too-big", {"cluster": None, "address": "idp:65536"}),
            ("address-port-name", {"cluster": None, "address": "idp:https"}),
            ("address-no-host", {"cluster": None, "address": ":443"}),
            ("address-url", {"cluster": None, "address": "https://idp.example/"}),
            ("authority-number", {"authority": 443}),
            ("refresh-bad", {"refresh": "5 minutes"}),
            ("min-refetch-zero", {"min_refetch": "0s"}),
            ("timeout-number", {"timeout": 2}),
        ]
    ],
    ("remote-no-path-key", {"jwt": {"providers": [provider(jwks={"remote": {"cluster": "c"}})]}}),
    ("remote-null", {"jwt": {"providers": [provider(jwks={"remote": None})]}}),
    # refresh tokens
    ("refresh-tokens-array", {"jwt": {"refresh_tokens": [{"routes": ["default"]}]}}),
    ("refresh-tokens-no-routes", {"jwt": {"refresh_tokens": {}}}),
    ("refresh-tokens-routes-empty", {"jwt": {"refresh_tokens": {"routes": []}}}),
    ("refresh-tokens-routes-null", {"jwt": {"refresh_tokens": {"routes": None}}}),
    ("refresh-tokens-bad-route", {"jwt": {"refresh_tokens": {"routes": ["Token"]}}}),
    ("refresh-tokens-remember-zero", {"jwt": {"refresh_tokens": {"routes": ["default"], "remember": "0d"}}}),
    ("refresh-tokens-slots-8", {"jwt": {"refresh_tokens": {"routes": ["default"], "slots": 8}}}),
    ("refresh-tokens-slots-too-many", {"jwt": {"refresh_tokens": {"routes": ["default"], "slots": 4194305}}}),
    # api_keys
    ("unknown-api-keys", {"api_keys": {"header": "x-api-key", "hash": "sha256"}}),
    ("unknown-api-key", {"api_keys": {"header": "x-api-key", "keys": [{"id": "a", "sha256": KEY_SHA256,
                                                                       "scopes": ["x"]}]}}),
    ("unknown-key-hash-source", api_key(sha256={"env": "PALISADE_DEPLOY_CHECK_KEY_SHA256", "file": "/x"})),
    ("api-keys-null", {"api_keys": None}),
    ("api-keys-array", {"api_keys": []}),
    ("api-keys-header-number", {"api_keys": {"header": 1}}),
    ("api-keys-header-space", {"api_keys": {"header": "x api key"}}),
    ("api-keys-without-header", {"api_keys": {"keys": [{"id": "a", "sha256": KEY_SHA256}]}}),
    ("api-keys-null-header", {"api_keys": {"header": None, "keys": [{"id": "a", "sha256": KEY_SHA256}]}}),
    ("api-keys-keys-null", {"api_keys": {"header": "x", "keys": None}}),
    ("api-key-no-id", {"api_keys": {"header": "x", "keys": [{"sha256": KEY_SHA256}]}}),
    ("api-key-no-hash", {"api_keys": {"header": "x", "keys": [{"id": "a"}]}}),
    *[
        (f"api-key-{name}", api_key(**fields))
        for name, fields in [
            ("id-upper", {"id": "Partner"}),
            ("id-space", {"id": "partner a"}),
            ("id-long", {"id": "p" * 33}),
            ("id-empty", {"id": ""}),
            ("hash-63", {"sha256": KEY_SHA256[:63]}),
            ("hash-65", {"sha256": KEY_SHA256 + "0"}),
            ("hash-not-hex", {"sha256": "g" * 64}),
            ("hash-prefixed", {"sha256": "sha256:" + KEY_SHA256}),
            ("hash-base64", {"sha256": base64.b64encode(bytes.fromhex(KEY_SHA256)).decode()}),
            ("hash-inner-space", {"sha256": KEY_SHA256[:32] + " " + KEY_SHA256[32:]}),
            ("hash-number", {"sha256": 1}),
            ("hash-null", {"sha256": None}),
            ("hash-empty-object", {"sha256": {}}),
            ("hash-env-number", {"sha256": {"env": 1}}),
            ("hash-base64-source", {"sha256": {"base64": SECRET}}),
            ("roles-null", {"roles": None}),
            ("roles-string", {"roles": "partner"}),
            ("role-number", {"roles": [1]}),
        ]
    ],
    # authorization
    ("unknown-authorization", {"authorization": {"policy": []}}),
    ("unknown-authz-policy", authz({"groups": ["admin"]})),
    ("authorization-null", {"authorization": None}),
    ("authorization-array", {"authorization": []}),
    ("authorization-mode-unknown", {"authorization": {"mode": "report"}}),
    ("authz-policies-null", {"authorization": {"policies": None}}),
    ("authz-policies-object", {"authorization": {"policies": {"routes": ["default"]}}}),
    *[
        (f"authz-{name}", authz(policy))
        for name, policy in [
            ("no-routes", {"routes": None}),
            ("routes-empty", {"routes": []}),
            ("routes-string", {"routes": "default"}),
            ("route-bad-name", {"routes": ["Default"]}),
            ("credentials-empty", {"credentials": []}),
            ("credentials-string", {"credentials": "jwt"}),
            ("credential-unknown", {"credentials": ["oauth"]}),
            ("credential-upper", {"credentials": ["JWT"]}),
            ("providers-empty", {"providers": []}),
            ("providers-string", {"providers": "idp"}),
            ("provider-bad-name", {"providers": ["Idp"]}),
            ("roles-null", {"roles": None}),
            ("role-empty", {"roles": ["admin", ""]}),
            ("scopes-string", {"scopes": "orders:read"}),
            ("scope-empty", {"scopes": [""]}),
            ("amr-string", {"amr": "mfa"}),
            ("amr-empty", {"amr": [""]}),
        ]
    ],
    # an authorization policy needs the credentials it accepts
    ("authz-jwt-without-providers", {"authorization": {"policies": [{"routes": ["default"]}]}}),
    ("authz-null-credentials-without-providers", authz({"credentials": None}, jwt={})),
    ("authz-jwt-empty-providers", authz({"credentials": ["api_key", "jwt"]}, jwt={"providers": []})),
    ("authz-api-key-without-keys", authz({"credentials": ["api_key"]}, api_keys={"header": "x-api-key"})),
    ("authz-api-key-no-api-keys", {"jwt": {"providers": [provider()]},
                                   "authorization": {"policies": [{"routes": ["default"], "credentials": ["jwt", "api_key"]}]}}),
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
     "route names in rules, policies and refresh_tokens name defined routes"),
    ("user-key-without-header", {"rate_limits": {"rules": [{"name": "a", "key": ["user"], "capacity": 1, "refill": "none"}]}},
     "a rule keyed on user needs user.header or an authorization policy"),
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
    ("failures-rule-on-user", {"user": {"header": "x-user"},
                               "rate_limits": {"rules": [{"name": "a", "key": ["user"], "capacity": 1,
                                                          "refill": "none", "counts": "failures"}]}},
     "a rule counting failures is keyed on ip and route only"),
    ("secret-short", {"signatures": {"keys": [{"id": "k", "secret": {"base64": SHORT_SECRET}}]}},
     "secrets are standard base64 of 32 bytes or more"),
    ("secret-not-base64", {"signatures": {"keys": [{"id": "k", "secret": {"base64": "not base64!"}}]}},
     "secrets are standard base64 of 32 bytes or more"),
    ("secret-env-unset", {"signatures": {"keys": [{"id": "k", "secret": {"env": "PALISADE_DEPLOY_CHECK_UNSET"}}]}},
     "an env secret or key hash names a variable set where palisade runs"),
    ("route-in-two-policies", {"signatures": {"keys": [{"id": "k", "secret": {"base64": SECRET}}],
                                              "policies": [{"routes": ["default"]}, {"routes": ["default"]}]}},
     "a route class is in one signature policy and one authorization policy at most"),
    ("policy-undefined-route", {"signatures": {"keys": [{"id": "k", "secret": {"base64": SECRET}}],
                                               "policies": [{"routes": ["nowhere"]}]}},
     "route names in rules, policies and refresh_tokens name defined routes"),
    ("duration-trailing-newline", {"bans": {"base": "1s\n"}},
     "names and tokens end at the end of the string ($ matches before a final newline)"),
    # jwt, api_keys, authorization
    ("duplicate-provider", {"jwt": {"providers": [provider(), provider(issuer="https://other.example")]}},
     "unique provider names"),
    ("duplicate-api-key-id", {"api_keys": {"header": "x-api-key", "keys": [{"id": "a", "sha256": KEY_SHA256},
                                                                          {"id": "a", "sha256": ENV_KEY_SHA256}]}},
     "unique API key ids and key hashes"),
    ("duplicate-api-key-hash", {"api_keys": {"header": "x-api-key", "keys": [
        {"id": "a", "sha256": KEY_SHA256}, {"id": "b", "sha256": KEY_SHA256.upper()}]}},
     "unique API key ids and key hashes"),
    ("duplicate-api-key-hash-env", {"api_keys": {"header": "x-api-key", "keys": [
        {"id": "a", "sha256": ENV_KEY_SHA256}, {"id": "b", "sha256": {"env": "PALISADE_DEPLOY_CHECK_KEY_SHA256"}}]}},
     "unique API key ids and key hashes"),
    ("authz-undefined-provider", authz({"providers": ["nowhere"]}),
     "provider names in authorization policies name defined providers"),
    ("authz-undefined-route", authz({"routes": ["nowhere"]}),
     "route names in rules, policies and refresh_tokens name defined routes"),
    ("refresh-tokens-undefined-route", {"jwt": {"refresh_tokens": {"routes": ["token"]}}},
     "route names in rules, policies and refresh_tokens name defined routes"),
    ("route-in-two-authz-policies", authz({}) | {"authorization": {"policies": [{"routes": ["default"]},
                                                                              {"routes": ["default"]}]}},
     "a route class is in one signature policy and one authorization policy at most"),
    ("user-key-without-authz-policies", {"jwt": {"providers": [provider()]}, "authorization": {"policies": []},
                                         "rate_limits": {"rules": [{"name": "u", "key": ["user"], "capacity": 1,
                                                                    "refill": "none"}]}},
     "a rule keyed on user needs user.header or an authorization policy"),
    ("clock-skew-over-1h", {"jwt": {"providers": [provider(clock_skew="61m")]}},
     "a provider's clock_skew is at most 1 h, a key-set fetch's timeout at most 60 s"),
    ("remote-timeout-over-60s", {"jwt": {"providers": [remote(timeout="61s", min_refetch="2m")]}},
     "a provider's clock_skew is at most 1 h, a key-set fetch's timeout at most 60 s"),
    ("clock-skew-over-30d", {"jwt": {"providers": [provider(clock_skew="31d")]}}, "durations are at most 30 days"),
    ("remote-min-refetch-below-timeout", {"jwt": {"providers": [remote(timeout="10s", min_refetch="5s")]}},
     "a remote key set's min_refetch is not shorter than its timeout, refresh not shorter than min_refetch"),
    ("remote-refresh-below-min-refetch", {"jwt": {"providers": [remote(refresh="10s", min_refetch="30s")]}},
     "a remote key set's min_refetch is not shorter than its timeout, refresh not shorter than min_refetch"),
    ("remote-address-trailing-newline", {"jwt": {"providers": [remote(cluster=None, address="idp:443\n")]}},
     "names and tokens end at the end of the string ($ matches before a final newline)"),
    ("cookie-trailing-newline", {"jwt": {"from": [{"cookie": "token\n"}]}},
     "names and tokens end at the end of the string ($ matches before a final newline)"),
    ("clock-skew-zero-trailing-newline", {"jwt": {"providers": [provider(clock_skew="0\n")]}},
     "names and tokens end at the end of the string ($ matches before a final newline)"),
    ("api-key-hash-env-unset", api_key(sha256={"env": "PALISADE_DEPLOY_CHECK_UNSET"}),
     "an env secret or key hash names a variable set where palisade runs"),
    ("api-key-hash-env-not-hex", api_key(sha256={"env": "PALISADE_DEPLOY_CHECK_NOT_A_HASH"}),
     "an env key hash holds 64 hex digits"),
    *[
        (f"jwk-{name}", doc, "inline JWK Set entries are valid keys (key material, sizes, at most 64 keys, one usable)")
        for name, doc in [
            ("okp-x-not-a-key", jwks(dict(ED_JWK, x="AQAB"))),
            ("okp-x-not-base64url", jwks(dict(ED_JWK, x="not base64url!"))),
            ("ec-not-on-curve", jwks(dict(EC_JWK, y=EC_JWK["x"]))),
            ("rsa-1024-bits", jwks({"kty": "RSA", "n": base64.urlsafe_b64encode(b"\xff" * 128).decode().rstrip("="),
                                    "e": "AQAB"})),
            ("oct-short", jwks({"kty": "oct", "k": "c2hvcnQ"}, algorithms=["HS256"])),
            ("only-encryption-keys", jwks({"use": "enc", "kty": "RSA"})),
            ("65-keys", jwks(*[dict(ED_JWK, kid=f"ed-{i}") for i in range(65)])),
        ]
    ],
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


def test_meta_file_is_generated_from_the_configuration_types(palisade_check):
    """The committed file is what `make kong-schema` makes from today's
    configuration types, and palisade-check prints the schema stably."""
    text = deploy.palisade_check_schema()
    schema = json.loads(text)
    jsonschema.Draft7Validator.check_schema(schema)
    assert schema.get("$schema") == "http://json-schema.org/draft-07/schema#"
    assert text == json.dumps(schema, indent=2, sort_keys=True, ensure_ascii=False) + "\n", (
        "palisade-check --schema: two-space indents, sorted keys, a final newline"
    )
    assert deploy.palisade_check_schema() == text, "palisade-check --schema is not stable"
    expected = deploy.kong_meta_converter().render(schema)
    assert deploy.KONG_META.read_text() == expected, (
        "nginx/kong/palisade.meta.json is stale: the configuration types changed; run `make kong-schema`"
    )


def test_converter_writes_draft_4():
    """kong_meta.py rewrites what draft 4 lacks, and refuses what it cannot."""
    convert = deploy.kong_meta_converter()
    assert convert.to_draft4({"const": 1, "format": "uint32", "examples": [1], "items": True,
                              "properties": {"format": {"type": "string", "format": "email"}},
                              "exclusiveMinimum": 0}) == {
        "enum": [1], "items": {}, "properties": {"format": {"type": "string", "format": "email"}},
        "minimum": 0, "exclusiveMinimum": True}
    assert convert.to_draft4({"anyOf": [False], "additionalProperties": False}) == {
        "anyOf": [{"not": {}}], "additionalProperties": False}
    for keyword in ("$ref", "definitions", "$defs", "if", "contains", "propertyNames"):
        with pytest.raises(convert.Unconvertible):
            convert.to_draft4({"properties": {"a": {keyword: {}}}})


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


# Documents of another format embedded whole, whose members their own
# standard leaves open: palisade reads them as such (OPAQUE_PATHS in
# src/config.rs), and so does the schema.
OPAQUE = (".jwt.providers[].jwks.inline", ".openapi.document.inline")


def _opaque(path: str) -> bool:
    return any(path == p or path.startswith(p + ".") or path.startswith(p + "[]") for p in OPAQUE)


def test_every_object_in_the_schema_is_closed(kong_schema):
    open_objects = []
    found = set()
    for path, node in _subschemas(kong_schema):
        types = node.get("type")
        types = types if isinstance(types, list) else [types]
        if path in OPAQUE:
            found.add(path)
            assert node.get("additionalProperties") is True, f"{path}: open on purpose, say so"
        # An object keyed by names (`validation.routes`, `response_headers`)
        # is a map: its members are free, each checked by the schema given.
        is_map = isinstance(node.get("additionalProperties"), dict)
        if "object" in types and node.get("additionalProperties") is not False and not is_map and not _opaque(path):
            open_objects.append(path)
    assert not open_objects, f"objects without additionalProperties: false (palisade refuses unknown fields): {open_objects}"
    assert found == set(OPAQUE), f"OPAQUE names objects the schema does not have: {sorted(set(OPAQUE) - found)}"


# Field tables README introduces with a sentence instead of a heading: the
# sentence -> the object the table documents. A table introduced by
# "`authorization.policies[]`:" names its object itself.
SUBTABLE_INTROS = {
    'A remote key set (`"jwks": {"remote": {...}}`):': "jwt.providers[].jwks.remote",
}


def _readme_field_tables() -> dict[str, set[str]]:
    """README's Configuration field tables: {"client_ip": {...}, "routes[]": {...}, "": top level}.

    A table belongs to its section's heading, unless the line before it is
    an introduction ending in a colon: then to the object that line names."""
    readme = (deploy.REPO_ROOT / "README.md").read_text()
    section = readme.split("\n## Configuration\n", 1)[1].split("\n## ", 1)[0]
    tables: dict[str, set[str]] = {}
    for block in section.split("\n### ")[1:]:
        heading, _, body = block.partition("\n")
        heading = heading.strip()
        key = "" if heading.lower() == "top level" else heading.strip("`")
        current, text_before, in_table = key, "", False
        for line in body.splitlines():
            if not line.startswith("|"):
                in_table = False
                if line.strip():
                    text_before = line.strip()
                continue
            if not in_table:  # a table starts
                in_table, current = True, key
                if text_before.endswith(":"):
                    named = re.fullmatch(r"`([a-z_.\[\]]+)`:", text_before)
                    assert named or text_before in SUBTABLE_INTROS, (
                        f"README, `{key}`: which object does the table after {text_before!r} document? "
                        "(SUBTABLE_INTROS)"
                    )
                    current = named.group(1) if named else SUBTABLE_INTROS[text_before]
            if line.startswith("| `"):
                first = re.split(r"(?<!\\)\|", line)[1]
                tables.setdefault(current, set()).update(re.findall(r"`([a-z][a-z0-9_]*)`", first))
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
    assert {"", "rate_limits.rules[]", "jwt.providers[].jwks.remote", "authorization.policies[]"} <= set(tables), (
        f"README's field tables not found: {sorted(tables)}"
    )
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
        "README's configuration reference and the configuration types (which generate "
        "nginx/kong/palisade.meta.json) disagree; document the field, or fix the types and "
        "run `make kong-schema`:\n" + "\n".join(problems)
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


def _in_opaque_document(path: tuple) -> bool:
    """Whether `path` (of a configuration) is inside an inline JWK Set."""
    return any(path[i:i + 2] == ("jwks", "inline") for i in range(len(path) - 1))


def test_unknown_fields_are_rejected_everywhere(validator, palisade_check):
    """An unknown field is refused in every object of the configuration, and
    accepted by both inside an inline JWK Set (RFC 7517 members are open)."""
    labelled, opaque = [], set()
    for base, doc in _bases():
        for path in _positions(doc):
            if isinstance(_get(doc, path), dict):
                target = copy.deepcopy(_get(doc, path))
                target["zz_unknown"] = 1
                labelled.append((_label(base, path, "+zz_unknown"), _with(doc, path, target)))
                if _in_opaque_document(path):
                    opaque.add(labelled[-1][0])
    assert len(labelled) >= 20
    assert opaque, "the bases have inline JWK Sets"
    problems = []
    for (label, doc), (errors, result) in zip(labelled, _both(validator, palisade_check, [d for _, d in labelled])):
        expect_ok = label in opaque
        if result.ok != expect_ok or (not errors) != expect_ok:
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
