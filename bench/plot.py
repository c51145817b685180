#!/usr/bin/env python3
"""Draw hit req/s and p99 per target from the harness's raw.tsv into an SVG.

    bench/plot.py RESULTS/raw.tsv [-o bench/hits.svg] [--ours-name oddscache]

`../shared/bench/run.sh` writes one `hit` line per run and target to
`raw.tsv` (tab separated: kind, run, target, then `key=value` fields). The
bars are the medians over runs, the dots each run, so the spread on this
shared machine shows. Needs matplotlib (`pip install matplotlib`).
"""

import argparse
import collections
import statistics
import sys

import matplotlib

matplotlib.use("svg")
import matplotlib.pyplot as plt  # noqa: E402 (the backend is chosen first)

ORDER = ["limit", "ours", "nginx", "varnish"]


def read_hits(path):
    """{target: [(rps, p99_ms, us_per_req), ...]} from the `hit` lines."""
    runs = collections.defaultdict(list)
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            cols = line.rstrip("\n").split("\t")
            if len(cols) < 4 or cols[0] != "hit":
                continue
            fields = dict(kv.split("=", 1) for kv in cols[3].split() if "=" in kv)
            try:
                rps = float(fields["rps"])
                p99 = float(fields["p99_us"]) / 1000
                us = float(fields.get("srv_us_per_req", "nan"))
            except (KeyError, ValueError) as e:
                sys.exit(f"{path}:{n}: not a harness hit line ({e})")
            runs[cols[2]].append((rps, p99, us))
    if not runs:
        sys.exit(f"{path}: no `hit` lines; is it the harness's raw.tsv?")
    return runs


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("raw", help="raw.tsv written by ../shared/bench/run.sh")
    ap.add_argument("-o", "--out", default="bench/hits.svg")
    ap.add_argument("--ours-name", default="oddscache", help="label for the `ours` target")
    ap.add_argument("--title", default=None, help="subtitle, e.g. the date and machine")
    args = ap.parse_args()

    runs = read_hits(args.raw)
    targets = sorted(runs, key=lambda t: (ORDER.index(t) if t in ORDER else len(ORDER), t))
    labels = [args.ours_name if t == "ours" else t for t in targets]
    colors = ["#c44e52" if t == "ours" else "#8c8c8c" for t in targets]

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    panels = [
        (0, "hit req/s (median, dots: runs)", lambda v: v / 1000, "k req/s"),
        (1, "hit p99 latency", lambda v: v, "ms"),
    ]
    for idx, title, scale, unit in panels:
        ax = axes[idx]
        medians = [scale(statistics.median(r[idx] for r in runs[t])) for t in targets]
        ax.bar(labels, medians, color=colors)
        for x, t in enumerate(targets):
            ys = [scale(r[idx]) for r in runs[t]]
            ax.scatter([x] * len(ys), ys, color="black", s=10, zorder=3)
        for x, m in enumerate(medians):
            ax.annotate(f"{m:.1f}" if m < 10 else f"{m:.0f}", (x, m), ha="center",
                        va="bottom", fontsize=8, xytext=(0, 2), textcoords="offset points")
        ax.set_title(title)
        ax.set_ylabel(unit)
        ax.grid(axis="y", alpha=0.3)

    n = max(len(v) for v in runs.values())
    sub = f" — {args.title}" if args.title else ""
    fig.suptitle(f"Cache hits, 1,000 game URLs, server pinned to one core ({n} runs){sub}")
    fig.tight_layout()
    fig.savefig(args.out, metadata={"Date": None})
    for t, label in zip(targets, labels):
        rows = runs[t]
        print(f"{label:10} rps={statistics.median(r[0] for r in rows):>9.0f} "
              f"p99={statistics.median(r[1] for r in rows):.2f}ms "
              f"us/req={statistics.median(r[2] for r in rows):.1f} runs={len(rows)}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
