#!/usr/bin/env python3
"""gRPC echo server for node-proxy end-to-end tests.

    server.py --port PORT [--host 127.0.0.1] [--max-message-mib 16]
              [--server-id ID] [--workers 64] [--exit-on-stdin-close] [-v]

Prints exactly one line "READY <port>" to stdout once serving (--port 0 picks
a free port). Exits 0 on SIGTERM / SIGINT (and on stdin EOF with
--exit-on-stdin-close). See README.md and echo.proto for behaviour.
"""

import argparse
import collections
import os
import signal
import sys
import threading
import time

import common

pb2, pb2_grpc = common.load_stubs()
import grpc  # noqa: E402  (after load_stubs, which checks it is installed)

# A deadline further away than this is treated as "no deadline" (grpcio
# reports an infinite deadline as a huge time_remaining()).
_NO_DEADLINE_S = 365 * 24 * 3600

# A call terminated this close to its deadline counts as deadline_exceeded
# (the client's own deadline usually fires, and resets the stream, slightly
# before the server's copy of it).
_DEADLINE_SLACK_S = 0.05

VERBOSE = False


def log(msg):
    if VERBOSE:
        sys.stderr.write("[echo-server] %s\n" % msg)
        sys.stderr.flush()


class Counters:
    """Per-key call counters, shared by all handler threads."""

    FIELDS = ("attempts", "cancelled", "deadline_exceeded", "failed", "completed")

    def __init__(self):
        self._lock = threading.Lock()
        self._by_key = collections.defaultdict(lambda: dict.fromkeys(self.FIELDS, 0))

    def bump(self, key, field):
        with self._lock:
            c = self._by_key[key]
            c[field] += 1
            return c[field]

    def read(self, key, reset=False):
        with self._lock:
            c = dict(self._by_key[key])
            if reset:
                del self._by_key[key]
            return c


class Call:
    """Tracks one Echo call: attempt number, cancellation and early wake-up."""

    def __init__(self, servicer, context, req):
        self.servicer = servicer
        self.context = context
        self.key = req.key
        self.finished = False
        self.ended = threading.Event()
        rem = context.time_remaining()
        self.deadline_ms = -1.0 if rem is None or rem > _NO_DEADLINE_S else rem * 1000.0
        self.attempt = servicer.counters.bump(self.key, "attempts")
        context.add_callback(self._on_done)
        if req.trailer_key:
            context.set_trailing_metadata(
                [(req.trailer_key.lower(),
                  common.metadata_value(req.trailer_key.lower(), req.trailer_value))])
        log("%s key=%r attempt=%d peer=%s deadline_ms=%.0f" % (
            self.method(), self.key, self.attempt, context.peer(), self.deadline_ms))

    def _on_done(self):
        # Runs when the RPC terminates. If the handler has not finished, the
        # client (or the deadline) ended the call first.
        self.ended.set()
        if not self.finished:
            self.servicer.counters.bump(self.key, "cancelled")
            rem = self.context.time_remaining()
            if self.deadline_ms >= 0 and rem is not None and rem <= _DEADLINE_SLACK_S:
                self.servicer.counters.bump(self.key, "deadline_exceeded")
            log("%s key=%r attempt=%d terminated early" % (self.method(), self.key, self.attempt))

    def finish(self):
        if not self.finished:
            self.finished = True
            self.servicer.counters.bump(self.key, "completed")

    def active(self):
        return not self.ended.is_set() and self.context.is_active()

    def sleep(self, ms):
        """Sleep ms milliseconds; returns False (early) if the call ended."""
        if ms > 0:
            self.ended.wait(ms / 1000.0)
        return self.active()

    def maybe_fail(self, req):
        """Abort with fail_code if this attempt is within fail_first."""
        if req.fail_first > 0 and self.attempt <= req.fail_first:
            code = common.status_code_by_number(req.fail_code or 14)
            if code == grpc.StatusCode.OK:
                code = grpc.StatusCode.UNAVAILABLE
            msg = req.fail_message or "injected failure %d/%d" % (self.attempt, req.fail_first)
            self.finished = True
            self.servicer.counters.bump(self.key, "failed")
            log("failing key=%r attempt=%d with %s" % (self.key, self.attempt, code.name))
            self.context.abort(code, msg)  # raises

    def send_headers(self):
        self.context.send_initial_metadata([("x-echo-server", self.servicer.server_id)])

    def reply(self, req, index=0, **extra):
        if req.response_size > 0:
            payload = common.pattern(req.response_size)
        elif req.response_size == 0:
            payload = req.payload
        else:
            payload = b""
        return pb2.EchoReply(
            payload=payload,
            attempt=self.attempt,
            peer=self.context.peer(),
            metadata=common.metadata_to_dict(self.context.invocation_metadata()),
            index=index,
            server=self.servicer.server_id,
            authority=self.authority(),
            method=self.method(),
            deadline_ms=self.deadline_ms,
            **extra)

    def _details(self):
        try:  # grpcio keeps :authority / :path only on the private call details
            return self.context._rpc_event.call_details
        except AttributeError:
            return None

    def authority(self):
        d = self._details()
        host = getattr(d, "host", b"") if d is not None else b""
        return host.decode("utf-8", "replace") if isinstance(host, bytes) else str(host or "")

    def method(self):
        d = self._details()
        m = getattr(d, "method", b"") if d is not None else b""
        return m.decode("utf-8", "replace") if isinstance(m, bytes) else str(m or "")

    def final_status(self, req):
        """For streams: apply status_code/status_message after the replies."""
        if req.status_code:
            self.context.set_code(common.status_code_by_number(req.status_code))
            self.context.set_details(req.status_message)


class EchoServicer(pb2_grpc.EchoServicer):
    def __init__(self, server_id):
        self.server_id = server_id
        self.counters = Counters()

    def Unary(self, request, context):
        call = Call(self, context, request)
        call.maybe_fail(request)
        if not call.sleep(request.delay_ms):
            return pb2.EchoReply()  # cancelled: nobody will read it
        call.send_headers()
        call.finish()
        if request.status_code:
            # Headers were sent, so this is a headers + trailers error response
            # (injected failures above are trailers-only).
            context.abort(common.status_code_by_number(request.status_code),
                          request.status_message)
        return call.reply(request)

    def ServerStream(self, request, context):
        call = Call(self, context, request)
        call.maybe_fail(request)
        if not call.sleep(request.delay_ms):
            return
        call.send_headers()
        for i in range(max(request.count, 0)):
            if i and not call.sleep(request.interval_ms):
                return
            if not call.active():
                return
            yield call.reply(request, index=i)
        call.finish()
        call.final_status(request)

    def ClientStream(self, request_iterator, context):
        first = None
        call = None
        messages = 0
        total = 0
        try:
            for req in request_iterator:
                if first is None:
                    first = req
                    call = Call(self, context, req)
                    call.maybe_fail(req)
                messages += 1
                total += len(req.payload)
        except grpc.RpcError:  # client went away mid-stream
            return pb2.EchoReply()
        if first is None:  # empty stream: count it under key ""
            first = pb2.EchoRequest()
            call = Call(self, context, first)
        if not call.sleep(first.delay_ms):
            return pb2.EchoReply()
        call.send_headers()
        call.finish()
        if first.status_code:
            context.abort(common.status_code_by_number(first.status_code),
                          first.status_message)
        reply = call.reply(first, messages=messages, total_bytes=total)
        if first.response_size == 0:
            reply.payload = b""  # nothing sensible to echo for many messages
        return reply

    def Bidi(self, request_iterator, context):
        first = None
        call = None
        i = 0
        it = iter(request_iterator)
        while True:
            try:
                req = next(it)
            except StopIteration:
                break
            except grpc.RpcError:  # client went away mid-stream
                return
            if first is None:
                first = req
                call = Call(self, context, req)
                call.maybe_fail(req)
                if not call.active():
                    return
                call.send_headers()
            if not call.sleep(req.delay_ms):
                return
            yield call.reply(req, index=i)
            i += 1
        if call is None:
            call = Call(self, context, pb2.EchoRequest())
            first = pb2.EchoRequest()
        call.finish()
        call.final_status(first)

    def Attempts(self, request, context):
        c = self.counters.read(request.key, reset=request.reset)
        return pb2.AttemptsReply(key=request.key, **c)


class _GenericHandlersOnly:
    """Server wrapper for add_EchoServicer_to_server that drops the
    "registered method" fast path: for registered methods grpc core does not
    report :authority or the method path (call_details.host/method are empty),
    and the tests want to see both."""

    def __init__(self, server):
        self._server = server

    def add_generic_rpc_handlers(self, handlers):
        self._server.add_generic_rpc_handlers(handlers)

    def add_registered_method_handlers(self, service_name, method_handlers):
        pass


def main(argv=None):
    global VERBOSE
    ap = argparse.ArgumentParser(description="gRPC echo server for node-proxy e2e tests")
    ap.add_argument("--port", type=int, required=True, help="port to listen on (0 = pick a free one)")
    ap.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    ap.add_argument("--max-message-mib", type=float, default=common.DEFAULT_MAX_MESSAGE_MIB,
                    help="max send/receive message size in MiB (default 16)")
    ap.add_argument("--server-id", default="echo",
                    help="name reported in EchoReply.server and the x-echo-server header")
    ap.add_argument("--workers", type=int, default=64, help="handler thread pool size")
    ap.add_argument("--grace-s", type=float, default=1.0, help="shutdown grace period")
    ap.add_argument("--exit-on-stdin-close", action="store_true",
                    help="shut down when stdin reaches EOF (parent went away)")
    ap.add_argument("-v", "--verbose", action="store_true", help="log calls to stderr")
    args = ap.parse_args(argv)
    VERBOSE = args.verbose
    if not 0 <= args.port <= 65535:
        ap.error("--port must be 0..65535")

    from concurrent import futures
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=args.workers),
        options=common.message_options(args.max_message_mib) + [
            # Never silently share a port with another process.
            ("grpc.so_reuseport", 0),
        ],
    )
    pb2_grpc.add_EchoServicer_to_server(EchoServicer(args.server_id), _GenericHandlersOnly(server))
    host = args.host
    if ":" in host and not host.startswith("["):
        host = "[%s]" % host
    try:
        port = server.add_insecure_port("%s:%d" % (host, args.port))
    except RuntimeError as e:
        common.die("cannot bind %s:%d: %s" % (host, args.port, e), 1)
    if port == 0:
        common.die("cannot bind %s:%d" % (host, args.port), 1)
    server.start()

    stop = threading.Event()

    def on_signal(signum, _frame):
        log("signal %d, shutting down" % signum)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    if args.exit_on_stdin_close:
        def watch_stdin():
            # os.read on the raw fd: a daemon thread blocked inside the
            # buffered sys.stdin would abort the interpreter at exit.
            try:
                fd = sys.stdin.fileno()
                while os.read(fd, 4096):
                    pass
            except Exception:
                pass
            log("stdin closed, shutting down")
            stop.set()
        threading.Thread(target=watch_stdin, daemon=True).start()

    sys.stdout.write("READY %d\n" % port)
    sys.stdout.flush()

    while not stop.wait(0.5):
        pass
    server.stop(args.grace_s).wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
