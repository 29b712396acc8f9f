#!/usr/bin/env python3
"""Demo upstream for `make run`: answers every request with 200 and a JSON echo.

The echo has the method, the path and the request headers that show what
Envoy/palisade passed on: names starting with x-palisade-, x-forwarded-for and
x-request-id.  Standard library only.  Listens on 127.0.0.1:8081 (override with
--host/--port).
"""

from __future__ import annotations

import argparse
import json
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ECHOED = ("x-forwarded-for", "x-request-id")


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "palisade-demo-upstream"
    # Keep-alive responses go out at once (Nagle would hold each ~40 ms).
    disable_nagle_algorithm = True

    def _answer(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        if length:
            self.rfile.read(length)
        headers = {
            k.lower(): v
            for k, v in self.headers.items()
            if k.lower().startswith("x-palisade-") or k.lower() in ECHOED
        }
        body = json.dumps({"method": self.command, "path": self.path, "headers": headers}, indent=2).encode() + b"\n"
        self.send_response(200)
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
