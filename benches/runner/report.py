"""Medians, per-repetition ratios and the Markdown report."""

from __future__ import annotations

import math
import re
import statistics
from typing import Callable

SCENARIO_TITLES = {
    "h1": "HTTP/1.1 keep-alive, closed loop (wrk)",
    "h2c": "HTTP/2 h2c prior knowledge, closed loop (h2load)",
    "idle": "Memory: idle keep-alive connections",
}


def fixed_title(rate: int, conns: int) -> str:
    return f"Fixed rate {rate:,} req/s, 1 KiB body, {conns} connections (oha, latency-corrected)"


def valid(records: list[dict], scenario: str, contender: str) -> list[dict]:
    return [r for r in records if r["scenario"] == scenario and r["contender"] == contender and r["status"] == "ok"]


def value(r: dict, key: str) -> float | None:
    v = r.get("metrics", {}).get(key, r.get(key))
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return None
    return float(v)


def median_of(records: list[dict], scenario: str, contender: str, key: str) -> float | None:
    vals = [v for v in (value(r, key) for r in valid(records, scenario, contender)) if v is not None]
    return statistics.median(vals) if vals else None


def spread_of(records: list[dict], scenario: str, contender: str, key: str) -> float | None:
    """(max - min) / median over repetitions, as a fraction."""
    vals = [v for v in (value(r, key) for r in valid(records, scenario, contender)) if v is not None]
    if len(vals) < 2:
        return None
    med = statistics.median(vals)
    return (max(vals) - min(vals)) / med if med else None


def paired(records: list[dict], scenario: str, a: str, b: str, key: str,
           op: Callable[[float, float], float | None]) -> float | None:
    """Median over repetitions of op(a's value, b's value), pairing runs of the same
    repetition (interleaved, so they saw the same machine state)."""
    by_rep = {}
    for r in valid(records, scenario, b):
        by_rep[r["rep"]] = value(r, key)
    out = []
    for r in valid(records, scenario, a):
        va, vb = value(r, key), by_rep.get(r["rep"])
        if va is not None and vb is not None:
            x = op(va, vb)
            if x is not None:
                out.append(x)
    return statistics.median(out) if out else None


def ratio(records, scenario, a, b, key):
    return paired(records, scenario, a, b, key, lambda x, y: x / y if y else None)


def diff(records, scenario, a, b, key):
    return paired(records, scenario, a, b, key, lambda x, y: x - y)


def fmt(v: float | None, kind: str) -> str:
    if v is None:
        return "—"
    if kind == "int":
        return f"{v:,.0f}"
    if kind == "ms":
        return f"{v:.3f}"
    if kind == "dms":
        return f"{v:+.3f}"
    if kind == "us":
        return f"{v:.1f}"
    if kind == "ratio":
        return f"{v:.2f}"
    if kind == "pct":
        return f"{100 * v:.0f}%"
    if kind == "vcpu":
        return f"{v:.3f}"
    if kind == "mib":
        return f"{v / 1024:.1f}"
    if kind == "kib":
        return f"{v:.2f}"
    return str(v)


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---:" if i else "---" for i in range(len(header))) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return out


def counts(records, scenario, contender) -> str:
    all_ = [r for r in records if r["scenario"] == scenario and r["contender"] == contender]
    ok = sum(1 for r in all_ if r["status"] == "ok")
    return f"{ok}/{len({r['rep'] for r in all_})}"


def throughput_table(records, scenario, contenders) -> list[str]:
    has_h = "haproxy" in contenders
    has_d = "direct" in contenders
    header = ["contender", "req/s", "spread", "p50 ms*", "p99 ms*", "proxy CPU µs/req", "origin CPU µs/req"]
    if has_h:
        header += ["req/s ÷ haproxy", "CPU/req ÷ haproxy", "p99 ÷ haproxy"]
    if has_d:
        header += ["req/s ÷ direct", "p99 ÷ direct"]
    header += ["ok runs"]
    rows = []
    for c in contenders:
        if not any(r["scenario"] == scenario and r["contender"] == c for r in records):
            continue
        row = [c, fmt(median_of(records, scenario, c, "rps"), "int"),
               fmt(spread_of(records, scenario, c, "rps"), "pct"),
               fmt(median_of(records, scenario, c, "p50_ms"), "ms"),
               fmt(median_of(records, scenario, c, "p99_ms"), "ms"),
               fmt(median_of(records, scenario, c, "proxy_cpu_us_per_req"), "us"),
               fmt(median_of(records, scenario, c, "origin_cpu_us_per_req"), "us")]
        if has_h:
            row += [fmt(ratio(records, scenario, c, "haproxy", "rps"), "ratio"),
                    fmt(ratio(records, scenario, c, "haproxy", "proxy_cpu_us_per_req"), "ratio"),
                    fmt(ratio(records, scenario, c, "haproxy", "p99_ms"), "ratio")]
        if has_d:
            row += [fmt(ratio(records, scenario, c, "direct", "rps"), "ratio"),
                    fmt(ratio(records, scenario, c, "direct", "p99_ms"), "ratio")]
        row += [counts(records, scenario, c)]
        rows.append(row)
    return table(header, rows)


def fixed_table(records, scenario, contenders) -> list[str]:
    has_h = "haproxy" in contenders
    has_d = "direct" in contenders
    header = ["contender", "achieved req/s", "p50 ms", "p90 ms", "p99 ms"]
    if has_d:
        header += ["+p50 vs direct", "+p90 vs direct", "+p99 vs direct"]
    header += ["proxy vCPU per 1000 req/s"]
    if has_h:
        header += ["p99 ÷ haproxy", "vCPU ÷ haproxy"]
    header += ["ok runs"]
    rows = []
    for c in contenders:
        if not any(r["scenario"] == scenario and r["contender"] == c for r in records):
            continue
        row = [c, fmt(median_of(records, scenario, c, "rps"), "int")]
        row += [fmt(median_of(records, scenario, c, k), "ms") for k in ("p50_ms", "p90_ms", "p99_ms")]
        if has_d:
            row += [fmt(diff(records, scenario, c, "direct", k), "dms") if c != "direct" else "—"
                    for k in ("p50_ms", "p90_ms", "p99_ms")]
        row += [fmt(median_of(records, scenario, c, "proxy_vcpu_per_1k"), "vcpu")]
        if has_h:
            row += [fmt(ratio(records, scenario, c, "haproxy", "p99_ms"), "ratio"),
                    fmt(ratio(records, scenario, c, "haproxy", "proxy_vcpu_per_1k"), "ratio")]
        row += [counts(records, scenario, c)]
        rows.append(row)
    return table(header, rows)


def memory_table(records, contenders, peaks: dict, idle_count: int) -> list[str]:
    has_h = "haproxy" in contenders
    header = ["contender", "RSS before MiB", f"RSS with {idle_count} idle MiB", "KiB per idle conn",
              "peak RSS (VmHWM) MiB"]
    if has_h:
        header += ["KiB/conn ÷ haproxy", "peak ÷ haproxy"]
    header += ["ok runs"]
    rows = []
    for c in contenders:
        if c == "direct":
            continue
        row = [c, fmt(median_of(records, "idle", c, "base_rss_kib"), "mib"),
               fmt(median_of(records, "idle", c, "rss_kib"), "mib"),
               fmt(median_of(records, "idle", c, "kib_per_conn"), "kib"),
               fmt(peaks.get(c), "mib")]
        if has_h:
            hp = peaks.get("haproxy")
            row += [fmt(ratio(records, "idle", c, "haproxy", "kib_per_conn"), "ratio"),
                    fmt(peaks[c] / hp if peaks.get(c) and hp else None, "ratio")]
        row += [counts(records, "idle", c)]
        rows.append(row)
    return table(header, rows)


# A section another program writes into the report (e.g. the xDS scale benchmark,
# benches/benches/xds_scale.rs): `<!-- BEGIN name … -->` … `<!-- END name -->`.
FOREIGN_SECTION = re.compile(r"<!-- BEGIN ([\w.-]+)\b[^>]*-->.*?<!-- END \1 -->\n?", re.S)


def keep_foreign_sections(old: str, new: str) -> str:
    """`new` with the sections of `old` that this runner does not write appended, so a
    re-run regenerates its own tables without dropping other benchmarks' results."""
    kept = [m.group(0).rstrip("\n") for m in FOREIGN_SECTION.finditer(old) if m.group(0) not in new]
    if not kept:
        return new
    return new.rstrip("\n") + "\n\n" + "\n\n".join(kept) + "\n"
