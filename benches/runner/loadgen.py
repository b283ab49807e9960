"""Load generators (wrk, h2load, oha), the idle-connection memory probe, and their parsers.

Each function returns the metrics of one measurement and the exact command it ran.
CPU accounting around it is done by the caller (runner.cli.measure).
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import socket
import subprocess
import time
from pathlib import Path

from . import procs
from .contenders import read_response

RUNNER_DIR = Path(__file__).resolve().parent
WRK_LUA = RUNNER_DIR / "wrk_report.lua"


class MeasureError(RuntimeError):
    pass


def find_oha() -> str | None:
    found = shutil.which("oha")
    if found:
        return found
    cand = Path.home() / ".cargo" / "bin" / "oha"
    return str(cand) if cand.is_file() and os.access(cand, os.X_OK) else None


def oha_json_flags(oha: str) -> list[str]:
    """oha < 1.x had `-j`; current releases have `--output-format json`."""
    try:
        help_text = subprocess.run([oha, "--help"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        help_text = ""
    if "--output-format" in help_text:
        flags = ["--output-format", "json"]
    else:
        flags = ["-j"]
    if "--worker-threads" in help_text:
        flags += ["--worker-threads", "1"]  # it is pinned to one CPU; more threads only contend
    return flags


def percentile(sorted_vals: list[float], q: float) -> float:
    """Nearest-rank percentile, q in [0, 100]."""
    if not sorted_vals:
        return float("nan")
    k = max(0, min(len(sorted_vals) - 1, math.ceil(q / 100.0 * len(sorted_vals)) - 1))
    return sorted_vals[k]


# --------------------------------------------------------------------------- wrk (HTTP/1.1)

def wrk_argv(port: int, path: str, duration: float, connections: int = 50) -> list[str]:
    return ["wrk", "-t1", f"-c{connections}", f"-d{duration:g}s", "--latency", "-s", str(WRK_LUA),
            f"http://127.0.0.1:{port}{path}"]


def parse_wrk(out: str) -> dict:
    m = re.search(r"^WRK_JSON (\{.*\})$", out, re.M)
    if not m:
        raise MeasureError(f"wrk printed no summary:\n{out[-1500:]}")
    d = json.loads(m.group(1))
    dur = d["duration_us"] / 1e6
    lat = d["latency_us"]
    non2xx = re.search(r"Non-2xx or 3xx responses:\s*(\d+)", out)
    errors = sum(d["errors"].values()) + (int(non2xx.group(1)) if non2xx else 0)
    return {"requests": d["requests"], "duration_s": dur, "rps": d["requests"] / dur if dur else 0.0,
            "p50_ms": lat["p50"] / 1000, "p90_ms": lat["p90"] / 1000, "p99_ms": lat["p99"] / 1000,
            "max_ms": lat["max"] / 1000, "errors": errors, "error_detail": d["errors"]}


# --------------------------------------------------------------------------- h2load (h2c)

def h2load_argv(port: int, path: str, duration: float, log_file: str, connections: int = 50,
                streams: int = 10) -> list[str]:
    # http:// with h2load means HTTP/2 with prior knowledge (no Upgrade).
    return ["h2load", "-t1", f"-c{connections}", f"-m{streams}", "-D", f"{duration:g}", "--log-file", log_file,
            f"http://127.0.0.1:{port}{path}"]


def parse_h2load(out: str, log_file: str) -> dict:
    fin = re.search(r"finished in ([\d.]+)(m?s), ([\d.]+) req/s", out)
    req = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, "
                    r"(\d+) errored, (\d+) timeout", out)
    codes = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
    if not (fin and req):
        raise MeasureError(f"h2load printed no summary:\n{out[-1500:]}")
    dur = float(fin.group(1)) / (1000.0 if fin.group(2) == "ms" else 1.0)
    succeeded = int(req.group(4))
    failed = int(req.group(5)) + int(req.group(6)) + int(req.group(7))
    non2xx = sum(int(codes.group(i)) for i in (2, 3, 4)) if codes else 0
    # h2load prints no percentiles: take them from its per-request log
    # (start µs since epoch \t status \t µs until end of response).
    lat = []
    try:
        with open(log_file) as f:
            for line in f:
                cols = line.split("\t")
                if len(cols) >= 3 and cols[1] != "-1":
                    lat.append(int(cols[2]))
    except OSError as e:
        raise MeasureError(f"h2load --log-file unreadable: {e}")
    finally:
        try:
            os.unlink(log_file)
        except OSError:
            pass
    lat.sort()
    return {"requests": succeeded, "duration_s": dur, "rps": float(fin.group(3)),
            "p50_ms": percentile(lat, 50) / 1000, "p90_ms": percentile(lat, 90) / 1000,
            "p99_ms": percentile(lat, 99) / 1000, "max_ms": (lat[-1] / 1000) if lat else float("nan"),
            "errors": failed + non2xx, "logged": len(lat)}


# --------------------------------------------------------------------------- oha (fixed rate)

def oha_argv(oha: str, port: int, path: str, duration: float, rate: int, json_flags: list[str],
             connections: int = 4) -> list[str]:
    return [oha, "-z", f"{duration:g}s", "-q", str(rate), "-c", str(connections), "--latency-correction",
            "--no-tui", *json_flags, f"http://127.0.0.1:{port}{path}"]


def parse_oha(out: str, rate: int) -> dict:
    start = out.find("{")
    if start < 0:
        raise MeasureError(f"oha printed no JSON:\n{out[-1500:]}")
    d = json.loads(out[start:])
    pct = d.get("latencyPercentiles") or {}
    summ = d.get("summary") or {}
    codes = d.get("statusCodeDistribution") or {}
    ok = sum(v for k, v in codes.items() if str(k).startswith("2"))
    bad = sum(v for k, v in codes.items() if not str(k).startswith("2"))
    errs = d.get("errorDistribution") or {}
    # requests still in flight when -z ends are reported as aborted: not an error.
    real_errs = sum(v for k, v in errs.items() if "deadline" not in k.lower())

    def ms(key: str) -> float:
        v = pct.get(key)
        return float(v) * 1000 if v is not None else float("nan")

    achieved = float(summ.get("requestsPerSec") or 0.0)
    return {"requests": ok, "rps": achieved, "target_rps": rate,
            "p50_ms": ms("p50"), "p90_ms": ms("p90"), "p99_ms": ms("p99"), "p999_ms": ms("p99.9"),
            "errors": bad + real_errs, "error_detail": errs}


# --------------------------------------------------------------------------- idle keep-alive connections

def idle_connections(port: int, count: int, settle_s: float, pids_fn) -> dict:
    """Opens `count` connections, sends one request on each (so they are HTTP keep-alive
    connections, not just accepted sockets), waits, and reads the proxy's RSS."""
    pids = pids_fn()
    base = procs.rss_kib(pids)
    base_pss = procs.pss_kib(pids)
    socks: list[socket.socket] = []
    req = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    failures = 0
    t0 = time.monotonic()
    try:
        for _ in range(count):
            try:
                s = socket.create_connection(("127.0.0.1", port), timeout=5)
                s.sendall(req)
                status, _ = read_response(s)
                if status != 200:
                    failures += 1
                socks.append(s)
            except OSError:
                failures += 1
        time.sleep(settle_s)
        pids = pids_fn()
        after = procs.rss_kib(pids)
        after_pss = procs.pss_kib(pids)
        alive = 0
        for s in socks:
            s.setblocking(False)
            try:
                alive += 0 if s.recv(1, socket.MSG_PEEK) == b"" else 1  # data on an idle conn: odd, count it
            except BlockingIOError:
                alive += 1  # nothing to read, not closed: still open
            except OSError:
                pass
    finally:
        for s in socks:
            try:
                s.close()
            except OSError:
                pass
    opened = len(socks)
    return {"base_rss_kib": base, "rss_kib": after, "delta_kib": after - base,
            "kib_per_conn": (after - base) / opened if opened else float("nan"),
            "pss_delta_kib": after_pss - base_pss, "opened": opened, "alive": alive,
            "errors": failures + (opened - alive), "setup_s": time.monotonic() - t0}
