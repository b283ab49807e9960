"""The origin and the contenders: config rendering, start-up, readiness and sanity checks."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import procs

BENCHES = Path(__file__).resolve().parent.parent
REPO = BENCHES.parent
CONFIGS = BENCHES / "configs"

BODY_SMALL = b"hello world\n"  # 12 bytes, as in the BENCHMARKING.md baselines
BODY_1K = ("0123456789abcdef" * 64)[:1023] + "\n"  # 1024 bytes; no '$' or '"' (nginx strings)
PATH_SMALL = "/"
PATH_1K = "/1k"

APT_HINT = "apt-get install haproxy nginx wrk nghttp2-client curl"
OHA_HINT = "cargo install oha --locked"
NODE_PROXY_BUILD_HINT = "cargo build --release -p node-proxy"


class SetupError(RuntimeError):
    pass


def render(template: Path, values: dict[str, object]) -> str:
    text = template.read_text()
    for k, v in values.items():
        text = text.replace(f"@{k}@", str(v))
    left = re.findall(r"@[A-Z0-9_]+@", "\n".join(l.split("#", 1)[0] for l in text.splitlines()))
    if left:
        raise SetupError(f"{template}: unfilled placeholders {sorted(set(left))}")
    return text


def render_envoy_ports(template: Path, ports: dict[str, int]) -> str:
    """Replaces `port_value: N  # @NAME@` lines; the template stays a valid bootstrap."""
    seen = set()

    def sub(m: re.Match) -> str:
        name = m.group(3)
        if name not in ports:
            raise SetupError(f"{template}: no port for marker @{name}@")
        seen.add(name)
        return f"{m.group(1)}{ports[name]}{m.group(2)}"

    text = re.sub(r"(port_value:\s*)\d+(\s*#\s*@([A-Z0-9_]+)@)", sub, template.read_text())
    missing = set(ports) - seen
    if missing:
        raise SetupError(f"{template}: markers not found: {sorted(missing)}")
    return text


# --------------------------------------------------------------------------- HTTP checks

def http_get(port: int, path: str, timeout: float = 2.0) -> tuple[int, bytes]:
    """A minimal HTTP/1.1 GET (Content-Length or chunked bodies)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
        return read_response(s)


def read_response(s: socket.socket) -> tuple[int, bytes]:
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = s.recv(65536)
        if not chunk:
            raise ConnectionError("connection closed before the response head")
        buf += chunk
    head, body = buf.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for l in lines[1:]:
        k, _, v = l.partition(":")
        headers[k.strip().lower()] = v.strip()
    if "content-length" in headers:
        n = int(headers["content-length"])
        while len(body) < n:
            chunk = s.recv(65536)
            if not chunk:
                raise ConnectionError("connection closed in the body")
            body += chunk
        return status, body[:n]
    if headers.get("transfer-encoding", "").lower() == "chunked":
        out = b""
        while True:
            while b"\r\n" not in body:
                body += s.recv(65536)
            size_line, body = body.split(b"\r\n", 1)
            size = int(size_line.split(b";")[0], 16)
            while len(body) < size + 2:
                body += s.recv(65536)
            out += body[:size]
            body = body[size + 2:]
            if size == 0:
                return status, out
    return status, body


def h2c_get(port: int, path: str) -> tuple[int, int, str]:
    """(status, bytes, http version) via curl with prior-knowledge h2c."""
    r = subprocess.run(["curl", "-s", "--max-time", "3", "--http2-prior-knowledge", "-o", "/dev/null",
                        "-w", "%{http_code} %{size_download} %{http_version}", f"http://127.0.0.1:{port}{path}"],
                       capture_output=True, text=True)
    try:
        code, size, ver = r.stdout.split()
        return int(code), int(size), ver
    except ValueError:
        return 0, 0, r.stderr.strip()


# --------------------------------------------------------------------------- servers

@dataclass
class Server:
    """One running server (origin or contender) and its ports."""
    name: str
    h1_port: int
    h2c_port: int
    managed: list[procs.Managed] = field(default_factory=list)
    pids: list[int] = field(default_factory=list)  # root processes and descendants
    version: str = ""
    command: str = ""
    notes: list[str] = field(default_factory=list)
    h2c_ok: bool = True

    @property
    def is_direct(self) -> bool:
        return not self.managed

    def refresh_pids(self) -> list[int]:
        snap = procs.snapshot_all()
        pids = []
        for m in self.managed:
            pids += procs.tree(m.popen.pid, snap)
        self.pids = pids
        return pids

    def alive(self) -> bool:
        return all(m.popen.poll() is None for m in self.managed)


def _wait_ready(server: Server, ports: list[int], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        for m in server.managed:
            if m.popen.poll() is not None:
                raise SetupError(f"{server.name} exited with status {m.popen.returncode} at start-up:\n"
                                 f"{procs.log_tail(m.log_path)}")
        pids = server.refresh_pids()
        if all(procs.owns_listen_port(pids, p) for p in ports):
            try:
                status, _ = http_get(ports[0], PATH_SMALL)
                if status == 200:
                    return
                last = f"HTTP {status}"
            except OSError as e:
                last = str(e)
        time.sleep(0.1)
    tails = "\n".join(procs.log_tail(m.log_path) for m in server.managed)
    raise SetupError(f"{server.name} not ready on ports {ports} after {timeout:.0f}s ({last}):\n{tails}")


def _nginx_prefix(tmp: Path, name: str) -> Path:
    prefix = tmp / name
    prefix.mkdir(parents=True)
    os.chmod(prefix, 0o755)
    return prefix


def _nginx_values(prefix: Path, nofile: int) -> dict:
    return {"PREFIX": prefix, "NOFILE": nofile, "WORKER_CONNECTIONS": max(1024, min(16384, nofile // 2 - 64))}


def start_origin(tmp: Path, cpu: int | None, nofile: int) -> Server:
    prefix = _nginx_prefix(tmp, "origin")
    s = Server("origin", procs.free_port(), procs.free_port())
    conf = prefix / "nginx.conf"
    conf.write_text(render(CONFIGS / "nginx-origin.conf",
                           {**_nginx_values(prefix, nofile), "H1_PORT": s.h1_port, "H2C_PORT": s.h2c_port,
                            "BODY_1K": BODY_1K.replace("\n", "\\n")}))
    argv = ["nginx", "-p", str(prefix), "-c", str(conf)]
    s.command = " ".join(argv)
    s.managed.append(procs.start("origin", argv, str(prefix / "stdout.log"), cpu))
    _wait_ready(s, [s.h1_port, s.h2c_port])
    check_bodies(s, s.h1_port)
    return s


def check_bodies(s: Server, port: int) -> None:
    for path, want in ((PATH_SMALL, len(BODY_SMALL)), (PATH_1K, len(BODY_1K))):
        status, body = http_get(port, path)
        if status != 200 or len(body) != want:
            raise SetupError(f"{s.name}: GET {path} on :{port} gave HTTP {status} with {len(body)} bytes, "
                             f"expected 200 with {want}")


def direct(origin: Server) -> Server:
    s = Server("direct", origin.h1_port, origin.h2c_port, version="(no proxy: clients talk to the origin)")
    s.command = "(none)"
    return s


def start_haproxy(tmp: Path, origin: Server, cpu: int | None, nofile: int, tag: str = "") -> Server:
    d = tmp / f"haproxy{tag}"
    d.mkdir(parents=True)
    s = Server("haproxy", procs.free_port(), procs.free_port())
    maxconn = max(2048, min(10000, (nofile - 1000) // 2))
    conf = d / "haproxy.cfg"
    conf.write_text(render(CONFIGS / "haproxy.cfg", {"H1_PORT": s.h1_port, "H2C_PORT": s.h2c_port,
                                                     "ORIGIN_PORT": origin.h1_port, "MAXCONN": maxconn}))
    check = subprocess.run(["haproxy", "-c", "-f", str(conf)], capture_output=True, text=True)
    if check.returncode != 0:
        raise SetupError(f"haproxy rejected {conf}:\n{check.stdout}{check.stderr}")
    argv = ["haproxy", "-db", "-f", str(conf)]
    s.command = " ".join(argv)
    s.version = tool_version(["haproxy", "-v"])
    s.managed.append(procs.start(f"haproxy{tag}", argv, str(d / "stdout.log"), cpu))
    _wait_ready(s, [s.h1_port, s.h2c_port])
    return s


def start_nginx_proxy(tmp: Path, origin: Server, cpu: int | None, nofile: int, tag: str = "") -> Server:
    prefix = _nginx_prefix(tmp, f"nginx-proxy{tag}")
    s = Server("nginx", procs.free_port(), procs.free_port())
    conf = prefix / "nginx.conf"
    conf.write_text(render(CONFIGS / "nginx-proxy.conf",
                           {**_nginx_values(prefix, nofile), "H1_PORT": s.h1_port, "H2C_PORT": s.h2c_port,
                            "ORIGIN_PORT": origin.h1_port}))
    argv = ["nginx", "-p", str(prefix), "-c", str(conf)]
    s.command = " ".join(argv)
    s.version = tool_version(["nginx", "-v"])
    s.managed.append(procs.start(f"nginx{tag}", argv, str(prefix / "stdout.log"), cpu))
    _wait_ready(s, [s.h1_port, s.h2c_port])
    return s


def node_proxy_bin() -> Path:
    env = os.environ.get("NODE_PROXY_BIN")
    if env:
        return Path(env).resolve()
    target = os.environ.get("CARGO_TARGET_DIR")
    base = Path(target) if target else REPO / "target"
    if not base.is_absolute():
        base = REPO / base
    return base / "release" / "node-proxy"


def start_node_proxy(tmp: Path, origin: Server, cpu: int | None, workers: int = 1, tag: str = "") -> Server:
    binary = node_proxy_bin()
    if not (binary.is_file() and os.access(binary, os.X_OK)):
        raise SetupError(f"node-proxy binary not found at {binary}: build it with "
                         f"`{NODE_PROXY_BUILD_HINT}` (from {REPO}), or set NODE_PROXY_BIN")
    d = tmp / f"node-proxy{tag}"
    d.mkdir(parents=True)
    port = procs.free_port()
    s = Server("node-proxy", port, port)  # codec AUTO: one listener for HTTP/1.1 and h2c
    conf = d / "node-proxy.yaml"
    conf.write_text(render_envoy_ports(CONFIGS / "node-proxy.yaml", {"PROXY_PORT": port, "ORIGIN_PORT": origin.h1_port}))
    check = subprocess.run([str(binary), "check-config", str(conf)], capture_output=True, text=True, timeout=60)
    if check.returncode != 0:
        raise SetupError(f"`node-proxy check-config` rejected the rendered {conf.name}:\n{check.stdout}{check.stderr}")
    for line in (check.stdout + check.stderr).splitlines():
        if "unsupported" in line.lower():
            s.notes.append(line.strip())
    admin, metrics, ready = procs.free_port(), procs.free_port(), procs.free_port()
    argv = [str(binary), "--config", str(conf), "--workers", str(workers),
            "--admin-address", f"127.0.0.1:{admin}", "--metrics-address", f"127.0.0.1:{metrics}",
            "--readiness-address", f"127.0.0.1:{ready}"]
    s.command = " ".join(argv)
    s.version = tool_version([str(binary), "--version"])
    s.notes.append(f"metrics on 127.0.0.1:{metrics}, admin 127.0.0.1:{admin}, readiness 127.0.0.1:{ready}")
    s.managed.append(procs.start(f"node-proxy{tag}", argv, str(d / "stdout.log"), cpu))
    _wait_ready(s, [port])
    return s


def start_contender(name: str, tmp: Path, origin: Server, cpu: int | None, nofile: int, tag: str = "") -> Server:
    """Starts a proxy contender; `tag` makes its directory unique (fresh instances)."""
    if name == "haproxy":
        return start_haproxy(tmp, origin, cpu, nofile, tag)
    if name == "nginx":
        return start_nginx_proxy(tmp, origin, cpu, nofile, tag)
    if name == "node-proxy":
        return start_node_proxy(tmp, origin, cpu, tag=tag)
    raise ValueError(name)


def tool_version(argv: list[str]) -> str:
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"unknown ({e})"
    text = (r.stdout + r.stderr).strip().splitlines()
    return text[0].strip() if text else "unknown"


def check_tools(need_oha: bool) -> list[str]:
    """Missing tools, each with the command that installs it."""
    missing = []
    for tool in ("nginx", "haproxy", "wrk", "h2load", "curl", "taskset"):
        if shutil.which(tool) is None:
            missing.append(f"{tool}: {APT_HINT}" if tool != "taskset" else "taskset: apt-get install util-linux")
    if need_oha and shutil.which("oha") is None:
        missing.append(f"oha: {OHA_HINT}  (installs into ~/.cargo/bin; make sure it is on PATH)")
    return missing
