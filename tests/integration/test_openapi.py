"""The `openapi` stage and `default_deny` against a real Envoy (2 workers),
with the pet store document of tests/fixtures/openapi/petstore.json (3.0.3;
servers under /v1; /pets, the literal /pets/mine, /pets/{petId},
/pets/{petId}/photos and /pets/{petId}/photos/{photoId}, /store/orders; a
required X-Tenant-Id header, query enum, integer bounds, exploded array and
date parameters, a cookie; request bodies through $ref with oneOf (cat|dog),
allOf, formats uuid/date/date-time/email, nested objects with
additionalProperties false).

Every request is routed to a recording upstream in the test process, so the
tests see what got through: declared operations reach it over HTTP/1.1 and
HTTP/2 with their bodies unchanged; an undeclared operation is 404
`schema.unknown_operation`, a bad parameter 400 `schema.parameter` naming it
(`query.limit`), a bad body 400 `schema.body` with the JSON pointer of the
failing value, and none of them reaches it; neither the answer nor the
security event repeats what the client sent; a `monitor` route class lets a
bad request through with a monitor event; `default_deny` refuses what no route
class and no operation declares with 404 `route.undeclared`.

tests/nginx/test_ngx_openapi.py runs the same cases on NGINX (it imports the
document, the configurations and the cases from here).
"""

from __future__ import annotations

import copy
import hashlib
import json
import uuid
from pathlib import Path

import pytest

import harness
from jwks_server import LocalServer
from test_events import request_events

PETSTORE_PATH = harness.REPO_ROOT / "tests" / "fixtures" / "openapi" / "petstore.json"
PETSTORE: dict = json.loads(PETSTORE_PATH.read_text())

TENANT = "0f8e4c1a-5b7d-4e2f-9a3c-6d1b2e4f8a90"
TENANT_HEADERS = {"x-tenant-id": TENANT}
JSON = {"content-type": "application/json"}
# A valid `session` cookie of /pets/mine (16..64 of [A-Za-z0-9_-]).
SESSION = "s3ss10n_0123456789abcdef"

# `orders` (the store) is a route class the document is only monitored on;
# `health` is one it does not apply to (and does not declare).
ROUTES = [{"name": "orders", "prefix": "/v1/store"}, {"name": "health", "path": "/healthz"}]


def config(max_body_bytes: int = 4096, default_deny: bool = False, document: dict | None = None, **openapi) -> dict:
    """The pet store (or ``document``) in enforce mode on the default route
    class, monitored on `orders`, off on `health`; ``openapi`` overrides the
    section's keys."""
    section = {
        "mode": "enforce",
        "document": {"inline": copy.deepcopy(document or PETSTORE)},
        "routes": {"orders": "monitor", "health": "off"},
        "max_body_bytes": max_body_bytes,
        **openapi,
    }
    c: dict = {"routes": ROUTES, "openapi": section}
    if default_deny:
        c["default_deny"] = True
    return c


# ------------------------------------------------------------------ bodies --
def new_pet(**changes) -> dict:
    """A valid createPet body: nested owner with an address, the dog branch
    of `details`, formats date, date-time and uuid."""
    pet = {
        "name": "Rex",
        "details": {"type": "dog", "breed": "border collie", "goodBoy": True},
        "birthDate": "2019-04-12",
        "adoptedAt": "2020-01-31T09:30:00Z",
        "microchip": "3f2b8c1e-9d4a-4b6f-8e2d-1c7a5b9e0f34",
        "weightKg": 18.5,
        "tags": ["friendly", "vaccinated"],
        "owner": {
            "name": "Ada Lovelace",
            "email": "ada@example.org",
            "address": {"street": "12 Analytical Row", "city": "London", "postcode": "N1 9GU"},
        },
    }
    pet.update(changes)
    return pet


def with_owner(**changes) -> dict:
    pet = new_pet()
    pet["owner"] = {**pet["owner"], **changes}
    return pet


def dumps(doc) -> bytes:
    return json.dumps(doc).encode()


# Values a client sent that make a request fail: none may come back in the
# answer or the event (each is distinctive, so a search cannot hit by chance).
ECHO_MARKERS = {
    "enum": "eatenByQx7",
    "uuid": "not-a-uuid-Zq93",
    "email": "nobody-at-Wk42.example",
    "json": "{\"name\": \"Jv8broken",
    "oneof": "cowboyPq51",
}

# (description, body bytes, content type or None, expected `location`, expected `message`)
BAD_BODIES: list[tuple[str, bytes, str | None, str, str]] = [
    (
        "oneOf: no branch matches (a cow)",
        dumps(new_pet(details={"type": ECHO_MARKERS["oneof"], "breed": "angus"})),
        "application/json",
        "/details",
        "matches none of the `oneOf` schemas",
    ),
    (
        "oneOf: the cat branch without `indoor`",
        dumps(new_pet(details={"type": "cat"})),
        "application/json",
        "/details",
        "matches none of the `oneOf` schemas",
    ),
    (
        "nested email format",
        dumps(with_owner(email=ECHO_MARKERS["email"])),
        "application/json",
        "/owner/email",
        "is not a valid email address",
    ),
    (
        "nested two levels: an empty city",
        dumps(with_owner(address={"city": ""})),
        "application/json",
        "/owner/address/city",
        "is too short",
    ),
    ("uuid format", dumps(new_pet(microchip=ECHO_MARKERS["uuid"])), "application/json", "/microchip", "is not a valid uuid"),
    ("date-time format", dumps(new_pet(adoptedAt="2020-01-31 09:30")), "application/json", "/adoptedAt", "is not a valid date-time"),
    ("date format (30 February)", dumps(new_pet(birthDate="2019-02-30")), "application/json", "/birthDate", "is not a valid date"),
    ("exclusive minimum", dumps(new_pet(weightKg=0)), "application/json", "/weightKg", "is below the minimum"),
    ("uniqueItems", dumps(new_pet(tags=["a", "a"])), "application/json", "/tags", "has duplicate items"),
    ("additionalProperties false at the top", dumps(new_pet(isAdmin=True)), "application/json", "/*", ""),
    ("additionalProperties false in the owner", dumps(with_owner(role="admin")), "application/json", "/owner/*", ""),
    (
        "required member missing",
        dumps({k: v for k, v in new_pet().items() if k != "details"}),
        "application/json",
        "/details",
        "required member missing",
    ),
    ("wrong type", dumps(new_pet(name=42)), "application/json", "/name", "must be a string"),
    ("invalid JSON", ECHO_MARKERS["json"].encode(), "application/json", "", "not valid JSON"),
    ("a JSON array where an object is declared", b"[1, 2]", "application/json", "", "must be an object"),
    ("undeclared content type", dumps(new_pet()), "text/plain", "", "media type not declared"),
    ("form body", b"name=Rex&details=dog", "application/x-www-form-urlencoded", "", "media type not declared"),
    ("no content type", dumps(new_pet()), None, "", "Content-Type missing"),
    ("required body missing", b"", "application/json", "", "required body missing"),
]

# (path, extra headers, expected `location`): each answered 400 schema.parameter.
BAD_PARAMETERS: list[tuple[str, dict[str, str], str]] = [
    (f"/v1/pets?status={ECHO_MARKERS['enum']}", TENANT_HEADERS, "query.status"),
    ("/v1/pets?limit=0", TENANT_HEADERS, "query.limit"),
    ("/v1/pets?limit=101", TENANT_HEADERS, "query.limit"),
    ("/v1/pets?limit=ten", TENANT_HEADERS, "query.limit"),
    ("/v1/pets?limit=2.5", TENANT_HEADERS, "query.limit"),
    ("/v1/pets?tags=indoor&tags=Not%20A%20Tag", TENANT_HEADERS, "query.tags"),
    ("/v1/pets?" + "&".join(f"tags=t{i}" for i in range(6)), TENANT_HEADERS, "query.tags"),
    ("/v1/pets?born_after=2021-13-01", TENANT_HEADERS, "query.born_after"),
    ("/v1/pets?status=available", {}, "header.X-Tenant-Id"),
    ("/v1/pets", {"x-tenant-id": ECHO_MARKERS["uuid"]}, "header.X-Tenant-Id"),
    ("/v1/pets/abc", {}, "path.petId"),
    ("/v1/pets/0", {}, "path.petId"),
    ("/v1/pets/-3", {}, "path.petId"),
    ("/v1/pets/42/photos/not-a-uuid", {}, "path.photoId"),
    (f"/v1/pets/42/photos/{uuid.UUID(int=7)}?size=huge", {}, "query.size"),
    # The literal /pets/mine wins over /pets/{petId}: its cookie is what fails.
    ("/v1/pets/mine", {}, "cookie.session"),
    ("/v1/pets/mine", {"cookie": "theme=dark; session=short!"}, "cookie.session"),
]

# (method, path): no operation has this method and path.
UNDECLARED: list[tuple[str, str]] = [
    ("GET", "/v1/admin"),  # undeclared path
    ("GET", "/v1/pets/42/owner"),  # deeper than any template
    ("GET", "/v1/pets/"),  # the trailing slash counts
    ("DELETE", "/v1/pets"),  # declared path, undeclared method
    ("PATCH", "/v1/pets/42"),
    ("POST", "/v1/pets/mine"),  # neither /pets/mine nor /pets/{petId} declares POST
    ("GET", "/pets"),  # outside the base path
    ("GET", "/v2/pets"),
    ("GET", "/v1"),  # the base path itself
    ("GET", "/v1pets"),
]


# ------------------------------------------------------------ the upstream --
class RecordingUpstream(LocalServer):
    """The application: answers 200 with a mark and what it got (method,
    path, body length and SHA-256), and records each request."""

    MARK = "openapi-upstream"

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[str, str, bytes]] = []

    def answer(self, handler, body):
        with self.lock:
            self.seen.append((handler.command, handler.path, body))
        doc = {
            "mark": self.MARK,
            "method": handler.command,
            "path": handler.path,
            "body_len": len(body),
            "body_sha256": hashlib.sha256(body).hexdigest(),
        }
        return 200, "application/json", json.dumps(doc).encode()

    def count(self) -> int:
        with self.lock:
            return len(self.seen)


@pytest.fixture
def upstream():
    server = RecordingUpstream().start()
    yield server
    server.stop()


@pytest.fixture
def api(envoy, upstream):
    """``api(config)``: Envoy (2 workers) with palisade configured with
    ``config``, every path routed to :func:`upstream`."""

    def start(cfg: dict) -> harness.EnvoyInstance:
        return envoy(
            cfg,
            extra_routes=[{"match": {"prefix": "/"}, "route": {"cluster": "upstream"}}],
            extra_clusters=[upstream.cluster("upstream")],
        )

    return start


# ------------------------------------------------------------------ checks --
def reached(resp: harness.Response, body: bytes | None = None) -> dict:
    """The upstream's own 200 (with ``body`` as sent, if given)."""
    status, _, data = resp
    assert status == 200, f"expected the upstream's 200, got {status}: {data[:300]!r}"
    doc = harness.json_body(data)
    assert doc.get("mark") == RecordingUpstream.MARK, data[:300]
    if body is not None:
        assert (doc["body_len"], doc["body_sha256"]) == (len(body), hashlib.sha256(body).hexdigest()), doc
    return doc


def refused(resp: harness.Response, status: int, reason: str, location: str | None = None) -> dict:
    """palisade's answer ``status`` ``reason``; its ``location`` when given
    (a schema refusal names where the request failed, and says why)."""
    got = (resp[0], harness.reason_of(resp))
    assert got == (status, reason), f"expected {status} {reason}, got {resp[0]}: {resp[2][:400]!r}"
    doc = harness.json_body(resp[2])
    assert "mark" not in doc, doc
    if location is not None:
        assert doc.get("location") == location, doc
        assert isinstance(doc.get("message"), str) and doc["message"], doc
    return doc


def not_echoed(resp: harness.Response, *values: str) -> None:
    text = resp[2].decode("latin-1") + json.dumps(resp[1])
    for value in values:
        assert value not in text, f"the answer repeats {value!r}: {text[:400]}"


def body_headers(content_type: str | None, extra: dict | None = None) -> dict[str, str]:
    headers = dict(TENANT_HEADERS)
    if content_type is not None:
        headers["content-type"] = content_type
    return {**headers, **(extra or {})}


def chunked(proxy, method: str, path: str, headers: dict[str, str], body: bytes, size: int) -> tuple[int, bytes]:
    """A request whose body goes out chunked (HTTP/1.1, no Content-Length), ``size`` bytes a chunk."""
    conn = proxy.connection()
    try:
        conn.putrequest(method, path)
        for k, v in {**headers, "transfer-encoding": "chunked"}.items():
            conn.putheader(k, v)
        conn.endheaders()
        for i in range(0, len(body), size):
            chunk = body[i : i + size]
            conn.send(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        conn.send(b"0\r\n\r\n")
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def events_by_id(proxy, request_id: str, log: str | None = None) -> dict:
    """The one security event of the request ``request_id``."""
    text = log if log is not None else proxy.wait_for_log(f'"request_id":"{request_id}"')
    found = [e for e in request_events(text) if e.get("request_id") == request_id]
    assert len(found) == 1, f"{len(found)} events for {request_id}:\n" + "\n".join(map(json.dumps, found))
    return found[0]


# ------------------------------------------------------------------- tests --
def test_declared_operations_reach_the_upstream_over_http1_and_http2(api, upstream):
    e = api(config())
    # Parameters of every kind: enum, bounded integer, exploded array, date, the header.
    path = "/v1/pets?status=available&limit=10&tags=indoor&tags=senior-cat&born_after=2020-02-29"
    doc = reached(e.request("GET", path, TENANT_HEADERS))
    assert (doc["method"], doc["path"]) == ("GET", path), doc
    # Unknown query parameters pass; percent-encoding is decoded before the check.
    reached(e.request("GET", "/v1/pets?status=avail%61ble&utm_source=news&limit=100", TENANT_HEADERS))
    reached(e.request("GET", "/v1/pets", {"X-Tenant-Id": TENANT.upper()}))
    reached(e.request("GET", "/v1/pets/42"))
    reached(e.request("DELETE", "/v1/pets/9007199254740991"))
    reached(e.request("GET", f"/v1/pets/42/photos/{uuid.UUID(int=7)}?size=thumb"))
    reached(e.request("GET", "/v1/pets/mine", {"cookie": f"theme=dark; session={SESSION}"}))

    # Bodies: nested, through $ref, oneOf's dog and cat branches, allOf, a
    # +json media type, a charset parameter; each reaches the upstream as sent.
    for method, target, content_type, body in [
        ("POST", "/v1/pets", "application/json", dumps(new_pet())),
        ("POST", "/v1/pets", "application/json", dumps(with_owner(phone="+442079460000"))),
        ("POST", "/v1/pets", "application/json; charset=utf-8",
         dumps(new_pet(details={"type": "cat", "indoor": True, "livesLeft": 9}))),
        ("POST", "/v1/pets", "application/json", dumps({"name": "Tom", "details": {"type": "cat", "indoor": False}})),
        ("PUT", "/v1/pets/7", "application/merge-patch+json", dumps(new_pet(name="Rex II"))),
        ("POST", "/v1/store/orders", "application/json",
         dumps({"petId": 7, "quantity": 2, "shipDate": "2026-12-24T08:00:00+01:00", "giftMessage": None})),
        # A declared media type that is not JSON passes unparsed.
        ("POST", "/v1/pets/7/photos", "image/png", b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4),
    ]:  # fmt: skip
        reached(e.request(method, target, body_headers(content_type), body), body)

    # HTTP/2 (h2c, prior knowledge): a GET with parameters and a POST with a body.
    h2_get = "/v1/pets?status=sold&limit=1"
    doc = reached(harness.h2_request(e.port, "GET", h2_get, list(TENANT_HEADERS.items())))
    assert doc["path"] == h2_get, doc
    pet = dumps(new_pet(name="Mittens", details={"type": "cat", "indoor": True}))
    h2_headers = [("x-tenant-id", TENANT), ("content-type", "application/json"), ("content-length", str(len(pet)))]
    reached(harness.h2_request(e.port, "POST", "/v1/pets", h2_headers, pet), pet)
    assert upstream.count() == 16, upstream.seen


def test_undeclared_operations_are_404_and_reach_nothing(api, upstream):
    e = api(config())
    for method, path in UNDECLARED:
        body = b"{}" if method in ("PATCH",) else None
        resp = e.request(method, path, body_headers("application/json" if body else None), body)
        doc = refused(resp, 404, "schema.unknown_operation")
        assert doc.get("location", "") == "", (method, path, doc)
    # Over HTTP/2 too.
    status, _, data = harness.h2_request(e.port, "GET", "/v1/internal/metrics", [])
    assert status == 404 and b"schema.unknown_operation" in data, (status, data)
    assert upstream.count() == 0, upstream.seen


def test_bad_parameters_are_400_naming_the_parameter(api, upstream):
    e = api(config())
    for path, headers, location in BAD_PARAMETERS:
        resp = e.request("GET", path, headers)
        refused(resp, 400, "schema.parameter", location)
        not_echoed(resp, ECHO_MARKERS["enum"], ECHO_MARKERS["uuid"], "Not A Tag", "short!", "huge")
    # The literal /pets/mine declares GET only: a PUT falls to the most
    # specific template that declares PUT, /pets/{petId}, where `mine` is no integer.
    refused(e.request("PUT", "/v1/pets/mine", JSON, dumps(new_pet())), 400, "schema.parameter", "path.petId")
    # A path parameter is checked on every method of its path.
    refused(e.request("DELETE", "/v1/pets/abc"), 400, "schema.parameter", "path.petId")
    # Over HTTP/2.
    status, _, data = harness.h2_request(e.port, "GET", "/v1/pets?limit=1000", list(TENANT_HEADERS.items()))
    assert status == 400 and harness.json_body(data).get("location") == "query.limit", (status, data)
    assert upstream.count() == 0, upstream.seen


def test_bad_bodies_are_400_with_the_json_pointer(api, upstream):
    # The store enforced too (it is only monitored in the other tests).
    e = api(config(routes={"health": "off"}))
    for what, body, content_type, location, message in BAD_BODIES:
        resp = e.request("POST", "/v1/pets", body_headers(content_type), body)
        doc = refused(resp, 400, "schema.body", location)
        if message:
            assert doc["message"] == message, (what, doc)
        not_echoed(resp, *ECHO_MARKERS.values(), "Wk42", "angus")
    # A pattern (Rust regex syntax, unanchored unless the pattern says so).
    resp = e.request("POST", "/v1/pets", body_headers("application/json"), dumps(with_owner(phone="+44 20 7946")))
    refused(resp, 400, "schema.body", "/owner/phone")
    # allOf: every branch holds (the base's `petId`, the extension's bounds, nullable).
    for order, location in [
        ({"quantity": 1}, "/petId"),
        ({"petId": 7, "quantity": 11}, "/quantity"),
        ({"petId": 7}, "/quantity"),
        ({"petId": 7, "quantity": 1, "status": "lost"}, "/status"),
        ({"petId": 7, "quantity": 1, "giftMessage": "x" * 141}, "/giftMessage"),
        ({"petId": "7", "quantity": 1}, "/petId"),
    ]:
        refused(e.request("POST", "/v1/store/orders", JSON, dumps(order)), 400, "schema.body", location)
    reached(e.request("POST", "/v1/store/orders", JSON, dumps({"petId": 7, "quantity": 1, "giftMessage": None})))
    # A body over HTTP/2 without a content-length (Envoy streams it to palisade).
    bad = dumps(with_owner(email="x"))
    h2_headers = [("x-tenant-id", TENANT), ("content-type", "application/json")]
    status, _, data = harness.h2_request(e.port, "POST", "/v1/pets", h2_headers, bad)
    assert status == 400 and harness.json_body(data).get("location") == "/owner/email", (status, data)
    # PUT on a templated path, with the +json media type.
    resp = e.request("PUT", "/v1/pets/7", body_headers("application/merge-patch+json"), dumps(new_pet(details={})))
    refused(resp, 400, "schema.body", "/details")
    assert upstream.count() == 1, upstream.seen


def raw_request(proxy, method: str, path: str, headers: list[tuple[str, str]]) -> harness.Response:
    """One HTTP/1.1 request with ``headers`` as given: repeated names included."""
    conn = proxy.connection()
    try:
        conn.putrequest(method, path)
        for k, v in headers:
            conn.putheader(k, v)
        conn.endheaders()
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


def test_a_repeated_parameter_is_checked_in_every_value(api, upstream):
    """HTTP parameter pollution: a valid first value, an invalid second one.
    Back-ends differ on which one they use (the last, both, joined), so a
    parameter that is not an exploded array is refused when repeated."""
    e = api(config())
    tenant = ("x-tenant-id", TENANT)
    cases = [
        ("query limit", "/v1/pets?limit=10&limit=100000", [tenant], "query.limit"),
        ("query status", "/v1/pets?status=available&status=eaten", [tenant], "query.status"),
        ("header X-Tenant-Id", "/v1/pets", [tenant, ("x-tenant-id", "not-a-uuid")], "header.X-Tenant-Id"),
        ("cookie session", "/v1/pets/mine", [("cookie", f"session={SESSION}; session=bad!")], "cookie.session"),
    ]
    through = []
    for what, path, headers, location in cases:
        resp = raw_request(e, "GET", path, headers)
        if (resp[0], harness.reason_of(resp)) != (400, "schema.parameter"):
            through.append(f"{what}: {resp[0]}")
        else:
            doc = harness.json_body(resp[2])
            assert (doc["location"], doc["message"]) == (location, "is given more than once"), resp
    assert not through, "a second, invalid value got through: " + "; ".join(through)
    # Two valid values are refused the same way: which one counts is unknown.
    refused(e.request("GET", "/v1/pets?limit=10&limit=20", TENANT_HEADERS), 400, "schema.parameter", "query.limit")
    refused(e.request("GET", "/v1/pets?limit=100000&limit=10", TENANT_HEADERS), 400, "schema.parameter", "query.limit")


def test_a_body_over_max_body_bytes_is_refused(api, upstream):
    e = api(config(max_body_bytes=2048))
    # Valid JSON, only too large: refused whether its length is declared or not.
    big = dumps(new_pet(owner={"name": "A" * 2500, "email": "ada@example.org"}))
    assert len(big) > 2048
    doc = refused(e.request("POST", "/v1/pets", body_headers("application/json"), big), 400, "schema.body", "")
    assert doc["message"] == "body larger than openapi.max_body_bytes", doc
    status, _, data = harness.h2_request(e.port, "POST", "/v1/pets", [("x-tenant-id", TENANT), ("content-type", "application/json")], big)
    assert (status, harness.json_body(data).get("reason")) == (400, "schema.body"), (status, data)
    # Chunked HTTP/1.1: counted as it arrives.
    status, data = chunked(e, "POST", "/v1/pets", body_headers("application/json"), big, 500)
    assert (status, harness.json_body(data).get("reason")) == (400, "schema.body"), (status, data)
    assert upstream.count() == 0, upstream.seen
    # At the limit exactly, it is validated and passes.
    pad = 2048 - len(dumps(with_owner(name="")))
    exact = dumps(with_owner(name="A" * pad))
    assert len(exact) == 2048, len(exact)
    reached(e.request("POST", "/v1/pets", body_headers("application/json"), exact), exact)
    over = dumps(with_owner(name="A" * (pad + 1)))
    refused(e.request("POST", "/v1/pets", body_headers("application/json"), over), 400, "schema.body", "")
    # A declared media type palisade does not parse (an upload) is not
    # buffered: larger than max_body_bytes, it passes, whole.
    photo = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 40
    reached(e.request("POST", "/v1/pets/7/photos", {"content-type": "image/jpeg"}, photo), photo)
    status, _, data = harness.h2_request(e.port, "POST", "/v1/pets/7/photos", [("content-type", "image/png"), ("content-length", str(len(photo)))], photo)
    assert status == 200 and harness.json_body(data)["body_len"] == len(photo), (status, data[:300])
    # Its media type is still checked: an undeclared one is refused.
    refused(e.request("POST", "/v1/pets/7/photos", {"content-type": "image/gif"}, photo), 400, "schema.body", "")


def test_the_security_event_names_operation_location_and_message_never_a_value(api, upstream):
    e = api(config())
    cases = [
        ("oa-param", "GET", f"/v1/pets?limit=10&status={ECHO_MARKERS['enum']}", TENANT_HEADERS, None,
         ("schema.parameter", "listPets", "query.status", "is not one of the allowed values")),
        ("oa-header", "GET", "/v1/pets", {"x-tenant-id": ECHO_MARKERS["uuid"]}, None,
         ("schema.parameter", "listPets", "header.X-Tenant-Id", "is not a valid uuid")),
        ("oa-path", "GET", "/v1/pets/42/photos/not-a-uuid", {}, None,
         ("schema.parameter", "getPetPhoto", "path.photoId", "is not a valid uuid")),
        ("oa-body", "POST", "/v1/pets", body_headers("application/json"), dumps(with_owner(email=ECHO_MARKERS["email"])),
         ("schema.body", "createPet", "/owner/email", "is not a valid email address")),
        ("oa-json", "POST", "/v1/pets", body_headers("application/json"), ECHO_MARKERS["json"].encode(),
         ("schema.body", "createPet", "", "not valid JSON")),
        ("oa-unknown", "GET", "/v1/admin/users", {}, None,
         ("schema.unknown_operation", None, "", "no operation of the API has this method and path")),
    ]  # fmt: skip
    for rid, method, path, headers, body, _ in cases:
        resp = e.request(method, path, {**headers, "x-request-id": rid}, body)
        assert resp[0] in (400, 404), resp
    log = e.wait_for_log('"request_id":"oa-unknown"')
    for rid, _, _, _, _, (reason, operation, location, message) in cases:
        event = events_by_id(e, rid, log)
        assert (event["action"], event["reason"], event["stage"]) == ("deny", reason, "schema"), event
        (finding,) = event["findings"]
        assert (finding["stage"], finding["reason"], finding["mode"]) == ("schema", reason, "enforce"), finding
        assert (finding["operation"], finding["location"], finding["message"]) == (operation, location, message), finding
        assert event["route"] == "default", event
    # No value the client sent is in the log: not in an event, not anywhere.
    for value in ECHO_MARKERS.values():
        assert value not in log, f"{value!r} is in Envoy's log"
    assert upstream.count() == 0, upstream.seen


def test_a_monitored_route_class_lets_bad_requests_through_and_logs_them(api, upstream):
    e = api(config())
    bad_order = dumps({"petId": 7, "quantity": 50})
    resp = e.request("POST", "/v1/store/orders", {**JSON, "x-request-id": "oa-monitor-body"}, bad_order)
    reached(resp, bad_order)
    reached(e.request("GET", "/v1/store/refunds", {"x-request-id": "oa-monitor-unknown"}))
    # The same schema is enforced on the default class: the pets are.
    refused(e.request("POST", "/v1/pets", body_headers("application/json"), dumps(new_pet(details={}))), 400, "schema.body")
    log = e.wait_for_log('"request_id":"oa-monitor-unknown"')
    event = events_by_id(e, "oa-monitor-body", log)
    assert (event["action"], event["reason"], event["route"]) == ("monitor", "schema.body", "orders"), event
    (finding,) = event["findings"]
    assert (finding["mode"], finding["operation"], finding["location"]) == ("monitor", "placeOrder", "/quantity"), finding
    assert finding["message"] == "is above the maximum", finding
    event = events_by_id(e, "oa-monitor-unknown", log)
    assert (event["action"], event["reason"]) == ("monitor", "schema.unknown_operation"), event
    stats = e.prometheus()
    counted = harness.palisade_counter(
        stats, "palisade_findings_total", stage="schema", reason="schema_body", mode="monitor", route="orders"
    )
    assert counted == 1, harness.palisade_lines(stats)
    allowed = harness.palisade_counter(stats, "palisade_requests_total", decision="allow", route="orders")
    assert allowed == 2, harness.palisade_lines(stats)
    assert [p for _, p, _ in upstream.seen] == ["/v1/store/orders", "/v1/store/refunds"], upstream.seen


def test_default_deny_lets_declared_classes_and_operations_through(api, upstream):
    # The document monitored on the default class: an undeclared request
    # there is monitored by the stage, and refused by default_deny.
    e = api(config(default_deny=True, routes={"orders": "monitor", "health": "off", "default": "monitor"}))
    reached(e.request("GET", "/healthz"))  # a route class (the document is off there)
    reached(e.request("GET", "/v1/store/anything"))  # a route class (monitored)
    reached(e.request("GET", "/v1/pets?status=sold", TENANT_HEADERS))  # an operation
    reached(e.request("POST", "/v1/pets", body_headers("application/json"), dumps(new_pet())))
    before = upstream.count()
    for method, path in [("GET", "/v1/new-endpoint"), ("DELETE", "/v1/pets"), ("GET", "/admin"), ("GET", "/healthz/x")]:
        resp = e.request(method, path, {"x-request-id": f"dd-{method}-{path.count('/')}-{len(path)}"})
        doc = refused(resp, 404, "route.undeclared")
        assert "location" not in doc, doc
    assert upstream.count() == before, upstream.seen
    log = e.wait_for_log('"request_id":"dd-GET-2-10"')
    event = events_by_id(e, "dd-GET-2-10", log)
    assert (event["action"], event["reason"]) == ("deny", "route.undeclared"), event
    assert event["reasons"] == ["schema.unknown_operation", "route.undeclared"], event
    assert [f["mode"] for f in event["findings"]] == ["monitor", "enforce"], event


def test_default_deny_with_the_document_off_on_the_default_class(api, upstream):
    """`off`: the document's operations are not checked, but still declare."""
    e = api(config(default_deny=True, routes={"orders": "monitor", "health": "off", "default": "off"}))
    reached(e.request("GET", "/v1/pets?limit=1000"))  # declared; its parameters are not checked
    reached(e.request("GET", "/v1/pets/mine"))
    reached(e.request("GET", "/healthz"))
    for method, path in [("GET", "/v1/new-endpoint"), ("PATCH", "/v1/pets/42"), ("GET", "/pets")]:
        refused(e.request(method, path), 404, "route.undeclared")
    assert upstream.count() == 3, upstream.seen


def test_default_deny_without_a_document_declares_by_route_class(api, upstream):
    e = api({"routes": ROUTES, "default_deny": True})
    reached(e.request("GET", "/healthz"))
    reached(e.request("GET", "/v1/store/orders/7"))
    refused(e.request("GET", "/v1/pets"), 404, "route.undeclared")
    refused(e.request("POST", "/anything", JSON, b"{}"), 404, "route.undeclared")
    assert upstream.count() == 2, upstream.seen


def test_without_default_deny_an_undeclared_request_on_an_off_class_passes(api, upstream):
    """The control of the default_deny tests: the same requests pass when it is not set."""
    e = api(config(routes={"orders": "monitor", "health": "off", "default": "off"}))
    for method, path in [("GET", "/v1/new-endpoint"), ("PATCH", "/v1/pets/42"), ("GET", "/pets")]:
        reached(e.request(method, path))


@pytest.mark.parametrize("source", ["file", "uri"])
def test_a_document_by_reference_is_refused_by_the_filter(expect_failure, source):
    where = "specs/petstore.json" if source == "file" else "https://petstore.example/openapi.json"
    rc, log = expect_failure({"openapi": {"document": {source: where}}}, mode="serve")
    assert rc != 0, harness.tail(log, 25)
    lines = [l for l in log.splitlines() if "palisade" in l and ("[error]" in l or "[critical]" in l)]
    assert any(f"openapi.document.{source}" in l and "palisade-check --resolve" in l for l in lines), "\n".join(lines)
