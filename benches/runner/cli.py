"""benches/run.py: the side-by-side macro benchmark runner (see benches/README.md)."""

from __future__ import annotations

import argparse
import atexit
import datetime as dt
import json
import os
import platform
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from . import contenders as C
from . import loadgen as L
from . import procs as P
from . import report as R

ALL_CONTENDERS = ["direct", "node-proxy", "haproxy", "nginx"]
ALL_SCENARIOS = ["h1", "h2c", "fixed", "idle"]
IDLE_WARM_REQUESTS = 20
TMP_PREFIX = "node-proxy-bench-"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="python3 benches/run.py",
        description="Side-by-side macro benchmark: node-proxy vs haproxy vs nginx vs no proxy, "
                    "interleaved repetitions, pinned, one run. See benches/README.md.")
    ap.add_argument("--quick", action="store_true",
                    help="3 s per measurement instead of 10 s (same scenarios and repetitions)")
    ap.add_argument("--reps", type=int, default=3, help="interleaved repetitions (default 3, at least 3 for a gate)")
    ap.add_argument("--contenders", default=",".join(ALL_CONTENDERS),
                    help=f"comma-separated, in run order (default {','.join(ALL_CONTENDERS)})")
    ap.add_argument("--scenarios", default=",".join(ALL_SCENARIOS),
                    help=f"comma-separated subset of {','.join(ALL_SCENARIOS)}")
    ap.add_argument("--duration", type=float, help="seconds per measurement (default 10, 3 with --quick)")
    ap.add_argument("--rates", default="1000,20000", help="fixed rates in req/s for oha (default 1000,20000)")
    ap.add_argument("--fixed-conns", type=int, default=4, help="oha connections for the fixed-rate runs (default 4)")
    ap.add_argument("--idle-conns", type=int, default=1000, help="idle keep-alive connections (default 1000)")
    ap.add_argument("--out", default=str(C.BENCHES / "RESULTS.md"), help="Markdown report (default benches/RESULTS.md)")
    ap.add_argument("--json", help="raw per-repetition numbers (default: results.json next to --out)")
    ap.add_argument("--gen-cpu", type=int, default=0, help="CPU for the load generator (default 0)")
    ap.add_argument("--server-cpu", type=int, default=1, help="CPU for origin and proxies (default 1)")
    ap.add_argument("--no-pin", action="store_true", help="do not pin (not comparable with pinned runs)")
    ap.add_argument("--quiet-busy", type=float, default=0.10,
                    help="machine counts as quiet below this busy fraction of all CPUs over 1 s (default 0.10)")
    ap.add_argument("--quiet-timeout", type=float,
                    help="seconds to wait for a quiet machine before skipping a measurement (default 120, 60 with --quick)")
    ap.add_argument("--noise-limit", type=float, default=0.15,
                    help="exclude a measurement if processes not ours used more than this many cores on "
                         "average during it (default 0.15)")
    ap.add_argument("--retries", type=int, default=2,
                    help="repeat a measurement disturbed by other processes up to this many times (default 2)")
    ap.add_argument("--keep-noisy", action="store_true", help="keep noisy measurements in the medians (flagged)")
    ap.add_argument("--keep-tmp", action="store_true", help="keep the temporary directory (configs, server logs)")
    a = ap.parse_args(argv)
    a.contenders = [c.strip() for c in a.contenders.split(",") if c.strip()]
    bad = [c for c in a.contenders if c not in ALL_CONTENDERS]
    if bad or not a.contenders:
        ap.error(f"unknown contender(s) {bad}; choose from {ALL_CONTENDERS}")
    a.scenarios = [s.strip() for s in a.scenarios.split(",") if s.strip()]
    bad = [s for s in a.scenarios if s not in ALL_SCENARIOS]
    if bad or not a.scenarios:
        ap.error(f"unknown scenario(s) {bad}; choose from {ALL_SCENARIOS}")
    a.rates = [int(x) for x in a.rates.split(",") if x.strip()]
    if a.reps < 1:
        ap.error("--reps must be at least 1")
    if a.duration is None:
        a.duration = 3.0 if a.quick else 10.0
    if a.quiet_timeout is None:
        a.quiet_timeout = 60.0 if a.quick else 120.0
    a.idle_settle = 1.0 if a.quick else 2.0
    if a.json is None:
        a.json = str(Path(a.out).resolve().parent / "results.json")
    return a


def log(msg: str = "") -> None:
    print(msg, flush=True)


# --------------------------------------------------------------------------- run state

class Run:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.tmp: Path | None = None
        self.origin: C.Server | None = None
        self.servers: dict[str, C.Server] = {}
        self.records: list[dict] = []
        self.notes: list[str] = []
        self.gen_cpu: int | None = None
        self.server_cpu: int | None = None
        self.oha: str | None = None
        self.oha_flags: list[str] = []
        self.cleaned = False
        self.dead: set[str] = set()
        self.fresh_count = 0

    # ---- lifecycle

    def cleanup(self) -> None:
        if self.cleaned:
            return
        self.cleaned = True
        P.stop_all()
        if self.tmp is not None:
            if self.args.keep_tmp:
                log(f"kept temporary directory {self.tmp}")
            else:
                shutil.rmtree(self.tmp, ignore_errors=True)

    def own_pids(self) -> set[int]:
        pids = set()
        for s in [self.origin, *self.servers.values()]:
            if s is not None and not s.is_direct:
                pids.update(s.refresh_pids())
        pids.add(os.getpid())
        return pids

    # ---- setup

    def setup(self) -> None:
        a = self.args
        want_fixed = "fixed" in a.scenarios
        missing = C.check_tools(need_oha=False)
        self.oha = L.find_oha()
        if want_fixed and self.oha is None:
            missing.append(f"oha: {C.OHA_HINT}  (installs into ~/.cargo/bin; make sure it is on PATH)")
        if missing:
            raise C.SetupError("missing tools:\n  " + "\n  ".join(missing))
        if self.oha:
            self.oha_flags = L.oha_json_flags(self.oha)

        cpus = sorted(os.sched_getaffinity(0))
        if a.no_pin:
            self.notes.append("not pinned (--no-pin): load generator and servers share all CPUs")
        elif a.gen_cpu in cpus and a.server_cpu in cpus and a.gen_cpu != a.server_cpu:
            self.gen_cpu, self.server_cpu = a.gen_cpu, a.server_cpu
            os.sched_setaffinity(0, {a.gen_cpu})  # the runner itself (idle-connection client) too
        else:
            self.notes.append(f"not pinned: CPUs {a.gen_cpu} and {a.server_cpu} are not both available (have {cpus})")
            log(f"warning: {self.notes[-1]}")

        nofile = P.raise_nofile(65536)
        need = a.idle_conns * 2 + 500
        if "idle" in a.scenarios and nofile < need:
            raise C.SetupError(f"RLIMIT_NOFILE is {nofile}, {need} needed for {a.idle_conns} idle connections "
                               f"(raise the hard limit: ulimit -Hn)")
        self.nofile = nofile

        remove_stale_tmp()
        self.tmp = Path(tempfile.mkdtemp(prefix=TMP_PREFIX))
        os.chmod(self.tmp, 0o755)
        (self.tmp / "runner.pid").write_text(str(os.getpid()))
        self.origin = C.start_origin(self.tmp, self.server_cpu, nofile)
        self.origin.version = C.tool_version(["nginx", "-v"])
        log(f"origin: nginx on 127.0.0.1:{self.origin.h1_port} (HTTP/1.1) and :{self.origin.h2c_port} (h2c), "
            f"pid {self.origin.managed[0].popen.pid}")

        for name in a.contenders:
            try:
                if name == "direct":
                    s = C.direct(self.origin)
                else:
                    s = C.start_contender(name, self.tmp, self.origin, self.server_cpu, nofile)
            except C.SetupError as e:
                if name == "node-proxy":
                    msg = f"node-proxy skipped: {e}"
                    self.notes.append(msg.splitlines()[0])
                    log(f"*** {msg}")
                    continue
                raise
            self.preflight(s)
            self.servers[name] = s
            log(f"{name}: ready on :{s.h1_port} (HTTP/1.1), :{s.h2c_port} (h2c){'' if s.h2c_ok else ' [h2c broken]'}")
        if not self.servers:
            raise C.SetupError("no contender could be started")

    def preflight(self, s: C.Server) -> None:
        """Every path answers with the right body before anything is measured."""
        C.check_bodies(s, s.h1_port)
        for path, want in ((C.PATH_SMALL, len(C.BODY_SMALL)),):
            code, size, ver = C.h2c_get(s.h2c_port, path)
            if code != 200 or size != want or ver != "2":
                s.h2c_ok = False
                msg = f"{s.name}: h2c GET {path} on :{s.h2c_port} gave {code} / {size} bytes / HTTP {ver}; h2c runs skipped"
                self.notes.append(msg)
                log(f"warning: {msg}")

    def warm_up(self) -> None:
        log("warm-up (not measured)…")
        for name, s in self.servers.items():
            P.run_generator(L.wrk_argv(s.h1_port, C.PATH_SMALL, 1), 30, self.gen_cpu, str(self.tmp / "warm.out"))
            if s.h2c_ok and "h2c" in self.args.scenarios:
                P.run_generator(["h2load", "-t1", "-c10", "-m10", "-n", "20000", f"http://127.0.0.1:{s.h2c_port}/"],
                                30, self.gen_cpu, str(self.tmp / "warm.out"))

    # ---- measuring

    def wait_quiet(self) -> tuple[bool, str]:
        a = self.args
        deadline = time.monotonic() + a.quiet_timeout
        said = False
        while True:
            own = self.own_pids()
            smp = P.sample_busy(1.0, own)
            lg = P.foreign_loadgens(own)
            if smp["busy"] <= a.quiet_busy and not lg:
                return True, ""
            why = (f"busy {100 * smp['busy']:.0f}% of all CPUs (top: {'; '.join(smp['top'])})"
                   + (f"; other load generators running: {', '.join(lg)}" if lg else ""))
            if time.monotonic() > deadline:
                return False, f"machine not quiet within {a.quiet_timeout:.0f}s: {why}"
            if not said:
                log(f"    waiting for a quiet machine: {why}")
                said = True

    def measure_retrying(self, rep: int, scenario: str, name: str, fn) -> dict:
        """A measurement disturbed by someone else (noisy, or another load generator ran) is
        repeated in the same slot of the same repetition, up to --retries times; the disturbed
        attempts stay in the raw records as "retried"."""
        for attempt in range(self.args.retries + 1):
            rec = self.measure(rep, scenario, name, fn)
            disturbed = rec["status"] == "noisy" or (rec["status"] == "skipped" and "another load generator" in rec["reason"])
            if not disturbed or attempt == self.args.retries:
                return rec
            rec["reason"] = f"{rec['status']}: {rec['reason']}"
            rec["status"] = "retried"
            log(f"    retrying ({attempt + 1}/{self.args.retries})")
        return rec

    def measure(self, rep: int, scenario: str, name: str, fn) -> dict:
        """One measurement with the CPU accounting around it. fn() -> (metrics, argv, GenResult|None)."""
        a = self.args
        s = self.servers[name]
        rec = {"rep": rep, "scenario": scenario, "contender": name, "status": "ok", "reason": "", "metrics": {}}
        ok, why = self.wait_quiet()
        if not ok:
            rec.update(status="skipped", reason=why)
            self.records.append(rec)
            log(f"  [rep {rep}] {scenario:12s} {name:10s} SKIPPED: {why}")
            return rec
        own = self.own_pids()
        proxy_pids = [] if s.is_direct else s.refresh_pids()
        origin_pids = self.origin.refresh_pids()
        server_pids = sorted(own - {os.getpid()})
        snap0 = P.snapshot_all()
        busy0, _, steal0 = P.machine_ticks()
        self0 = P.self_cpu_seconds()
        proxy0, origin0, servers0 = P.cpu_seconds(proxy_pids), P.cpu_seconds(origin_pids), P.cpu_seconds(server_pids)
        t0 = time.monotonic()
        try:
            metrics, argv, gen = fn()
        except (L.MeasureError, C.SetupError, subprocess.TimeoutExpired, OSError) as e:
            rec.update(status="failed", reason=str(e).splitlines()[0] if str(e) else repr(e))
            self.records.append(rec)
            log(f"  [rep {rep}] {scenario:12s} {name:10s} FAILED: {rec['reason']}")
            return rec
        wall = time.monotonic() - t0
        proxy_cpu = P.cpu_seconds(proxy_pids) - proxy0
        origin_cpu = P.cpu_seconds(origin_pids) - origin0
        servers_cpu = P.cpu_seconds(server_pids) - servers0
        self_cpu = P.self_cpu_seconds() - self0
        busy1, _, steal1 = P.machine_ticks()
        snap1 = P.snapshot_all()
        gen_cpu = gen.cpu_s if gen else 0.0

        # Who else used the machine during the measurement?
        kernel = 0.0
        others = []
        for pid, (ppid, ticks, comm) in snap1.items():
            if pid in own or pid not in snap0:
                continue
            d = (ticks - snap0[pid][1]) / P.CLK_TCK
            if d <= 0:
                continue
            if P.is_kernel_thread(pid, snap1):
                kernel += d
            else:
                others.append((d, f"{comm}[{pid}]"))
        total_busy = (busy1 - busy0) / P.CLK_TCK
        foreign = max(0.0, total_busy - servers_cpu - self_cpu - gen_cpu - kernel)
        foreign_cores = foreign / wall if wall else 0.0
        others.sort(reverse=True)
        short_lived = max(0.0, foreign - sum(d for d, _ in others))
        lg = P.foreign_loadgens(own)

        m = dict(metrics)
        m["proxy_cpu_s"] = None if s.is_direct else proxy_cpu
        m["origin_cpu_s"] = origin_cpu
        m["loadgen_cpu_s"] = gen_cpu if gen else self_cpu
        m["wall_s"] = wall
        req = m.get("requests") or 0
        if scenario in ("h1", "h2c") and req:
            m["proxy_cpu_us_per_req"] = None if s.is_direct else proxy_cpu * 1e6 / req
            m["origin_cpu_us_per_req"] = origin_cpu * 1e6 / req
            m["loadgen_cpu_us_per_req"] = gen_cpu * 1e6 / req
        if scenario.startswith("fixed-"):
            rate = m["target_rps"]
            m["proxy_vcpu_per_1k"] = None if s.is_direct else proxy_cpu / wall / (rate / 1000)
            m["origin_vcpu_per_1k"] = origin_cpu / wall / (rate / 1000)
        rec["metrics"] = m
        rec["command"] = argv if isinstance(argv, str) else shlex.join(argv)
        rec["foreign_cores"] = round(foreign_cores, 3)
        steal_cores = (steal1 - steal0) / P.CLK_TCK / wall if wall else 0.0
        rec["steal_cores"] = round(steal_cores, 3)
        rec["kernel_threads_cpu_s"] = round(kernel, 3)
        rec["top_foreign"] = ([f"short-lived processes {short_lived:.2f}s"] if short_lived >= 0.01 else []) + \
            [f"{n} {d:.2f}s" for d, n in others[:3]]

        errors = m.get("errors") or 0
        if lg and scenario != "idle":
            rec.update(status="skipped", reason=f"another load generator ran during the measurement: {', '.join(lg)}")
        elif foreign_cores > a.noise_limit and scenario != "idle":  # memory is not skewed by CPU noise
            rec.update(status="ok" if a.keep_noisy else "noisy",
                       reason=f"processes not ours used {foreign_cores:.2f} cores during it "
                              f"(CPU seconds: {', '.join(rec['top_foreign']) or 'unattributed'})")
        elif steal_cores > a.noise_limit and scenario != "idle":
            rec.update(status="ok" if a.keep_noisy else "noisy",
                       reason=f"the hypervisor stole {steal_cores:.2f} cores during it")
        elif scenario == "idle" and errors:
            rec.update(status="errors", reason=f"{errors} of {a.idle_conns} connections failed or were closed")
        elif scenario != "idle" and errors > max(10, 0.001 * max(req, 1)):
            rec.update(status="errors", reason=f"{errors} errors for {req} good responses")
        elif scenario.startswith("fixed-") and m["rps"] < 0.95 * m["target_rps"]:
            rec.update(status="short", reason=f"achieved {m['rps']:.0f} of {m['target_rps']} req/s: "
                                              f"the latency numbers are not at the intended rate")
        self.records.append(rec)
        log(self.progress_line(rec))
        return rec

    def progress_line(self, rec: dict) -> str:
        m, sc = rec["metrics"], rec["scenario"]
        head = f"  [rep {rec['rep']}] {sc:12s} {rec['contender']:10s} "
        if sc in ("h1", "h2c"):
            body = (f"{m['rps']:>9,.0f} req/s  p50 {m['p50_ms']:.3f} ms  p99 {m['p99_ms']:.3f} ms  "
                    f"proxy {R.fmt(m.get('proxy_cpu_us_per_req'), 'us')} µs/req  "
                    f"origin {R.fmt(m.get('origin_cpu_us_per_req'), 'us')} µs/req")
        elif sc.startswith("fixed-"):
            body = (f"{m['rps']:>9,.0f} req/s  p50 {m['p50_ms']:.3f}  p90 {m['p90_ms']:.3f}  p99 {m['p99_ms']:.3f} ms  "
                    f"proxy {R.fmt(m.get('proxy_vcpu_per_1k'), 'vcpu')} vCPU/1000 req/s")
        else:
            body = (f"RSS {m['base_rss_kib'] / 1024:.1f} → {m['rss_kib'] / 1024:.1f} MiB  "
                    f"{m['kib_per_conn']:.2f} KiB/conn  ({m['alive']}/{m['opened']} alive)")
        tail = f"  foreign {rec['foreign_cores']:.2f} cores"
        if rec.get("steal_cores", 0) >= 0.01:
            tail += f"  steal {rec['steal_cores']:.2f} cores"
        if rec["status"] != "ok":
            tail += f"  [{rec['status'].upper()}: {rec['reason']}]"
        return head + body + tail

    def scenario_fn(self, scenario: str, s: C.Server):
        a, g = self.args, self.gen_cpu
        out = str(self.tmp / "gen.out")
        timeout = a.duration + 60
        if scenario == "h1":
            def fn():
                argv = L.wrk_argv(s.h1_port, C.PATH_SMALL, a.duration)
                gen = P.run_generator(argv, timeout, g, out)
                if gen.rc != 0:
                    raise L.MeasureError(f"wrk exited {gen.rc}: {gen.stderr.strip()[-300:]}")
                return L.parse_wrk(gen.stdout), gen.argv, gen
            return fn
        if scenario == "h2c":
            def fn():
                logf = str(self.tmp / "h2load.log")
                argv = L.h2load_argv(s.h2c_port, C.PATH_SMALL, a.duration, logf)
                gen = P.run_generator(argv, timeout, g, out)
                if gen.rc != 0:
                    raise L.MeasureError(f"h2load exited {gen.rc}: {(gen.stdout + gen.stderr).strip()[-300:]}")
                return L.parse_h2load(gen.stdout, logf), gen.argv, gen
            return fn
        if scenario.startswith("fixed-"):
            rate = int(scenario.split("-", 1)[1])

            def fn():
                argv = L.oha_argv(self.oha, s.h1_port, C.PATH_1K, a.duration, rate, self.oha_flags, a.fixed_conns)
                gen = P.run_generator(argv, timeout, g, out)
                if gen.rc != 0:
                    raise L.MeasureError(f"oha exited {gen.rc}: {gen.stderr.strip()[-300:]}")
                return L.parse_oha(gen.stdout, rate), gen.argv, gen
            return fn
        if scenario == "idle":
            def fn():
                # A fresh instance: a long-running one keeps the buffers and pools it grew under
                # load (h2c streams, bursts) and would hand them to the idle connections for free.
                self.fresh_count += 1
                fresh = C.start_contender(s.name, self.tmp, self.origin, self.server_cpu, self.nofile,
                                          tag=f"-fresh{self.fresh_count}")
                try:
                    for _ in range(IDLE_WARM_REQUESTS):  # first-request lazy set-up is not per connection
                        C.http_get(fresh.h1_port, C.PATH_SMALL)
                    m = L.idle_connections(fresh.h1_port, a.idle_conns, a.idle_settle, fresh.refresh_pids)
                    m["peak_rss_kib"] = P.hwm_kib(fresh.refresh_pids())
                finally:
                    P.stop_many(fresh.managed)
                what = (f"(in the runner) fresh {s.name} on 127.0.0.1:{fresh.h1_port}: {IDLE_WARM_REQUESTS} GETs, "
                        f"Rss; {a.idle_conns} connections with one GET / each; wait {a.idle_settle:g}s; Rss")
                return m, what, None
            return fn
        raise ValueError(scenario)

    def expanded_scenarios(self) -> list[str]:
        out = []
        for sc in self.args.scenarios:
            if sc == "fixed":
                out += [f"fixed-{r}" for r in self.args.rates]
            else:
                out.append(sc)
        return out

    def run(self) -> None:
        a = self.args
        scen = self.expanded_scenarios()
        per_rep = 0.0
        for sc in scen:
            n = len([c for c in self.servers if not (sc == "idle" and c == "direct")])
            per_rep += n * ((a.idle_settle + 3 if sc == "idle" else a.duration) + 1.5)
        log(f"plan: {a.reps} repetitions × {scen} × {list(self.servers)}; about {a.reps * per_rep / 60:.0f} min "
            f"on a quiet machine")
        for rep in range(1, a.reps + 1):
            log(f"repetition {rep}/{a.reps}")
            for sc in scen:
                for name, s in self.servers.items():
                    if sc == "idle" and s.is_direct:
                        continue  # no proxy to measure
                    if sc == "h2c" and not s.h2c_ok:
                        self.records.append({"rep": rep, "scenario": sc, "contender": name, "status": "skipped",
                                             "reason": "h2c preflight failed", "metrics": {}})
                        continue
                    if not self.origin.alive():
                        raise C.SetupError("the origin died during the run:\n"
                                           + "\n".join(P.log_tail(m.log_path) for m in self.origin.managed))
                    if name in self.dead:
                        self.records.append({"rep": rep, "scenario": sc, "contender": name, "status": "skipped",
                                             "reason": f"{name} had exited", "metrics": {}})
                        continue
                    if not s.alive():
                        codes = ", ".join(str(m.popen.returncode) for m in s.managed)
                        tail = "\n".join(P.log_tail(m.log_path) for m in s.managed)
                        msg = f"{name} exited during the run (status {codes}); its later measurements are skipped"
                        self.notes.append(msg)
                        self.dead.add(name)
                        log(f"*** {msg}. Last log lines:\n{tail}")
                        self.records.append({"rep": rep, "scenario": sc, "contender": name, "status": "skipped",
                                             "reason": f"{name} had exited", "metrics": {}})
                        continue
                    self.measure_retrying(rep, sc, name, self.scenario_fn(sc, s))

    def peaks(self) -> dict[str, float]:
        out = {}
        for name, s in self.servers.items():
            if not s.is_direct and name not in self.dead:
                out[name] = float(P.hwm_kib(s.refresh_pids()))
        out["origin"] = float(P.hwm_kib(self.origin.refresh_pids()))
        return out


def remove_stale_tmp() -> None:
    """Temporary directories of runs that were killed with SIGKILL (their servers died with
    them through PR_SET_PDEATHSIG, but nothing could remove the directory)."""
    for d in Path(tempfile.gettempdir()).glob(TMP_PREFIX + "*"):
        try:
            pid = int((d / "runner.pid").read_text())
        except (OSError, ValueError):
            continue
        if not Path(f"/proc/{pid}").exists():
            shutil.rmtree(d, ignore_errors=True)


# --------------------------------------------------------------------------- facts and output

def machine_facts() -> dict:
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = P._kib_field("/proc/meminfo", "MemTotal:")
    oha = L.find_oha()
    return {
        "nproc": os.cpu_count(),
        "kernel": platform.release(),
        "cpu_model": model,
        "mem_gib": round(mem / 1024 / 1024, 1),
        "python": platform.python_version(),
        "versions": {
            "haproxy": C.tool_version(["haproxy", "-v"]),
            "nginx": C.tool_version(["nginx", "-v"]),
            "wrk": C.tool_version(["wrk", "-v"]),
            "h2load": C.tool_version(["h2load", "--version"]),
            "oha": C.tool_version([oha, "--version"]) if oha else "not installed",
        },
    }


def git_rev() -> str:
    try:
        rev = subprocess.run(["git", "-C", str(C.REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(C.REPO), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return rev + (" (with uncommitted changes)" if dirty else "")
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"


def build_report(run: Run, facts: dict, started: dt.datetime, finished: dt.datetime, argv: list[str]) -> tuple[str, str]:
    a = run.args
    recs = run.records
    names = list(run.servers)
    peaks = run.peaks()
    lines: list[str] = []
    tables: list[str] = []
    w = lines.append
    w("# node-proxy side-by-side benchmark results")
    w("")
    w(f"Generated by `python3 benches/run.py {shlex.join(argv)}` on {started:%Y-%m-%d %H:%M} UTC "
      f"({(finished - started).total_seconds() / 60:.1f} min), repository at {git_rev()}.")
    w("")
    w("Every number is the **median over interleaved repetitions**; ratios and added latencies are the median of "
      "per-repetition pairs (contender and reference measured back to back in the same repetition). "
      "Absolute numbers drift ±15–25% between runs on this machine; ratios within one run do not. "
      "Compare contenders only within one table (one protocol, one rate).")
    w("")
    w("## Machine")
    w("")
    w(f"- {facts['nproc']} CPUs ({facts['cpu_model']}), {facts['mem_gib']} GiB, Linux {facts['kernel']}, "
      f"Python {facts['python']}")
    if run.gen_cpu is not None:
        w(f"- Pinned: load generator (and this runner) on CPU {run.gen_cpu}; origin and proxies on CPU {run.server_cpu} "
          f"(`taskset -c`)")
    for k, v in facts["versions"].items():
        w(f"- {k}: `{v}`")
    for name, s in run.servers.items():
        if name == "node-proxy":
            w(f"- node-proxy: `{s.version}` ({C.node_proxy_bin()})")
    w(f"- {a.reps} repetitions, {a.duration:g} s per measurement, contenders in order {', '.join(names)}; "
      f"quiet gate: < {100 * a.quiet_busy:.0f}% busy over 1 s and no other load generator; "
      f"noise limit {a.noise_limit:g} cores of processes not ours")
    for n in run.notes:
        w(f"- Note: {n}")
    w("")

    def section(title: str, body: list[str], notes: list[str]) -> None:
        w(f"## {title}")
        w("")
        for line in body:
            w(line)
        w("")
        for n in notes:
            w(n)
        w("")
        tables.append(f"== {title}")
        tables.extend(body)
        tables.append("")

    scen = run.expanded_scenarios()
    if "h1" in scen:
        section(R.SCENARIO_TITLES["h1"] + ", 12-byte body", R.throughput_table(recs, "h1", names),
                [f"`wrk -t1 -c50 -d{a.duration:g}s --latency`. * Closed-loop percentiles suffer from coordinated "
                 "omission: use them to compare contenders at saturation, not as latency figures (see the "
                 "fixed-rate tables). CPU µs/req = Δ(utime+stime) of the process tree from /proc/PID/stat over "
                 "the run ÷ requests completed. Spread = (max − min) ÷ median of req/s over repetitions."])
    if "h2c" in scen:
        section(R.SCENARIO_TITLES["h2c"] + ", 12-byte body", R.throughput_table(recs, "h2c", names),
                [f"`h2load -t1 -c50 -m10 -D {a.duration:g}` with prior knowledge; h2c in, HTTP/1.1 to the origin "
                 "for every proxy (direct = the origin's own h2c listener). Percentiles come from h2load's "
                 "`--log-file` per-request latencies (closed loop, same caveat *)."])
    for sc in scen:
        if sc.startswith("fixed-"):
            rate = int(sc.split("-", 1)[1])
            per_conn_us = 1e6 * a.fixed_conns / rate
            notes = [f"`oha -z {a.duration:g}s -q {rate} -c {a.fixed_conns} --latency-correction --no-tui` (JSON) on "
                     "`/1k`. Open loop with latency correction, so these percentiles are free of coordinated "
                     "omission. +pNN vs direct = contender − direct in the same repetition. vCPU per 1000 req/s = "
                     f"proxy CPU seconds ÷ wall seconds ÷ ({rate}/1000): always quote it with its rate."]
            if per_conn_us < 500:
                notes.append(f"At this rate each of the {a.fixed_conns} connections (one request at a time, no "
                             f"pipelining) must finish a request every {per_conn_us:.0f} µs. A proxied round trip "
                             "is of that order, so requests queue behind their connection and the percentiles "
                             "measure that queueing more than the proxy: read this table for vCPU, and for latency "
                             "only relative to the other proxies.")
            section(R.fixed_title(rate, a.fixed_conns), R.fixed_table(recs, sc, names), notes)
    if "idle" in scen:
        section(f"Memory: {a.idle_conns} idle HTTP/1.1 keep-alive connections",
                R.memory_table(recs, names, peaks, a.idle_conns),
                [f"Each repetition starts a fresh instance of the proxy (a long-running one would reuse the "
                 f"buffers and pools it grew under load), sends it {IDLE_WARM_REQUESTS} requests, reads RSS, opens "
                 f"{a.idle_conns} connections, sends one GET on each (so they are keep-alive connections, not "
                 f"just accepted sockets), waits {a.idle_settle:g} s and reads Rss again, from "
                 "/proc/PID/smaps_rollup summed over the proxy's process tree (nginx: master + worker). "
                 "KiB per idle conn = (RSS with − RSS before) ÷ connections; kernel socket buffers are not in RSS. "
                 f"Peak RSS = VmHWM of the long-running instance at the end of the whole run (after all the load "
                 f"above). Origin peak RSS: {R.fmt(peaks.get('origin'), 'mib')} MiB."])

    bad = [r for r in recs if r["status"] != "ok"]
    w("## Excluded or flagged measurements")
    w("")
    if bad:
        for r in bad:
            w(f"- rep {r['rep']} {r['scenario']} {r['contender']}: {r['status']} — {r['reason']}")
    else:
        w("None: every measurement ran on a quiet machine without errors.")
    w("")
    w("## Servers and exact commands")
    w("")
    w("Configs are rendered from `benches/configs/` into a temporary directory with ports picked free on "
      "127.0.0.1 (they are listed here for reading the commands).")
    w("")
    w("```")
    pin = f"taskset -c {run.server_cpu} " if run.server_cpu is not None else ""
    w(f"# origin ({run.origin.version}), HTTP/1.1 :{run.origin.h1_port}, h2c :{run.origin.h2c_port}")
    w(f"{pin}{run.origin.command}   # benches/configs/nginx-origin.conf")
    src = {"haproxy": "haproxy.cfg", "nginx": "nginx-proxy.conf", "node-proxy": "node-proxy.yaml"}
    for name, s in run.servers.items():
        if s.is_direct:
            continue
        w(f"# {name} ({s.version}), HTTP/1.1 :{s.h1_port}, h2c :{s.h2c_port}")
        w(f"{pin}{s.command}   # benches/configs/{src[name]}")
    w("")
    seen = set()
    for r in recs:
        key = (r["scenario"], r["contender"])
        if r.get("command") and key not in seen:
            seen.add(key)
            w(f"# {r['scenario']} {r['contender']}")
            w(r["command"])
    w("```")
    for name, s in run.servers.items():
        for n in s.notes:
            w(f"- {name}: {n}")
    w("")
    w("## How to reproduce")
    w("")
    w("```sh")
    w("apt-get install haproxy nginx wrk nghttp2-client curl   # Debian 12")
    w("cargo install oha --locked                               # fixed-rate latency")
    w("cargo build --release -p node-proxy                      # the contender")
    w("python3 benches/run.py                                   # ~10 min; --quick for 3 s runs")
    w("```")
    w("")
    w("Raw per-repetition numbers: `results.json` next to this file. How to read this report and the traps "
      "the runner avoids: `benches/README.md`.")
    return "\n".join(lines) + "\n", "\n".join(tables)


def write_json(run: Run, facts: dict, started, finished, argv, path: str) -> None:
    a = run.args
    data = {
        "generated": started.isoformat(timespec="seconds"),
        "finished": finished.isoformat(timespec="seconds"),
        "argv": argv,
        "git": git_rev(),
        "machine": facts,
        "settings": {"reps": a.reps, "duration_s": a.duration, "rates": a.rates, "idle_conns": a.idle_conns,
                     "gen_cpu": run.gen_cpu, "server_cpu": run.server_cpu, "quiet_busy": a.quiet_busy,
                     "noise_limit": a.noise_limit, "contenders": list(run.servers),
                     "scenarios": run.expanded_scenarios()},
        "notes": run.notes,
        "servers": {n: {"h1_port": s.h1_port, "h2c_port": s.h2c_port, "command": s.command, "version": s.version,
                        "notes": s.notes} for n, s in [("origin", run.origin), *run.servers.items()]},
        "peak_rss_kib": run.peaks(),
        "records": run.records,
    }
    Path(path).write_text(json.dumps(data, indent=1, default=str) + "\n")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    run = Run(args)

    def on_signal(signum, _frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    # Also when started in the background, where the shell leaves SIGINT ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    atexit.register(run.cleanup)
    started = dt.datetime.now(dt.timezone.utc)
    try:
        facts = machine_facts()
        run.setup()
        run.warm_up()
        run.run()
        finished = dt.datetime.now(dt.timezone.utc)
        md, tables = build_report(run, facts, started, finished, argv)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        old = Path(args.out).read_text() if Path(args.out).is_file() else ""
        Path(args.out).write_text(R.keep_foreign_sections(old, md))
        write_json(run, facts, started, finished, argv, args.json)
        log("")
        log(tables)
        skipped = [r for r in run.records if r["status"] != "ok"]
        if skipped:
            log(f"{len(skipped)} measurement(s) excluded or flagged: see the report")
        log(f"wrote {args.out} and {args.json}")
        return 0
    except C.SetupError as e:
        log(f"error: {e}")
        return 2
    except KeyboardInterrupt:
        log("\ninterrupted: stopping servers; no report written")
        return 130
    except SystemExit as e:
        log(f"\nterminated (exit {e.code}): stopping servers; no report written")
        raise
    finally:
        run.cleanup()
