#!/usr/bin/env python3
"""A minimal gRPC echo server for meshplane's proxyless-gRPC tests.

Usage:
    $MESHPLANE_PYTHON_GRPC tests/grpc/echo_server.py --addr 127.0.0.5:50051 --name echo-a

It serves one unary method, /echo.Echo/Call (override with --method), with raw
bytes in and out (no generated code, no serializers): the reply is the
server's name, a colon, then the request bytes, e.g. request b"hi" ->
reply b"echo-a:hi". Every reply also carries the trailing metadata
`x-server: <name>`.

Once it listens it prints one JSON line to stdout,
    {"listening": "127.0.0.5:50051", "name": "echo-a"}
and serves until SIGTERM/SIGINT (exit 0). --addr may use port 0; the line
then shows the port the OS chose. $MESHPLANE_PYTHON_GRPC is the Python of the
grpc venv that scripts/install-peers.sh creates (source scripts/peer-env.sh).
"""

import argparse
import json
import signal
import sys
import threading
from concurrent import futures

import grpc


def split_method(method):
    # "/echo.Echo/Call" -> ("echo.Echo", "Call")
    parts = method.strip("/").split("/")
    if len(parts) != 2 or not all(parts):
        raise SystemExit(f"--method must look like /pkg.Service/Method, got {method!r}")
    return parts[0], parts[1]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--addr", required=True, help="host:port to listen on (port 0: any)")
    ap.add_argument("--name", required=True, help="server name put in every reply")
    ap.add_argument("--method", default="/echo.Echo/Call", help="full method name to serve")
    args = ap.parse_args()

    service, method = split_method(args.method)
    prefix = args.name.encode() + b":"

    def call(request, context):
        context.set_trailing_metadata((("x-server", args.name),))
        return prefix + request

    # No serializers: request and response are passed through as bytes.
    handler = grpc.method_handlers_generic_handler(
        service, {method: grpc.unary_unary_rpc_method_handler(call)}
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port(args.addr)
    if port == 0:
        print(f"echo_server: cannot listen on {args.addr}", file=sys.stderr)
        return 1
    server.start()
    host = args.addr.rsplit(":", 1)[0]
    print(json.dumps({"listening": f"{host}:{port}", "name": args.name}), flush=True)

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    server.stop(grace=0.5).wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
