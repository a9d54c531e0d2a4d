#!/usr/bin/env python3
"""A proxyless gRPC client for meshplane's tests: N unary calls, JSON summary.

Usage:
    $MESHPLANE_PYTHON_GRPC tests/grpc/xds_client.py \\
        --bootstrap /tmp/grpc-bootstrap.json \\
        --target xds:///echo.default.svc.cluster.local:50051 \\
        --calls 20 [--timeout 10] [--metadata k=v ...] [--allow-failures]

--bootstrap sets GRPC_XDS_BOOTSTRAP for this process (see
/work/shared/peers/grpc-bootstrap.example.json for the format): the channel
then resolves the xds:/// target through the control plane (State-of-the-World
ADS: LDS host:port -> RDS -> CDS -> EDS). Without --bootstrap any ordinary
target works too, e.g. --target 127.0.0.1:50051 or dns:///localhost:50051.

Each call sends --payload (default "ping") to --method (default
/echo.Echo/Call, served by echo_server.py) with raw bytes (no generated code),
waits for the channel to be ready (wait_for_ready) within its --timeout
deadline, and reads the answering server's name from the reply prefix
"<name>:". Prints one JSON object on stdout:

    {"target": ..., "calls": 20, "ok": 20, "failed": 0,
     "servers": {"echo-a": 11, "echo-b": 9}, "errors": [], "elapsed_s": 0.41}

"errors" lists up to 10 distinct failures as {"code": "UNAVAILABLE",
"details": "...", "count": n}. Exit status: 0 if every call succeeded (or
--allow-failures was given), 1 if any call failed, 2 on bad usage.
"""

import argparse
import json
import os
import sys
import time


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bootstrap", help="path of the gRPC xDS bootstrap JSON (sets GRPC_XDS_BOOTSTRAP)")
    ap.add_argument("--target", required=True, help="e.g. xds:///echo.default.svc.cluster.local:50051")
    ap.add_argument("--calls", type=int, default=10, help="number of unary calls (default 10)")
    ap.add_argument("--timeout", type=float, default=10.0, help="deadline of each call in seconds (default 10)")
    ap.add_argument("--method", default="/echo.Echo/Call")
    ap.add_argument("--payload", default="ping")
    ap.add_argument("--metadata", action="append", default=[], metavar="KEY=VALUE",
                    help="request metadata (header), repeatable")
    ap.add_argument("--allow-failures", action="store_true",
                    help="exit 0 even if some calls failed (the summary tells)")
    args = ap.parse_args()
    if args.calls < 1:
        ap.error("--calls must be >= 1")
    metadata = []
    for kv in args.metadata:
        if "=" not in kv:
            ap.error(f"--metadata wants KEY=VALUE, got {kv!r}")
        k, v = kv.split("=", 1)
        metadata.append((k.lower(), v))
    args.metadata = tuple(metadata)
    return args


def main():
    args = parse_args()
    if args.bootstrap:
        if not os.path.isfile(args.bootstrap):
            print(f"xds_client: bootstrap {args.bootstrap} not found", file=sys.stderr)
            return 2
        # Must be set before the first xds channel is created.
        os.environ["GRPC_XDS_BOOTSTRAP"] = os.path.abspath(args.bootstrap)

    import grpc  # imported after the environment is set

    payload = args.payload.encode()
    servers = {}
    errors = {}
    ok = 0
    started = time.monotonic()
    with grpc.insecure_channel(args.target) as channel:
        # No serializers: bytes in, bytes out.
        call = channel.unary_unary(args.method)
        for _ in range(args.calls):
            try:
                reply = call(payload, timeout=args.timeout, metadata=args.metadata or None,
                             wait_for_ready=True)
            except grpc.RpcError as e:
                key = (e.code().name, e.details() or "")
                errors[key] = errors.get(key, 0) + 1
                continue
            name, sep, echoed = reply.partition(b":")
            if not sep or echoed != payload:
                key = ("BAD_REPLY", repr(reply[:200]))
                errors[key] = errors.get(key, 0) + 1
                continue
            ok += 1
            name = name.decode(errors="replace")
            servers[name] = servers.get(name, 0) + 1

    failed = args.calls - ok
    summary = {
        "target": args.target,
        "calls": args.calls,
        "ok": ok,
        "failed": failed,
        "servers": dict(sorted(servers.items())),
        "errors": [
            {"code": code, "details": details, "count": n}
            for (code, details), n in list(errors.items())[:10]
        ],
        "elapsed_s": round(time.monotonic() - started, 3),
    }
    print(json.dumps(summary), flush=True)
    return 0 if failed == 0 or args.allow_failures else 1


if __name__ == "__main__":
    sys.exit(main())
