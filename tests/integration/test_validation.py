"""Request validation against the real Envoy: the attack and benign corpora
(tests/integration/corpus.py, CORPUS.md), every limit with its status and
reason code, bodies whose size is declared or not, per-route overrides and
monitor mode.

The corpus test prints its rates (`-s` shows them) and writes them to
target/validation-rates-envoy.json for the closing note and README
(tests/nginx/test_ngx_validation.py: -nginx.json).
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import corpus
import harness
import pytest

CONFIG = {
    "routes": [
        {"name": "api", "prefix": "/api"},
        {"name": "cms", "prefix": "/cms"},
        {"name": "upload", "prefix": "/upload"},
    ],
    "validation": {
        "defaults": {"max_body_bytes": 65536},
        "routes": {
            "cms": {"disable": ["xss"]},
            "upload": {
                "methods": ["PUT"],
                "content_types": ["application/octet-stream", "image/*"],
                "max_body_bytes": 1024,
                "mode": "monitor",
            },
        },
    },
}

RATES = Path(__file__).resolve().parents[2] / "target" / "validation-rates.json"  # -<host> added


def send(e, case: corpus.Case):
    return e.request(case.method, case.path, dict(case.headers), case.body or None)


def outcome(response) -> str:
    """`palisade:<reason>`, `proxy:<status>` (the proxy answered before the
    filter: Envoy's path normalisation, its redirect of an escaped slash)
    or `passed` (the upstream answered)."""
    status, _, _ = response
    reason = harness.reason_of(response)
    if reason:
        return f"palisade:{reason}"
    if status == 200:
        return "passed"
    return f"proxy:{status}"


@pytest.fixture(scope="module")
def cases():
    try:
        return corpus.attack_cases(), corpus.benign_cases()
    except corpus.CorpusUnavailable as e:
        pytest.fail(f"the attack corpus could not be downloaded: {e}", pytrace=False)


def corpus_rates(proxy, cases, host: str) -> dict:
    """Sends both corpora through `proxy`; writes and prints the rates."""
    attacks, benign = cases
    attack_outcomes = [(c, outcome(send(proxy, c))) for c in attacks]
    benign_outcomes = [(c, outcome(send(proxy, c))) for c in benign]
    by_family: dict[str, Counter] = {}
    for c, o in attack_outcomes:
        by_family.setdefault(c.family, Counter())[o.split(":")[0]] += 1
    missed = [(c.family, c.where, c.payload or c.path) for c, o in attack_outcomes if o == "passed"]
    false_positives = [(o, c.where, c.path, c.body[:200]) for c, o in benign_outcomes if o != "passed"]
    blocked_by_palisade = sum(o.startswith("palisade:") for _, o in attack_outcomes)
    stopped_by_proxy = sum(o.startswith("proxy:") for _, o in attack_outcomes)
    rates = {
        "host": host,
        "attacks": len(attacks),
        "blocked_by_palisade": blocked_by_palisade,
        "stopped_by_proxy_first": stopped_by_proxy,
        "passed": len(missed),
        "block_rate": round((blocked_by_palisade + stopped_by_proxy) / len(attacks), 4),
        "palisade_block_rate": round(blocked_by_palisade / len(attacks), 4),
        "by_family": {f: dict(c) for f, c in sorted(by_family.items())},
        "reasons": dict(Counter(o for _, o in attack_outcomes if o.startswith("palisade:"))),
        "benign": len(benign),
        "benign_refused": len(false_positives),
        "false_positive_rate": round(len(false_positives) / len(benign), 4),
        "missed": missed,
        "false_positives": [(o, w, p, b.decode("utf-8", "replace")) for o, w, p, b in false_positives],
    }
    path = RATES.with_name(f"validation-rates-{host}.json")
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(rates, indent=1, ensure_ascii=False))
    print(
        f"\nvalidation corpus on {host}: {len(attacks)} attacks, {blocked_by_palisade} blocked by palisade, "
        f"{stopped_by_proxy} stopped by the proxy before it, {len(missed)} passed "
        f"(block rate {rates['block_rate']:.1%}); {len(benign)} benign requests, "
        f"{len(false_positives)} refused (false positives {rates['false_positive_rate']:.1%}); "
        f"by family {rates['by_family']}"
    )
    return rates


def assert_rates(rates: dict) -> None:
    assert rates["attacks"] >= 200 and rates["benign"] >= 200
    # Every refusal is palisade's own: request validation, or the classify
    # stage refusing a path that is not text (NGINX hands over a decoded
    # path, in which an overlong `%c0%ae` is a raw byte).
    assert all(r.startswith(("palisade:validation.", "palisade:request.")) for r in rates["reasons"]), rates[
        "reasons"
    ]
    assert not rates["false_positives"], rates["false_positives"][:10]
    assert rates["block_rate"] >= 0.95, rates["missed"][:20]


def test_attack_corpus_is_blocked_and_benign_corpus_passes(envoy, cases):
    assert_rates(corpus_rates(envoy(CONFIG), cases, "envoy"))


# ---------------------------------------------------------------- limits ----


def chunked_post(proxy, path: str, content_type: str, chunks: list[bytes]) -> tuple[int, bytes]:
    """A POST whose body comes chunked (HTTP/1.1, no Content-Length)."""
    conn = proxy.connection()
    try:
        conn.putrequest("POST", path)
        conn.putheader("content-type", content_type)
        conn.putheader("transfer-encoding", "chunked")
        conn.endheaders()
        for chunk in chunks:
            conn.send(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        conn.send(b"0\r\n\r\n")
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def test_each_limit_answers_with_its_status_and_reason(envoy):
    e = envoy(
        {
            **CONFIG,
            "validation": {
                "defaults": {
                    "max_url_bytes": 256,
                    "max_headers": 20,
                    "max_header_bytes": 2048,
                    "max_body_bytes": 64,
                    "json_max_depth": 3,
                    "content_types": ["application/json", "application/x-www-form-urlencoded"],
                }
            },
        }
    )

    def check(expected_status, expected_reason, method, path, headers=None, body=None):
        r = e.request(method, path, headers or {}, body)
        assert (r[0], harness.reason_of(r)) == (expected_status, expected_reason), r

    check(200, None, "GET", "/api/ok?q=fine")
    check(405, "validation.method", "TRACE", "/api/x")
    check(414, "validation.url_length", "GET", "/api/" + "a" * 300)
    check(431, "validation.header_count", "GET", "/api/x", {f"x-h{i}": "1" for i in range(25)})
    check(431, "validation.header_size", "GET", "/api/x", {"x-big": "b" * 3000})
    check(413, "validation.body_size", "POST", "/api/x", {"content-type": "application/json"}, b"[" + b"1," * 40 + b"1]")
    check(415, "validation.content_type", "POST", "/api/x", {"content-type": "text/xml"}, b"<a/>")
    check(400, "validation.json", "POST", "/api/x", {"content-type": "application/json"}, b'{"a": ')
    check(400, "validation.json_depth", "POST", "/api/x", {"content-type": "application/json"}, b"[[[[1]]]]")
    check(200, None, "POST", "/api/x", {"content-type": "application/json"}, b'[[["O\'Hara"]]]')
    check(400, "validation.control_bytes", "GET", "/api/x?name=a%00b")
    check(403, "validation.traversal", "GET", "/api/files?name=..%252f..%252fetc%252fpasswd")
    check(403, "validation.sqli", "GET", "/api/search?q=1%27+or+%271%27%3D%271")
    check(403, "validation.xss", "POST", "/api/x", {"content-type": "application/x-www-form-urlencoded"}, b"c=%3Csvg+onload%3Dalert(1)%3E")


def test_a_body_of_undeclared_size_is_counted_as_it_arrives(envoy):
    """Chunked HTTP/1.1 and HTTP/2 without a length: no Content-Length to
    refuse at the headers, so the body phase counts it."""
    e = envoy({**CONFIG, "validation": {"defaults": {"max_body_bytes": 64}}})
    status, body = chunked_post(e, "/api/x", "text/plain", [b"x" * 32] * 3)
    assert status == 413 and b"validation.body_size" in body, (status, body)

    status, _, body = harness.h2_request(
        e.port, "POST", "/api/x", [("content-type", "text/plain")], b"y" * 100
    )
    assert status == 413 and b"validation.body_size" in body, (status, body)
    status, _, body = harness.h2_request(
        e.port, "POST", "/api/x", [("content-type", "application/json")], b'{"q": "<script>alert(1)</script>"}'
    )
    assert status == 403 and b"validation.xss" in body, (status, body)
    status, _, body = harness.h2_request(e.port, "POST", "/api/x", [("content-type", "text/plain")], b"small")
    assert status == 200, (status, body)


def test_routes_override_the_defaults_and_monitor_mode_lets_through(envoy):
    e = envoy(CONFIG)
    xss = "/?html=%3Cscript%3Ealert(1)%3C%2Fscript%3E"
    assert harness.reason_of(e.request("GET", "/api" + xss)) == "validation.xss"
    # `cms` turns the xss family off, and keeps the others.
    assert e.request("GET", "/cms" + xss)[0] == 200
    assert harness.reason_of(e.request("GET", "/cms/?q=1%27+or+1%3D1--")) == "validation.sqli"
    # `upload` is in monitor mode: counted and logged, not refused.
    assert e.request("POST", "/upload/a", {"content-type": "text/plain"}, b"x" * 2000)[0] == 200
    stats = e.prometheus()
    monitored = harness.palisade_counter(
        stats, "palisade_findings_total", stage="validate", reason="validation_method", mode="monitor", route="upload"
    )
    assert monitored == 1, stats
