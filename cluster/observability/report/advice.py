"""Pure: what to change, computed from a run's figures and settings (never canned text).

Each line names the flag to change and the value the figures call for. Code in `backticks` is
shown as code on the page.
"""

from __future__ import annotations

import math

from cluster.observability.report.figures import Figures
from cluster.observability.report.verdict import COMPUTE, INPUT, verdict

__all__ = ["advise", "echo_needed", "actors_needed", "read_rate", "FULL", "STORE_SHARE"]

FULL = 0.80
"""Pool utilisation at or above which the actors have no room left: more work needs more."""
STORE_SHARE = 0.35
"""Share of pool time in storage reads at or above which the store is the bottleneck."""


def _n(x: float) -> str:
    return f"{x:,.0f}"


def _pct(x: float) -> str:
    return f"{100 * x:.0f}%"


def _cores(n: int) -> str:
    return f"{n} pool core{'s' if n != 1 else ''}"


def read_rate(mb_s: float) -> str:
    """A read speed in MB/s (kB/s under 1 MB/s)."""
    return f"{mb_s:,.1f} MB/s" if mb_s >= 1 else f"{1000 * mb_s:,.1f} kB/s"


def echo_needed(f: Figures) -> float | None:
    """The echo factor at which the pool's fresh examples cover what the trainers would take
    (rounded up to 0.1), or None when the pool made none."""
    if f.pool_fresh_rate <= 0:
        return None
    return max(1.1, math.ceil(10 * f.trainer_demand / f.pool_fresh_rate - 1e-9) / 10)


def actors_needed(f: Figures) -> int | None:
    """Pool actors (one core each) that would make what the trainers would take."""
    if f.actor_rate <= 0:
        return None
    return max(1, math.ceil(f.trainer_demand / f.actor_rate - 1e-9))


def _echo_clause(f: Figures, config: dict) -> str:
    e = echo_needed(f)
    if e is None:
        return ""
    top = float(config.get("echo_max", 4.0))
    more = f" (and `--echo-max {e:g}`)" if config.get("echo_factor") == "auto" and e > top else ""
    return f", or `--echo-factor {e:g}`{more} removes the stall"


def _input_bound(f: Figures, config: dict) -> list[str]:
    out = []
    read = f.stage_share.get("read", 0.0)
    if read >= STORE_SHARE:
        speed = f" at {read_rate(f.read_mb_s)}" if f.read_mb_s is not None else ""
        out.append(f"storage reads take {_pct(read)} of pool time{speed}: the store is the "
                   "bottleneck. More actors help only while the store has bandwidth to spare; "
                   "data echoing reuses what was read" + _echo_clause(f, config) + ".")
    need, pool_max = actors_needed(f), int(config.get("pool_max", f.actors))
    if f.pool_busy >= FULL and need is not None and need > f.actors:
        flag = (f"`--pool-max {need}`" if need > pool_max else
                f"`{config.get('pool_resource', 'preprocess_cpu')}` resources; "
                f"`--pool-max {pool_max}` already allows them")
        out.append(f"the pool makes {_n(f.pool_rate)} img/s with {f.actors} actors at "
                   f"{_pct(f.pool_busy)} busy, the trainers would take {_n(f.trainer_demand)} "
                   f"img/s: add {_cores(need - f.actors)} ({flag})"
                   + _echo_clause(f, config) + ".")
    elif f.pool_busy < FULL and read < STORE_SHARE:
        ran = (f"only {f.actors} of `--pool-max {pool_max}` actors ran, and "
               if f.actors < pool_max else "")
        prefetch = int(config.get("prefetch_batches", 2))
        out.append(f"{ran}the pool is {_pct(f.pool_busy)} busy, yet the trainers wait "
                   f"{_pct(f.wait_fraction)} of step time: the stall is between the pool and "
                   f"the trainers (hand-off to the object store takes "
                   f"{_pct(f.stage_share.get('handoff', 0.0))} of pool time). Read further "
                   f"ahead: `--prefetch-batches {max(4, 2 * prefetch)}`"
                   + _echo_clause(f, config) + ".")
    if not out:
        out.append(f"the pool makes {_n(f.pool_rate)} img/s with {f.actors} actors at "
                   f"{_pct(f.pool_busy)} busy, the trainers would take {_n(f.trainer_demand)} "
                   "img/s" + (_echo_clause(f, config) or ": give the pool more cores") + ".")
    return out


def _compute_bound(f: Figures, config: dict) -> list[str]:
    out = []
    pool_max = int(config.get("pool_max", f.actors))
    need = max(1, math.ceil(f.actors * f.pool_busy / FULL - 1e-9)) if f.actors else None
    if need is not None and need < pool_max:
        out.append(f"compute-bound: the pool is {_pct(f.pool_busy)} busy, `--pool-max {need}` "
                   f"would do ({_cores(pool_max - need)} fewer).")
    else:
        out.append(f"compute-bound: the model's step sets the pace ({_pct(f.compute_fraction)} "
                   f"of step time is h2d + compute); the pool ({f.actors} actors, "
                   f"{_pct(f.pool_busy)} busy) keeps up.")
    if config.get("use_gpu") and not config.get("amp"):
        out.append("the step itself is the lever: `--amp` (bf16) and `--channels-last` make "
                   "convolutions faster on recent GPUs.")
    if f.echo_factor > 1.05:
        out.append(f"echo is not needed (x{f.echo_factor:.2f} over the run): the trainers do "
                   "not wait; `--echo-factor 1` trains on fresh examples only.")
    return out


def _balanced(f: Figures, config: dict) -> list[str]:
    out = [f"balanced: the pool ({f.actors} actors at {_pct(f.pool_busy)} busy, "
           f"{_n(f.pool_rate)} img/s) just keeps up with the trainers, who would take "
           f"{_n(f.trainer_demand)} img/s: one more pool core (`--pool-max {f.actors + 1}`) "
           "gives headroom" + _echo_clause(f, config) + "."]
    read = f.stage_share.get("read", 0.0)
    if read >= STORE_SHARE:
        out.append(f"storage reads take {_pct(read)} of pool time: the store is the first "
                   "thing to run out.")
    return out


def _bad_records(summary: dict) -> list[str]:
    n = int(summary.get("bad_records", 0))
    if not n:
        return []
    kinds = ", ".join(f"{k} {v}" for k, v in sorted(summary.get("bad_by_kind", {}).items()))
    where = summary.get("bad_records_file")
    return [f"{n:,} bad records were skipped ({kinds}): fix them at the source"
            + (f"; each is listed in `{where}`" if where else "") + "."]


def advise(f: Figures, config: dict, summary: dict) -> list[str]:
    """What to do, most important first."""
    kind = verdict(f).kind
    if kind == INPUT:
        lines = _input_bound(f, config)
    elif kind == COMPUTE:
        lines = _compute_bound(f, config)
    else:
        lines = _balanced(f, config)
    return lines + _bad_records(summary)
