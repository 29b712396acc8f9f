"""`make oci-layout` (envoy/oci/oci_layout.py) and envoy/oci/Dockerfile: the
image Istio and Envoy Gateway pull.

The layout is checked against the OCI image-spec (layout, index, manifest,
config, blob digests and sizes) and read back the way Istio's and Envoy
Gateway's fetchers read a *compat* Wasm image: the last layer, media type
application/vnd.oci.image.layer.v1.tar+gzip, gunzipped and untarred, its
`plugin.wasm` is the filter. When skopeo is installed (make deploy-setup
installs Debian's), it reads and copies the layout too: an independent
implementation of the same spec.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import io
import json
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

import deploy

OCI_DIR = deploy.REPO_ROOT / "envoy" / "oci"


def _load():
    spec = importlib.util.spec_from_file_location("oci_layout", OCI_DIR / "oci_layout.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("oci_layout", module)
    spec.loader.exec_module(module)
    return module


oci = _load()


@pytest.fixture(scope="module")
def layout(wasm, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("oci") / "palisade"
    proc = subprocess.run(
        [sys.executable, str(OCI_DIR / "oci_layout.py"), "--wasm", str(wasm), "--out", str(out), "--tag", "test"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    return out


def _blob(layout: Path, descriptor: dict) -> bytes:
    algorithm, hexdigest = descriptor["digest"].split(":")
    assert algorithm == "sha256"
    data = (layout / "blobs" / "sha256" / hexdigest).read_bytes()
    assert hashlib.sha256(data).hexdigest() == hexdigest, f"blob {hexdigest} does not match its digest"
    assert len(data) == descriptor["size"], f"blob {hexdigest}: size {len(data)} != descriptor {descriptor['size']}"
    return data


def test_layout_follows_the_image_spec(layout):
    assert json.loads((layout / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
    index = json.loads((layout / "index.json").read_text())
    assert index["schemaVersion"] == 2 and index["mediaType"] == oci.MT_INDEX
    (desc,) = index["manifests"]
    assert desc["mediaType"] == oci.MT_MANIFEST
    assert desc["annotations"] == {oci.REF_NAME_ANNOTATION: "test"}
    manifest = json.loads(_blob(layout, desc))
    assert manifest["schemaVersion"] == 2 and manifest["mediaType"] == oci.MT_MANIFEST
    assert manifest["annotations"][oci.VARIANT_ANNOTATION] == "compat"
    assert manifest["config"]["mediaType"] == oci.MT_CONFIG
    config = json.loads(_blob(layout, manifest["config"]))
    assert config["os"] and config["architecture"], "image-spec requires os and architecture"
    assert config["rootfs"]["type"] == "layers"
    blobs = {p.name for p in (layout / "blobs" / "sha256").iterdir()}
    assert blobs == {d["digest"].split(":")[1] for d in [desc, manifest["config"], *manifest["layers"]]}, "stray blobs"
    assert (layout.parent / "palisade.digest").read_text().strip() == desc["digest"]


def test_layer_is_what_istio_and_envoy_gateway_extract(layout, wasm):
    index = json.loads((layout / "index.json").read_text())
    manifest = json.loads(_blob(layout, index["manifests"][0]))
    config = json.loads(_blob(layout, manifest["config"]))
    assert len(manifest["layers"]) == 1, "the compat variant has exactly one layer"
    layer = manifest["layers"][-1]
    assert layer["mediaType"] == "application/vnd.oci.image.layer.v1.tar+gzip"
    compressed = _blob(layout, layer)
    tar_bytes = gzip.decompress(compressed)
    assert config["rootfs"]["diff_ids"] == ["sha256:" + hashlib.sha256(tar_bytes).hexdigest()]
    with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as tar:
        members = tar.getmembers()
        assert [m.name for m in members] == ["plugin.wasm"], "only the filter, nothing else"
        assert members[0].isreg() and members[0].mode == 0o644
        assert tar.extractfile(members[0]).read() == wasm.read_bytes()


def test_layout_is_reproducible(wasm):
    a = oci.build_image(wasm.read_bytes(), "x", "1")
    b = oci.build_image(wasm.read_bytes(), "y", "1")
    assert a.digest == b.digest, "the tag is not part of the image; nothing else may vary either"
    assert oci.build_image(wasm.read_bytes() + b"\0", "x", "1").digest != a.digest


def test_layout_refuses_what_is_not_wasm():
    with pytest.raises(ValueError):
        oci.build_image(b"#!/bin/sh\n", "x", "1")


def test_skopeo_reads_and_copies_the_layout(layout, tmp_path):
    skopeo = shutil.which("skopeo")
    if not skopeo:
        pytest.skip("skopeo not installed (make deploy-setup installs Debian's skopeo)")
    index = json.loads((layout / "index.json").read_text())
    digest = index["manifests"][0]["digest"]
    raw = subprocess.run([skopeo, "inspect", "--raw", f"oci:{layout}:test"], capture_output=True, timeout=60)
    assert raw.returncode == 0, raw.stderr.decode()
    assert "sha256:" + hashlib.sha256(raw.stdout).hexdigest() == digest
    copy = subprocess.run(
        [skopeo, "copy", "--quiet", "--preserve-digests", f"oci:{layout}:test", f"oci:{tmp_path / 'copy'}:test"],
        capture_output=True, text=True, timeout=60,
    )
    assert copy.returncode == 0, copy.stderr
    copied = json.loads((tmp_path / "copy" / "index.json").read_text())
    assert copied["manifests"][0]["digest"] == digest, "a registry push would change the digest"


def test_dockerfile_is_from_scratch_with_only_the_wasm():
    lines = [
        line.strip()
        for line in (OCI_DIR / "Dockerfile").read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    assert lines == ["FROM scratch", f"COPY palisade.wasm ./{oci.WASM_FILE_IN_LAYER}"], lines
    # The build context the comment prescribes holds the file the COPY names.
    assert deploy.WASM.name == "palisade.wasm"
