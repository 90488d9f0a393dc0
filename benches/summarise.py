"""Medians and ratios from a benches/compare.sh results file (JSON lines); prints Markdown."""

import collections
import json
import statistics
import sys

rows = [json.loads(line) for line in open(sys.argv[1])]
rounds = max(r["round"] for r in rows)
runs = collections.defaultdict(list)  # (server, scenario, level) -> [result]
for r in rows:
    if "result" in r:
        runs[(r["server"], r["scenario"], r["result"]["level"])].append(r["result"])


def med(server, scenario, level, key):
    values = [x[key] for x in runs.get((server, scenario, level), [])]
    return statistics.median(values) if values else float("nan")


def spread(server, scenario, level, key):
    values = [x[key] for x in runs.get((server, scenario, level), [])]
    return f"{min(values):,.0f}-{max(values):,.0f}" if values else "-"


def errors(server, scenario, level):
    total = collections.Counter()
    for x in runs.get((server, scenario, level), []):
        total.update(x["errors"])
    return ", ".join(f"{k}={v}" for k, v in sorted(total.items())) or "0"


levels = lambda scenario: sorted({k[2] for k in runs if k[1] == scenario}, key=lambda s: float(s.split("=")[-1]))

print(f"Medians of {rounds} rounds (min-max of throughput in brackets); ratio = modserve / peer of the medians.\n")
print("### Single-review requests, closed loop\n")
print("| level | modserve req/s | p50 ms | p99 ms | peer req/s | p50 ms | p99 ms | throughput ratio | errors (modserve / peer) |")
print("|---|---|---|---|---|---|---|---|---|")
for lv in levels("single"):
    m, p = (med(s, "single", lv, "requests_per_s") for s in ("modserve", "peer"))
    print(f"| {lv} | {m:,.0f} ({spread('modserve', 'single', lv, 'requests_per_s')}) | {med('modserve', 'single', lv, 'p50_ms'):.3f} "
          f"| {med('modserve', 'single', lv, 'p99_ms'):.3f} | {p:,.0f} ({spread('peer', 'single', lv, 'requests_per_s')}) "
          f"| {med('peer', 'single', lv, 'p50_ms'):.3f} | {med('peer', 'single', lv, 'p99_ms'):.3f} | {m / p:.1f}x "
          f"| {errors('modserve', 'single', lv)} / {errors('peer', 'single', lv)} |")

print("\n### 32-review requests, closed loop\n")
print("| level | modserve reviews/s | p50 ms | p99 ms | peer reviews/s | p50 ms | p99 ms | throughput ratio |")
print("|---|---|---|---|---|---|---|---|")
for lv in levels("batch32"):
    m, p = (med(s, "batch32", lv, "reviews_per_s") for s in ("modserve", "peer"))
    print(f"| {lv} | {m:,.0f} ({spread('modserve', 'batch32', lv, 'reviews_per_s')}) | {med('modserve', 'batch32', lv, 'p50_ms'):.3f} "
          f"| {med('modserve', 'batch32', lv, 'p99_ms'):.3f} | {p:,.0f} | {med('peer', 'batch32', lv, 'p50_ms'):.3f} "
          f"| {med('peer', 'batch32', lv, 'p99_ms'):.3f} | {m / p:.1f}x |")

print("\n### Single reviews at a fixed offered load (open loop: latency from the scheduled send)\n")
print("| offered req/s | modserve achieved | p50 ms | p99 ms | p99.9 ms | peer achieved | p50 ms | p99 ms | p99.9 ms | p99 ratio (peer / modserve) |")
print("|---|---|---|---|---|---|---|---|---|---|")
for lv in levels("open"):
    mp99, pp99 = med("modserve", "open", lv, "p99_ms"), med("peer", "open", lv, "p99_ms")
    print(f"| {lv.split('=')[-1]} | {med('modserve', 'open', lv, 'requests_per_s'):,.0f} | {med('modserve', 'open', lv, 'p50_ms'):.3f} "
          f"| {mp99:.3f} | {med('modserve', 'open', lv, 'p999_ms'):.3f} | {med('peer', 'open', lv, 'requests_per_s'):,.0f} "
          f"| {med('peer', 'open', lv, 'p50_ms'):.3f} | {pp99:.3f} | {med('peer', 'open', lv, 'p999_ms'):.3f} | {pp99 / mp99:.1f}x |")

stages = collections.defaultdict(list)
for r in rows:
    if r["server"] == "ceiling":
        stages[(r["stage"], r["batch"])].append(r["median_ns"])
if stages:
    print("\n### In-process ceiling (criterion medians, one core; median over rounds)\n")
    print("| batch | tokenize us | inference us | decide + respond us | total us | reviews/s |")
    print("|---|---|---|---|---|---|")
    ceiling = {}
    for n in (1, 8, 32, 64):
        t, i, d = (statistics.median(stages[(s, n)]) / 1000 for s in ("tokenize", "inference", "decide_and_respond"))
        ceiling[n] = n / ((t + i + d) / 1e6)
        print(f"| {n} | {t:.1f} | {i:.1f} | {d:.1f} | {t + i + d:.1f} | {ceiling[n]:,.0f} |")
    best32 = max(med("modserve", "batch32", lv, "reviews_per_s") for lv in levels("batch32"))
    print(f"\nServer efficiency, 32-review requests: best median {best32:,.0f} reviews/s / ceiling {ceiling[32]:,.0f} "
          f"= {100 * best32 / ceiling[32]:.0f}%")

rss = collections.defaultdict(list)
for r in rows:
    if "rss_kib" in r:
        rss[r["server"]].append(r["rss_kib"])
print("\nRSS after each round (MiB): " + "; ".join(f"{s} " + ", ".join(f"{v / 1024:.0f}" for v in vs) for s, vs in rss.items()))
