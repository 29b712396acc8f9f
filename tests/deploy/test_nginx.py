"""nginx/nginx.conf (NGINX + ngx_wasm_module) and nginx/kong/kong.yml (Kong,
DB-less), checked statically: no ngx_wasm_module or Kong build is available
here, so neither host runs palisade in CI (Envoy does).

What is checked: the files parse (NGINX's own quoting rules, YAML); the
filter is declared and referenced consistently; the shared-data zone
palisade's keys land in exists, never evicts, and is large enough for the
configured slot table; Kong's filter chains have the fields Kong's
filter_chains entity has; and every palisade configuration in them passes
palisade-check and the Kong JSON Schema (nginx/kong/palisade.meta.json).
"""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import yaml

import deploy

NGINX_CONF = deploy.REPO_ROOT / "nginx" / "nginx.conf"
KONG_YML = deploy.REPO_ROOT / "nginx" / "kong" / "kong.yml"

# ngx_wasm_module's slab allocator rounds each key's node up to a power of
# two; a slot page (key ~20 bytes, 4 x 40-byte records, node overhead ~100
# bytes) takes a 512-byte chunk.
BYTES_PER_PAGE = 512
SLOTS_PER_PAGE = 4
HEADROOM = 1 << 20
NGX_PAGE = 4096
# bot.behaviour.slots' default (src/stages/bot/behaviour.rs, DEFAULT_SLOTS).
BOT_BEHAVIOUR_SLOTS = 16384


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
    # palisade's keys (palisade.seed, palisade.rl.p.<n>, palisade.rl.o.<n>)
    # have no `<namespace>/` prefix: ngx_wasm_module stores them in `*`.
    assert "*" in zones, f"no default shm_kv zone `*` for palisade's un-namespaced keys: {zones}"
    size, *options = zones["*"]
    assert options == ["eviction=none"], "palisade's slot pages must never be evicted"
    size_bytes = deploy.nginx_size(size)
    assert size_bytes % NGX_PAGE == 0, f"shm_kv size {size} is not page-aligned"

    for shipped in deploy.from_nginx(NGINX_CONF):
        config = json.loads(shipped.text)
        slots = (config.get("rate_limits") or {}).get("slots") or 65536
        signatures = config.get("signatures") or {}
        replay = (signatures.get("replay_slots") or 65536) if signatures.get("policies") else 0
        # The bot stage's behaviour table (palisade.bh.p.<n>), counted
        # whenever there is a bot section: the shipped model weighs behaviour.
        bot = config.get("bot")
        behaviour = ((bot.get("behaviour") or {}).get("slots") or BOT_BEHAVIOUR_SLOTS) if bot is not None else 0
        pages = -(-slots // SLOTS_PER_PAGE) + -(-replay // SLOTS_PER_PAGE) + -(-behaviour // SLOTS_PER_PAGE)
        needed = pages * BYTES_PER_PAGE + HEADROOM
        assert size_bytes >= needed, f"shm_kv * {size} is smaller than the {needed} bytes {shipped.label} needs"


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
