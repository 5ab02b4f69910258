"""Compare pool-scaling policies in the discrete-event simulators (cluster.pool.simulate for one
job, cluster.pool.simulate_shared for several jobs on one pool).

    python jobs/simulate_scaling.py --out runs/scaling                 # every scenario, 5 seeds
    python jobs/simulate_scaling.py --scenario shared-quota --seeds 2 --out runs/scaling

One job: a fixed pool, Ray-style demand scaling, a Cachew-style hill climb, an oracle and
feedline's PoolPolicy. Several jobs (`shared-*`): per-job feedline policies each sending its own
request (the last wins), Ray-style demand scaling of the shared pool, a fixed fair split, an
oracle and feedline with the pool arbiter. Every seed of the measurement noise is run, and

    DIR/summary.csv        scenario, policy, gpu_stall_fraction, cpu_node_hours,
                           oracle_cpu_node_hours, total_cost, job_hours, reversals_per_hour
                           (the worst of the seeds in every column; shared-*: summed over jobs)
    DIR/summary_seeds.csv  the same with a seed column, one row per seed
    DIR/summary.md         the worst-of-seeds tables as docs/scaling.md shows them
    DIR/<scenario>.png     pool size, GPU stall and echo factor over time (seed 0)

then feedline's targets are checked on every scenario and seed (cluster.pool.report). Exit
status 1 if one is missed.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cluster.pool.report import COLUMNS, check, markdown, rows, worst  # noqa: E402
from cluster.pool.simulate import POLICIES, SCENARIOS, Result, simulate  # noqa: E402
from cluster.pool.simulate_shared import (  # noqa: E402
    SHARED_POLICIES,
    SHARED_SCENARIOS,
    simulate_shared,
)

ALL = [*SCENARIOS, *SHARED_SCENARIOS]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--scenario", action="append", choices=ALL, default=None,
                   help="scenario to run (repeat for several; default: all of them)")
    p.add_argument("--out", required=True, help="directory for summary.csv and the plots")
    p.add_argument("--seeds", type=int, default=5,
                   help="seeds of the measurement noise to run (0 .. N-1); the summary holds "
                        "the worst of them")
    p.add_argument("--no-plots", action="store_true", help="write summary.csv only")
    return p.parse_args(argv)


def run(names: list[str], seeds: int) -> list[tuple[int, Result]]:
    """(seed, result) for every scenario named, policy and seed."""
    out = []
    for seed in range(seeds):
        for name in names:
            if name in SHARED_SCENARIOS:
                out += [(seed, simulate_shared(SHARED_SCENARIOS[name], p, seed))
                        for p in SHARED_POLICIES]
            else:
                out += [(seed, simulate(SCENARIOS[name], p, seed)) for p in POLICIES]
    return out


def write_csv(path: str, table: list[dict], columns: tuple[str, ...]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        w.writeheader()
        w.writerows(table)


def plot(results: list[Result], out: str) -> list[str]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for name in dict.fromkeys(r.scenario for r in results):
        sc = SCENARIOS.get(name) or SHARED_SCENARIOS[name]
        gpus = getattr(sc, "gpus", None) or sum(j.gpus for j in sc.jobs)
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
        fig.suptitle(f"{name}: {gpus} GPUs, {sc.description}", fontsize=10)
        fig.tight_layout()
        path = os.path.join(out, f"{name}.png")
        fig.savefig(path, dpi=90)
        plt.close(fig)
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    results = run(args.scenario or ALL, max(1, args.seeds))
    per_seed = rows(results)
    table = worst(per_seed)
    write_csv(os.path.join(args.out, "summary.csv"), table, COLUMNS)
    write_csv(os.path.join(args.out, "summary_seeds.csv"), per_seed, ("seed", *COLUMNS))
    with open(os.path.join(args.out, "summary.md"), "w") as f:
        f.write(markdown(table))
    widths = {c: max(len(c), *(len(str(r[c])) for r in table)) for c in COLUMNS}
    print("  ".join(c.ljust(widths[c]) for c in COLUMNS))
    for r in table:
        print("  ".join(str(r[c]).ljust(widths[c]) for c in COLUMNS))
    if not args.no_plots:
        plot([r for seed, r in results if seed == 0], args.out)
    misses = check(results)
    print(f"\nworst of {max(1, args.seeds)} seed(s); wrote {args.out}/summary.csv, "
          f"summary_seeds.csv, summary.md"
          + ("" if args.no_plots else " and one plot per scenario"))
    print("feedline targets: " + ("all met" if not misses else "MISSED\n  " + "\n  ".join(misses)))
    return 1 if misses else 0


if __name__ == "__main__":
    sys.exit(main())
