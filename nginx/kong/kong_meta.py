"""Makes nginx/kong/palisade.meta.json from `palisade-check --schema`.

    target/debug/palisade-check --schema | python3 nginx/kong/kong_meta.py --out nginx/kong/palisade.meta.json

(`make kong-schema` does this.) palisade-check prints the configuration's
JSON Schema (draft 7) as the Rust configuration types derive it. Kong
validates a filter's `config_schema` with JSON Schema draft 4, so this
rewrites the few draft-7 forms draft 4 lacks (`const`, boolean subschemas,
numeric `exclusiveMinimum`/`exclusiveMaximum`), drops what draft 4 has no
use for (`examples`, `$comment`, the non-standard `format`s such as
`uint32`), refuses what it cannot rewrite (`$ref`, `definitions`, `if`,
`contains`, ...), and wraps the result as `{"config_schema": ...}` with the
draft-4 `$schema`. Standard library only.

tests/deploy/test_kong_schema.py fails when the committed file is not what
this makes from the current palisade-check.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

DRAFT4 = "http://json-schema.org/draft-04/schema#"

TITLE = "palisade configuration, schema version 1"
DESCRIPTION = (
    "JSON Schema (draft 4, the draft Kong validates filter schemas with) of palisade's whole configuration. "
    "GENERATED, do not edit: `make kong-schema` derives it from palisade's configuration types "
    "(`palisade-check --schema`, through nginx/kong/kong_meta.py). Kong checks each "
    "filter_chains[].filters[].config of a filter named palisade against it before palisade sees the "
    "configuration; palisade's on_configure then checks everything again, including what a JSON Schema cannot "
    "express (nginx/README.md lists it: unique names, key ids and key hashes, references to route and provider "
    "names, user.header or an authorization policy for user keys, valid regular expressions, bans.max >= "
    "bans.base, durations up to 30 days (a provider's clock_skew up to 1 h, a key-set fetch's timeout up to "
    "60 s) and remote key-set intervals in order, secrets that decode to 32 bytes or more, environment "
    "variables that exist and hold a valid value, inline JWK Set keys that are valid key material, one "
    "signature and one authorization policy per route class). Every object is closed (additionalProperties: "
    "false) like palisade's own parser, except an inline JWK Set (jwt.providers[].jwks.inline), a document of "
    "another format whose members RFC 7517 leaves open. tests/deploy/test_kong_schema.py fails when this file "
    "is stale, cross-checks it with palisade-check on README's samples, the shipped configurations and a corpus "
    "of valid and invalid ones, and compares its fields with README's configuration reference."
)

# Formats draft 4 defines; schemars' numeric ones (uint32, double, ...) are not.
DRAFT4_FORMATS = {"date-time", "email", "hostname", "ipv4", "ipv6", "uri"}
DROPPED = {"examples", "$comment", "$id", "title", "readOnly", "writeOnly", "deprecated"}
NOT_IN_DRAFT4 = {
    "$ref", "$defs", "definitions", "if", "then", "else", "contains", "propertyNames",
    "dependentRequired", "dependentSchemas", "prefixItems", "unevaluatedProperties", "unevaluatedItems",
}
# Keywords whose value is one subschema, a list of them, or a map of them.
ONE = {"items", "not", "additionalProperties", "additionalItems"}
LIST = {"allOf", "anyOf", "oneOf"}
MAP = {"properties", "patternProperties"}


class Unconvertible(ValueError):
    pass


def to_draft4(schema: Any, where: str = "#") -> dict:
    """`schema` (draft 7, every subschema inline) as draft 4."""
    if schema is True:
        return {}
    if schema is False:
        return {"not": {}}
    if not isinstance(schema, dict):
        raise Unconvertible(f"{where}: not a schema: {schema!r}")
    out: dict[str, Any] = {}
    for key, value in schema.items():
        at = f"{where}/{key}"
        if key in NOT_IN_DRAFT4:
            raise Unconvertible(f"{at}: draft 4 has no `{key}` (palisade's schema should be inline)")
        if key in DROPPED or key == "$schema":
            continue
        if key == "format" and value not in DRAFT4_FORMATS:
            continue
        if key == "const":
            out["enum"] = [value]
        elif key in ("exclusiveMinimum", "exclusiveMaximum") and not isinstance(value, bool):
            out["minimum" if key == "exclusiveMinimum" else "maximum"] = value
            out[key] = True
        elif key == "additionalProperties" and isinstance(value, bool):
            out[key] = value
        elif key in ONE and not isinstance(value, list):
            out[key] = to_draft4(value, at)
        elif key in LIST or (key == "items" and isinstance(value, list)):
            out[key] = [to_draft4(v, f"{at}/{i}") for i, v in enumerate(value)]
        elif key in MAP:
            out[key] = {name: to_draft4(v, f"{at}/{name}") for name, v in value.items()}
        else:
            out[key] = value
    return out


def kong_meta(schema: dict) -> dict:
    """Kong's filter metadata for palisade: `{"config_schema": <draft 4 schema>}`."""
    body = to_draft4(schema)
    return {"config_schema": {"$schema": DRAFT4, "title": TITLE, "description": DESCRIPTION, **{
        k: v for k, v in body.items() if k not in ("title", "description")}}}


def render(schema: dict) -> str:
    """The meta file's text: sorted keys, two-space indents, ASCII, a final newline."""
    return json.dumps(kong_meta(schema), indent=2, sort_keys=True, ensure_ascii=True) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="write here (default: standard output)")
    args = parser.parse_args(argv)
    try:
        text = render(json.load(sys.stdin))
    except (ValueError, Unconvertible) as e:
        print(f"kong_meta: {e}", file=sys.stderr)
        return 1
    if args.out:
        args.out.write_text(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
