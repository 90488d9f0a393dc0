#!/usr/bin/env python3
"""Helper of benches/isolation.sh (standard library only).

`cell`: one measured level -> one JSON line: the loadgen result plus, from two /metrics scrapes,
each shadow's outcomes, effective sample rate, and the shadow CPU used; and the VM's steal time
over the level (time the hypervisor gave this machine's CPUs to someone else).
`summary`: medians over rounds -> Markdown tables, live figures beside live-only at the same load;
where the A/A control ran at the same placement and load, each shadow cell's pair ratios are also
tested against the control's (a one-sided exact rank test: "above A/A").
"""
import argparse
import json
import math
import re
import statistics
import sys
from collections import defaultdict

SERIES = re.compile(r'^([a-z_]+)\{([^}]*)\} (\S+)$')


def parse(path):
    out = defaultdict(float)
    for line in open(path):
        m = SERIES.match(line.strip())
        if not m:
            continue
        name, labels, value = m.groups()
        labels = dict(re.findall(r'(\w+)="([^"]*)"', labels))
        try:
            out[(name, tuple(sorted(labels.items())))] += float(value)
        except ValueError:
            pass
    return out


def cell(a):
    result = json.loads(open(a.result).readline())
    before, after = parse(a.before), parse(a.after)

    def delta(name, **want):
        return sum(v - before.get(k, 0.0) for k, v in after.items()
                   if k[0] == name and all(dict(k[1]).get(x) == y for x, y in want.items()))

    shadows = {}
    for (name, labels), value in after.items():
        if name == 'modserve_shadow_sample_rate_effective':
            model = dict(labels)['shadow_model']
            outcomes = {o: delta('modserve_shadow_reviews_total', shadow_model=model, outcome=o)
                        for o in ('compared', 'sampled_out', 'queue_full', 'live_pressure', 'deadline',
                                  'breaker_open', 'error', 'budget', 'throttled')}
            offered = sum(outcomes.values())
            sampled = offered - outcomes['sampled_out']
            shadows[model] = {
                'effective_rate': value,
                'outcomes': outcomes,
                'coverage': outcomes['compared'] / sampled if sampled else None,
                'cpu_seconds': delta('modserve_shadow_batch_cpu_seconds_sum', model=model),
            }
    cpu = sum(s['cpu_seconds'] for s in shadows.values())
    print(json.dumps({
        'round': a.round, 'placement': a.placement, 'config': a.config, 'load': a.load,
        'wall_s': a.wall, 'throttled_s': a.throttled_us / 1e6, 'steal_s': a.steal_s, 'result': result,
        'shadows': shadows,
        # CPU-seconds per second of the whole level (warm-up included, as the counter is).
        'shadow_cpu_per_s': cpu / a.wall if a.wall else 0.0,
    }))


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def fmt(x, digits=3):
    return '-' if x is None else f'{x:.{digits}f}'


def sign_test(k: int, n: int) -> float:
    """Two-sided sign test: the chance that n fair coin flips land at least as unevenly as k of n.
    Large means the pairs' on/off differences look like what identical halves give."""
    extreme = max(k, n - k)
    tail = sum(math.comb(n, i) for i in range(extreme, n + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def rank_test(xs, ys) -> float:
    """One-sided Wilcoxon rank-sum (Mann-Whitney) test, exact: the chance that xs would rank at
    least this high among xs + ys if both came from one distribution. Small means the xs (a
    shadow cell's pair ratios) run higher than the ys (the A/A control's) beyond what chance gives.
    Ties (unlikely between p99 ratios) rank the xs lower, which errs towards a larger p."""
    pooled = sorted([(x, 0) for x in xs] + [(y, 1) for y in ys])
    n, k = len(pooled), len(xs)
    observed = sum(i + 1 for i, (_, side) in enumerate(pooled) if side == 0)
    # ways[j][w]: how many ways j of the ranks seen so far sum to w.
    top = n * (n + 1) // 2
    ways = [[0] * (top + 1) for _ in range(k + 1)]
    ways[0][0] = 1
    for rank in range(1, n + 1):
        for j in range(min(rank, k), 0, -1):
            for w in range(top, rank - 1, -1):
                ways[j][w] += ways[j - 1][w - rank]
    return sum(ways[k][observed:]) / math.comb(n, k)


def summary(a):
    rows = [json.loads(line) for line in open(a.file)]
    capacity = {r['capacity']['placement']: r['capacity']['requests_per_s'] for r in rows if 'capacity' in r}
    closed = {r['closed_loop_capacity']['placement']: r['closed_loop_capacity']['requests_per_s']
              for r in rows if 'closed_loop_capacity' in r}
    cells = defaultdict(list)
    for r in rows:
        if 'round' in r:
            cells[(r['placement'], r['config'], str(r['load']))].append(r)
    rounds = max((r['round'] for r in rows if 'round' in r), default=0)
    toggled = any(r.get('config', '').endswith('-off') for r in rows)
    what = (f"Pairs: {rounds} per cell, each shadow config in one server (medians; pairs: the median of each pair's "
            f"on / off)") if toggled else f'Rounds: {rounds} (medians)'
    print(f'{what}; quota: {a.quota}; shadow.max_cpu_fraction = {a.budget}, shadow.cpu_reserve = {a.reserve}; '
          + (f'live-only capacity (the highest open-loop rate it held; closed loop at concurrency 16 in brackets): '
             + ', '.join(f'{p} {c:,} req/s ({closed[p]:,})' for p, c in capacity.items())
             if closed else
             f'live-only capacity (closed loop, concurrency 16): '
             + ', '.join(f'{p} {c:,} req/s' for p, c in capacity.items())))
    print()
    print('| placement | load | config | achieved req/s | p50 ms | p99 ms | p99.9 ms | p99 / live-only | '
          'coverage (compared / sampled) | effective rate | shadow CPU (CPU-s/s) | throttled s | steal s (max) | errors |')
    print('|---|---|---|---|---|---|---|---|---|---|---|---|---|---|')
    order = {'one': 0, 'two': 1, 'quota': 2}
    def load_order(load: str) -> float:
        return float('inf') if load == 'closed1' else float(load)
    configs = ['none', 'aa-off', 'aa', 'minilm-off', 'minilm', 'v2-off', 'v2', 'v3-off', 'v3']
    for key in sorted(cells, key=lambda k: (load_order(k[2]), order.get(k[0], 9), configs.index(k[1]))):
        placement, config, load = key
        rs = cells[key]
        # Toggled: each shadow config against its own halves at sample_rate 0, in the same server.
        off = (placement, config + '-off', load)
        base = cells.get(off) or cells.get((placement, 'none', load), [])
        p99 = med([r['result']['p99_ms'] for r in rs])
        p99_base = med([r['result']['p99_ms'] for r in base])
        shadows = sorted({m for r in rs for m in r['shadows']})
        coverage = ', '.join(f"{m} {fmt(med([r['shadows'][m]['coverage'] for r in rs if m in r['shadows']]), 3)}"
                             for m in shadows) or '-'
        rate = ', '.join(f"{m} {fmt(med([r['shadows'][m]['effective_rate'] for r in rs if m in r['shadows']]), 3)}"
                         for m in shadows) or '-'
        errors = sum(sum(r['result']['errors'].values()) for r in rs)
        level = 'closed, conc 1' if load == 'closed1' else f'{load}%'
        baseline = config == 'none' or config.endswith('-off')
        ratio = f'{p99 / p99_base:.2f}x' if p99 and p99_base and not baseline else '-'
        if off in cells and ratio != '-':
            pairs = {r['round']: r['result']['p99_ms'] for r in cells[off]}
            ratios = [r['result']['p99_ms'] / pairs[r['round']] for r in rs if pairs.get(r['round'])]
            per_pair = med(ratios)
            ratio += f' (pairs {per_pair:.2f}x)' if per_pair else ''
            if len(ratios) >= 5:
                slower = sum(x > 1 for x in ratios)
                ratio += f', on slower in {slower}/{len(ratios)}, sign test p={sign_test(slower, len(ratios)):.2f}'
            # Against the A/A control at the same placement and load: do this cell's pairs read
            # slower than pairs whose halves do not differ at all?
            aa, aa_off = cells.get((placement, 'aa', load)), cells.get((placement, 'aa-off', load))
            if config != 'aa' and aa and aa_off and len(ratios) >= 5:
                aa_pairs = {r['round']: r['result']['p99_ms'] for r in aa_off}
                control = [r['result']['p99_ms'] / aa_pairs[r['round']] for r in aa if aa_pairs.get(r['round'])]
                if len(control) >= 5:
                    ratio += f'; above A/A: rank test p={rank_test(ratios, control):.2f}'
        print(f"| {placement} | {level} | {config} | {med([r['result']['requests_per_s'] for r in rs]):,.0f} | "
              f"{fmt(med([r['result']['p50_ms'] for r in rs]))} | {fmt(p99)} | "
              f"{fmt(med([r['result']['p999_ms'] for r in rs]))} | {ratio} | {coverage} | {rate} | "
              f"{fmt(med([r['shadow_cpu_per_s'] for r in rs]), 3)} | {fmt(med([r['throttled_s'] for r in rs]), 2)} | "
              f"{fmt(max((r.get('steal_s', 0.0) for r in rs), default=None), 2)} | {errors} |")


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest='cmd', required=True)
    c = sub.add_parser('cell')
    for name in ('round', 'throttled-us'):
        c.add_argument(f'--{name}', type=int, required=True)
    for name in ('placement', 'config', 'load', 'result', 'before', 'after'):
        c.add_argument(f'--{name}', required=True)
    c.add_argument('--wall', type=float, required=True)
    c.add_argument('--steal-s', type=float, default=0.0)
    s = sub.add_parser('summary')
    s.add_argument('file')
    s.add_argument('--quota', default='')
    s.add_argument('--budget', default='')
    s.add_argument('--reserve', default='')
    a = p.parse_args()
    {'cell': cell, 'summary': summary}[a.cmd](a)


if __name__ == '__main__':
    sys.exit(main())
