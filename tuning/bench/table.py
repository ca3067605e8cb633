#!/usr/bin/env python3
"""tuning/bench/table.py LABEL=FILE.json[,FILE.json...] ...

Markdown rows for tuning/README.md from `sni-loadtest suite --json` files (tuning/bench/run.sh
with JSON=...). Several files per label (rounds run alternately) are pooled: each cell is the
median over every run, with the range of the runs in brackets.
Short workloads: conn/s, p99, dispatcher CPU µs per connection. Bulk: GiB/s, p99 per
connection, CPU s per GiB.
The first label is the baseline: the last column is each variant's CPU figure divided by the
baseline's from the same round (the i-th file of a label pairs with the i-th file of the
baseline), median [range] over rounds. On a shared, noisy machine this paired ratio is the figure
to judge by: both sides of a pair ran back to back under the same background load.
"""
import json
import statistics
import sys


def cell(values, fmt):
    values = [v for v in values if v is not None]
    if not values:
        return "–"
    med = statistics.median(values)
    if len(values) == 1:
        return fmt(med)
    return f"{fmt(med)} [{fmt(min(values))}–{fmt(max(values))}]"


def ms(us):
    if us >= 1_000_000:
        return f"{us / 1_000_000:.2f} s"
    return f"{us / 1000:.1f} ms" if us >= 1000 else f"{us:.0f} µs"


def main():
    rows = []
    bulk = None
    base_rounds = None
    for arg in sys.argv[1:]:
        label, files = arg.split("=", 1)
        runs = []
        rounds = []
        for f in files.split(","):
            with open(f) as fh:
                d = json.load(fh)
            these = []
            for w in d["workloads"]:
                bulk = w["bulk"]
                these += [r for r in w["runs"] if r["target"] == "sni-dispatch"]
            runs += these
            key = "cpu_s_per_gib" if bulk else "cpu_us_per_conn"
            vals = [r[key] for r in these if r.get(key) is not None]
            rounds.append(statistics.median(vals) if vals else None)
        if base_rounds is None:
            base_rounds = rounds
            ratio = "1"
        else:
            rs = [v / b for v, b in zip(rounds, base_rounds) if v and b]
            ratio = cell(rs, lambda v: f"{v:.2f}") if rs else "–"
        errors = sum(sum(r["errors"].values()) for r in runs)
        n = len(runs)
        if bulk:
            rows.append(
                f"| {label} | {n} | "
                + cell([r["gib_per_s"] for r in runs], lambda v: f"{v:.2f}")
                + " | "
                + cell([r["latency"]["p99_us"] for r in runs], ms)
                + " | "
                + cell([r["cpu_s_per_gib"] for r in runs], lambda v: f"{v:.2f}")
                + f" | {errors} | {ratio} |"
            )
        else:
            rows.append(
                f"| {label} | {n} | "
                + cell([r["rate"] for r in runs], lambda v: f"{v:,.0f}")
                + " | "
                + cell([r["latency"]["p99_us"] for r in runs], ms)
                + " | "
                + cell([r["cpu_us_per_conn"] for r in runs], lambda v: f"{v:.0f}")
                + f" | {errors} | {ratio} |"
            )
    if bulk:
        print("| variant | runs | GiB/s | p99 (per conn) | dispatcher CPU s/GiB | errors | CPU vs baseline, same round |")
    else:
        print("| variant | runs | conn/s | p99 | dispatcher CPU µs/conn | errors | CPU vs baseline, same round |")
    print("|---|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
