"""Processes the runner starts, and what /proc says about them and about the machine.

Every server is started in its own session (so its own process group), registered here,
and stopped by `stop_all()`, which the runner calls from `finally`, from `atexit` and
from its SIGTERM/SIGHUP handlers. Nothing is ever stopped by name: only the process
groups this module started.
"""

from __future__ import annotations

import os
import random
import resource
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field

CLK_TCK = os.sysconf("SC_CLK_TCK")

# Names of load generators; one running that is not ours means the machine is not quiet.
LOADGEN_NAMES = {"wrk", "wrk2", "h2load", "oha", "hey", "ab", "fortio", "iperf3", "vegeta", "k6", "ghz", "bombardier"}


# --------------------------------------------------------------------------- registry

@dataclass
class Managed:
    name: str
    popen: subprocess.Popen
    log_path: str


_managed: list[Managed] = []


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM it if the runner dies, even by SIGKILL (prctl
    PR_SET_PDEATHSIG survives exec), so not even `kill -9` of the runner leaves servers behind."""
    try:
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG = 1
    except Exception:  # noqa: BLE001 - best effort; the other clean-up paths remain
        pass


def start(name: str, argv: list[str], log_path: str, cpu: int | None = None, env: dict | None = None) -> Managed:
    """Starts argv (pinned to `cpu` with taskset) in a new session, output to log_path."""
    if cpu is not None:
        argv = ["taskset", "-c", str(cpu)] + argv
    log = open(log_path, "ab")
    try:
        p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                             start_new_session=True, env=env, close_fds=True, preexec_fn=_die_with_parent)
    finally:
        log.close()
    m = Managed(name, p, log_path)
    _managed.append(m)
    return m


def _signal_group(p: subprocess.Popen, sig: int) -> None:
    if p.poll() is not None:
        return
    try:
        os.killpg(p.pid, sig)  # the group this module created (start_new_session)
    except ProcessLookupError:
        pass
    except PermissionError:
        try:
            p.send_signal(sig)
        except ProcessLookupError:
            pass


def stop(m: Managed, timeout: float = 5.0) -> None:
    stop_many([m], timeout)


def stop_many(ms: list[Managed], timeout: float = 5.0) -> None:
    """SIGTERM each process group, wait up to `timeout`, then SIGKILL what is left."""
    for m in ms:
        _signal_group(m.popen, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for m in ms:
        try:
            m.popen.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
    for m in ms:
        if m.popen.poll() is None:
            _signal_group(m.popen, signal.SIGKILL)
            try:
                m.popen.wait(2)
            except subprocess.TimeoutExpired:
                pass
        else:
            # The leader exited; make sure nothing of its group lingers (nginx workers).
            try:
                os.killpg(m.popen.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
    for m in ms:
        if m in _managed:
            _managed.remove(m)


def stop_all() -> None:
    if _managed:
        stop_many(list(reversed(_managed)))


def log_tail(path: str, lines: int = 15) -> str:
    try:
        with open(path, "rb") as f:
            data = f.read()[-8000:]
    except OSError:
        return ""
    return "\n".join(data.decode("utf-8", "replace").splitlines()[-lines:])


# --------------------------------------------------------------------------- /proc

def read_stat(pid: int) -> tuple[int, int, str] | None:
    """(ppid, utime+stime in ticks, comm) from /proc/PID/stat, or None if gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            s = f.read().decode("utf-8", "replace")
    except OSError:
        return None
    lp, rp = s.find("("), s.rfind(")")
    comm = s[lp + 1:rp]
    rest = s[rp + 2:].split()
    # rest[0] = state (field 3); ppid = field 4; utime = 14; stime = 15
    return int(rest[1]), int(rest[11]) + int(rest[12]), comm


def all_pids() -> list[int]:
    return [int(d) for d in os.listdir("/proc") if d.isdigit()]


def snapshot_all() -> dict[int, tuple[int, int, str]]:
    out = {}
    for pid in all_pids():
        st = read_stat(pid)
        if st is not None:
            out[pid] = st
    return out


def tree(root: int, snap: dict | None = None) -> list[int]:
    """root and all its descendants."""
    snap = snap if snap is not None else snapshot_all()
    children: dict[int, list[int]] = {}
    for pid, (ppid, _, _) in snap.items():
        children.setdefault(ppid, []).append(pid)
    out, todo = [], [root]
    while todo:
        p = todo.pop()
        if p in snap or p == root:
            out.append(p)
            todo.extend(children.get(p, []))
    return out


def cpu_seconds(pids: list[int]) -> float:
    """Sum of utime+stime (all threads) of pids, in seconds."""
    ticks = 0
    for pid in pids:
        st = read_stat(pid)
        if st is not None:
            ticks += st[1]
    return ticks / CLK_TCK


def _kib_field(path: str, key: str) -> int:
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def rss_kib(pids: list[int]) -> int:
    """Sum of Rss from /proc/PID/smaps_rollup (kernel socket buffers are not in it)."""
    return sum(_kib_field(f"/proc/{p}/smaps_rollup", "Rss:") for p in pids)


def pss_kib(pids: list[int]) -> int:
    return sum(_kib_field(f"/proc/{p}/smaps_rollup", "Pss:") for p in pids)


def hwm_kib(pids: list[int]) -> int:
    """Sum of VmHWM (peak RSS) from /proc/PID/status."""
    return sum(_kib_field(f"/proc/{p}/status", "VmHWM:") for p in pids)


def machine_ticks() -> tuple[int, int, int]:
    """(busy, total, steal) jiffies over all CPUs. busy = user+nice+system+irq+softirq: without
    IRQ time accounting the kernel charges irq/softirq ticks to the interrupted process's stime
    too, so busy stays comparable with the sum of processes' utime+stime. steal = time the
    hypervisor gave our vCPUs to someone else (invisible in any process)."""
    with open("/proc/stat") as f:
        parts = f.readline().split()[1:]
    v = [int(x) for x in parts]
    user, nice, system, idle, iowait, irq, softirq, steal = (v + [0] * 8)[:8]
    return user + nice + system + irq + softirq, sum(v[:8]), steal


def is_kernel_thread(pid: int, snap: dict) -> bool:
    st = snap.get(pid)
    return pid == 2 or (st is not None and st[0] == 2)


def foreign_loadgens(own: set[int]) -> list[str]:
    found = []
    for pid in all_pids():
        if pid in own:
            continue
        try:
            with open(f"/proc/{pid}/comm") as f:
                comm = f.read().strip()
        except OSError:
            continue
        if comm in LOADGEN_NAMES:
            found.append(f"{comm}[{pid}]")
    return found


def sample_busy(interval: float, own: set[int]) -> dict:
    """Samples the machine for `interval` s: busy fraction of all CPUs, and who used it."""
    b0, t0, _ = machine_ticks()
    s0 = snapshot_all()
    time.sleep(interval)
    b1, t1, _ = machine_ticks()
    s1 = snapshot_all()
    total = max(1, t1 - t0)
    users = []
    for pid, (ppid, ticks, comm) in s1.items():
        if pid in s0:
            d = ticks - s0[pid][1]
            if d > 0:
                users.append((d, comm, pid))
    users.sort(reverse=True)
    top = [f"{comm}[{pid}]{' (ours)' if pid in own else ''} {d / CLK_TCK / interval:.2f} cores"
           for d, comm, pid in users[:3]]
    return {"busy": (b1 - b0) / total, "top": top}


# --------------------------------------------------------------------------- ports, limits

_picked: set[int] = set()


def _ephemeral_range() -> tuple[int, int]:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            lo, hi = f.read().split()
            return int(lo), int(hi)
    except (OSError, ValueError):
        return 32768, 60999


def free_port() -> int:
    """A free 127.0.0.1 TCP port outside the ephemeral range (so no client socket takes it
    between this check and the server's bind). The server's bind is checked afterwards
    with `owns_listen_port`."""
    lo, hi = _ephemeral_range()
    candidates = [p for p in range(20000, 32000) if not (lo <= p <= hi)] or list(range(hi + 1, 65000))
    for _ in range(2000):
        port = random.choice(candidates)
        if port in _picked:
            continue
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            continue
        finally:
            s.close()
        _picked.add(port)
        return port
    raise RuntimeError("no free TCP port found on 127.0.0.1")


def _listen_inodes(port: int) -> set[str]:
    inodes = set()
    for path in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(path) as f:
                next(f)
                for line in f:
                    cols = line.split()
                    local, state, inode = cols[1], cols[3], cols[9]
                    if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:
                        inodes.add(inode)
        except OSError:
            pass
    return inodes


def owns_listen_port(pids: list[int], port: int) -> bool:
    """True if one of pids holds the listening socket of `port` (not someone else)."""
    want = _listen_inodes(port)
    if not want:
        return False
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if link.startswith("socket:[") and link[8:-1] in want:
                return True
    return False


def raise_nofile(want: int) -> int:
    """Raises RLIMIT_NOFILE (inherited by every child) towards `want`; returns the soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            pass
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def children_cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def self_cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


@dataclass
class GenResult:
    rc: int
    stdout: str
    stderr: str
    wall_s: float
    cpu_s: float  # the load generator's own CPU (rusage of the reaped child)
    argv: list[str] = field(default_factory=list)


def run_generator(argv: list[str], timeout: float, cpu: int | None, stdout_path: str) -> GenResult:
    """Runs a load generator to completion, pinned, in its own process group; killed on
    timeout or interrupt."""
    full = (["taskset", "-c", str(cpu)] if cpu is not None else []) + argv
    c0 = children_cpu_seconds()
    t0 = time.monotonic()
    with open(stdout_path, "wb") as out, open(stdout_path + ".err", "wb") as err:
        p = subprocess.Popen(full, stdin=subprocess.DEVNULL, stdout=out, stderr=err, start_new_session=True,
                             preexec_fn=_die_with_parent)
        try:
            rc = p.wait(timeout)
        except BaseException:
            _signal_group(p, signal.SIGKILL)
            p.wait()
            raise
    wall = time.monotonic() - t0
    cpu_s = children_cpu_seconds() - c0
    with open(stdout_path, "rb") as f:
        so = f.read().decode("utf-8", "replace")
    with open(stdout_path + ".err", "rb") as f:
        se = f.read().decode("utf-8", "replace")
    return GenResult(rc, so, se, wall, cpu_s, full)
