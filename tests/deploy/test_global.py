"""The global mode's Envoy side in every shipped configuration: a palisade
configuration with a `global` section names a cluster of its own Envoy
bootstrap (palisade cannot know the bootstrap's clusters, so nothing else
would notice a typo before the first request answers 503
global.unavailable), and that cluster speaks HTTP/2, which gRPC needs.

The compose and plain-Kubernetes deployments ship the rate-limit service and
Redis and turn the mode on; the demo (`make run`) carries the cluster but
stays local; Istio and Envoy Gateway stay local (envoy/k8s/README.md says
why); NGINX and Kong refuse the section. `envoy --mode validate` of these
bootstraps is test_envoy.py's, and so is a request through the compose and
Kubernetes configurations to the real service; the compose and Kubernetes
wiring of the service and Redis is test_compose.py's and test_k8s.py's.
"""

from __future__ import annotations

import copy
import json

import pytest

import deploy

DEMO, COMPOSE_ENVOY, K8S_ENVOY = deploy.SHIPPED_ENVOY
WITH_SERVICE = [COMPOSE_ENVOY, K8S_ENVOY]


@pytest.mark.parametrize("config", deploy.SHIPPED_ENVOY, ids=lambda c: c.label)
def test_global_cluster_exists_and_speaks_http2(config):
    problems = deploy.global_cluster_problems(config.bootstrap())
    assert not problems, f"{config.label}:\n" + "\n".join(problems)


@pytest.mark.parametrize("config", WITH_SERVICE, ids=lambda c: c.label)
def test_deployments_with_the_service_use_it(config):
    """Every palisade filter of the deployments that ship the rate-limit
    service has the global mode on, with something counted globally."""
    for shipped in deploy.from_envoy(config):
        policy = json.loads(shipped.text)
        assert policy.get("global", {}).get("cluster"), f"{shipped.label}: no global section"
        rules = [r["name"] for r in policy["rate_limits"]["rules"] if r.get("scope") == "global"]
        assert rules and policy["signatures"].get("replay_scope") == "global", (
            f"{shipped.label}: the global rules {rules}, replay scope {policy['signatures'].get('replay_scope')}"
        )


def test_demo_stays_local_with_the_cluster_ready():
    """`make run` needs no Redis: no global section. Its `ratelimit` cluster
    is there for whoever turns the mode on (the comment at the top of
    envoy/envoy.yaml), speaks HTTP/2, and is not where another cluster (the
    demo upstream on 8081, the service's default port) already is."""
    assert not deploy.global_sections(DEMO), "envoy/envoy.yaml must stay local (make run has no Redis)"
    clusters = deploy.clusters(DEMO.bootstrap())
    name = deploy.GLOBAL_SECTION["cluster"]
    assert name in clusters and deploy.speaks_http2(clusters[name])

    def address(cluster: dict) -> tuple[str, int]:
        (endpoint,) = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"]
        socket = endpoint["endpoint"]["address"]["socket_address"]
        return socket["address"], socket["port_value"]

    others = {address(c): n for n, c in clusters.items() if n != name}
    assert address(clusters[name]) not in others, (
        f"the rate-limit cluster is at {address(clusters[name])}, where {others.get(address(clusters[name]))} is"
    )
    text = DEMO.source.read_text()
    port = address(clusters[name])[1]
    assert f"--listen 127.0.0.1:{port}" in text, "envoy/envoy.yaml's comment must start the service where the cluster is"


def test_only_envoy_bootstraps_have_a_global_section():
    """A `global` section needs a cluster these checks can see: the shipped
    Envoy bootstraps. Istio's WasmPlugin and Envoy Gateway's policy stay
    local (their cluster would be the platform's), NGINX and Kong refuse it."""
    bootstraps = {c.label for c in deploy.SHIPPED_ENVOY}
    for label, extract in deploy.SHIPPED_CONFIGS:
        for shipped in extract():
            # The section, or a "global" scope anywhere (rules, replay, refresh tokens, bans).
            if label not in bootstraps:
                assert '"global"' not in json.dumps(json.loads(shipped.text)), (
                    f"{shipped.label}: global mode outside an Envoy bootstrap"
                )


def _compose_bootstrap() -> dict:
    return copy.deepcopy(COMPOSE_ENVOY.bootstrap())


def _rate_limit_cluster(boot: dict) -> dict:
    return deploy.clusters(boot)[deploy.GLOBAL_SECTION["cluster"]]


def _http1(boot: dict) -> None:
    options = _rate_limit_cluster(boot)["typed_extension_protocol_options"][deploy.HTTP_PROTOCOL_OPTIONS]
    options["explicit_http_config"] = {"http_protocol_options": {}}


def _renamed(boot: dict) -> None:
    _rate_limit_cluster(boot)["name"] = "rate-limit"


@pytest.mark.parametrize(
    "mutate, why",
    [
        (_renamed, "a global.cluster that is not a cluster"),
        (lambda boot: _rate_limit_cluster(boot).pop("typed_extension_protocol_options"), "HTTP/1.1 by default"),
        (_http1, "explicit HTTP/1.1"),
        (lambda boot: _rate_limit_cluster(boot)["typed_extension_protocol_options"][deploy.HTTP_PROTOCOL_OPTIONS]
         .update({"@type": "type.googleapis.com/envoy.config.core.v3.Http2ProtocolOptions"}), "the wrong @type"),
    ],
)
def test_global_cluster_check_catches_mistakes(mutate, why):
    boot = _compose_bootstrap()
    assert not deploy.global_cluster_problems(boot)
    mutate(boot)
    assert deploy.global_cluster_problems(boot), f"the check accepts {why}"
