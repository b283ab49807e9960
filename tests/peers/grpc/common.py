"""Shared helpers for the node-proxy gRPC test peers (server.py, client.py).

The Python stubs are generated from echo.proto at start-up into a private
temporary directory (removed at exit) and imported from there; nothing
generated is ever written next to the sources.
"""

import atexit
import base64
import importlib
import os
import shutil
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
PROTO = os.path.join(HERE, "echo.proto")
MIB = 1024 * 1024
DEFAULT_MAX_MESSAGE_MIB = 16

# Exit statuses shared by the scripts.
EXIT_USAGE = 2      # argparse / bad option values
EXIT_TOOLING = 3    # grpc / protoc missing or stub generation failed

_PATTERN_UNIT = b"node-proxy-grpc-echo-0123456789abcdefghijklmnopqrstuvwxyz|"


def pattern(n):
    """Deterministic payload of n bytes (both peers use it, so the client can
    check integrity of large replies)."""
    if n <= 0:
        return b""
    reps = n // len(_PATTERN_UNIT) + 1
    return (_PATTERN_UNIT * reps)[:n]


def die(msg, status=EXIT_TOOLING):
    sys.stderr.write(msg.rstrip() + "\n")
    sys.stderr.flush()
    sys.exit(status)


def load_stubs():
    """Generate echo_pb2 / echo_pb2_grpc from echo.proto and import them.

    Returns (echo_pb2, echo_pb2_grpc). Exits with EXIT_TOOLING if grpcio /
    grpcio-tools are missing or protoc fails.
    """
    try:
        import grpc  # noqa: F401
        import grpc_tools
        from grpc_tools import protoc
    except ImportError as e:  # pragma: no cover - environment problem
        die("grpc peers need grpcio, grpcio-tools and protobuf "
            "(pip install grpcio grpcio-tools protobuf): %s" % e)

    out = tempfile.mkdtemp(prefix="nodeproxy-grpc-stubs-")
    atexit.register(shutil.rmtree, out, True)
    wkt = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")
    args = [
        "grpc_tools.protoc",
        "-I" + HERE,
        "-I" + wkt,
        "--python_out=" + out,
        "--grpc_python_out=" + out,
        PROTO,
    ]
    rc = protoc.main(args)
    if rc != 0:
        die("protoc failed (rc=%s) generating stubs from %s" % (rc, PROTO))
    sys.path.insert(0, out)
    try:
        pb2 = importlib.import_module("echo_pb2")
        pb2_grpc = importlib.import_module("echo_pb2_grpc")
    finally:
        sys.path.remove(out)
    return pb2, pb2_grpc


def status_code_by_number(n):
    """grpc.StatusCode for an integer code (UNKNOWN if out of range)."""
    import grpc
    for c in grpc.StatusCode:
        if c.value[0] == n:
            return c
    return grpc.StatusCode.UNKNOWN


def metadata_to_dict(md):
    """Metadata sequence -> {key: value}; duplicate keys are joined with ","
    and binary values (bytes, i.e. "-bin" keys) are base64-encoded."""
    out = {}
    for item in md or ():
        k, v = item[0], item[1]
        if isinstance(v, (bytes, bytearray)):
            v = base64.b64encode(bytes(v)).decode("ascii")
        out[k] = out[k] + "," + v if k in out else v
    return out


def metadata_value(key, value):
    """Value to send for a metadata key: bytes for "-bin" keys, str otherwise."""
    if key.endswith("-bin"):
        return value.encode("utf-8") if isinstance(value, str) else value
    return value


def parse_kv(s):
    """"KEY=VALUE" -> (key lower-cased, value). Raises ValueError."""
    if "=" not in s:
        raise ValueError("expected KEY=VALUE, got %r" % s)
    k, v = s.split("=", 1)
    k = k.strip().lower()
    if not k:
        raise ValueError("empty key in %r" % s)
    return k, v


def message_options(max_mib):
    n = int(max_mib * MIB)
    return [
        ("grpc.max_send_message_length", n),
        ("grpc.max_receive_message_length", n),
    ]
