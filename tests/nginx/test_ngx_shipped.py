"""Every shipped NGINX/Kong configuration runs palisade in the real nginx.

* ``nginx/nginx.conf`` itself, rewritten only where a test run must differ
  (the wasm path, loopback port, upstream port, 2 workers, ``user``, pid,
  logs and temp paths in the run directory, Wasmtime's compilation cache, a
  readiness location without palisade): its ``shm_kv`` size and palisade JSON are used as shipped.
* the palisade configuration of ``nginx/kong/kong.yml`` (Kong hands it to the
  filter as JSON) in the suite's generated nginx.conf, with the ``shm_kv``
  size kong.yml asks for (``nginx_wasm_main_shm_kv``).

Each must start with both workers configured and answer through palisade:
the ``login`` route's ``login-ip`` rule (capacity 5, refilled 5 a minute)
passes 5 POSTs of one client and throttles the 6th (429 ``rl.exhausted``),
and an ``/api/`` request passes, with no fatal line in the error log.
"""

from __future__ import annotations

import json
import os
import pwd
import re

import yaml

import harness
import nginx_host

NGINX_CONF = harness.REPO_ROOT / "nginx" / "nginx.conf"
KONG_YML = harness.REPO_ROOT / "nginx" / "kong" / "kong.yml"

# As a browser sends them: the bot stage scores the request headers.
BROWSER = {
    "User-Agent": "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0",
    "Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
    "Accept-Language": "en-GB,en;q=0.5",
    "Accept-Encoding": "gzip, deflate",
}


TEMP_PATHS = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")


def sub_once(pattern: str, repl: str, text: str) -> str:
    out, n = re.subn(pattern, lambda _m: repl, text, flags=re.MULTILINE)
    assert n == 1, f"nginx/nginx.conf changed: {pattern!r} matched {n} times (update test_ngx_shipped.py)"
    return out


def shipped_nginx_conf(inst: nginx_host.NginxInstance) -> str:
    d = inst.run_dir
    text = NGINX_CONF.read_text()
    text = sub_once(r"^worker_processes\s+\S+;", f"worker_processes {inst.workers};", text)
    user = f"user {pwd.getpwuid(0).pw_name};\n" if os.geteuid() == 0 else ""
    text = (
        f"{user}daemon off;\nmaster_process on;\npid {d}/nginx.pid;\nerror_log {d}/error.log info;\n" + text
    )
    text = sub_once(r"module\s+palisade\s+\S+;", f"module palisade {inst.wasm};", text)
    text = sub_once(
        r"^(\s*)(shm_kv\s+\*\s+\S+\s+eviction=none;)",
        f"    shm_kv * {shipped_shm_size()} eviction=none;\n    wasmtime {{ cache_config {inst.cache_config()}; }}",
        text,
    )
    text = sub_once(r"server\s+127\.0\.0\.1:8081;", f"server 127.0.0.1:{inst.upstream_port};", text)
    text = sub_once(
        r"^(\s*)listen\s+8080;",
        f"    listen 127.0.0.1:{inst.port} reuseport;\n"
        f"        location = {nginx_host.READY_PATH} {{ return 200; }}",
        text,
    )
    text = sub_once(
        r"^http\s*\{",
        "http {\n"
        f"    log_format palisade_test '$pid $status $request_method $uri';\n"
        f"    access_log {d}/access.log palisade_test;\n"
        + "".join(f"    {kind}_temp_path {d}/tmp/{kind};\n" for kind in TEMP_PATHS),
        text,
    )
    return text


def shipped_shm_size() -> str:
    m = re.search(r"^\s*shm_kv\s+\*\s+(\S+)\s+eviction=none;", NGINX_CONF.read_text(), re.MULTILINE)
    assert m, "nginx/nginx.conf declares no `shm_kv * <size> eviction=none;`"
    return m.group(1)


def kong_palisade() -> tuple[dict, str]:
    doc = yaml.safe_load(KONG_YML.read_text())
    (service,) = doc["services"]
    (chain,) = service["filter_chains"]
    (flt,) = [f for f in chain["filters"] if f["name"] == "palisade"]
    m = re.search(r"nginx_wasm_main_shm_kv\s*=\s*(\S+)\s+eviction=none", KONG_YML.read_text())
    assert m, "kong.yml names no nginx_wasm_main_shm_kv size"
    return flt["config"], m.group(1)


def check_serves(inst: nginx_host.NginxInstance, upstream: nginx_host.RecordingUpstream) -> None:
    logins = [inst.request("POST", "/login", {**BROWSER, "Content-Length": "0"}) for _ in range(6)]
    got = [(r[0], harness.reason_of(r)) for r in logins]
    assert got == [(200, None)] * 5 + [(429, "rl.exhausted")], got
    assert "login-ip" in logins[-1][1].get("ratelimit-policy", ""), logins[-1][1]
    r = inst.request("GET", "/api/items", BROWSER)
    assert r[0] == 200, (r[0], harness.reason_of(r))
    assert upstream.count() == 6
    assert len(inst.worker_pids()) == 2
    inst.assert_healthy()


def test_shipped_nginx_conf_runs(nginx, upstream):
    inst = nginx(None, conf_template=shipped_nginx_conf)
    text = inst.conf_path.read_text()
    assert f"shm_kv * {shipped_shm_size()} eviction=none;" in text
    shipped_json = re.search(r"proxy_wasm palisade '(.*?)';", NGINX_CONF.read_text(), re.DOTALL).group(1)
    assert shipped_json in text, "the palisade JSON was not used as shipped"
    json.loads(shipped_json.replace("\\\\", "\\"))  # it is the JSON palisade got (nginx unescapes \\)
    check_serves(inst, upstream)


def test_kong_palisade_config_runs(nginx, upstream):
    config, size = kong_palisade()
    inst = nginx(config, shm_kv=size)
    check_serves(inst, upstream)
