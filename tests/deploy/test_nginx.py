"""nginx/nginx.conf (NGINX + ngx_wasm_module) and nginx/kong/kong.yml (Kong,
DB-less), checked statically: no ngx_wasm_module or Kong build is available
here for these files (tests/nginx/ runs a built nginx).

What is checked: the files parse (NGINX's own quoting rules, YAML); the
filter is declared and referenced consistently; the shared-data zone
palisade's keys land in exists, never evicts, and is at least the size
`palisade-check --nginx-zone-size` computes for the configuration (nginx.conf
declares exactly that size and quotes the computation; Kong's documented
`nginx_wasm_main_shm_kv` is at least it); Kong's filter chains have the fields Kong's
filter_chains entity has; and every palisade configuration in them passes
palisade-check and the Kong JSON Schema (nginx/kong/palisade.meta.json).
"""

from __future__ import annotations

import json
import re
import subprocess
import tempfile
from pathlib import Path

import jsonschema
import pytest
import yaml

import deploy

NGINX_CONF = deploy.REPO_ROOT / "nginx" / "nginx.conf"
KONG_YML = deploy.REPO_ROOT / "nginx" / "kong" / "kong.yml"

NGX_PAGE = 4096
README = deploy.REPO_ROOT / "nginx" / "README.md"


def nginx_zone_size(config_text: str) -> tuple[int, str]:
    """`palisade-check --nginx-zone-size`: the `shm_kv *` size (bytes, a
    whole MiB) the configuration needs on ngx_wasm_module, and its line."""
    with tempfile.TemporaryDirectory(prefix="palisade-zone-") as tmp:
        path = Path(tmp) / "palisade.json"
        path.write_text(config_text)
        proc = subprocess.run(
            [str(deploy.PALISADE_CHECK), "--nginx-zone-size", str(path)], capture_output=True, text=True, timeout=60
        )
    assert proc.returncode == 0, f"palisade-check --nginx-zone-size exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    match = re.search(r": (shm_kv \* (\d+)m eviction=none  # .*)$", proc.stdout.strip())
    assert match, proc.stdout
    return int(match.group(2)) << 20, match.group(1)


@pytest.fixture(scope="module")
def tree():
    return deploy.nginx_parse(NGINX_CONF.read_text())


def test_tokenizer_follows_nginx_quoting():
    tokens = deploy.nginx_tokens("a '{\"x\": \"\\\\\\\\d\"}' \"it\\'s\" # c ; d\n;")
    assert tokens == [("a", False), ('{"x": "\\\\d"}', True), ("it's", True), (";", False)]


def test_wasm_block_declares_the_filter_and_its_shared_memory(tree):
    (wasm,) = [d for d in tree if d.name == "wasm"]
    modules = {d.args[0]: d.args[1] for d in wasm.block if d.name == "module"}
    assert modules == {"palisade": "/etc/nginx/wasm/palisade.wasm"}, modules
    assert Path(modules["palisade"]).name == "palisade.wasm"

    zones = {d.args[0]: d.args[1:] for d in wasm.block if d.name == "shm_kv"}
    # palisade's keys (palisade.seed, palisade.rl.p.<n>, palisade.rl.o.<n>,
    # ...) have no `<namespace>/` prefix: ngx_wasm_module stores them in `*`.
    assert "*" in zones, f"no default shm_kv zone `*` for palisade's un-namespaced keys: {zones}"
    size, *options = zones["*"]
    assert options == ["eviction=none"], "palisade's slot pages must never be evicted"
    size_bytes = deploy.nginx_size(size)
    assert size_bytes % NGX_PAGE == 0, f"shm_kv size {size} is not page-aligned"

    for shipped in deploy.from_nginx(NGINX_CONF):
        needed, line = nginx_zone_size(shipped.text)
        assert size_bytes >= needed, f"shm_kv * {size} is smaller than what {shipped.label} needs: {line}"


def test_zone_comment_shows_the_computed_size(tree):
    """nginx.conf's comment quotes palisade-check's line for its
    configuration, and declares that size: a change to the tables that
    changes the size shows up here."""
    (shipped,) = deploy.from_nginx(NGINX_CONF)
    needed, line = nginx_zone_size(shipped.text)
    comment = " ".join(
        l.strip().lstrip("#").strip() for l in NGINX_CONF.read_text().splitlines() if l.strip().startswith("#")
    )
    assert line in comment, f"nginx.conf's comment does not quote: {line}"
    (wasm,) = [d for d in tree if d.name == "wasm"]
    (zone,) = [d for d in wasm.block if d.name == "shm_kv" and d.args[0] == "*"]
    assert deploy.nginx_size(zone.args[1]) == needed, f"declared {zone.args[1]}, computed {line}"


def test_proxy_wasm_directives_name_declared_filters(tree):
    declared = {d.args[0] for d in deploy.nginx_directives(tree) if d.name == "module"}
    uses = [d for d in deploy.nginx_directives(tree) if d.name == "proxy_wasm"]
    assert uses, "no proxy_wasm directive"
    for d in uses:
        assert d.args[0] in declared, f"proxy_wasm {d.args[0]} names no declared module"
        assert len(d.args) == 2, f"proxy_wasm {d.args[0]} needs exactly one configuration argument"
        assert d.context[:1] == ("http",), f"proxy_wasm is valid in http/server/location, not {d.context}"


def test_nginx_palisade_configuration_passes_the_kong_schema(kong_schema):
    validator = jsonschema.Draft4Validator(kong_schema)
    for shipped in deploy.from_nginx(NGINX_CONF):
        errors = [e.message for e in validator.iter_errors(json.loads(shipped.text))]
        assert not errors, f"{shipped.label}: {errors}"


# ---------------------------------------------------------------------------
# Kong
# ---------------------------------------------------------------------------
# Fields of Kong's filter_chains entity and of a filter in it
# (kong/db/schema/entities/filter_chains.lua, Kong 3.5-3.9).
FILTER_CHAIN_FIELDS = {"id", "name", "enabled", "route", "service", "filters", "created_at", "updated_at", "tags"}
FILTER_FIELDS = {"name", "enabled", "config"}


@pytest.fixture(scope="module")
def kong():
    return yaml.safe_load(KONG_YML.read_text())


def test_kong_declarative_config_shape(kong):
    assert kong["_format_version"] == "3.0"
    chains = list(deploy.kong_filter_chains(kong))
    assert chains, "no filter chain"
    for where, chain in chains:
        assert set(chain) <= FILTER_CHAIN_FIELDS, f"{where}: fields Kong does not have: {set(chain) - FILTER_CHAIN_FIELDS}"
        nested = where.startswith(("services", "routes"))
        assert nested or ("route" in chain) != ("service" in chain), f"{where}: needs exactly one of route, service"
        assert chain.get("filters"), f"{where}: filters must not be empty"
        for f in chain["filters"]:
            assert set(f) <= FILTER_FIELDS, f"{where}: filter fields Kong does not have: {set(f) - FILTER_FIELDS}"
    for service in kong.get("services") or []:
        assert service.get("url") or service.get("host"), f"service {service.get('name')} has no upstream"
        for route in service.get("routes") or []:
            assert route.get("paths") or route.get("hosts"), f"route {route.get('name')} matches nothing"


def test_kong_runs_one_palisade_configuration_per_node(kong):
    """palisade's shared-data keys are per node, not per filter chain."""
    palisades = deploy.from_kong(KONG_YML)
    assert len(palisades) == 1, [p.label for p in palisades]


def test_kong_filter_name_matches_the_meta_file(kong):
    names = {f["name"] for _, chain in deploy.kong_filter_chains(kong) for f in chain["filters"]}
    # Kong names a filter after its file in wasm_filters_path and reads
    # <name>.meta.json beside <name>.wasm.
    assert names == {deploy.KONG_META.name.removesuffix(".meta.json")} == {deploy.WASM.stem}


def test_kong_filter_config_validates_against_the_meta_schema(kong, kong_schema):
    validator = jsonschema.Draft4Validator(kong_schema)
    for where, chain in deploy.kong_filter_chains(kong):
        for i, f in enumerate(chain["filters"]):
            config = f.get("config")
            assert isinstance(config, dict), f"{where}.filters[{i}]: with a config_schema, Kong takes config as a JSON object"
            errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(config)]
            assert not errors, f"{where}.filters[{i}].config: {errors}"


def kong_zone_sizes() -> dict[str, str]:
    """Where the Kong files document the `*` zone's size: kong.yml's comment
    (`nginx_wasm_main_shm_kv = <size> ...`) and README's
    `KONG_NGINX_WASM_MAIN_SHM_KV="<size> ..."`."""
    sizes = {}
    for path, pattern in (
        (KONG_YML, r"nginx_wasm_main_shm_kv\s*=\s*(\d+[kKmMgG]?)"),
        (README, r'KONG_NGINX_WASM_MAIN_SHM_KV="(\d+[kKmMgG]?)'),
    ):
        found = re.findall(pattern, path.read_text())
        assert found, f"{path.name} documents no size for Kong's `*` zone"
        for i, size in enumerate(found):
            sizes[f"{path.name} #{i}"] = size
    return sizes


def test_kong_zone_is_large_enough():
    (shipped,) = deploy.from_kong(KONG_YML)
    needed, line = nginx_zone_size(shipped.text)
    for where, size in kong_zone_sizes().items():
        assert deploy.nginx_size(size) >= needed, f"{where}: {size} is smaller than {shipped.label} needs: {line}"
