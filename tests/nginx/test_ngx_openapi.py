"""The `openapi` stage and `default_deny` on NGINX (ngx_wasm_module, 2
worker processes): the pet store document and the cases of the Envoy suite
(tests/integration/test_openapi.py), against the recording upstream.

The stage is pure logic, so the answers are Envoy's: 404
`schema.unknown_operation`, 400 `schema.parameter` naming the parameter, 400
`schema.body` with the JSON pointer, 404 `route.undeclared`, and nothing
refused reaches the upstream. What differs is the body: ngx_wasm_module hands
it over whole, in one call after the headers step, and only with a
`Content-Length` (README, Running on NGINX); a chunked body to an operation
whose body is validated cannot be checked, and must be refused (411
`body.length_required`), not let through unchecked. Security events go to
nginx's error log at `warn`.

One limit is nginx's own: a directive's argument is read into a buffer of
4096 bytes (NGX_CONF_BUFFER), so `proxy_wasm palisade '<json>'` cannot carry
a configuration over about 4 KB, and the whole pet store (about 6 KB) does
not fit (the last test shows nginx's refusal). The suite runs
:func:`compact_petstore`: the same paths, parameters and schemas without
descriptions, responses and a few operations and members no NGINX case uses,
in JSON without spaces.
"""

from __future__ import annotations

import copy
import json

import harness
import nginx_host
import pytest
from test_openapi import (
    PETSTORE,
    BAD_BODIES,
    BAD_PARAMETERS,
    ECHO_MARKERS,
    JSON,
    ROUTES,
    SESSION,
    TENANT,
    TENANT_HEADERS,
    UNDECLARED,
    body_headers,
    chunked,
    dumps,
    new_pet,
    not_echoed,
    refused,
    with_owner,
)
import test_openapi

#: nginx's NGX_CONF_BUFFER: no directive argument may be this long.
NGX_CONF_BUFFER = 4096


def _bare(node):
    """``node`` without descriptions, summaries and responses (which the
    stage does not read)."""
    if isinstance(node, dict):
        return {k: _bare(v) for k, v in node.items() if k not in ("description", "summary", "responses")}
    if isinstance(node, list):
        return [_bare(v) for v in node]
    return node


def compact_petstore() -> dict:
    """The pet store cut to fit nginx's 4 KB argument, with everything the
    NGINX cases use: /pets (GET, POST), /pets/mine, GET /pets/{petId},
    /pets/{petId}/photos/{photoId}, /store/orders; the same parameters and
    NewPet/Owner/Order schemas, less the owner's phone, PUT and DELETE,
    the photo upload, the merge-patch media type and two order members."""
    doc = _bare(copy.deepcopy(PETSTORE))
    doc["info"] = {"title": "pets", "version": "1"}
    doc["servers"] = [{"url": "/v1"}]
    schemas = doc["components"]["schemas"]
    del schemas["Pet"]  # responses only
    del doc["paths"]["/pets/{petId}/photos"]
    for method in ("put", "delete"):
        del doc["paths"]["/pets/{petId}"][method]
    del doc["components"]["requestBodies"]["NewPet"]["content"]["application/merge-patch+json"]
    del schemas["Owner"]["properties"]["phone"]
    del schemas["Order"]["allOf"][1]["properties"]["giftMessage"]
    del schemas["OrderBase"]["properties"]["status"]
    return doc


def config(**kwargs) -> str:
    """test_openapi.config with the compact document, as JSON without spaces."""
    text = json.dumps(test_openapi.config(document=compact_petstore(), **kwargs), separators=(",", ":"))
    assert len(text) < NGX_CONF_BUFFER - 100, f"{len(text)} bytes: over nginx's argument buffer"
    return text


def passed(resp: harness.Response, upstream, body: bytes | None = None) -> None:
    """The upstream's 200 (nginx_host.RecordingUpstream echoes what it got)."""
    status, _, data = resp
    assert status == 200, f"expected the upstream's 200, got {status}: {data[:300]!r}"
    doc = harness.json_body(data)
    assert doc.get("echo") is True, data[:300]
    if body is not None:
        assert upstream.last().body == body, "the checked body was altered on the way"


def nginx_events(log: str) -> list[dict]:
    """palisade's request events in nginx's error log (nginx adds its own
    context after each logged line: the JSON is decoded up to its end)."""
    decoder = json.JSONDecoder()
    out = []
    for line in log.splitlines():
        if '"event":"palisade.request"' in line:
            event, _ = decoder.raw_decode(line[line.index("{") :])
            out.append(event)
    return out


def test_declared_operations_pass_and_undeclared_ones_are_404_on_nginx(nginx, upstream):
    inst = nginx(config())
    passed(inst.request("GET", "/v1/pets?status=available&limit=10&tags=indoor&tags=senior", TENANT_HEADERS), upstream)
    # Header names arrive in the client's case on NGINX.
    passed(inst.request("GET", "/v1/pets", {"X-TENANT-ID": TENANT}), upstream)
    passed(inst.request("GET", "/v1/pets/42"), upstream)
    passed(inst.request("GET", "/v1/pets/mine", {"Cookie": f"session={SESSION}"}), upstream)
    pet = dumps(new_pet())
    passed(inst.request("POST", "/v1/pets", body_headers("application/json"), pet), upstream, pet)
    order = dumps({"petId": 7, "quantity": 2, "shipDate": "2026-12-24T08:00:00Z"})
    passed(inst.request("POST", "/v1/store/orders", JSON, order), upstream, order)
    before = upstream.count()
    for method, path in UNDECLARED:
        body = b"{}" if method == "PATCH" else None
        resp = inst.request(method, path, body_headers("application/json" if body else None), body)
        refused(resp, 404, "schema.unknown_operation")
    assert upstream.count() == before, "a refused request reached the upstream"
    inst.assert_healthy()


def test_bad_parameters_and_bodies_are_400_on_nginx(nginx, upstream):
    inst = nginx(config(max_body_bytes=2048, routes={"health": "off"}))
    for path, headers, location in BAD_PARAMETERS:
        resp = inst.request("GET", path, headers)
        refused(resp, 400, "schema.parameter", location)
        not_echoed(resp, ECHO_MARKERS["enum"], ECHO_MARKERS["uuid"])
    for what, body, content_type, location, message in BAD_BODIES:
        resp = inst.request("POST", "/v1/pets", body_headers(content_type), body)
        doc = refused(resp, 400, "schema.body", location)
        if message:
            assert doc["message"] == message, (what, doc)
        not_echoed(resp, *ECHO_MARKERS.values())
    refused(inst.request("POST", "/v1/store/orders", JSON, dumps({"petId": 7, "quantity": 11})), 400, "schema.body", "/quantity")
    big = dumps(with_owner(name="A" * 2500))
    doc = refused(inst.request("POST", "/v1/pets", body_headers("application/json"), big), 400, "schema.body", "")
    assert doc["message"] == "body larger than openapi.max_body_bytes", doc
    assert upstream.count() == 0, "a refused request reached the upstream"

    # The security event names the operation and where; never the value.
    inst.request("GET", "/v1/pets?limit=5000", {**TENANT_HEADERS, "x-request-id": "ngx-oa-1"})
    inst.request("POST", "/v1/pets", body_headers("application/json", {"x-request-id": "ngx-oa-2"}),
                 dumps(with_owner(email=ECHO_MARKERS["email"])))  # fmt: skip
    events = {e["request_id"]: e for e in nginx_events(inst.error_log())}
    for rid, reason, operation, location in [
        ("ngx-oa-1", "schema.parameter", "listPets", "query.limit"),
        ("ngx-oa-2", "schema.body", "createPet", "/owner/email"),
    ]:
        assert rid in events, f"no event for {rid}:\n{inst.log_tail(20)}"
        (finding,) = events[rid]["findings"]
        assert (finding["reason"], finding["operation"], finding["location"]) == (reason, operation, location), finding
        assert finding["message"] and finding["mode"] == "enforce", finding
        assert ECHO_MARKERS["email"] not in json.dumps(events[rid]), events[rid]
    inst.assert_healthy()


def test_a_chunked_body_to_a_validated_operation_is_not_let_through_on_nginx(nginx, upstream):
    """ngx_wasm_module hands no body without a Content-Length over: a body
    the openapi stage must validate cannot be, so the request is refused
    with 411 body.length_required (as request validation's are), not
    forwarded unchecked. The invalid body below would be 400 schema.body
    with a Content-Length."""
    inst = nginx(config())
    bad = dumps(new_pet(details={"type": "cow"}))
    refused(inst.request("POST", "/v1/pets", body_headers("application/json"), bad), 400, "schema.body", "/details")
    status, data = chunked(inst, "POST", "/v1/pets", body_headers("application/json"), bad, 40)
    assert upstream.count() == 0, f"a chunked body the document refuses reached the upstream unchecked ({status} {data[:200]!r})"
    assert status == 411 and b"body.length_required" in data, (status, data)
    # Counted under the schema stage, in the class's mode.
    (event,) = [e for e in nginx_events(inst.error_log()) if e["reason"] == "body.length_required"]
    assert (event["action"], event["stage"]) == ("deny", "schema"), event
    inst.assert_healthy()


def test_a_monitored_route_class_and_default_deny_on_nginx(nginx, upstream):
    inst = nginx(config(default_deny=True, routes={"orders": "monitor", "health": "off", "default": "monitor"}))
    bad_order = dumps({"petId": 7, "quantity": 50})
    passed(inst.request("POST", "/v1/store/orders", {**JSON, "x-request-id": "ngx-oa-mon"}, bad_order), upstream, bad_order)
    passed(inst.request("GET", "/healthz"), upstream)
    passed(inst.request("GET", "/v1/pets?status=sold", TENANT_HEADERS), upstream)
    before = upstream.count()
    for method, path in [("GET", "/v1/new-endpoint"), ("DELETE", "/v1/pets"), ("GET", "/admin")]:
        refused(inst.request(method, path), 404, "route.undeclared")
    assert upstream.count() == before, "a refused request reached the upstream"
    (event,) = [e for e in nginx_events(inst.error_log()) if e["request_id"] == "ngx-oa-mon"]
    assert (event["action"], event["reason"], event["route"]) == ("monitor", "schema.body", "orders"), event
    assert event["findings"][0]["location"] == "/quantity", event

    # Without a document, the route classes alone declare.
    inst.reload(json.dumps({"routes": ROUTES, "default_deny": True}))
    passed(inst.request("GET", "/healthz"), upstream)
    refused(inst.request("GET", "/v1/pets"), 404, "route.undeclared")
    inst.assert_healthy()


def test_the_whole_pet_store_is_over_nginx_argument_buffer(upstream):
    """Why the suite runs the compact document: nginx refuses a
    `proxy_wasm` argument over its 4 KB buffer before palisade sees it."""
    text = json.dumps(test_openapi.config())
    assert len(text) > NGX_CONF_BUFFER
    inst = nginx_host.NginxInstance(text, upstream.port)
    try:
        with pytest.raises(nginx_host.NginxError, match="too long parameter"):
            inst.start()
    finally:
        inst.stop()
        inst.cleanup()
