"""The rule that picks the echo factor while a run goes on: pure, deterministic, clock passed in.

    e = clamp(consume_rate / produce_rate, 1, max_factor)

`consume_rate`: examples/s the trainers take when they do not wait (rows over h2d + compute
time); `produce_rate`: fresh examples/s the preprocessing pool can make (fresh examples over its
busy time, summed over actors: a capacity, so it is not capped by back-pressure when the trainers
are the slower side). The raw ratio is smoothed with an exponential moving average whose weight
follows the time between observations (`time_constant_s`), and the factor in force moves only
when the smoothed value leaves a dead band around it, so measurement noise does not make it
jitter. When the pool keeps up, the ratio is <= 1 and the factor stays exactly 1.

The part that measures the rates and applies the factor to the running stream is
`cluster.echo.controller`; this module does no I/O and reads no clock.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

__all__ = ["EchoRuleConfig", "EchoState", "next_factor", "target_factor"]


@dataclass(frozen=True, kw_only=True)
class EchoRuleConfig:
    max_factor: float = 4.0
    """Upper bound of the factor (--echo-max)."""
    time_constant_s: float = 3.0
    """Smoothing: an observation `time_constant_s` after the previous one moves the smoothed
    ratio 63% of the way to the new one."""
    dead_band: float = 0.1
    """Relative change of the smoothed ratio needed before the factor in force follows it."""

    def __post_init__(self) -> None:
        if self.max_factor < 1.0:
            raise ValueError(f"max_factor must be >= 1, got {self.max_factor}")
        if self.time_constant_s < 0 or self.dead_band < 0:
            raise ValueError("time_constant_s and dead_band must be >= 0")


@dataclass(frozen=True)
class EchoState:
    factor: float = 1.0
    """The factor in force."""
    smoothed: float | None = None
    """The smoothed target; None before the first observation."""
    at_s: float | None = None
    """Time of the last observation."""
    reason: str = "no measurement yet"


def target_factor(consume_rate: float, produce_rate: float, max_factor: float) -> float:
    """clamp(consume / produce, 1, max_factor); a pool that produces nothing gets the max."""
    if produce_rate <= 0:
        return max_factor
    return min(max_factor, max(1.0, consume_rate / produce_rate))


def next_factor(state: EchoState, now_s: float, consume_rate: float | None,
                produce_rate: float | None, cfg: EchoRuleConfig) -> EchoState:
    """The state after observing the two rates at time `now_s` (a missing rate keeps the state)."""
    if consume_rate is None or produce_rate is None:
        return state
    target = target_factor(consume_rate, produce_rate, cfg.max_factor)
    if state.smoothed is None or state.at_s is None:
        smoothed = target  # the first measurement is taken as it is
    else:
        dt = max(0.0, now_s - state.at_s)
        weight = 1.0 if cfg.time_constant_s == 0 else 1.0 - math.exp(-dt / cfg.time_constant_s)
        smoothed = state.smoothed + weight * (target - state.smoothed)
    factor = state.factor
    if abs(smoothed - factor) > cfg.dead_band * factor:
        factor = smoothed
    for bound in (1.0, cfg.max_factor):
        # Settle on a bound the target sits at: the smoothed value only nears it asymptotically.
        if target == bound and abs(smoothed - bound) <= cfg.dead_band * bound:
            factor = bound
    reason = (f"consume {consume_rate:.1f}/s, produce {produce_rate:.1f}/s: target "
              f"{target:.2f}, smoothed {smoothed:.2f}, factor {factor:.2f}")
    return replace(state, factor=factor, smoothed=smoothed, at_s=now_s, reason=reason)
