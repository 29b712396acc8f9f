"""Palisade's secrets in the deployment files (issue 7: secrets come from a
secret store - Kubernetes Secrets - never from inline values).

* No deployment file carries a key. Every palisade configuration except the
  `make run` demo (envoy/envoy.yaml) reads its secrets from the environment
  (`{"env": NAME}`); no YAML, JSON or NGINX file under envoy/ and nginx/ has
  a `base64` secret or an inline API-key hash; the example Secrets hold
  placeholders palisade refuses, and compose's example env file holds the
  demo's public values and nothing else.
* Every `{"env": NAME}` a deployment's configuration reads is handed to the
  wasm VM by that deployment - exactly those variables, no more - and the
  proxy process gets each one from that deployment's secret store:

    docker-compose  host_env_keys      <- env file (compose/palisade.env)
    plain k8s       host_env_keys      <- container env secretKeyRef -> Secret
    Istio           vmConfig.env HOST  <- istio-proxy env secretKeyRef (patch) -> Secret
    Envoy Gateway   env.hostKeys       <- EnvoyProxy container env secretKeyRef -> Secret

  so the configuration, the VM and the secret store cannot drift apart.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from pathlib import Path

import pytest
import yaml

import deploy

K8S = deploy.REPO_ROOT / "envoy" / "k8s"
COMPOSE_FILE, ENV_EXAMPLE = deploy.COMPOSE_FILE, deploy.COMPOSE_ENV_EXAMPLE
COMPOSE_ENVOY, K8S_ENVOY = deploy.SHIPPED_ENVOY[1], deploy.SHIPPED_ENVOY[2]
WASMPLUGIN = K8S / "istio" / "wasmplugin.yaml"
ISTIO_PATCH = K8S / "istio" / "ingressgateway.patch.yaml"
EEP = K8S / "envoy-gateway" / "envoyextensionpolicy.yaml"
ENVOYPROXY = K8S / "envoy-gateway" / "envoyproxy.yaml"
# Where Envoy Gateway runs the proxy pods by default (its own namespace).
EG_PROXY_NAMESPACE = "envoy-gateway-system"

# The demo, the one file allowed inline (public) secrets; and the JSON Schema
# of the configuration, which names the fields without using them.
INLINE_ALLOWED = {deploy.REPO_ROOT / "envoy" / "envoy.yaml", deploy.KONG_META}
BASE64_SECRET = re.compile(r"""["']?\bbase64\b["']?\s*:""")
# An API-key hash written inline in a JSON configuration (an image digest,
# `sha256: "..."` in YAML, is not one).
HEX_HASH = re.compile(r'"sha256"\s*:\s*"[0-9a-fA-F]{64}"')


def _used(label: str) -> set[str]:
    """The variables the palisade configurations of one shipped file read."""
    extract = dict(deploy.SHIPPED_CONFIGS)[label]
    return set().union(*(deploy.env_names(json.loads(s.text)) for s in extract()))


def _usable_secret(value: str) -> bool:
    """Whether palisade would accept `value` as a secret: a signing key
    (standard base64 of at least 32 bytes) or an API-key hash (64 hex digits)."""
    if re.fullmatch(r"\s*[0-9a-fA-F]{64}\s*", value):
        return True
    try:
        return len(base64.b64decode(value, validate=True)) >= 32
    except (binascii.Error, ValueError):
        return False


def _demo_values() -> dict[str, str]:
    """Environment variable -> the demo's public value it stands for."""
    return deploy.demo_secret_values(json.loads(deploy.from_envoy(deploy.SHIPPED_ENVOY[0])[0].text))


def _secret_refs(env: list[dict]) -> dict[str, tuple[str, str]]:
    """name -> (Secret, key) of the container env entries filled from a Secret."""
    refs = {}
    for entry in env or []:
        ref = (entry.get("valueFrom") or {}).get("secretKeyRef")
        if ref:
            assert not ref.get("optional"), f"{entry['name']}: a missing Secret must stop the pod, not be ignored"
            refs[entry["name"]] = (ref["name"], ref["key"])
    return refs


def _example_secret(directory: Path) -> dict:
    (secret,) = [d for p in sorted(directory.glob("*.example.yaml")) for d in deploy.yaml_docs(p) if d["kind"] == "Secret"]
    return secret


def _check_wiring(where: str, used: set[str], vm: list[str], provided: dict) -> None:
    assert used, f"{where}: no secret read from the environment (the signed route is gone?)"
    assert len(vm) == len(set(vm)), f"{where}: a variable is passed to the VM twice: {vm}"
    assert set(vm) == used, (
        f"{where}: the VM gets {sorted(vm)} but the configuration reads {sorted(used)} "
        "(every variable it reads must be passed, and nothing else)"
    )
    missing = used - set(provided)
    assert not missing, f"{where}: {sorted(missing)} are passed to the VM but no secret store fills them"


def _check_envoy_wiring(config: deploy.EnvoyConfig, provided: dict) -> None:
    """Each wasm filter of an Envoy bootstrap passes its VM exactly the
    variables its own configuration reads."""
    for i, f in enumerate(deploy.wasm_filters(config.bootstrap())):
        used = deploy.env_names(json.loads(f["configuration"]["value"]))
        _check_wiring(f"{config.label} (wasm filter #{i})", used, deploy.host_env_keys(f), provided)


def _check_secret_refs(where: str, refs: dict[str, tuple[str, str]], secret: dict, namespace: str) -> None:
    for name, (secret_name, key) in refs.items():
        assert secret_name == secret["metadata"]["name"], f"{where}: {name} comes from Secret {secret_name}"
        keys = set(secret.get("stringData") or {}) | set(secret.get("data") or {})
        assert key in keys, f"{where}: {name} reads key {key} the example Secret does not have ({sorted(keys)})"
    assert secret["metadata"]["namespace"] == namespace, (
        f"{where}: the Secret must be in {namespace}, where the proxy pods run"
    )


# ---------------------------------------------------------------------------
# No key in any deployment file
# ---------------------------------------------------------------------------
def test_deployment_configurations_read_secrets_from_the_environment():
    for shipped in deploy.shipped_configs():
        if deploy.is_demo(shipped):
            continue
        for secret in deploy.secrets_of(json.loads(shipped.text)):
            assert isinstance(secret, dict) and set(secret) == {"env"}, (
                f"{shipped.label}: secrets come from the environment, not {secret!r}"
            )


def _deployment_files() -> list[Path]:
    files = []
    for top in ("envoy", "nginx"):
        for path in sorted((deploy.REPO_ROOT / top).rglob("*")):
            if path.is_file() and (path.suffix in {".yaml", ".yml", ".json", ".conf"} or ".env" in path.name):
                files.append(path)
    return files


def test_no_deployment_file_carries_an_inline_secret():
    """A textual check too, for configurations the extractors of deploy.py
    do not know about (a new file, a second filter)."""
    files = _deployment_files()
    assert {COMPOSE_FILE, ENV_EXAMPLE, WASMPLUGIN, EEP} <= set(files)
    for path in files:
        if path in INLINE_ALLOWED:
            continue
        text = path.read_text()
        hits = [line.strip() for line in text.splitlines() if BASE64_SECRET.search(line) or HEX_HASH.search(line)]
        assert not hits, f"{path.relative_to(deploy.REPO_ROOT)}: inline base64 secret: {hits}"
        assert "PRIVATE KEY" not in text, path


def test_inline_secret_check_catches_yaml_and_json():
    assert BASE64_SECRET.search('{"id": "k", "secret": {"base64": "x"}}')
    assert BASE64_SECRET.search("          secret: { base64: x }")
    assert BASE64_SECRET.search("            base64: x")
    assert not BASE64_SECRET.search("# the value is not base64, palisade refuses it")
    assert HEX_HASH.search('{"id": "p", "sha256": "' + "ab" * 32 + '"}')
    assert not HEX_HASH.search('  sha256: "' + "0" * 64 + '"')


def test_example_secrets_are_placeholders_palisade_refuses():
    """Applied unchanged, an example fails closed; a real key can never be
    committed as an example."""
    examples = sorted(K8S.rglob("*.example.yaml"))
    assert {p.parent.name for p in examples} == {"plain", "istio", "envoy-gateway"}
    for path in examples:
        for doc in deploy.yaml_docs(path):
            assert doc["kind"] == "Secret", f"{path}: examples are Secrets"
            values = list((doc.get("stringData") or {}).values())
            values += [base64.b64decode(v).decode() for v in (doc.get("data") or {}).values()]
            assert values, path
            for value in values:
                assert not _usable_secret(value), f"{path}: holds a usable secret; it must be a placeholder"
    for path in sorted(K8S.rglob("*.yaml")):
        if not path.name.endswith(".example.yaml"):
            assert all(d.get("kind") != "Secret" for d in deploy.yaml_docs(path)), f"{path}: ships a Secret"


def test_compose_example_holds_only_the_public_demo_values():
    """The demo's public values under their variables, and for a variable
    the demo does not read (the global mode's key: `make run` stays local)
    a usable value found nowhere else, under a DEMO ONLY warning: the
    example holds exactly the variables the compose configuration reads."""
    values = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, value = line.partition("=")
            values[name.strip()] = value.strip()
    demo = _demo_values()
    assert set(values) == _used(COMPOSE_ENVOY.label), (
        f"{ENV_EXAMPLE.name} holds {sorted(values)}; the compose configuration reads {sorted(_used(COMPOSE_ENVOY.label))}"
    )
    for name, value in values.items():
        if name in demo:
            assert value == demo[name], f"{ENV_EXAMPLE.name}: {name} may hold only envoy/envoy.yaml's public demo value"
        else:
            assert _usable_secret(value), f"{ENV_EXAMPLE.name}: {name} holds a value palisade refuses"
            assert list(values.values()).count(value) == 1, f"{ENV_EXAMPLE.name}: {name} reuses another key"
    assert "DEMO ONLY" in ENV_EXAMPLE.read_text()


# ---------------------------------------------------------------------------
# Every variable read is passed to the VM and filled from the secret store
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("config", deploy.SHIPPED_ENVOY[1:], ids=lambda c: c.label)
def test_envoy_vm_gets_no_inline_environment(config):
    for f in deploy.wasm_filters(config.bootstrap()):
        env = f["vm_config"].get("environment_variables") or {}
        assert "key_values" not in env, f"{config.label}: key_values are inline values; use host_env_keys"


def test_compose_wiring(compose):
    proc = deploy.run_compose(compose, COMPOSE_FILE, "config", "--format", "json")
    assert proc.returncode == 0, proc.stderr
    environment = json.loads(proc.stdout)["services"]["envoy"].get("environment") or {}
    _check_envoy_wiring(COMPOSE_ENVOY, environment)
    raw = yaml.safe_load(COMPOSE_FILE.read_text())["services"]["envoy"]
    assert not set(raw.get("environment") or {}) & _used(COMPOSE_ENVOY.label), (
        "secrets come from the env file, not `environment:`"
    )


def test_plain_kubernetes_wiring():
    (deployment,) = [d for d in deploy.yaml_docs(K8S / "plain" / "deployment.yaml") if d["kind"] == "Deployment"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    refs = _secret_refs(container.get("env"))
    _check_envoy_wiring(K8S_ENVOY, refs)
    _check_secret_refs("plain Kubernetes", refs, _example_secret(K8S / "plain"), deployment["metadata"]["namespace"])


def test_istio_wiring():
    (plugin,) = deploy.yaml_docs(WASMPLUGIN)
    env = (plugin["spec"].get("vmConfig") or {}).get("env") or []
    used = _used("envoy/k8s/istio/wasmplugin.yaml")
    for entry in env:
        if entry["name"] in used:
            assert entry.get("valueFrom") == "HOST" and "value" not in entry, (
                f"{entry}: a secret comes from the gateway's environment (HOST), never inline"
            )
    vm = [e["name"] for e in env if e.get("valueFrom") == "HOST"]
    patch = yaml.safe_load(ISTIO_PATCH.read_text())
    (proxy,) = [c for c in patch["spec"]["template"]["spec"]["containers"] if c["name"] == "istio-proxy"]
    refs = _secret_refs(proxy.get("env"))
    _check_wiring("Istio", used, vm, refs)
    _check_secret_refs("Istio", refs, _example_secret(K8S / "istio"), plugin["metadata"]["namespace"])


def test_envoy_gateway_wiring():
    (policy,) = deploy.yaml_docs(EEP)
    (proxy,) = deploy.yaml_docs(ENVOYPROXY)
    vm = [k for w in policy["spec"]["wasm"] for k in ((w.get("env") or {}).get("hostKeys") or [])]
    container = proxy["spec"]["provider"]["kubernetes"]["envoyDeployment"]["container"]
    refs = _secret_refs(container.get("env"))
    _check_wiring("Envoy Gateway", _used("envoy/k8s/envoy-gateway/envoyextensionpolicy.yaml"), vm, refs)
    _check_secret_refs("Envoy Gateway", refs, _example_secret(K8S / "envoy-gateway"), EG_PROXY_NAMESPACE)


def test_wiring_check_catches_drift():
    """Negative controls of _check_wiring: a variable read but not passed,
    passed but not read, passed but not filled."""
    for used, vm, provided in [
        ({"A", "B"}, ["A"], {"A": 1, "B": 1}),
        ({"A"}, ["A", "B"], {"A": 1, "B": 1}),
        ({"A"}, ["A"], {}),
        ({"A"}, ["A", "A"], {"A": 1}),
    ]:
        with pytest.raises(AssertionError):
            _check_wiring("negative control", used, vm, provided)
