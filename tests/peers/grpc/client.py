#!/usr/bin/env python3
"""gRPC echo client for node-proxy end-to-end tests.

    client.py --target HOST:PORT CASE [options]

CASE is one of: unary, server-stream, client-stream, bidi, deadline, cancel,
attempts. Runs one case and prints ONE JSON object on one line to stdout
(see README.md for the schema). Exit status: 0 whenever the case ran (even if
the RPC failed; the JSON says how), 2 for usage errors, 3 if grpc tooling is
missing / stub generation failed, 1 for an unexpected client-side crash.
"""

import argparse
import hashlib
import json
import sys
import threading
import time

import common

CASES = ("unary", "server-stream", "client-stream", "bidi", "deadline", "cancel", "attempts")
METHODS = ("unary", "server-stream", "client-stream", "bidi")


def build_parser():
    ap = argparse.ArgumentParser(
        description="gRPC echo client for node-proxy e2e tests; prints one JSON object")
    ap.add_argument("--target", required=True, help="HOST:PORT to connect to (e.g. the proxy)")
    ap.add_argument("case", choices=CASES)
    g = ap.add_argument_group("request fields (see echo.proto)")
    g.add_argument("--key", default="", help="attempt-counting key")
    g.add_argument("--fail-first", type=int, default=0, help="server fails the first N calls for --key")
    g.add_argument("--fail-code", type=int, default=0, help="status code for injected failures (default 14)")
    g.add_argument("--fail-message", default="", help="status message for injected failures")
    g.add_argument("--delay-ms", type=int, default=None, help="server sleeps this long before answering")
    g.add_argument("--interval-ms", type=int, default=0, help="server-stream: server sleeps between replies")
    g.add_argument("--response-size", type=int, default=0,
                   help="reply payload bytes (>0 pattern, 0 echo request payload, <0 empty)")
    g.add_argument("--payload-size", type=int, default=0, help="request payload bytes (pattern)")
    g.add_argument("--payload", default=None, help="literal request payload (overrides --payload-size)")
    g.add_argument("--count", type=int, default=None,
                   help="server-stream: replies wanted; client-stream/bidi: messages sent (default 1; 3 for bidi)")
    g.add_argument("--trailer", default=None, metavar="KEY=VALUE", help="custom trailer the server sends")
    g.add_argument("--status-code", type=int, default=0, help="server finishes with this status after replying")
    g.add_argument("--status-message", default="", help="message for --status-code")
    g = ap.add_argument_group("call options")
    g.add_argument("--timeout-ms", type=int, default=None,
                   help="call deadline (sent as grpc-timeout); none by default (deadline case: 200)")
    g.add_argument("--metadata", action="append", default=[], metavar="KEY=VALUE",
                   help="request metadata (repeatable; keys ending -bin are sent as bytes)")
    g.add_argument("--authority", default=None, help=":authority to send (grpc.default_authority)")
    g.add_argument("--cancel-after-ms", type=int, default=200, help="cancel case: cancel after this long")
    g.add_argument("--method", choices=METHODS, default="unary",
                   help="RPC used by the deadline / cancel cases (default unary)")
    g.add_argument("--send-interval-ms", type=int, default=0,
                   help="client-stream/bidi: client sleeps between request messages")
    g.add_argument("--wait-for-ready", action="store_true",
                   help="wait for the channel to connect instead of failing fast")
    g.add_argument("--max-message-mib", type=float, default=common.DEFAULT_MAX_MESSAGE_MIB,
                   help="max send/receive message size in MiB (default 16)")
    g = ap.add_argument_group("attempts case")
    g.add_argument("--reset", action="store_true", help="zero the key's counters after reading them")
    g.add_argument("--wait-cancelled", type=int, default=0, metavar="N",
                   help="poll until the server reports >= N cancelled calls for --key (up to --wait-ms)")
    g.add_argument("--wait-ms", type=int, default=5000, help="polling limit for --wait-cancelled")
    return ap


def message_to_dict(msg):
    """Protobuf message -> plain dict; `payload` is summarised, not dumped."""
    d = {}
    for f in msg.DESCRIPTOR.fields:
        v = getattr(msg, f.name)
        if f.name == "payload":
            d["payload_len"] = len(v)
            d["payload_sha256"] = hashlib.sha256(v).hexdigest()
            if len(v) <= 256:
                d["payload"] = v.decode("utf-8", "replace")
            continue
        if f.message_type is not None and f.message_type.GetOptions().map_entry:
            v = dict(sorted(v.items()))
        d[f.name] = v
    return d


def main(argv=None):
    ap = build_parser()
    args = ap.parse_args(argv)

    # Validate everything that can be a usage error before touching the network.
    try:
        metadata = []
        for kv in args.metadata:
            k, v = common.parse_kv(kv)
            metadata.append((k, common.metadata_value(k, v)))
        trailer = common.parse_kv(args.trailer) if args.trailer else ("", "")
    except ValueError as e:
        ap.error(str(e))
    if ":" not in args.target:
        ap.error("--target must be HOST:PORT")

    case = args.case
    method = {"deadline": args.method, "cancel": args.method}.get(case, case)
    timeout_ms = args.timeout_ms
    delay_ms = args.delay_ms
    if case == "deadline":
        timeout_ms = 200 if timeout_ms is None else timeout_ms
        delay_ms = max(timeout_ms * 10, 2000) if delay_ms is None else delay_ms
    elif case == "cancel":
        delay_ms = max(args.cancel_after_ms * 10, 2000) if delay_ms is None else delay_ms
    delay_ms = delay_ms or 0
    count = args.count
    if count is None:
        count = 3 if method == "bidi" else 1
    if count < 0 and method in ("client-stream", "bidi"):
        ap.error("--count must be >= 0")

    pb2, pb2_grpc = common.load_stubs()
    import grpc

    payload = args.payload.encode("utf-8") if args.payload is not None else common.pattern(args.payload_size)
    req = pb2.EchoRequest(
        payload=payload,
        key=args.key,
        fail_first=args.fail_first,
        fail_code=args.fail_code,
        fail_message=args.fail_message,
        delay_ms=delay_ms,
        response_size=args.response_size,
        count=count,
        trailer_key=trailer[0],
        trailer_value=trailer[1],
        status_code=args.status_code,
        status_message=args.status_message,
        interval_ms=args.interval_ms,
    )

    options = common.message_options(args.max_message_mib)
    if args.authority:
        options.append(("grpc.default_authority", args.authority))
    channel = grpc.insecure_channel(args.target, options=options)
    stub = pb2_grpc.EchoStub(channel)
    kw = {"metadata": metadata or None, "wait_for_ready": args.wait_for_ready or None}
    if timeout_ms is not None:
        kw["timeout"] = timeout_ms / 1000.0

    out = {
        "case": case,
        "method": "attempts" if case == "attempts" else method,
        "target": args.target,
        "ok": False,
        "code": None,
        "code_value": None,
        "details": "",
        "trailers": {},
        "initial_metadata": {},
        "replies": 0,
        "reply": None,
        "last_reply": None,
        "payload_ok": None,
        "payload_bytes": 0,
        "elapsed_ms": 0.0,
    }
    if case == "cancel":
        out["cancel_after_ms"] = args.cancel_after_ms
    if timeout_ms is not None:
        out["timeout_ms"] = timeout_ms

    if case == "attempts":
        run_attempts(pb2, stub, args, kw, out)
    else:
        run_echo(pb2, stub, grpc, method, req, count, args, kw, out)

    channel.close()
    sys.stdout.write(json.dumps(out, sort_keys=True) + "\n")
    sys.stdout.flush()
    return 0


def finish_from_call(call, out, started):
    """Fill code/details/metadata from a finished grpc Call (or RpcError)."""
    out["elapsed_ms"] = round((time.monotonic() - started) * 1000.0, 3)
    code = call.code()
    out["code"] = code.name if code is not None else "UNKNOWN"
    out["code_value"] = code.value[0] if code is not None else 2
    out["details"] = call.details() or ""
    out["initial_metadata"] = common.metadata_to_dict(call.initial_metadata())
    out["trailers"] = common.metadata_to_dict(call.trailing_metadata())
    out["ok"] = out["code"] == "OK"


def run_attempts(pb2, stub, args, kw, out):
    import grpc
    deadline = time.monotonic() + args.wait_ms / 1000.0
    started = time.monotonic()
    while True:
        reset = args.reset and args.wait_cancelled <= 0
        try:
            reply, call = stub.Attempts.with_call(
                pb2.AttemptsRequest(key=args.key, reset=reset), **kw)
        except grpc.RpcError as e:
            finish_from_call(e, out, started)
            return
        if reply.cancelled >= args.wait_cancelled or time.monotonic() >= deadline:
            break
        time.sleep(0.05)
    if args.reset and args.wait_cancelled > 0:
        stub.Attempts(pb2.AttemptsRequest(key=args.key, reset=True), **kw)
    finish_from_call(call, out, started)
    out["replies"] = 1
    out["reply"] = out["last_reply"] = message_to_dict(reply)


def run_echo(pb2, stub, grpc, method, req, count, args, kw, out):
    if req.response_size > 0:
        expected = common.pattern(req.response_size)
    elif req.response_size == 0:
        expected = b"" if method == "client-stream" else req.payload
    else:
        expected = b""

    def requests():
        for i in range(count):
            if i and args.send_interval_ms > 0:
                time.sleep(args.send_interval_ms / 1000.0)
            yield req

    replies = []

    def take(r):
        if not replies:
            out["reply"] = message_to_dict(r)
        out["last_reply"] = r  # converted at the end
        out["payload_bytes"] += len(r.payload)
        replies.append(r.payload == expected)

    started = time.monotonic()
    if method == "unary":
        call = stub.Unary.future(req, **kw)
    elif method == "client-stream":
        call = stub.ClientStream.future(requests(), **kw)
    elif method == "server-stream":
        call = stub.ServerStream(req, **kw)
    else:
        call = stub.Bidi(requests(), **kw)

    timer = None
    if args.case == "cancel":
        timer = threading.Timer(args.cancel_after_ms / 1000.0, call.cancel)
        timer.daemon = True
        timer.start()

    try:
        if method in ("unary", "client-stream"):
            take(call.result())
        else:
            for r in call:
                take(r)
    except grpc.FutureCancelledError:
        pass
    except grpc.RpcError:
        pass  # the call object itself carries code/details/trailers
    if timer is not None:
        timer.cancel()

    finish_from_call(call, out, started)
    out["replies"] = len(replies)
    out["payload_ok"] = all(replies) if replies else None
    if replies:
        out["last_reply"] = message_to_dict(out["last_reply"])


if __name__ == "__main__":
    try:
        sys.exit(main())
    except SystemExit:
        raise
    except BaseException as e:  # unexpected client-side crash: not a case result
        import traceback
        traceback.print_exc()
        sys.exit(1)
