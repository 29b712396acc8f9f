"""envoy/k8s/: the plain-Envoy manifests (kubernetes-validate --strict, the
core API schemas), the generated palisade.wasm ConfigMap (under the 1 MiB
cap), the Istio WasmPlugin and the Gateway API HTTPRoute (the published
schemas of @kubernetes-models/istio and @kubernetes-models/gateway-api), the
Envoy Gateway EnvoyExtensionPolicy and EnvoyProxy (tests/deploy/schemas/),
the example Secrets and the patches of objects the user owns (the Istio
gateway Deployment, the Envoy Gateway Gateway: applied to representative
objects and validated), and that the pieces reference each other correctly,
the global mode's rate-limit service and Redis included (Envoy's cluster ->
the service's headless Service -> its pods -> the Redis Service -> Redis,
fenced by NetworkPolicies, every pod within the namespace's restricted
profile, the service's image rendered like the filter's).
How palisade's secrets flow through them is test_secrets.py's.
"""

from __future__ import annotations

import base64
import copy
import json
import re
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

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


# ---------------------------------------------------------------------------
# The global mode: the rate-limit service and Redis (plain/)
# ---------------------------------------------------------------------------
RLS_IMAGE = "ghcr.io/example/palisade-ratelimit:0.1.0"


def _plain_objects(directory: Path) -> dict[tuple[str, str], dict]:
    return _by_kind(sorted(directory.glob("*.yaml")))


def _flag(args: list[str], flag: str) -> str:
    assert args.count(flag) == 1, f"{flag} must be given once in {args}"
    return args[args.index(flag) + 1]


def _container(deployment: dict) -> dict:
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


def _port_named(container: dict, name: str) -> int:
    (port,) = [p["containerPort"] for p in container["ports"] if p["name"] == name]
    return port


def _global_cluster() -> dict:
    (section,) = {json.dumps(s, sort_keys=True): s for s in deploy.global_sections(K8S_ENVOY)}.values()
    return deploy.clusters(K8S_ENVOY.bootstrap())[section["cluster"]]


def _address_of(cluster: dict) -> str:
    (endpoint,) = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"]
    return endpoint["endpoint"]["address"]["socket_address"]["address"]


def _service_of(objs: dict, host: str) -> dict:
    """The Service a cluster-internal DNS name (<name>.<namespace>.svc.cluster.local) names."""
    name, namespace, *rest = host.split(".")
    assert rest == ["svc", "cluster", "local"], f"{host}: not a Service's cluster DNS name"
    service = objs.get(("Service", name))
    assert service and service["metadata"]["namespace"] == namespace, f"{host}: no such Service in plain/"
    return service


def _selected(objs: dict, selector: dict) -> list[dict]:
    return [
        o for o in objs.values()
        if o["kind"] == "Deployment" and selector.items() <= o["spec"]["template"]["metadata"]["labels"].items()
    ]


def test_envoy_reaches_the_ratelimit_pods_over_http2(rendered):
    """palisade's global.cluster -> Envoy's cluster (STRICT_DNS, HTTP/2) ->
    the headless Service -> the rate-limit Deployment's gRPC port, which is
    where --listen puts the service."""
    objs = _plain_objects(rendered / "plain")
    cluster = _global_cluster()
    assert cluster["type"] == "STRICT_DNS" and deploy.speaks_http2(cluster)
    (endpoint,) = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"]
    address = endpoint["endpoint"]["address"]["socket_address"]
    service = _service_of(objs, address["address"])
    assert service["spec"].get("clusterIP") == "None", (
        "headless, so that STRICT_DNS sees every pod (a cluster IP pins each HTTP/2 connection to one pod)"
    )
    (port,) = [p for p in service["spec"]["ports"] if p["port"] == address["port_value"]]
    (deployment,) = _selected(objs, service["spec"]["selector"])
    container = _container(deployment)
    assert _port_named(container, port["targetPort"]) == int(_flag(container["args"], "--listen").rsplit(":", 1)[1])
    assert _flag(container["args"], "--listen").startswith("0.0.0.0:")


def test_ratelimit_deployment(rendered):
    """Two replicas, probes on the health port (readiness on /healthz:
    ready while Redis answers), requests and limits."""
    objs = _plain_objects(rendered / "plain")
    (deployment,) = _selected(objs, _service_of(objs, _address_of(_global_cluster()))["spec"]["selector"])
    assert deployment["spec"]["replicas"] == 2
    container = _container(deployment)
    health = int(_flag(container["args"], "--health-listen").rsplit(":", 1)[1])
    ready = container["readinessProbe"]["httpGet"]
    assert ready["path"] == "/healthz" and _port_named(container, ready["port"]) == health
    live = container["livenessProbe"]
    target = (live.get("httpGet") or live.get("tcpSocket"))["port"]
    assert _port_named(container, target) == health
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(container["resources"][kind]), f"resources.{kind}"


def test_ratelimit_counts_in_the_redis_service(rendered):
    """--redis-url names the Redis Service and its port, which leads to the
    Redis container's port; Redis is the compose file's Redis (7.0 or
    later), one replica, never two at once."""
    objs = _plain_objects(rendered / "plain")
    (deployment,) = _selected(objs, _service_of(objs, _address_of(_global_cluster()))["spec"]["selector"])
    url = urlsplit(_flag(_container(deployment)["args"], "--redis-url"))
    assert url.scheme == "redis" and url.password is None, "no password in a manifest"
    service = _service_of(objs, url.hostname)
    assert service["spec"].get("type", "ClusterIP") == "ClusterIP" and not service["spec"].get("externalIPs"), (
        "Redis stays inside the cluster"
    )
    (port,) = [p for p in service["spec"]["ports"] if p["port"] == (url.port or 6379)]
    (redis,) = _selected(objs, service["spec"]["selector"])
    assert _port_named(_container(redis), port["targetPort"]) == 6379
    assert redis["spec"]["replicas"] == 1 and redis["spec"]["strategy"]["type"] == "Recreate"
    compose = yaml.safe_load(deploy.COMPOSE_FILE.read_text())["services"]["redis"]["image"]
    assert _container(redis)["image"] == compose, "one Redis for compose and Kubernetes"


def test_every_plain_pod_meets_the_restricted_profile(rendered):
    """The namespace enforces Pod Security `restricted`: a pod that does not
    meet it is refused at admission, not here, unless this checks it."""
    objs = _plain_objects(rendered / "plain")
    (namespace,) = [o for o in objs.values() if o["kind"] == "Namespace"]
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    deployments = [o for o in objs.values() if o["kind"] == "Deployment"]
    assert {d["metadata"]["name"] for d in deployments} >= {"palisade-envoy", "palisade-ratelimit", "palisade-redis"}
    for d in deployments:
        pod = d["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, d["metadata"]["name"]
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", d["metadata"]["name"]
        assert pod.get("automountServiceAccountToken") is False, d["metadata"]["name"]
        for c in pod["containers"]:
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True, c["name"]
            assert sc["capabilities"]["drop"] == ["ALL"] and not sc["capabilities"].get("add"), c["name"]
            assert not any("hostPort" in p for p in c.get("ports", [])), c["name"]
        for v in pod.get("volumes", []):
            assert set(v) - {"name"} <= {"configMap", "secret", "emptyDir"}, v


def test_network_policies_fence_redis_and_the_service(rendered):
    """Only the rate-limit pods reach Redis; only the Envoy pods reach the
    service's gRPC port."""
    objs = _plain_objects(rendered / "plain")
    policies = {o["metadata"]["name"]: o for o in objs.values() if o["kind"] == "NetworkPolicy"}
    envoy_labels = objs[("Deployment", "palisade-envoy")]["spec"]["template"]["metadata"]["labels"]

    def fenced(name: str) -> tuple[dict, dict]:
        deployment = objs[("Deployment", name)]
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        (policy,) = [p for p in policies.values() if p["spec"]["podSelector"]["matchLabels"].items() <= labels.items()]
        assert policy["spec"]["policyTypes"] == ["Ingress"]
        (rule,) = policy["spec"]["ingress"]
        (peer,) = rule["from"]
        assert set(peer) == {"podSelector"}, f"{name}: only pods of this namespace: {peer}"
        return rule, peer["podSelector"]["matchLabels"]

    rls_labels = objs[("Deployment", "palisade-ratelimit")]["spec"]["template"]["metadata"]["labels"]
    rule, allowed = fenced("palisade-redis")
    assert allowed.items() <= rls_labels.items() and not allowed.items() <= envoy_labels.items()
    assert [p["port"] for p in rule["ports"]] == [6379]
    rule, allowed = fenced("palisade-ratelimit")
    assert allowed.items() <= envoy_labels.items()
    rls = _container(objs[("Deployment", "palisade-ratelimit")])
    assert [p["port"] for p in rule["ports"]] == [_port_named(rls, "grpc")]


def test_ratelimit_image_is_rendered_like_the_filter_image(wasm, tmp_path):
    """The committed manifest names a placeholder image once (applied
    unchanged, it fails closed); `make k8s-manifests RLS_IMAGE=...` names
    the pushed one; a malformed reference is refused."""
    committed = K8S / "plain" / "ratelimit.yaml"
    assert committed.read_text().count(render.PLACEHOLDER_RLS_IMAGE) == 1
    others = [p for p in K8S.rglob("*.yaml") if p != committed]
    assert not [p for p in others if render.PLACEHOLDER_RLS_IMAGE in p.read_text()]

    render.render(wasm, tmp_path / "out", None, RLS_IMAGE)
    objs = _plain_objects(tmp_path / "out" / "plain")
    assert _container(objs[("Deployment", "palisade-ratelimit")])["image"] == RLS_IMAGE
    assert render.PLACEHOLDER_RLS_IMAGE not in "".join(p.read_text() for p in (tmp_path / "out").rglob("*.yaml"))

    render.render(wasm, tmp_path / "default", None)
    objs = _plain_objects(tmp_path / "default" / "plain")
    assert _container(objs[("Deployment", "palisade-ratelimit")])["image"] == render.PLACEHOLDER_RLS_IMAGE

    with pytest.raises(SystemExit, match="--rls-image"):
        render.render(wasm, tmp_path / "bad", None, "https://ghcr.io/example/palisade-ratelimit:0.1.0")
