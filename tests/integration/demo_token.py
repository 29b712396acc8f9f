"""Mint a token the demo configuration (envoy/envoy.yaml) accepts.

The demo provider's key pair is the Ed25519 example of RFC 8037 (appendix
A.1): its private half is published, so these tokens prove nothing outside
the demo. Tokens are signed by PyJWT, an implementation independent of
palisade's.

    .venv/bin/python tests/integration/demo_token.py --sub alice
    .venv/bin/python tests/integration/demo_token.py --sub root --roles admin --amr pwd mfa
    .venv/bin/python tests/integration/demo_token.py --sub alice --bind target/tls/mtls/alpha.crt

`--bind CERT` binds the token to a client certificate (RFC 8705): its
`cnf` claim carries `x5t#S256`, the certificate's SHA-256 thumbprint, and
palisade accepts it only over a connection that presents that certificate.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import time
from pathlib import Path

import jwt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

DEMO_ISSUER = "https://idp.palisade.demo"
DEMO_AUDIENCE = "palisade-demo"
DEMO_KID = "demo-ed25519"
# RFC 8037 A.1 private key `d` (base64url); public `x` is in envoy/envoy.yaml.
DEMO_PRIVATE_D = "nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A"


# RFC 8037 A.1 public key `x`: the demo issuer's only key.
DEMO_PUBLIC_X = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"


def demo_provider(**extra: object) -> dict:
    """palisade's `jwt.providers[]` entry for the demo issuer (inline key), with ``extra`` fields."""
    return {
        "name": "demo-idp",
        "issuer": DEMO_ISSUER,
        "audiences": [DEMO_AUDIENCE],
        "algorithms": ["EdDSA"],
        "jwks": {"inline": {"keys": [{"kty": "OKP", "crv": "Ed25519", "kid": DEMO_KID, "x": DEMO_PUBLIC_X}]}},
        **extra,
    }


def demo_private_key() -> Ed25519PrivateKey:
    d = base64.urlsafe_b64decode(DEMO_PRIVATE_D + "=" * (-len(DEMO_PRIVATE_D) % 4))
    return Ed25519PrivateKey.from_private_bytes(d)


def x5t_s256(cert: Path | str | bytes) -> str:
    """RFC 8705's `x5t#S256` of a certificate (a PEM file's path, or its PEM
    or DER bytes): base64url, without padding, of the SHA-256 of its DER."""
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    data = cert if isinstance(cert, bytes) else Path(cert).read_bytes()
    if data.lstrip().startswith(b"-----BEGIN"):
        data = x509.load_pem_x509_certificate(data).public_bytes(Encoding.DER)
    return base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def bound_to(cert: Path | str | bytes) -> dict:
    """The `cnf` claim binding a token to ``cert`` (see :func:`x5t_s256`)."""
    return {"x5t#S256": x5t_s256(cert)}


def mint(sub: str, lifetime_s: int = 600, **claims: object) -> str:
    now = int(time.time())
    payload = {"iss": DEMO_ISSUER, "aud": DEMO_AUDIENCE, "sub": sub, "iat": now, "exp": now + lifetime_s}
    payload.update({k: v for k, v in claims.items() if v is not None})
    return jwt.encode(payload, demo_private_key(), algorithm="EdDSA", headers={"kid": DEMO_KID})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sub", default="alice")
    parser.add_argument("--lifetime", type=int, default=600, help="seconds (the demo allows at most 900)")
    parser.add_argument("--roles", nargs="*")
    parser.add_argument("--amr", nargs="*")
    parser.add_argument("--tenant")
    parser.add_argument("--bind", metavar="CERT", help="bind the token to this client certificate (PEM): cnf x5t#S256")
    args = parser.parse_args()
    cnf = bound_to(args.bind) if args.bind else None
    print(mint(args.sub, args.lifetime, roles=args.roles, amr=args.amr, tenant=args.tenant, cnf=cnf))


if __name__ == "__main__":
    main()
