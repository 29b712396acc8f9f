#!/usr/bin/env python3
"""Demo upstream for `make run`: answers every request with 200 and a JSON echo.

The echo has the method, the path and the request headers that show what
Envoy/palisade passed on: names starting with x-palisade-, x-forwarded-for and
x-request-id.  One exception plays a login service: a POST to /login whose
form or JSON body names a password other than `demo` is answered 401, which
palisade's `login` section counts as a failed login.  Standard library only.
Listens on 127.0.0.1:8081 (override with --host/--port).
"""

from __future__ import annotations

import argparse
import json
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs

ECHOED = ("x-forwarded-for", "x-request-id")
DEMO_PASSWORD = "demo"


def password_of(body: bytes) -> str | None:
    """The password a login body names (JSON object or form), if any."""
    try:
        doc = json.loads(body)
        if isinstance(doc, dict) and isinstance(doc.get("password"), str):
            return doc["password"]
    except ValueError:
        pass
    values = parse_qs(body.decode("utf-8", "replace")).get("password")
    return values[0] if values else None


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "palisade-demo-upstream"
    # Keep-alive responses go out at once (Nagle would hold each ~40 ms).
    disable_nagle_algorithm = True

    def _answer(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        request_body = self.rfile.read(length) if length else b""
        status = 200
        if self.command == "POST" and self.path.split("?")[0] == "/login":
            password = password_of(request_body)
            if password is not None and password != DEMO_PASSWORD:
                status = 401
        headers = {
            k.lower(): v
            for k, v in self.headers.items()
            if k.lower().startswith("x-palisade-") or k.lower() in ECHOED
        }
        body = json.dumps({"method": self.command, "path": self.path, "headers": headers}, indent=2).encode() + b"\n"
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = do_HEAD = _answer

    def log_message(self, fmt: str, *args) -> None:  # one short line per request
        print(f"upstream: {self.address_string()} {fmt % args}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8081)
    args = ap.parse_args()
    ThreadingHTTPServer.daemon_threads = True
    ThreadingHTTPServer.allow_reuse_address = True
    # Envoy opens bursts of connections under load; the default backlog of 5
    # would leave some waiting past Envoy's connect timeout (503s).
    ThreadingHTTPServer.request_queue_size = 512
    server = ThreadingHTTPServer((args.host, args.port), Handler)
    print(f"demo upstream listening on http://{args.host}:{args.port}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
