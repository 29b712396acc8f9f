"""Local HTTP servers for the JWT integration tests (standard library only).

* :class:`JwksServer` serves a JWK Set that a test swaps at run time
  (:meth:`JwksServer.set_keys`), can make fail (:meth:`JwksServer.fail`: every
  fetch answered with an HTTP error) or take down (:meth:`LocalServer.stop`:
  the port is closed, so Envoy's connections are refused) and bring back on
  the same port (:meth:`LocalServer.start`), and records every fetch (time,
  status, ``Host``, fault) so that tests can count them independently of
  palisade's own metrics. Its other faults (until :meth:`JwksServer.recover`
  or :meth:`JwksServer.set_keys`): :meth:`~JwksServer.slow` (the key set,
  after a delay), :meth:`~JwksServer.garbage` (200 with bytes that are not
  JSON), :meth:`~JwksServer.document` (200 with any JSON document, e.g. a set
  without a usable key) and :meth:`~JwksServer.huge` (200 with the key set
  padded to a size).
* :class:`EchoUpstream` is an upstream that answers every request with 200 and
  a JSON description of the request as it reached it (method, path, every
  header with all its values, SHA-256 and length of the body), so that tests
  see what palisade forwarded. Header values that carry credentials
  (:data:`REDACTED_HEADERS`) are replaced by ``"<redacted>"`` and the body is
  never echoed, so that no response body repeats a token or key.

Both answer with ``Connection: close`` (HTTP/1.0), so stopping a server ends
every connection to it: Envoy has no kept-alive connection that would outlive
a "down" server. Envoy reaches them through a STATIC cluster
(:meth:`LocalServer.cluster`).
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import harness

REDACTED_HEADERS = frozenset({"authorization", "cookie", "x-api-key", "x-access-token"})


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"  # one request per connection (see module doc)

    def _answer(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length) if length else b""
        status, content_type, payload = self.server.owner.answer(self, body)
        self.send_response(status)
        self.send_header("content-type", content_type)
        self.send_header("content-length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            try:
                self.wfile.write(payload)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (e.g. Envoy's fetch timeout): nothing to answer

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _answer

    def log_message(self, fmt: str, *args) -> None:  # quiet
        pass


class LocalServer:
    """A threaded HTTP server on 127.0.0.1; its port (picked by the kernel at
    the first start) stays the same across stop/start."""

    # A subclass of _Server (e.g. with a longer listen backlog).
    server_class: type[ThreadingHTTPServer] = _Server

    def __init__(self) -> None:
        self.port = 0
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None
        self.lock = threading.Lock()

    def answer(self, handler: BaseHTTPRequestHandler, body: bytes) -> tuple[int, str, bytes]:
        raise NotImplementedError

    def start(self) -> "LocalServer":
        if self._httpd is not None:
            return self
        httpd = self.server_class(("127.0.0.1", self.port), _Handler)
        httpd.owner = self
        self.port = httpd.server_address[1]
        self._httpd = httpd
        self._thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Down: the listening socket is closed (connections are refused)."""
        httpd, self._httpd = self._httpd, None
        if httpd is not None:
            httpd.shutdown()
            httpd.server_close()
            self._thread.join(timeout=5)

    @property
    def running(self) -> bool:
        return self._httpd is not None

    def cluster(self, name: str) -> dict:
        """An Envoy STATIC cluster named ``name`` that points at this server."""
        assert self.port, "start the server first"
        return harness.static_cluster(name, self.port)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


@dataclass(frozen=True)
class Fetch:
    at: float  # time.monotonic()
    status: int
    host: str
    path: str
    fault: str = ""  # JwksServer fault in force ("" when it served the key set)


class JwksServer(LocalServer):
    """Serves ``{"keys": [...]}`` at ``path``; 404 elsewhere.

    At most one fault is in force at a time; each fetch is recorded with the
    fault that answered it (:attr:`Fetch.fault`)."""

    def __init__(self, keys: list[dict] | None = None, path: str = "/.well-known/jwks.json") -> None:
        super().__init__()
        self.path = path
        self._doc = {"keys": list(keys or [])}
        # (name, status, content type, payload or None for the key set, delay s)
        self._fault: tuple[str, int, str, bytes | None, float] | None = None
        self._release = threading.Event()  # ends the delays of slow answers early
        self._slow_pending = 0
        self.fetches: list[Fetch] = []

    def _set_fault(self, fault: tuple[str, int, str, bytes | None, float] | None) -> None:
        with self.lock:
            self._fault = fault
            if fault is None or fault[0] != "slow":
                self._release.set()  # answers still held by a slow fault go out now
                self._release = threading.Event()

    def set_keys(self, keys: list[dict]) -> None:
        """Serve this key set from the next fetch on (and end any fault)."""
        with self.lock:
            self._doc = {"keys": list(keys)}
        self._set_fault(None)

    def fail(self, status: int = 500) -> None:
        """Answer every fetch with ``status`` until :meth:`set_keys` or :meth:`recover`."""
        self._set_fault((f"status {status}", status, "application/json", b'{"error": "unavailable"}', 0.0))

    def slow(self, delay: float) -> None:
        """Answer every fetch with the key set, but only after ``delay`` seconds
        (or when the fault ends, whichever comes first)."""
        self._set_fault(("slow", 200, "application/json", None, delay))

    def garbage(self, payload: bytes, content_type: str = "text/html") -> None:
        """Answer every fetch with 200 and ``payload`` (bytes that are not JSON)."""
        self._set_fault(("garbage", 200, content_type, payload, 0.0))

    def document(self, doc: object) -> None:
        """Answer every fetch with 200 and ``doc`` as JSON (e.g. a set with no usable key)."""
        self._set_fault(("document", 200, "application/json", json.dumps(doc).encode(), 0.0))

    def huge(self, size: int = 1 << 20, marker: str = "") -> None:
        """Answer every fetch with 200 and the current key set padded to ``size``
        bytes (a ``padding`` member, filled with ``marker`` repeated): a valid
        JWK Set, only too big."""
        with self.lock:
            doc = dict(self._doc)
        base = len(json.dumps({**doc, "padding": ""}).encode())
        fill = (marker or "x") * (size // max(1, len(marker or "x")) + 1)
        payload = json.dumps({**doc, "padding": fill[: max(0, size - base)]}).encode()
        self._set_fault(("huge", 200, "application/json", payload, 0.0))

    def recover(self) -> None:
        """End any fault: the key set is served again, at once."""
        self._set_fault(None)

    @property
    def slow_pending(self) -> int:
        """Fetches received whose (slow) answer has not been sent yet."""
        with self.lock:
            return self._slow_pending

    @property
    def fetch_count(self) -> int:
        with self.lock:
            return len(self.fetches)

    def fetches_since(self, t: float) -> list[Fetch]:
        with self.lock:
            return [f for f in self.fetches if f.at >= t]

    def wait_for_fetch(self, after: int, timeout: float) -> bool:
        """Wait until more than ``after`` fetches were received."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.fetch_count > after:
                return True
            time.sleep(0.05)
        return self.fetch_count > after

    def answer(self, handler, body):
        path = handler.path.split("?", 1)[0]
        if path != self.path:
            return 404, "text/plain", b"not found"
        with self.lock:
            name, status, content_type, payload, delay = self._fault or ("", 200, "application/json", None, 0.0)
            if payload is None:
                payload = json.dumps(self._doc).encode()
            self.fetches.append(Fetch(time.monotonic(), status, handler.headers.get("host", ""), handler.path, name))
            release = self._release
            if delay:
                self._slow_pending += 1
        if delay:
            release.wait(delay)
            with self.lock:
                self._slow_pending -= 1
        return status, content_type, payload


class EchoUpstream(LocalServer):
    """Answers 200 with ``{"method", "path", "headers": {name: [values]}, "body_sha256", "body_len"}``."""

    # Header names (lower case) whose values are echoed as "<redacted>".
    redacted: frozenset[str] = REDACTED_HEADERS

    def answer(self, handler, body):
        headers: dict[str, list[str]] = {}
        for name in {k.lower() for k in handler.headers.keys()}:
            values = handler.headers.get_all(name) or []
            if name in self.redacted:
                values = ["<redacted>"] * len(values)
            headers[name] = values
        doc = {
            "echo": True,
            "method": handler.command,
            "path": handler.path,
            "headers": headers,
            "body_sha256": hashlib.sha256(body).hexdigest(),
            "body_len": len(body),
        }
        return 200, "application/json", json.dumps(doc).encode()
