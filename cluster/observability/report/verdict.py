"""Pure: is the run input-bound, compute-bound or balanced, and the numbers that say so."""

from __future__ import annotations

from dataclasses import dataclass

from cluster.observability.report.figures import Figures

__all__ = ["Verdict", "verdict", "INPUT_BOUND", "COMPUTE_BOUND", "INPUT", "COMPUTE",
           "BALANCED"]

INPUT, COMPUTE, BALANCED = "input-bound", "compute-bound", "balanced"
INPUT_BOUND = 0.25
"""At or above this share of step time waiting for data, the input pipeline holds the
trainers back: a quarter of the accelerators' time is lost."""
COMPUTE_BOUND = 0.10
"""At or below it, the trainers rarely wait: the model's step sets the pace."""


@dataclass(frozen=True)
class Verdict:
    kind: str
    """input-bound, compute-bound or balanced."""
    line: str
    """The verdict with the figures behind it, one sentence."""


def _n(x: float) -> str:
    return f"{x:,.0f}"


def verdict(f: Figures) -> Verdict:
    """The run's verdict from its (steady-state) wait fraction, backed by the rates: what the
    trainers took, what they would take without waiting, and what the pool made."""
    if f.wait_fraction >= INPUT_BOUND:
        kind = INPUT
    elif f.wait_fraction <= COMPUTE_BOUND:
        kind = COMPUTE
    else:
        kind = BALANCED
    startup = (f" ({100 * f.run_wait_fraction:.0f}% counting start-up)"
               if abs(f.run_wait_fraction - f.wait_fraction) >= 0.005 else "")
    pool = (f"; the pool made {_n(f.pool_rate)} img/s with {f.actors} actor"
            f"{'s' if f.actors != 1 else ''} at {100 * f.pool_busy:.0f}% busy"
            if f.actors else "")
    line = (f"{kind}: the trainers waited for data {100 * f.wait_fraction:.0f}% of step time"
            f"{startup}; they took {_n(f.trainer_rate)} img/s and would take "
            f"{_n(f.trainer_demand)} img/s{pool}.")
    return Verdict(kind, line)
