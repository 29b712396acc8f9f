#!/usr/bin/env python3
"""Package palisade.wasm as an OCI image layout, without a container engine.

    python3 envoy/oci/oci_layout.py [--wasm PATH] [--out DIR] [--tag TAG]

writes an OCI image layout (image-spec v1.1, "Image Layout") to DIR
(default target/oci/palisade): the files `oci-layout`, `index.json` and
`blobs/sha256/<hex>`. The image is the *compat* variant of the Wasm OCI image
format that Istio (WasmPlugin) and Envoy Gateway (EnvoyExtensionPolicy, code
type Image) both pull:

  * one OCI image manifest (`application/vnd.oci.image.manifest.v1+json`),
    annotated `module.wasm.image/variant: compat`;
  * one layer, `application/vnd.oci.image.layer.v1.tar+gzip`, a tar holding a
    single file `plugin.wasm` (the filter) - the same thing `docker build`
    makes from envoy/oci/Dockerfile (`FROM scratch`, `COPY ... plugin.wasm`);
  * an image config with os `wasip1`, architecture `wasm` (Go's names for the
    target, as the image-spec asks) and the layer's diff id.

The output is reproducible: fixed timestamps, owners and modes in the tar, no
time in the gzip header, sorted-key JSON. The same palisade.wasm always gives
the same manifest digest, which the script prints and writes to
`<DIR>.digest`: it is the `sha256` to put in the Istio WasmPlugin and the
Envoy Gateway policy (both compare it with the manifest digest of the pulled
image). Push the layout with any OCI tool, keeping the digest, e.g.

    skopeo copy --preserve-digests oci:target/oci/palisade:0.1.0 docker://REGISTRY/palisade:0.1.0
    crane push target/oci/palisade REGISTRY/palisade:0.1.0
    oras cp --from-oci-layout target/oci/palisade:0.1.0 REGISTRY/palisade:0.1.0

Standard library only, so it also runs outside the project's virtualenv.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import shutil
import sys
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_WASM = REPO_ROOT / "target" / "wasm32-wasip1" / "release" / "palisade.wasm"
DEFAULT_OUT = REPO_ROOT / "target" / "oci" / "palisade"

MT_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_INDEX = "application/vnd.oci.image.index.v1+json"
MT_CONFIG = "application/vnd.oci.image.config.v1+json"
MT_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
WASM_FILE_IN_LAYER = "plugin.wasm"
VARIANT_ANNOTATION = "module.wasm.image/variant"
REF_NAME_ANNOTATION = "org.opencontainers.image.ref.name"


@dataclass(frozen=True)
class Blob:
    media_type: str
    data: bytes

    @property
    def digest(self) -> str:
        return "sha256:" + hashlib.sha256(self.data).hexdigest()

    def descriptor(self, annotations: dict[str, str] | None = None) -> dict:
        d = {"mediaType": self.media_type, "digest": self.digest, "size": len(self.data)}
        if annotations:
            d["annotations"] = dict(annotations)
        return d


@dataclass(frozen=True)
class Image:
    tag: str
    layer: Blob
    config: Blob
    manifest: Blob
    index: bytes

    @property
    def digest(self) -> str:
        """The manifest digest: what registries, Istio and Envoy Gateway call the image digest."""
        return self.manifest.digest


def canonical_json(obj: object) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def workspace_version() -> str:
    """`version` of Cargo.toml's [workspace.package] (no TOML parser needed)."""
    text = (REPO_ROOT / "Cargo.toml").read_text()
    m = re.search(r'^\[workspace\.package\]$(?:(?!^\[).)*?^version\s*=\s*"([^"]+)"', text, re.M | re.S)
    if not m:
        raise SystemExit("no version in Cargo.toml's [workspace.package]")
    return m.group(1)


def layer_tar(wasm: bytes) -> bytes:
    """An uncompressed tar with the single entry `plugin.wasm`, reproducible."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo(WASM_FILE_IN_LAYER)
        info.size = len(wasm)
        info.mode = 0o644
        info.mtime = 0
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        tar.addfile(info, io.BytesIO(wasm))
    return buf.getvalue()


def gzip_bytes(data: bytes) -> bytes:
    buf = io.BytesIO()
    # mtime=0 and no file name: the gzip header carries nothing that varies.
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, compresslevel=9, mtime=0) as gz:
        gz.write(data)
    return buf.getvalue()


def build_image(wasm: bytes, tag: str, version: str) -> Image:
    if not wasm.startswith(b"\0asm"):
        raise ValueError("not a WebAssembly binary (no \\0asm magic)")
    tar = layer_tar(wasm)
    layer = Blob(MT_LAYER, gzip_bytes(tar))
    config = Blob(
        MT_CONFIG,
        canonical_json(
            {
                "architecture": "wasm",
                "os": "wasip1",
                "config": {},
                "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(tar).hexdigest()]},
            }
        ),
    )
    manifest = Blob(
        MT_MANIFEST,
        canonical_json(
            {
                "schemaVersion": 2,
                "mediaType": MT_MANIFEST,
                "config": config.descriptor(),
                "layers": [layer.descriptor()],
                "annotations": {
                    VARIANT_ANNOTATION: "compat",
                    "org.opencontainers.image.title": "palisade",
                    "org.opencontainers.image.description": "Palisade proxy-wasm HTTP filter (plugin.wasm)",
                    "org.opencontainers.image.version": version,
                    "org.opencontainers.image.licenses": "Apache-2.0",
                },
            }
        ),
    )
    index = canonical_json(
        {
            "schemaVersion": 2,
            "mediaType": MT_INDEX,
            "manifests": [manifest.descriptor({REF_NAME_ANNOTATION: tag})],
        }
    )
    return Image(tag=tag, layer=layer, config=config, manifest=manifest, index=index)


def write_layout(image: Image, out: Path) -> None:
    """Writes the layout to `out` (replacing what was there) and `<out>.digest`."""
    if out.exists():
        shutil.rmtree(out)
    blobs = out / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    for blob in (image.layer, image.config, image.manifest):
        (blobs / blob.digest.split(":", 1)[1]).write_bytes(blob.data)
    (out / "oci-layout").write_bytes(canonical_json({"imageLayoutVersion": "1.0.0"}))
    (out / "index.json").write_bytes(image.index)
    out.with_name(out.name + ".digest").write_text(image.digest + "\n")


def main(argv: list[str] | None = None) -> int:
    version = workspace_version()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--wasm", type=Path, default=DEFAULT_WASM, help="palisade.wasm (default: the release build)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="layout directory (default: target/oci/palisade)")
    ap.add_argument("--tag", default=version, help=f"reference name in index.json (default: {version})")
    args = ap.parse_args(argv)
    try:
        wasm = args.wasm.read_bytes()
    except OSError as e:
        print(f"cannot read {args.wasm}: {e} (run `make build`)", file=sys.stderr)
        return 1
    image = build_image(wasm, args.tag, version)
    write_layout(image, args.out)
    print(f"OCI image layout: {args.out} (tag {image.tag})")
    print(f"  layer  {image.layer.digest}  {len(image.layer.data)} bytes ({WASM_FILE_IN_LAYER}, {len(wasm)} bytes)")
    print(f"  image  {image.digest}")
    print(f"sha256 for the Istio WasmPlugin / Envoy Gateway policy: {image.digest.split(':', 1)[1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
