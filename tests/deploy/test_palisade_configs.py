"""Every palisade configuration the project ships or documents is one palisade
accepts, checked by palisade-check (the filter's own on_configure validation,
as a native binary): the Envoy bootstraps, nginx.conf, Kong's kong.yml, the
Istio WasmPlugin, the Envoy Gateway policy, and README's samples.
"""

from __future__ import annotations

import json

import pytest

import deploy


def test_every_shipped_and_documented_configuration_is_valid(palisade_check):
    """With the secrets the deployments read from their environment set to
    random test keys (deploy.random_secret_env), as their secret stores do."""
    configs = deploy.shipped_configs() + deploy.readme_samples()
    results = palisade_check([c.text for c in configs], env=deploy.random_secret_env())
    bad = [f"{c.label}: {r.message}" for c, r in zip(configs, results) if not r.ok]
    assert not bad, "palisade refuses shipped configurations:\n" + "\n".join(bad)


def test_readme_has_configuration_samples():
    assert len(deploy.readme_samples()) >= 1, "no configuration sample found in README.md"


def test_demo_has_a_signed_route():
    demo = json.loads(deploy.from_envoy(deploy.SHIPPED_ENVOY[0])[0].text)
    assert demo["signatures"]["policies"], "make run's demo shows a signed route"
    assert deploy.with_env_secrets(demo) != demo


def test_every_shipped_file_has_an_expected_policy():
    assert set(deploy.EXPECTED_POLICY) == {label for label, _ in deploy.SHIPPED_CONFIGS}


@pytest.mark.parametrize("label", [label for label, _ in deploy.SHIPPED_CONFIGS])
def test_shipped_configuration_is_the_demo_configuration(label):
    """One demo configuration everywhere: each deployment file carries the
    configuration of envoy/envoy.yaml (compared as JSON values), adapted only
    as deploy.EXPECTED_POLICY says (keys from the environment; no body binding
    where the host cannot wait for bodies; no signed route on nginx/), so a
    change to it - a new stage, a renamed field - reaches every shipped file."""
    demo = json.loads(deploy.from_envoy(deploy.SHIPPED_ENVOY[0])[0].text)
    expected = deploy.EXPECTED_POLICY[label](demo)
    extract = dict(deploy.SHIPPED_CONFIGS)[label]
    for shipped in extract():
        assert json.loads(shipped.text) == expected, (
            f"{shipped.label} differs from envoy/envoy.yaml's palisade configuration "
            f"(as deploy.EXPECTED_POLICY adapts it); update every shipped copy together"
        )


@pytest.mark.parametrize(
    "label", ["envoy/k8s/istio/wasmplugin.yaml", "envoy/k8s/envoy-gateway/envoyextensionpolicy.yaml"]
)
def test_hosts_without_stop_iteration_never_wait_for_bodies(label):
    """Istio's WasmPlugin and Envoy Gateway's EnvoyExtensionPolicy cannot set
    allow_on_headers_stop_iteration: a policy that holds requests for their
    body would hang them there."""
    for shipped in dict(deploy.SHIPPED_CONFIGS)[label]():
        assert not deploy.waits_for_body(json.loads(shipped.text)), (
            f"{shipped.label}: requires or covers content-digest, which hangs requests on this host"
        )
