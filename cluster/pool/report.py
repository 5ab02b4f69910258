"""The simulator's results as `jobs/simulate_scaling.py` reports them: per-seed rows, the worst
of the seeds per scenario and policy, and feedline's targets checked on every seed.

Targets, in every scenario and every seed:
- single-run scenarios: stall <= 5 % (where the oracle needs no echo), CPU node-hours <= 1.15x
  the oracle's, the cheapest non-oracle policy, <= 2 reversals an hour and at most 1 an hour
  more than the oracle's;
- shared-* scenarios: stall <= 5 % where the pool's max does not bind, node-hours <= 1.15x the
  oracle's, the cheapest non-oracle policy, <= 2 reversals an hour (of the pool's request).
"""

from __future__ import annotations

from cluster.pool.simulate import Result
from cluster.pool.simulate_shared import SHARED_SCENARIOS

__all__ = ["COLUMNS", "rows", "worst", "check"]

COLUMNS = ("scenario", "policy", "gpu_stall_fraction", "cpu_node_hours",
           "oracle_cpu_node_hours", "total_cost", "job_hours", "reversals_per_hour")


def rows(results: list[tuple[int, Result]]) -> list[dict]:
    """One row per (seed, result), the oracle's node-hours of the same scenario and seed."""
    oracle = {(seed, r.scenario): r.cpu_node_hours for seed, r in results
              if r.policy == "oracle"}
    return [{"seed": seed, "scenario": r.scenario, "policy": r.policy,
             "gpu_stall_fraction": round(r.gpu_stall_fraction, 4),
             "cpu_node_hours": round(r.cpu_node_hours, 1),
             "oracle_cpu_node_hours": round(oracle[seed, r.scenario], 1),
             "total_cost": round(r.total_cost, 0), "job_hours": round(r.job_hours, 3),
             "reversals_per_hour": round(r.reversals_per_hour, 2)} for seed, r in results]


def worst(table: list[dict]) -> list[dict]:
    """Per scenario and policy, the worst of the seeds in every column (highest stall,
    node-hours, cost, job hours and reversals; the oracle's node-hours are the same)."""
    out: dict[tuple[str, str], dict] = {}
    for row in table:
        key = (row["scenario"], row["policy"])
        if key not in out:
            out[key] = {c: row[c] for c in COLUMNS}
        else:
            for c in COLUMNS[2:]:
                out[key][c] = max(out[key][c], row[c])
    return list(out.values())


def _misses_one(name: str, by: dict[str, Result], seed: int) -> list[str]:
    f, o = by["feedline"], by["oracle"]
    shared = name in SHARED_SCENARIOS
    free = (not SHARED_SCENARIOS[name].binds) if shared else o.gpu_stall_fraction < 0.01
    at = f"{name} (seed {seed})"
    misses = []
    if free and f.gpu_stall_fraction > 0.05:
        misses.append(f"{at}: stall {f.gpu_stall_fraction:.1%} > 5%")
    if f.cpu_node_hours > 1.15 * o.cpu_node_hours:
        misses.append(f"{at}: {f.cpu_node_hours / o.cpu_node_hours:.2f}x the oracle's "
                      f"node-hours > 1.15x")
    cheapest = min((r for p, r in by.items() if p != "oracle"), key=lambda r: r.total_cost)
    if cheapest.total_cost < f.total_cost - 0.5:  # a tie (a fixed pool that is already right)
        misses.append(f"{at}: {cheapest.policy} costs less ({cheapest.total_cost:.0f} < "
                      f"{f.total_cost:.0f})")
    if f.reversals_per_hour > 2:
        misses.append(f"{at}: {f.reversals_per_hour:.1f} reversals/h > 2")
    if not shared and f.reversals_per_hour > o.reversals_per_hour + 1:
        misses.append(f"{at}: {f.reversals_per_hour:.2f} reversals/h > the oracle's "
                      f"{o.reversals_per_hour:.2f} + 1")
    return misses


def check(results: list[tuple[int, Result]]) -> list[str]:
    """feedline's targets on every scenario and seed, one line per miss."""
    misses = []
    for seed, name in dict.fromkeys((s, r.scenario) for s, r in results):
        by = {r.policy: r for s, r in results if s == seed and r.scenario == name}
        misses += _misses_one(name, by, seed)
    return misses


def markdown(table: list[dict]) -> str:
    """The worst-of-seeds table as Markdown, one row per scenario, one cell per policy:
    total cost · GPU stall · CPU node-hours, then feedline's node-hours ÷ the oracle's and its
    reversals an hour (and the oracle's)."""
    out = []
    for shared in (False, True):
        names = [n for n in dict.fromkeys(r["scenario"] for r in table)
                 if (n in SHARED_SCENARIOS) == shared]
        if not names:
            continue
        policies = list(dict.fromkeys(r["policy"] for r in table if r["scenario"] in names))
        out.append("| scenario | " + " | ".join(policies) + " | feedline node-h ÷ oracle | "
                   "feedline (oracle) reversals/h |")
        out.append("|---" * (len(policies) + 3) + "|")
        for name in names:
            by = {r["policy"]: r for r in table if r["scenario"] == name}
            cells = [f"${by[p]['total_cost']:,.0f} · {100 * by[p]['gpu_stall_fraction']:.1f} % "
                     f"· {by[p]['cpu_node_hours']:,.0f} nh" for p in policies]
            cells = [f"**{c}**" if p == "feedline" else c for p, c in zip(policies, cells,
                                                                          strict=True)]
            f, o = by["feedline"], by["oracle"]
            out.append(f"| {name} | " + " | ".join(cells) + f" | "
                       f"{f['cpu_node_hours'] / o['cpu_node_hours']:.2f} | "
                       f"{f['reversals_per_hour']:.2f} ({o['reversals_per_hour']:.2f}) |")
        out.append("")
    return "\n".join(out)
