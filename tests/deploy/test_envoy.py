"""Every Envoy configuration the project ships loads in the real Envoy, has
the listener layout issue 7 asks for, and (for the demo) does at run time
what it says: a TLS 1.3 listener that hands palisade a JA4 fingerprint
header no client can forge, and a mutual-TLS listener that lets only clients
with a certificate of its device CA in.

`envoy --mode validate` runs palisade's on_configure, so a configuration the
filter would refuse fails here too (tests/integration/test_shipped_configs.py
validates envoy/envoy.yaml as make integration sees it; this covers every
shipped bootstrap, with its container paths pointed at local files).
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import os
import secrets
import re
import shutil
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass

import pytest
import yaml

import deploy

DEMO = deploy.SHIPPED_ENVOY[0]
TLS_PORT, PLAIN_PORT, MTLS_PORT = 10443, 10000, 10444


def _base_id(i: int) -> int:
    # Distinct from the integration tests' ids, so both can run at once.
    return 31000 + i


def _validate(envoy, config, path, env: dict[str, str]) -> subprocess.CompletedProcess:
    """`envoy --mode validate` of `path` with `env` as the variables palisade's
    secrets may come from (none of the test process's own leak in)."""
    base = {k: v for k, v in os.environ.items() if k not in deploy.random_secret_env()}
    return subprocess.run(
        [str(envoy), "--mode", "validate", "-c", str(path), "-l", "info", "--base-id",
         str(_base_id(deploy.SHIPPED_ENVOY.index(config)))],
        capture_output=True, text=True, timeout=120, env={**base, **env},
    )


@pytest.mark.parametrize("config", deploy.SHIPPED_ENVOY, ids=lambda c: c.label)
def test_shipped_envoy_config_loads(config, envoy, wasm, cert, tmp_path):
    """Loads with palisade's secrets in Envoy's environment, as the Secret
    (or compose's env file) puts them there: random test keys, never a
    committed one."""
    path = deploy.materialize(config, tmp_path, *cert)
    proc = _validate(envoy, config, path, deploy.random_secret_env())
    out = proc.stdout + proc.stderr
    tail = "\n".join(out.splitlines()[-25:])
    assert proc.returncode == 0, f"{config.label} does not load in Envoy:\n{tail}"
    filters = deploy.wasm_filters(config.bootstrap())
    assert filters, f"{config.label}: no palisade filter"
    # Envoy (1.40, measured) configures each distinct plugin configuration
    # twice in validate mode, in the base VM and in the main thread's copy;
    # identical filters of other listeners (the shared `&palisade` anchor)
    # reuse those plugins.
    distinct = len({json.dumps(f, sort_keys=True) for f in filters})
    assert out.count("palisade: configured") == 2 * distinct, (
        f"{config.label}: palisade's on_configure ran {out.count('palisade: configured')} times "
        f"for {distinct} distinct filter configurations ({len(filters)} filters):\n{tail}"
    )


@pytest.mark.parametrize("config", deploy.SHIPPED_ENVOY, ids=lambda c: c.label)
def test_listener_layout(config):
    boot = config.bootstrap()
    admin = boot["admin"]["address"]["socket_address"]
    assert admin["address"] == "127.0.0.1", f"{config.label}: admin must listen on loopback only"

    ls = deploy.listeners(boot)
    assert {"ingress", "ingress_tls"} <= set(ls), f"{config.label}: listeners {sorted(ls)}"
    # The mutual-TLS listener is the demo's alone (deploy.without_mtls).
    extra = {"ingress_mtls"} if config is DEMO else {"ops"}
    assert set(ls) - {"ingress", "ingress_tls"} <= extra, f"{config.label}: unexpected listeners {sorted(ls)}"
    ports = (ls["ingress"]["address"]["socket_address"]["port_value"],
             ls["ingress_tls"]["address"]["socket_address"]["port_value"])
    assert ports == (PLAIN_PORT, TLS_PORT), f"{config.label}: listener ports {ports}"
    tls_listeners = ["ingress_tls"]
    if config is DEMO:
        assert "ingress_mtls" in ls, f"{config.label}: the demo's mutual-TLS listener is missing"
        port = ls["ingress_mtls"]["address"]["socket_address"]["port_value"]
        assert port == MTLS_PORT, f"{config.label}: mutual-TLS listener on {port}"
        tls_listeners.append("ingress_mtls")

    # TLS 1.3 only, and the listeners compute JA4 fingerprints.
    for name in tls_listeners:
        tls = ls[name]
        (inspector,) = [f for f in tls.get("listener_filters", []) if deploy.typed(f, deploy.TLS_INSPECTOR_TYPE)]
        assert inspector["typed_config"].get("enable_ja4_fingerprinting") is True, f"{config.label} {name}: JA4 is off"
        (chain,) = tls["filter_chains"]
        ctx = chain["transport_socket"]["typed_config"]
        assert ctx["@type"] == deploy.TLS_CONTEXT_TYPE
        params = ctx["common_tls_context"]["tls_params"]
        versions = (params["tls_minimum_protocol_version"], params["tls_maximum_protocol_version"])
        assert versions == ("TLSv1_3", "TLSv1_3"), f"{config.label} {name}: TLS 1.3 only, not {versions}"
        if name == "ingress_mtls":
            # A client certificate is required and verified against the
            # demo device CA: palisade reads only a verified certificate.
            assert ctx.get("require_client_certificate") is True, f"{config.label}: {ctx}"
            trusted = ctx["common_tls_context"]["validation_context"]["trusted_ca"]
            assert config.files.get(trusted.get("filename")) == "ca", f"{config.label}: trusted_ca {trusted}"
        else:
            assert "validation_context" not in ctx["common_tls_context"], f"{config.label} {name}: {ctx}"
    assert "transport_socket" not in ls["ingress"]["filter_chains"][0], "the plain listener must stay plain HTTP"

    for name in ["ingress"] + tls_listeners:
        hcm = deploy.hcm_of(ls[name])
        for flag in ("normalize_path", "merge_slashes"):
            assert hcm.get(flag) is True, f"{config.label} {name}: {flag} must be true (README, routes)"
        for timeout in ("request_headers_timeout", "request_timeout"):
            assert hcm.get(timeout), f"{config.label} {name}: {timeout} bounds slow clients (README, Security review)"
        names = [f["name"] for f in hcm["http_filters"]]
        assert names[-1] == "envoy.filters.http.router", f"{config.label} {name}: {names}"
        assert names.index("envoy.filters.http.header_mutation") < names.index("palisade"), (
            f"{config.label} {name}: header_mutation must run before palisade: {names}"
        )
        (hm,) = [f for f in hcm["http_filters"] if deploy.typed(f, deploy.HEADER_MUTATION_TYPE)]
        mutations = hm["typed_config"]["mutations"]["request_mutations"]
        assert mutations[0] == {"remove": deploy.JA4_HEADER}, f"{config.label} {name}: the client's copy goes first"
        sets = [m["append"] for m in mutations if "append" in m]
        if name in ("ingress_tls", "ingress_mtls"):
            assert sets == [
                {
                    "header": {"key": deploy.JA4_HEADER, "value": "%TLS_JA4_FINGERPRINT%"},
                    "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
                }
            ], f"{config.label}: the TLS listener must set {deploy.JA4_HEADER} from %TLS_JA4_FINGERPRINT%"
        else:
            assert sets == [], f"{config.label}: the plain listener has no fingerprint to set"
        (pal,) = [f for f in hcm["http_filters"] if f["name"] == "palisade"]
        assert pal["typed_config"]["config"]["fail_open"] is False, f"{config.label} {name}: palisade must fail closed"


# The shipped Envoy configurations whose palisade reads secrets from Envoy's
# environment.
ENV_KEYED = [c for c in deploy.SHIPPED_ENVOY if any(map(deploy.host_env_keys, deploy.wasm_filters(c.bootstrap())))]


@pytest.mark.parametrize("config", ENV_KEYED, ids=lambda c: c.label)
def test_envoy_config_without_its_secrets_fails_closed(config, envoy, wasm, cert, tmp_path):
    """Without the variables (a missing Secret key, an empty env file),
    palisade refuses its configuration and so does Envoy: no traffic flows
    through a filter that has no key. Also shows that the key really reaches
    palisade through host_env_keys (the run above passes only with it)."""
    path = deploy.materialize(config, tmp_path, *cert)
    proc = _validate(envoy, config, path, {})
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, f"{config.label} loads without palisade's secrets"
    missing = sorted(set().union(*map(deploy.host_env_keys, deploy.wasm_filters(config.bootstrap()))))
    assert any(f"environment variable `{name}` is not set in the wasm VM" in out for name in missing), (
        f"{config.label}: Envoy failed, but not because palisade's secret is missing:\n"
        + "\n".join(out.splitlines()[-25:])
    )


def _normalized(config: deploy.EnvoyConfig, demo_policy_as: str | None = None) -> dict:
    """The parts every shipped bootstrap shares with the demo, with the
    deployment-specific names (paths, upstream cluster) made generic.

    Deployment files carry the demo policy as deploy.EXPECTED_POLICY says
    (their keys read from the environment): the demo's own policy is
    compared as the one `demo_policy_as` should carry. Where the VM's
    environment comes from (environment_variables) is left out here;
    test_secrets.py checks it."""
    text = config.text()
    for path, kind in config.files.items():
        text = text.replace(path, f"<{kind}>")
    boot = yaml.safe_load(text)
    for f in deploy.wasm_filters(boot):
        policy = json.loads(f["configuration"]["value"])
        if demo_policy_as is not None:
            policy = deploy.EXPECTED_POLICY[demo_policy_as](policy)
        f["configuration"]["value"] = json.dumps(policy, sort_keys=True)
        f["vm_config"].pop("environment_variables", None)
    ls = deploy.listeners(boot)
    out = {"stats_config": boot["stats_config"], "admin": boot["admin"]}
    for name in ("ingress", "ingress_tls"):
        listener = json.loads(json.dumps(ls[name]))
        for node in deploy.walk(listener):
            if isinstance(node, dict) and isinstance(node.get("route"), dict) and "cluster" in node["route"]:
                node["route"]["cluster"] = "<upstream>"
        out[name] = listener
    return out


@pytest.mark.parametrize("config", deploy.SHIPPED_ENVOY[1:], ids=lambda c: c.label)
def test_deployment_bootstraps_match_the_demo(config):
    """Compose and Kubernetes run the demo's listeners, filter chains and
    palisade configuration: a change to envoy/envoy.yaml must be carried over."""
    demo, other = _normalized(DEMO, demo_policy_as=config.label), _normalized(config)
    for part in demo:
        assert other[part] == demo[part], f"{config.label}: `{part}` differs from envoy/envoy.yaml"


@pytest.mark.parametrize("config", deploy.SHIPPED_ENVOY[1:], ids=lambda c: c.label)
def test_ops_listener_exposes_only_metrics_and_readiness(config):
    boot = config.bootstrap()
    ops = deploy.listeners(boot)["ops"]
    hcm = deploy.hcm_of(ops)
    (vhost,) = hcm["route_config"]["virtual_hosts"]
    routed = {}
    for route in vhost["routes"]:
        match = route["match"]
        if "route" in route:
            assert set(match) == {"path", "headers"}, f"{config.label}: ops routes match exact paths only: {match}"
            assert match["headers"] == [{"name": ":method", "string_match": {"exact": "GET"}}]
            routed[match["path"]] = route["route"]["cluster"]
        else:
            assert route == {"match": {"prefix": "/"}, "direct_response": {"status": 404}}
    assert routed == {"/stats/prometheus": "envoy_admin", "/ready": "envoy_admin"}
    (admin_cluster,) = [c for c in boot["static_resources"]["clusters"] if c["name"] == "envoy_admin"]
    (endpoint,) = admin_cluster["load_assignment"]["endpoints"][0]["lb_endpoints"]
    assert endpoint["endpoint"]["address"]["socket_address"] == boot["admin"]["address"]["socket_address"]


# --------------------------------------------------------------------------
# The demo at run time: the JA4 header really is set, and cannot be forged.
# --------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except OSError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@dataclass
class _GlobalServices:
    grpc_port: int
    health_port: int
    redis: subprocess.Popen


@contextlib.contextmanager
def _global_services(tmp_path):
    """A redis-server and the rate-limit service `make ratelimit-service`
    builds (the pair the compose file and the Kubernetes manifests run), on
    loopback ports the kernel picks; yields them once the service's /healthz
    says it reaches Redis."""
    redis_server = shutil.which("redis-server")
    if redis_server is None:
        pytest.fail("redis-server not found: run `make redis` (Debian's redis-server)", pytrace=False)
    if not deploy.RLS_BINARY.is_file():
        pytest.fail(f"{deploy.RLS_BINARY} not found: run `make ratelimit-service`", pytrace=False)
    redis_port, grpc_port, health_port = _free_port(), _free_port(), _free_port()
    with contextlib.ExitStack() as stack:
        log = stack.enter_context(open(tmp_path / "global-services.log", "w"))
        redis = subprocess.Popen(
            [redis_server, "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path,
        )
        stack.callback(_stop, redis)
        rls = subprocess.Popen(
            [str(deploy.RLS_BINARY), "--listen", f"127.0.0.1:{grpc_port}", "--health-listen",
             f"127.0.0.1:{health_port}", "--redis-url", f"redis://127.0.0.1:{redis_port}"],
            stdout=log, stderr=subprocess.STDOUT,
        )
        stack.callback(_stop, rls)

        def healthy() -> bool:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{health_port}/healthz", timeout=2) as r:
                    return r.status == 200
            except urllib.error.HTTPError:
                return False

        _wait(healthy, 30, "the rate-limit service's /healthz (it reaches Redis)")
        yield _GlobalServices(grpc_port, health_port, redis)


@dataclass
class _Envoy:
    ports: dict[str, int]  # listener name -> port
    admin: str  # admin URL

    def counter(self, pattern: str) -> int:
        """The sum of the admin counters whose name matches `pattern`."""
        with urllib.request.urlopen(f"{self.admin}/stats?format=json", timeout=5) as r:
            stats = json.load(r)["stats"]
        return sum(s.get("value", 0) for s in stats if "name" in s and re.search(pattern, s["name"]))


@contextlib.contextmanager
def _running(config: deploy.EnvoyConfig, envoy, cert, tmp_path, env: dict[str, str] | None = None, ca=None):
    """`config` running on loopback ports the kernel picks, in front of
    envoy/demo_upstream.py (every upstream cluster pointed at it) and, when
    its palisade is in the global mode, a real rate-limit service and Redis
    (the cluster `global.cluster` names pointed at it, as it is); `env` is
    where palisade's secrets may come from; `ca` the client CA a mutual-TLS
    listener trusts (deploy.materialize). Yields an _Envoy."""
    path = deploy.materialize(config, tmp_path, *cert, ca=ca)
    boot = yaml.safe_load(path.read_text())
    global_clusters = {s["cluster"] for s in deploy.global_sections(config)}
    with contextlib.ExitStack() as stack:
        rls_port = stack.enter_context(_global_services(tmp_path)).grpc_port if global_clusters else None
        upstream_port = _free_port()
        upstream = subprocess.Popen(
            [sys.executable, str(deploy.REPO_ROOT / "envoy" / "demo_upstream.py"), "--port", str(upstream_port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        stack.callback(_stop, upstream)
        boot["admin"]["address"]["socket_address"]["port_value"] = 0
        for listener in boot["static_resources"]["listeners"]:
            listener["address"]["socket_address"].update(address="127.0.0.1", port_value=0)
        for cluster in boot["static_resources"]["clusters"]:
            if cluster["name"] != "envoy_admin":
                # Everything else stays as shipped: the rate-limit cluster
                # keeps its HTTP/2 options.
                cluster["type"] = "STATIC"
                port = rls_port if cluster["name"] in global_clusters else upstream_port
                cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"] = {
                    "address": "127.0.0.1", "port_value": port,
                }
        path.write_text(json.dumps(boot))
        admin_path = tmp_path / "admin.address"
        log = stack.enter_context(open(tmp_path / "envoy.log", "w"))
        base = {k: v for k, v in os.environ.items() if k not in deploy.random_secret_env()}
        proc = subprocess.Popen(
            [str(envoy), "-c", str(path), "--concurrency", "2", "--disable-hot-restart", "-l", "warning",
             "--admin-address-path", str(admin_path)],
            stdout=log, stderr=subprocess.STDOUT, env={**base, **(env or {})},
        )
        stack.callback(_stop, proc)
        yield _ready(proc, admin_path, upstream_port)


def _ready(proc: subprocess.Popen, admin_path, upstream_port: int) -> _Envoy:
    """Waits for the Envoy `proc` (its admin address, its listeners, LIVE)
    and its upstream."""
    admin = _wait(lambda: admin_path.exists() and admin_path.read_text().strip(), 30, "Envoy's admin address")
    admin_url = f"http://{admin}"

    def ports():
        with urllib.request.urlopen(f"{admin_url}/listeners?format=json", timeout=2) as r:
            data = json.load(r)
        got = {s["name"]: s["local_address"]["socket_address"]["port_value"] for s in data.get("listener_statuses", [])}
        return got if {"ingress", "ingress_tls"} <= set(got) else None

    found = _wait(ports, 30, "Envoy's listeners")
    _wait(lambda: urllib.request.urlopen(f"{admin_url}/ready", timeout=2).status == 200, 30, "Envoy LIVE")
    _wait(lambda: socket.create_connection(("127.0.0.1", upstream_port), timeout=1).close() or True, 10, "upstream")
    return _Envoy(found, admin_url)


@pytest.fixture
def demo_envoy(envoy, wasm, cert, device_ca, tmp_path):
    """envoy/envoy.yaml running (see _running), its mutual-TLS listener
    trusting `device_ca`; yields {listener name: port}."""
    with _running(DEMO, envoy, cert, tmp_path, ca=device_ca[0]) as running:
        yield running.ports


def _signing():
    """tests/integration/signing.py: requests signed by the independent
    http-message-signatures package, as the integration tests sign them."""
    sys.path.insert(0, str(deploy.REPO_ROOT / "tests" / "integration"))
    try:
        import signing
    finally:
        sys.path.pop(0)
    return signing


@pytest.mark.parametrize("config", ENV_KEYED, ids=lambda c: c.label)
def test_deployment_verifies_signatures_with_the_key_from_its_environment(config, envoy, wasm, cert, tmp_path):
    """The signing key travels as the deployment makes it travel - the
    proxy's environment, host_env_keys, the VM - and verifies signatures:
    a request signed with it reaches the upstream; one signed with another
    key, or unsigned, does not. Where the deployment has the global mode on,
    the signed request's nonce goes to the real rate-limit service through
    the shipped cluster (its HTTP/2 options as shipped) and is admitted:
    the cluster, the service and the hashing key from the environment fit
    together (with a cluster speaking HTTP/1.1, or no service, the answer
    would be 503 global.unavailable)."""
    signing = _signing()
    env = deploy.random_secret_env()
    ((_, key_id),) = [where for where in deploy.SECRET_ENV if where[0] == "signatures"]
    name = deploy.SECRET_ENV[("signatures", key_id)]
    body = b'{"amount": 5}'
    global_mode = bool(deploy.global_sections(config))
    with _running(config, envoy, cert, tmp_path, env) as running:
        ports = running.ports
        url = f"http://127.0.0.1:{ports['ingress']}/payments"

        def post(secret: bytes | None) -> int:
            headers = {"Content-Type": "application/json"}
            if secret is not None:
                headers = signing.sign("POST", url, headers, body, key_id=key_id, secret=secret)
            conn = http.client.HTTPConnection("127.0.0.1", ports["ingress"], timeout=10)
            try:
                conn.request("POST", "/payments", body=body, headers=headers)
                resp = conn.getresponse()
                resp.read()
                return resp.status
            finally:
                conn.close()

        assert post(base64.b64decode(env[name])) == 200, f"{config.label}: a request signed with the Secret's key"
        assert post(secrets.token_bytes(32)) == 401, f"{config.label}: a request signed with another key"
        assert post(None) == 401, f"{config.label}: an unsigned request"
        if global_mode:
            # palisade flushes its counters to Envoy on a timer, not per request.
            calls: dict[str, int] = {}
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                calls = {
                    result: running.counter(rf"palisade_global_calls_total\b.*\bresult\.{result}\b")
                    for result in ("ok", "over", "error")
                }
                if sum(calls.values()):
                    break
                time.sleep(0.2)
            assert calls == {"ok": 1, "over": 0, "error": 0}, (
                f"{config.label}: the signed request's nonce should have been one successful call to the "
                f"rate-limit service: palisade_global_calls_total {calls}"
            )


# tests/fixtures/browsers.json: request header sets in the order each client
# sends them.
BROWSERS = deploy.REPO_ROOT / "tests" / "fixtures" / "browsers.json"


def _browser_headers(name: str) -> dict[str, str]:
    """The header set `name` of tests/fixtures/browsers.json, in its order
    (http.client sends a dict's headers in insertion order, after Host).
    The demo's bot stage scores clients on their headers (README, Bot
    defense): a bare http.client request looks like a script and is
    challenged, so requests that must reach the upstream look like the
    browser they are."""
    return dict(json.loads(BROWSERS.read_text())[name])


def _echoed_headers(conn: http.client.HTTPConnection, path: str, headers: dict[str, str]) -> dict[str, str]:
    conn.request("GET", path, headers=headers)
    resp = conn.getresponse()
    body = resp.read()
    assert resp.status == 200, f"{resp.status}: {body[:300]!r}"
    return json.loads(body)["headers"]


def test_demo_sets_ja4_from_the_tls_handshake_and_drops_forged_copies(demo_envoy):
    forged = {deploy.JA4_HEADER: "t13d0000h2_000000000000_000000000000"}
    # A browser's request (the bot stage lets it through) carrying a forged
    # fingerprint as its last header.
    request = {**_browser_headers("chrome_windows_navigate"), **forged}

    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    tls = http.client.HTTPSConnection("127.0.0.1", demo_envoy["ingress_tls"], context=ctx, timeout=10)
    try:
        headers = _echoed_headers(tls, "/api/ja4", request)
        assert tls.sock.version() == "TLSv1.3"
    finally:
        tls.close()
    ja4 = headers.get(deploy.JA4_HEADER)
    assert ja4 and ja4 != forged[deploy.JA4_HEADER], f"upstream saw {headers}"
    # The bot stage scored the request (with the real fingerprint) and let
    # it through as the browser it is.
    challenge_at = json.loads(deploy.from_envoy(DEMO)[0].text)["bot"]["thresholds"]["challenge"]
    assert int(headers.get("x-palisade-bot-score", "-1")) in range(challenge_at), f"upstream saw {headers}"
    # JA4: t(TCP) 13(TLS 1.3) d|i(SNI) cc ee alpn _ 12 hex _ 12 hex
    assert ja4.startswith("t13") and [len(p) for p in ja4.split("_")] == [10, 12, 12], ja4

    plain = http.client.HTTPConnection("127.0.0.1", demo_envoy["ingress"], timeout=10)
    try:
        headers = _echoed_headers(plain, "/api/ja4", request)
    finally:
        plain.close()
    assert deploy.JA4_HEADER not in headers, f"the plain listener passed a client-sent fingerprint on: {headers}"


def test_demo_tls_listener_refuses_tls_1_2(demo_envoy):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    with socket.create_connection(("127.0.0.1", demo_envoy["ingress_tls"]), timeout=10) as raw:
        with pytest.raises(ssl.SSLError):
            with ctx.wrap_socket(raw, server_hostname="localhost"):
                pass


# --------------------------------------------------------------------------
# The demo's mutual-TLS listener
# --------------------------------------------------------------------------
def _mtls_get(port: int, path: str, headers: dict[str, str], client: tuple | None):
    """GET over TLS 1.3 presenting `client` ((certificate, key) or None):
    (status, body), or the exception a refused handshake raises."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if client is not None:
        ctx.load_cert_chain(*map(str, client))
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=10)
    try:
        conn.request("GET", path, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def test_demo_mtls_listener_admits_only_certificates_of_its_device_ca(demo_envoy, device_ca, tmp_path):
    """The demo's ingress_mtls (here trusting a throwaway CA in place of make
    mtls-certs' demo CA): a device certificate that CA signed gets through,
    with the JA4 header set as on the TLS listener; a client without a
    certificate, or with one another CA signed (the same names), fails the
    handshake."""
    device = deploy.make_client_cert(tmp_path / "device", device_ca, "alpha", "spiffe://palisade.demo/device/alpha")
    rogue_ca = deploy.make_device_ca(tmp_path / "rogue-ca")
    rogue = deploy.make_client_cert(tmp_path / "rogue", rogue_ca, "alpha", "spiffe://palisade.demo/device/alpha")
    request = _browser_headers("chrome_windows_navigate")
    port = demo_envoy["ingress_mtls"]

    status, body = _mtls_get(port, "/api/mtls", request, device)
    assert status == 200, body[:300]
    echoed = json.loads(body)["headers"]
    assert echoed.get(deploy.JA4_HEADER, "").startswith("t13"), f"upstream saw {echoed}"
    # palisade ran on this listener too: its bot stage scored the request.
    assert "x-palisade-bot-score" in echoed, f"upstream saw {echoed}"

    for client in (None, rogue):
        with pytest.raises((ssl.SSLError, ConnectionError, http.client.RemoteDisconnected)):
            _mtls_get(port, "/api/mtls", request, client)


def test_demo_devices_route_requires_a_device_identity(demo_envoy, device_ca, tmp_path):
    """The demo policy's `devices` route class (its `mtls` section): a device
    certificate of the trusted CA with an identity under
    spiffe://palisade.demo/device/ reaches the upstream; a certificate of
    the same CA naming something else is refused by palisade, and so is a
    request without one, over plain HTTP or server-only TLS."""
    policy = json.loads(deploy.from_envoy(DEMO)[0].text)
    assert policy["mtls"]["routes"]["devices"]["required"] is True, policy.get("mtls")
    device = deploy.make_client_cert(tmp_path / "device", device_ca, "alpha", "spiffe://palisade.demo/device/alpha")
    other = deploy.make_client_cert(tmp_path / "other", device_ca, "mallory", "spiffe://palisade.demo/user/mallory")

    status, body = _mtls_get(demo_envoy["ingress_mtls"], "/devices/status", {}, device)
    assert status == 200 and json.loads(body)["path"] == "/devices/status", body[:300]
    status, body = _mtls_get(demo_envoy["ingress_mtls"], "/devices/status", {}, other)
    assert (status, json.loads(body).get("reason")) == (403, "mtls.identity_not_allowed"), body[:300]
    status, body = _mtls_get(demo_envoy["ingress_tls"], "/devices/status", {}, None)
    assert (status, json.loads(body).get("reason")) == (403, "mtls.required"), body[:300]
    plain = http.client.HTTPConnection("127.0.0.1", demo_envoy["ingress"], timeout=10)
    try:
        plain.request("GET", "/devices/status")
        resp = plain.getresponse()
        body = resp.read()
    finally:
        plain.close()
    assert (resp.status, json.loads(body).get("reason")) == (403, "mtls.required"), body[:300]
