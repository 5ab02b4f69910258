"""Compare pool-scaling policies in the discrete-event simulator (cluster.pool.simulate).

    python jobs/simulate_scaling.py --out runs/scaling                 # every standard scenario
    python jobs/simulate_scaling.py --scenario larger-images-1024 --out runs/scaling

Runs a fixed pool, Ray-style demand scaling, a Cachew-style hill climb, an oracle and feedline's
PoolPolicy on the same scenarios and seeds, and writes

    DIR/summary.csv      scenario, policy, gpu_stall_fraction, cpu_node_hours,
                         oracle_cpu_node_hours, total_cost, job_hours, reversals_per_hour
    DIR/<scenario>.png   pool size, GPU stall and echo factor over time, one line per policy

then checks feedline's targets in every scenario: stall <= 5% (where the max allows it),
<= 1.15x the oracle's CPU node-hours, the lowest total cost of the non-oracle policies, at most
two reversals an hour. Exit status 1 if one is missed.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cluster.pool.simulate import POLICIES, SCENARIOS, Result, run_all  # noqa: E402

COLUMNS = ("scenario", "policy", "gpu_stall_fraction", "cpu_node_hours",
           "oracle_cpu_node_hours", "total_cost", "job_hours", "reversals_per_hour")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--scenario", action="append", choices=sorted(SCENARIOS), default=None,
                   help="scenario to run (repeat for several; default: all standard ones)")
    p.add_argument("--out", required=True, help="directory for summary.csv and the plots")
    p.add_argument("--seed", type=int, default=0, help="seed of the measurement noise")
    p.add_argument("--no-plots", action="store_true", help="write summary.csv only")
    return p.parse_args(argv)


def rows(results: list[Result]) -> list[dict]:
    oracle = {r.scenario: r.cpu_node_hours for r in results if r.policy == "oracle"}
    return [{"scenario": r.scenario, "policy": r.policy,
             "gpu_stall_fraction": round(r.gpu_stall_fraction, 4),
             "cpu_node_hours": round(r.cpu_node_hours, 1),
             "oracle_cpu_node_hours": round(oracle[r.scenario], 1),
             "total_cost": round(r.total_cost, 0), "job_hours": round(r.job_hours, 3),
             "reversals_per_hour": round(r.reversals_per_hour, 2)} for r in results]


def check(results: list[Result]) -> list[str]:
    """feedline's targets, one line per miss."""
    misses = []
    for name in dict.fromkeys(r.scenario for r in results):
        by = {r.policy: r for r in results if r.scenario == name}
        f, o = by["feedline"], by["oracle"]
        if o.gpu_stall_fraction < 0.01 and f.gpu_stall_fraction > 0.05:
            misses.append(f"{name}: stall {f.gpu_stall_fraction:.1%} > 5%")
        if f.cpu_node_hours > 1.15 * o.cpu_node_hours:
            misses.append(f"{name}: {f.cpu_node_hours / o.cpu_node_hours:.2f}x the oracle's "
                          f"node-hours > 1.15x")
        cheapest = min((r for p, r in by.items() if p != "oracle"), key=lambda r: r.total_cost)
        if cheapest.policy != "feedline":
            misses.append(f"{name}: {cheapest.policy} costs less ({cheapest.total_cost:.0f} < "
                          f"{f.total_cost:.0f})")
        if f.reversals_per_hour > 2:
            misses.append(f"{name}: {f.reversals_per_hour:.1f} reversals/h > 2")
    return misses


def plot(results: list[Result], out: str) -> list[str]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for name in dict.fromkeys(r.scenario for r in results):
        sc = SCENARIOS[name]
        fig, axes = plt.subplots(3, 1, figsize=(9, 8), sharex=True)
        for r in (r for r in results if r.scenario == name):
            hours = [p[0] for p in r.timeline]
            style = {"lw": 2.2} if r.policy == "feedline" else {"lw": 1.1, "alpha": 0.8}
            axes[0].step(hours, [p[1] for p in r.timeline], where="post", label=r.policy,
                         **style)
            axes[1].plot(hours, [100 * p[2] for p in r.timeline], **style)
            axes[2].step(hours, [p[3] for p in r.timeline], where="post", **style)
        axes[0].axhline(sc.max_nodes, color="grey", ls=":", lw=1)
        axes[0].set_ylabel("pool nodes (billed)")
        axes[1].set_ylabel("GPU stall, %")
        axes[2].set_ylabel("echo factor")
        axes[2].set_xlabel("hours")
        axes[0].legend(loc="upper left", fontsize=8, ncol=3)
        fig.suptitle(f"{name}: {sc.gpus} GPUs, {sc.description}", fontsize=10)
        fig.tight_layout()
        path = os.path.join(out, f"{name}.png")
        fig.savefig(path, dpi=90)
        plt.close(fig)
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    results = run_all(args.scenario, seed=args.seed)
    table = rows(results)
    with open(os.path.join(args.out, "summary.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        w.writerows(table)
    widths = {c: max(len(c), *(len(str(r[c])) for r in table)) for c in COLUMNS}
    print("  ".join(c.ljust(widths[c]) for c in COLUMNS))
    for r in table:
        print("  ".join(str(r[c]).ljust(widths[c]) for c in COLUMNS))
    if not args.no_plots:
        plot(results, args.out)
    misses = check(results)
    print(f"\npolicies: {', '.join(POLICIES)}; wrote {args.out}/summary.csv"
          + ("" if args.no_plots else " and one plot per scenario"))
    print("feedline targets: " + ("all met" if not misses else "MISSED\n  " + "\n  ".join(misses)))
    return 1 if misses else 0


if __name__ == "__main__":
    sys.exit(main())
