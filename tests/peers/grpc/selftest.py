#!/usr/bin/env python3
"""Self-test for the gRPC test peers: no proxy, client.py straight to server.py.

    python3 tests/peers/grpc/selftest.py [-v]

Starts server.py on a free port, runs client.py cases through its real CLI,
checks the JSON results, stops the server with SIGTERM and exits 0 if every
check passed, 1 otherwise.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
PY = sys.executable
MIB = 1024 * 1024
VERBOSE = "-v" in sys.argv[1:]

results = []


def check(name, cond, info=""):
    results.append((name, bool(cond)))
    print("%s %s%s" % ("PASS" if cond else "FAIL", name, "" if cond else "  -- %s" % info))
    sys.stdout.flush()


class Server:
    def __init__(self, *extra):
        self.proc = subprocess.Popen(
            [PY, os.path.join(HERE, "server.py"), "--port", "0", "--server-id", "selftest",
             "--exit-on-stdin-close"] + list(extra),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=None if VERBOSE else subprocess.DEVNULL, text=True)
        line = self.proc.stdout.readline().strip()
        if not line.startswith("READY "):
            self.proc.kill()
            raise SystemExit("server did not start: %r" % line)
        self.port = int(line.split()[1])
        self.target = "127.0.0.1:%d" % self.port

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return None


def client(target, *args, expect_rc=0):
    cmd = [PY, os.path.join(HERE, "client.py"), "--target", target] + [str(a) for a in args]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    if VERBOSE:
        print("  $ client.py %s\n    rc=%d %s%s" % (" ".join(cmd[3:]), p.returncode, p.stdout.strip()[:600],
                                                  ("\n    stderr: " + p.stderr.strip()[:600]) if p.stderr.strip() else ""))
    if p.returncode != expect_rc:
        raise AssertionError("rc=%d (want %d) for %s\nstdout=%s\nstderr=%s"
                             % (p.returncode, expect_rc, args, p.stdout, p.stderr))
    if expect_rc != 0:
        return p
    lines = p.stdout.strip().splitlines()
    assert len(lines) == 1, "expected one JSON line, got %r" % p.stdout
    return json.loads(lines[0])


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def run(srv):
    t = srv.target

    # --- unary: attempt numbers count up per key; headers, authority, method.
    attempts = []
    for i in range(3):
        r = client(t, "unary", "--key", "u", "--payload", "hello-%d" % i,
                   "--metadata", "x-test=one", "--metadata", "x-bin-bin=raw")
        attempts.append(r["reply"]["attempt"] if r["reply"] else None)
        check("unary #%d OK + echo" % (i + 1),
              r["ok"] and r["code"] == "OK" and r["replies"] == 1 and r["payload_ok"]
              and r["reply"]["payload"] == "hello-%d" % i, r)
    check("unary attempts count up 1,2,3", attempts == [1, 2, 3], attempts)
    check("unary reply shows request metadata",
          r["reply"]["metadata"].get("x-test") == "one"
          and r["reply"]["metadata"].get("x-bin-bin") == "cmF3", r["reply"]["metadata"])
    check("unary initial metadata from server",
          r["initial_metadata"].get("x-echo-server") == "selftest", r["initial_metadata"])
    check("unary reply server/method/peer",
          r["reply"]["server"] == "selftest" and r["reply"]["method"] == "/nodeproxy.test.Echo/Unary"
          and r["reply"]["peer"].startswith("ipv4:127.0.0.1:"), r["reply"])
    check("no deadline -> deadline_ms == -1", r["reply"]["deadline_ms"] == -1, r["reply"])
    r = client(t, "unary", "--authority", "echo.test.example:8080", "--timeout-ms", "5000")
    check("--authority reaches server", r["ok"] and r["reply"]["authority"] == "echo.test.example:8080", r)
    check("--timeout-ms visible as deadline_ms",
          r["ok"] and 3000 < r["reply"]["deadline_ms"] <= 5000, r.get("reply"))

    # --- retries: fail_first=2 with UNAVAILABLE, then OK on attempt 3.
    seq = [client(t, "unary", "--key", "r", "--fail-first", 2, "--fail-code", 14,
                  "--fail-message", "try again", "--trailer", "x-fail=yes") for _ in range(3)]
    check("fail_first=2: UNAVAILABLE, UNAVAILABLE, OK",
          [s["code"] for s in seq] == ["UNAVAILABLE", "UNAVAILABLE", "OK"], [s["code"] for s in seq])
    check("injected failure carries message + trailer",
          seq[0]["details"] == "try again" and seq[0]["trailers"].get("x-fail") == "yes"
          and seq[0]["code_value"] == 14, seq[0])
    check("third call is attempt 3", seq[2]["reply"] and seq[2]["reply"]["attempt"] == 3, seq[2])
    a = client(t, "attempts", "--key", "r", "--reset")
    check("Attempts(r): 3 attempts, 2 failed, 1 completed",
          a["ok"] and a["reply"]["attempts"] == 3 and a["reply"]["failed"] == 2
          and a["reply"]["completed"] == 1 and a["reply"]["cancelled"] == 0, a)
    a = client(t, "attempts", "--key", "r")
    check("Attempts --reset zeroed the key", a["reply"]["attempts"] == 0, a)

    # --- deadline.
    r = client(t, "deadline", "--key", "d", "--timeout-ms", 200, "--delay-ms", 3000)
    check("deadline -> DEADLINE_EXCEEDED",
          r["code"] == "DEADLINE_EXCEEDED" and not r["ok"] and r["elapsed_ms"] < 2000, r)
    a = client(t, "attempts", "--key", "d", "--wait-cancelled", 1)
    check("server saw the deadline call end early",
          a["reply"]["attempts"] == 1 and a["reply"]["cancelled"] == 1 and a["reply"]["completed"] == 0, a)

    # --- cancel (unary, then mid-stream).
    r = client(t, "cancel", "--key", "c", "--cancel-after-ms", 300, "--delay-ms", 5000)
    check("cancel -> CANCELLED", r["code"] == "CANCELLED" and 250 < r["elapsed_ms"] < 2000, r)
    a = client(t, "attempts", "--key", "c", "--wait-cancelled", 1)
    check("Attempts(c) shows the cancellation",
          a["reply"]["cancelled"] == 1 and a["reply"]["deadline_exceeded"] == 0
          and a["reply"]["completed"] == 0, a)
    r = client(t, "cancel", "--method", "server-stream", "--key", "cs", "--count", 100,
               "--interval-ms", 100, "--delay-ms", 0, "--cancel-after-ms", 450)
    check("cancel mid server-stream -> CANCELLED after some replies",
          r["code"] == "CANCELLED" and 2 <= r["replies"] <= 7, r)
    a = client(t, "attempts", "--key", "cs", "--wait-cancelled", 1)
    check("Attempts(cs) shows the stream cancellation", a["reply"]["cancelled"] == 1, a)

    # --- large messages.
    r = client(t, "unary", "--response-size", 4 * MIB)
    check("4 MiB response", r["ok"] and r["reply"]["payload_len"] == 4 * MIB and r["payload_ok"], r)
    r = client(t, "unary", "--payload-size", 4 * MIB, "--response-size", -1)
    check("4 MiB request (empty reply)", r["ok"] and r["reply"]["payload_len"] == 0, r)
    r = client(t, "unary", "--payload-size", 4 * MIB)
    check("4 MiB request echoed back", r["ok"] and r["reply"]["payload_len"] == 4 * MIB and r["payload_ok"], r)
    r = client(t, "client-stream", "--payload-size", 4 * MIB, "--count", 2)
    check("client-stream 2 x 4 MiB",
          r["ok"] and r["reply"]["messages"] == 2 and r["reply"]["total_bytes"] == 8 * MIB, r)
    r = client(t, "unary", "--response-size", 17 * MIB)
    check("17 MiB response > 16 MiB limit -> RESOURCE_EXHAUSTED", r["code"] == "RESOURCE_EXHAUSTED", r)

    # --- streaming.
    r = client(t, "server-stream", "--count", 5, "--response-size", 1000)
    check("server-stream count=5 -> 5 replies",
          r["ok"] and r["replies"] == 5 and r["reply"]["index"] == 0 and r["last_reply"]["index"] == 4
          and r["payload_bytes"] == 5000 and r["payload_ok"], r)
    r = client(t, "client-stream", "--count", 4, "--payload-size", 100)
    check("client-stream 4 x 100 B -> messages=4 total_bytes=400",
          r["ok"] and r["replies"] == 1 and r["reply"]["messages"] == 4 and r["reply"]["total_bytes"] == 400, r)
    r = client(t, "bidi", "--count", 3, "--payload", "ping", "--send-interval-ms", 20)
    check("bidi count=3 -> 3 echoes",
          r["ok"] and r["replies"] == 3 and r["reply"]["payload"] == "ping" and r["last_reply"]["index"] == 2, r)

    # --- non-OK status with message and trailers.
    r = client(t, "unary", "--status-code", 9, "--status-message", "precondition says no",
               "--trailer", "x-custom-trailer=trailer-value")
    check("unary non-OK status: code + message + trailer",
          r["code"] == "FAILED_PRECONDITION" and r["code_value"] == 9
          and r["details"] == "precondition says no"
          and r["trailers"].get("x-custom-trailer") == "trailer-value"
          and r["initial_metadata"].get("x-echo-server") == "selftest", r)
    r = client(t, "server-stream", "--count", 2, "--status-code", 8, "--status-message", "out of juice",
               "--trailer", "x-custom-trailer=t2")
    check("server-stream: 2 replies then RESOURCE_EXHAUSTED + message + trailer",
          r["replies"] == 2 and r["code"] == "RESOURCE_EXHAUSTED" and r["details"] == "out of juice"
          and r["trailers"].get("x-custom-trailer") == "t2", r)
    r = client(t, "unary", "--trailer", "x-ok-trailer=fine")
    check("OK call with custom trailer", r["ok"] and r["trailers"].get("x-ok-trailer") == "fine", r)

    # --- client behaviour outside the happy path.
    r = client("127.0.0.1:%d" % free_port(), "unary")
    check("unreachable target: exit 0, UNAVAILABLE", r["code"] == "UNAVAILABLE" and not r["ok"], r)
    p = client(t, "no-such-case", expect_rc=2)
    check("usage error -> exit 2", p.returncode == 2)
    p = client(t, "unary", "--metadata", "novalue", expect_rc=2)
    check("bad --metadata -> exit 2", p.returncode == 2)


def main():
    started = time.monotonic()
    srv = Server()
    try:
        run(srv)
    except Exception as e:  # a crash is a failure, not a pass
        import traceback
        traceback.print_exc()
        check("selftest ran to completion", False, repr(e))
    finally:
        rc = srv.stop()
    check("server exits 0 on SIGTERM", rc == 0, rc)
    failed = [n for n, ok in results if not ok]
    print("%d checks, %d failed (%.1fs)" % (len(results), len(failed), time.monotonic() - started))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
