#!/usr/bin/env python3
"""Sign HTTP requests for palisade with RFC 9421 ``hmac-sha256`` signatures.

The signature is made by the independent ``http-message-signatures`` package
(PyPI, pinned in ``tests/requirements.txt``), not by palisade's code: the
integration tests use this module so that what palisade verifies is what a
real API client produces.  The ``Content-Digest`` (RFC 9530) is computed here
with :mod:`hashlib`, over the body bytes exactly as sent.

As a library (the tests)::

    headers = sign("POST", "http://127.0.0.1:10000/payments?x=1",
                   {"Content-Type": "application/json"}, b'{"amount": 5}',
                   key_id="client-a", secret=secret_bytes,
                   components=DEFAULT_COMPONENTS)
    # send exactly these headers and this body

As a command (the README and the demo)::

    python tests/integration/signing.py --key-id demo-client --secret-b64 "$SECRET_B64" \\
        POST http://localhost:10000/payments '{"amount": 5}'

prints a ready-to-run ``curl`` command.  The secret may also come from the
``PALISADE_SECRET_B64`` environment variable (keeps it out of shell history).
Sign the request as it reaches Envoy: the URL's host and port are the
``@authority`` palisade sees, the path and query are ``@path`` and ``@query``.
"""

from __future__ import annotations

import argparse
import base64
import datetime
import hashlib
import os
import shlex
import sys
import uuid
from collections.abc import Mapping, Sequence

import requests
from http_message_signatures import HTTPMessageSigner, MappingKeyResolver, algorithms

#: What palisade's payment-style policies require in the examples and tests.
DEFAULT_COMPONENTS: tuple[str, ...] = (
    "@method",
    "@authority",
    "@path",
    "@query",
    "content-digest",
    "content-type",
)
DEFAULT_LABEL = "sig1"
DIGEST_ALGORITHMS = {"sha-256": hashlib.sha256, "sha-512": hashlib.sha512}


class _Auto:
    """Sentinel: "generate one" (a fresh UUID nonce, the current time)."""

    def __repr__(self) -> str:
        return "AUTO"


AUTO = _Auto()


def content_digest(body: bytes, algorithm: str = "sha-256") -> str:
    """RFC 9530 ``Content-Digest`` value: ``sha-256=:<base64 of the hash>:``."""
    try:
        hasher = DIGEST_ALGORITHMS[algorithm]
    except KeyError:
        raise ValueError(f"unsupported digest algorithm {algorithm!r}; use one of {sorted(DIGEST_ALGORITHMS)}")
    return f"{algorithm}=:{base64.b64encode(hasher(body).digest()).decode('ascii')}:"


def _created_datetime(created: int | float | datetime.datetime | _Auto) -> datetime.datetime:
    if isinstance(created, _Auto):
        return datetime.datetime.now(datetime.timezone.utc)
    if isinstance(created, datetime.datetime):
        return created if created.tzinfo else created.replace(tzinfo=datetime.timezone.utc)
    return datetime.datetime.fromtimestamp(int(created), tz=datetime.timezone.utc)


def sign(
    method: str,
    url: str,
    headers: Mapping[str, str] | None,
    body: bytes | str | None,
    key_id: str,
    secret: bytes,
    components: Sequence[str] = DEFAULT_COMPONENTS,
    nonce: str | None | _Auto = AUTO,
    created: int | float | datetime.datetime | _Auto = AUTO,
    *,
    label: str = DEFAULT_LABEL,
    digest: str | None = "sha-256",
    include_alg: bool = True,
    tag: str | None = None,
    expires: int | float | datetime.datetime | None = None,
) -> dict[str, str]:
    """Headers to send with ``method url`` and ``body``, signed with ``secret``.

    * ``headers``: the request's own headers (e.g. ``Content-Type``); returned
      together with ``Content-Digest``, ``Signature-Input`` and ``Signature``
      (never ``Content-Length``: the HTTP client sets it).
    * ``body``: the exact bytes that will be sent (``str`` is UTF-8 encoded).
    * ``components``: the covered components, in order.  When it lists
      ``content-digest`` and ``headers`` has none, a ``Content-Digest`` with
      ``digest`` (``"sha-256"`` or ``"sha-512"``) is computed over ``body``
      (empty when ``body`` is None).  A ``Content-Digest`` passed in
      ``headers`` is kept as is, right or wrong.
    * ``nonce``: ``AUTO`` (a fresh UUID4), a string, or None for none.
    * ``created``: ``AUTO`` (now), a Unix time, or an aware datetime.
    """
    if isinstance(body, str):
        body = body.encode("utf-8")
    out_headers = dict(headers or {})
    has_digest = any(name.lower() == "content-digest" for name in out_headers)
    if "content-digest" in components and not has_digest and digest is not None:
        out_headers["Content-Digest"] = content_digest(body or b"", digest)
        has_digest = True

    prepared = requests.Request(method.upper(), url, headers=out_headers, data=body).prepare()

    signer = HTTPMessageSigner(
        signature_algorithm=algorithms.HMAC_SHA256,
        key_resolver=MappingKeyResolver(public_keys={}, private_keys={key_id: secret}),
    )
    signer.sign(
        prepared,
        key_id=key_id,
        created=_created_datetime(created),
        expires=None if expires is None else _created_datetime(expires),
        nonce=uuid.uuid4().hex if isinstance(nonce, _Auto) else nonce,
        label=label,
        tag=tag,
        include_alg=include_alg,
        covered_component_ids=tuple(components),
        # The digest is ours (hashlib, above): the package only checks its
        # format and signs it when `content-digest` is covered.  No `body=`:
        # with it the package would add `content-digest` coverage on its own.
        use_existing_digest=has_digest,
    )
    # Content-Length is left to the HTTP client: it is not signed, and a
    # stale one would make a test that alters the body send the old one.
    return {name: value for name, value in prepared.headers.items() if name.lower() != "content-length"}


def curl_command(method: str, url: str, headers: Mapping[str, str], body: bytes | None) -> str:
    """A copy-pasteable curl command sending exactly this request."""
    parts = ["curl", "-i", "-X", method.upper(), url]
    for name, value in headers.items():
        if name.lower() == "content-length":
            continue  # curl computes it
        parts += ["-H", f"{name}: {value}"]
    if body:
        parts += ["--data-binary", body.decode("utf-8", "surrogateescape")]
    return " ".join(shlex.quote(p) for p in parts)


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Sign a request for palisade (RFC 9421 hmac-sha256) and print a curl command.",
        epilog="example: %(prog)s --key-id demo-client --secret-b64 \"$SECRET_B64\" "
        "POST http://localhost:10000/payments '{\"amount\": 5}'",
    )
    p.add_argument("--key-id", required=True, help="key id the secret is configured under in palisade")
    p.add_argument(
        "--secret-b64",
        default=os.environ.get("PALISADE_SECRET_B64"),
        help="the shared secret, standard base64 (default: $PALISADE_SECRET_B64)",
    )
    p.add_argument(
        "--components",
        default=",".join(DEFAULT_COMPONENTS),
        help="comma-separated covered components (default: %(default)s)",
    )
    p.add_argument("--label", default=DEFAULT_LABEL, help="signature label (default: %(default)s)")
    p.add_argument("--tag", default=None, help="signature tag parameter, if the policy requires one")
    p.add_argument("--no-nonce", action="store_true", help="sign without a nonce")
    p.add_argument("--digest", choices=sorted(DIGEST_ALGORITHMS), default="sha-256")
    p.add_argument(
        "--content-type",
        default=None,
        help="Content-Type header (default: application/json when there is a body or content-type is covered)",
    )
    p.add_argument("-H", "--header", action="append", default=[], metavar="'Name: value'", help="extra header")
    p.add_argument("method")
    p.add_argument("url", help="absolute URL as the client sends it to Envoy, e.g. http://localhost:10000/payments")
    p.add_argument("body", nargs="?", default=None, help="request body (UTF-8)")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    if not args.secret_b64:
        print("error: no secret: pass --secret-b64 or set PALISADE_SECRET_B64", file=sys.stderr)
        return 2
    try:
        secret = base64.b64decode(args.secret_b64, validate=True)
    except ValueError:
        print("error: --secret-b64 is not valid standard base64", file=sys.stderr)
        return 2
    components = [c.strip() for c in args.components.split(",") if c.strip()]
    body = None if args.body is None else args.body.encode("utf-8")
    headers: dict[str, str] = {}
    for h in args.header:
        name, sep, value = h.partition(":")
        if not sep:
            print(f"error: header {h!r} is not 'Name: value'", file=sys.stderr)
            return 2
        headers[name.strip()] = value.strip()
    content_type = args.content_type
    if content_type is None and (body is not None or "content-type" in components):
        content_type = "application/json"
    if content_type is not None and not any(n.lower() == "content-type" for n in headers):
        headers["Content-Type"] = content_type
    signed = sign(
        args.method,
        args.url,
        headers,
        body,
        key_id=args.key_id,
        secret=secret,
        components=components,
        nonce=None if args.no_nonce else AUTO,
        label=args.label,
        tag=args.tag,
        digest=args.digest,
    )
    print(curl_command(args.method, args.url, signed, body))
    return 0


if __name__ == "__main__":
    sys.exit(main())
