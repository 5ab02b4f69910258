"""Pure: the numbers a verdict and its advice are made of, derived from a run's `RunFacts`."""

from __future__ import annotations

from dataclasses import dataclass

from cluster.observability.report.model import RunFacts
from pipelines.observe import STAGES

__all__ = ["Figures", "figures"]


@dataclass(frozen=True, kw_only=True)
class Figures:
    wait_fraction: float
    """Share of step time the trainers waited for data, each rank's first step left out (its
    wait is the pool's cold start; the whole run's share when no steps were kept)."""
    run_wait_fraction: float
    """The same over the whole run, start-up included."""
    compute_fraction: float
    """Share of step time in h2d + compute (1 - wait_fraction)."""
    trainer_rate: float
    """Images/s the trainers took over the run."""
    trainer_demand: float
    """Images/s they would take if they never waited: images per second of h2d + compute."""
    actors: int
    """Pool actors that made training blocks."""
    pool_rate: float
    """Images/s the pool made (echoed copies included) over the window."""
    pool_fresh_rate: float
    """Fresh examples/s the pool made over the window."""
    pool_busy: float
    """Actors' mean utilisation: busy seconds (read, decode, augment, other) over the window
    (the training's, `RunFacts.window`)."""
    actor_rate: float
    """Images/s one actor makes per second it is busy or handing off (mean over actors)."""
    stage_share: dict
    """Share of the pool's time (busy + hand-off) by stage."""
    read_mb_s: float | None
    """MB/s the actors read at while reading, all together (None: nothing read)."""
    echo_factor: float
    """Copies per fresh example over the run."""
    pool_window_s: float
    """Seconds the pool's rates and utilisation are measured over."""


def _trainer(facts: RunFacts) -> tuple[float, float, float]:
    """(steady wait fraction, whole-run wait fraction, images/s the trainers would take)."""
    s, st = facts.summary, facts.steady
    run_wait = float(s.get("data_wait_fraction", 0.0))
    step = st.wait_s + st.h2d_s + st.compute_s
    if st.steps and step > 0:
        busy = st.h2d_s + st.compute_s
        return st.wait_s / step, run_wait, st.images * st.ranks / busy if busy > 0 else 0.0
    rate = float(s.get("images_per_s", 0.0))
    return run_wait, run_wait, rate / max(1e-9, 1.0 - run_wait)


def figures(facts: RunFacts) -> Figures:
    wait, run_wait, demand = _trainer(facts)
    actors = facts.actors
    if facts.window:
        window = facts.window[1] - facts.window[0]
    else:
        window = (max((a.last for a in actors), default=0.0)
                  - min((a.first for a in actors), default=0.0))
    images = sum(a.images for a in actors)
    fresh = sum(a.fresh for a in actors)
    stages = {k: sum(a.stages.get(k, 0.0) for a in actors) for k in STAGES}
    total = sum(stages.values())
    occupied = [a.busy_s + a.stages.get("handoff", 0.0) for a in actors]
    rates = [a.images / t for a, t in zip(actors, occupied, strict=True) if t > 0]
    reading = [a.read_bytes / a.stages["read"] for a in actors
               if a.stages.get("read", 0.0) > 0 and a.read_bytes]
    s = facts.summary
    return Figures(
        wait_fraction=wait, run_wait_fraction=run_wait, compute_fraction=1.0 - wait,
        trainer_rate=float(s.get("images_per_s", 0.0)), trainer_demand=demand,
        actors=len(actors),
        pool_rate=images / window if window > 0 else 0.0,
        pool_fresh_rate=fresh / window if window > 0 else 0.0,
        pool_busy=(sum(a.busy_s for a in actors) / (window * len(actors))
                   if window > 0 and actors else 0.0),
        actor_rate=sum(rates) / len(rates) if rates else 0.0,
        stage_share={k: v / total for k, v in stages.items()} if total > 0 else {},
        read_mb_s=sum(reading) / 1e6 if reading else None,
        echo_factor=float(s.get("echo_factor", 1.0)), pool_window_s=window)
