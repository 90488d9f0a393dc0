"""Medians from a benches/transformer.sh results file and its compute bound; prints Markdown."""

import collections
import json
import statistics
import sys

rows = [json.loads(line) for line in open(sys.argv[1])]
bound = json.load(open(sys.argv[2]))
rounds = max(r["round"] for r in rows)
servers = [s for s in ("modserve-old", "modserve", "peer") if any(r["server"] == s for r in rows)]
runs = collections.defaultdict(list)  # (server, scenario, level) -> [result]
for r in rows:
    result = dict(r["result"])
    # Reviews per second of the server's CPU time: the rate per core it actually used.
    cpu = r.get("server_cpu_s")
    result["reviews_per_cpu_s"] = result["ok"] * result["reviews_per_request"] / cpu if cpu else float("nan")
    # Lines written before the script recorded its window measured 8 s.
    result["cores_used"] = cpu / r.get("window_s", 8) if cpu else float("nan")
    runs[(r["server"], r["scenario"], r["result"]["level"])].append(result)


def med(server, scenario, level, key):
    values = [x[key] for x in runs.get((server, scenario, level), [])]
    return statistics.median(values) if values else float("nan")


def errors(server, scenario, level):
    total = collections.Counter()
    for x in runs.get((server, scenario, level), []):
        total.update(x["errors"])
    return ", ".join(f"{k}={v}" for k, v in sorted(total.items())) or "0"


print(f"abuse-minilm live, one server core; medians of {rounds} round(s). Compute bound: "
      f"{bound['bound_reviews_per_s']:,.0f} reviews/s ({bound['tokens_per_review']} tokens per review, "
      f"{bound['macs_per_token'] / 1e6:.1f} M multiply-adds per token, int8 kernel at "
      f"{bound['effective_macs_per_s'] / 1e9:.0f} G multiply-adds/s).\n")
print("Reviews per CPU-s: reviews served over the server's CPU time in the same window (user + system, all "
      "threads), the rate per core it used; where the core idles (at concurrency 1, while an answer travels to the "
      "client and the next request back) the wall-clock rate counts that time and this does not.\n")
print("| scenario | level | " + " | ".join(f"{s} reviews/s | per CPU-s | cores used | p50 ms | p99 ms" for s in servers)
      + " | modserve / peer | share of bound (modserve) | per CPU-s share of bound | errors |")
print("|---|---|" + "---|---|---|---|---|" * len(servers) + "---|---|---|---|")
for scenario in ("single", "batch32"):
    levels = sorted({k[2] for k in runs if k[1] == scenario}, key=lambda s: float(s.split("=")[-1]))
    for lv in levels:
        cells = []
        for s in servers:
            cells.append(f"{med(s, scenario, lv, 'reviews_per_s'):,.0f} | {med(s, scenario, lv, 'reviews_per_cpu_s'):,.0f} "
                         f"| {med(s, scenario, lv, 'cores_used'):.2f} "
                         f"| {med(s, scenario, lv, 'p50_ms'):.2f} | {med(s, scenario, lv, 'p99_ms'):.2f}")
        m, p = med("modserve", scenario, lv, "reviews_per_s"), med("peer", scenario, lv, "reviews_per_s")
        per_cpu = med("modserve", scenario, lv, "reviews_per_cpu_s")
        errs = " / ".join(errors(s, scenario, lv) for s in servers)
        b = bound["bound_reviews_per_s"]
        print(f"| {scenario} | {lv} | " + " | ".join(cells)
              + f" | {m / p:.2f}x | {m / b:.2f} | {per_cpu / b:.2f} | {errs} |")
