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
    configs = deploy.shipped_configs() + deploy.readme_samples()
    results = palisade_check([c.text for c in configs])
    bad = [f"{c.label}: {r.message}" for c, r in zip(configs, results) if not r.ok]
    assert not bad, "palisade refuses shipped configurations:\n" + "\n".join(bad)


def test_readme_has_configuration_samples():
    assert len(deploy.readme_samples()) >= 1, "no configuration sample found in README.md"


def test_demo_has_a_signed_route():
    demo = json.loads(deploy.from_envoy(deploy.SHIPPED_ENVOY[0])[0].text)
    assert demo["signatures"]["policies"], "make run's demo shows a signed route"
    assert deploy.without_demo_signatures(demo) != demo


@pytest.mark.parametrize("label", [label for label, _ in deploy.SHIPPED_CONFIGS])
def test_shipped_configuration_is_the_demo_configuration(label):
    """One demo configuration everywhere: each deployment file carries the
    configuration of envoy/envoy.yaml (compared as JSON values), so a change
    to it - a new stage, a renamed field - reaches every shipped file."""
    demo = deploy.without_demo_signatures(json.loads(deploy.from_envoy(deploy.SHIPPED_ENVOY[0])[0].text))
    extract = dict(deploy.SHIPPED_CONFIGS)[label]
    for shipped in extract():
        if deploy.is_demo(shipped):
            continue
        assert "signatures" not in json.loads(shipped.text), (
            f"{shipped.label}: deployment files must not carry inline signature keys"
        )
        assert json.loads(shipped.text) == demo, (
            f"{shipped.label} differs from envoy/envoy.yaml's palisade configuration; "
            "update every shipped copy together"
        )
