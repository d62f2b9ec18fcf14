#!/usr/bin/env python3
"""Summarizes the overload sweeps written by overload_sweep.sh: for each
transport and multiple of capacity, the median over runs (and the range) of
goodput / capacity, the answered requests' p50 and p99, and the median count
of each status; then the issue's goals checked against those medians.
Usage: overload_summary.py OVERLOAD.CSV > SUMMARY.md"""
import csv, statistics, sys, collections

rows = list(csv.DictReader(open(sys.argv[1])))
cells = collections.defaultdict(list)
for r in rows:
    cells[(r["transport"], float(r["multiple"]))].append(r)

def med(rs, key):
    v = [float(r[key]) for r in rs if r[key] != ""]
    return statistics.median(v), min(v), max(v)

def fmt(m, lo, hi, digits):
    return f"{m:.{digits}f} ({lo:.{digits}f}–{hi:.{digits}f})"

statuses = ["ok", "resource_exhausted", "throttled_at_edge", "deadline_exceeded", "cancelled", "unknown", "other"]
print("| transport | offered (x capacity) | runs | goodput / capacity | answered p50 ms | answered p99 ms | cloud CPU cores | cloud RSS MiB max | statuses (median per run) |")
print("|---|---|---|---|---|---|---|---|---|")
for (t, m), rs in sorted(cells.items()):
    counts = ", ".join(f"{s} {statistics.median(int(r[s]) for r in rs):.0f}" for s in statuses
                       if any(int(r[s]) for r in rs))
    print(f"| {t} | {m:g} | {len(rs)} | {fmt(*med(rs, 'goodput_over_capacity'), 2)} | {fmt(*med(rs, 'p50_ms'), 1)} "
          f"| {fmt(*med(rs, 'p99_ms'), 1)} | {fmt(*med(rs, 'cloud_cpu_cores'), 2)} "
          f"| {fmt(*med(rs, 'cloud_rss_mib_max'), 0)} | {counts} |")

print()
print("| goal | transport | measured (median of runs) |")
print("|---|---|---|")
for t in sorted({k[0] for k in cells}):
    for m in (4.0, 10.0):
        if (t, m) in cells:
            g = med(cells[(t, m)], "goodput_over_capacity")[0]
            print(f"| goodput at {m:g}x / capacity >= 0.9 | {t} | {g:.2f} |")
    bad = sum(int(r[s]) for (tt, _), rs in cells.items() if tt == t for r in rs
              for s in ("cancelled", "unknown", "other"))
    print(f"| excess gets ResourceExhausted / DeadlineExceeded only | {t} | {bad} other statuses in all runs |")
    if (t, 0.5) in cells and (t, 4.0) in cells:
        p99_half = med(cells[(t, 0.5)], "p99_ms")[0]
        p99_4 = med(cells[(t, 4.0)], "p99_ms")[0]
        print(f"| p99 at 4x <= 3 x p99 at 0.5x | {t} | {p99_4:.1f} ms vs {p99_half:.1f} ms: {p99_4 / p99_half:.1f}x |")
if ("grpc", 0.5) in cells and ("grpc-stream", 0.5) in cells:
    u = med(cells[("grpc", 0.5)], "p50_ms")[0]
    s = med(cells[("grpc-stream", 0.5)], "p50_ms")[0]
    print(f"| unary / stream p50 at 0.5x <= 1.5 | grpc vs grpc-stream | {u:.2f} ms / {s:.2f} ms = {u / s:.2f} |")
