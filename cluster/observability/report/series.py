"""Pure: the run's spans (steps per rank, pool blocks) as binned time series and sums."""

from __future__ import annotations

import math

from cluster.observability.report.model import ActorWork, Steady
from pipelines.observe import STAGES

__all__ = ["bin_width", "step_bins", "pool_bins", "steady_steps", "actor_work", "MAX_BINS"]

MAX_BINS = 60
_NICE = (0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 1800, 3600)


def bin_width(duration_s: float, max_bins: int = MAX_BINS) -> float:
    """The smallest round bin width (seconds) that cuts `duration_s` into at most `max_bins`."""
    for width in _NICE:
        if duration_s / width <= max_bins:
            return float(width)
    return float(math.ceil(duration_s / max_bins))


def _index(t: float, t0: float, width: float) -> int:
    return max(0, int((t - t0) // width))


def _spread(row_of, t0: float, width: float, a: float, b: float, col: int) -> None:
    """Add the interval a..b to column `col` of the bins it overlaps, each its share."""
    i = _index(a, t0, width)
    while True:
        lo, hi = t0 + i * width, t0 + (i + 1) * width
        part = min(b, hi) - max(a, lo)
        if part > 0:
            row_of(i)[col] += part
        if b <= hi:
            return
        i += 1


def step_bins(train_spans: list, t0: float, width: float) -> dict[str, list[list[float]]]:
    """`train_spans` (rank, start, got_batch, on_device, end, images) binned per rank: rows of
    (t, wait, h2d, compute, images); each phase's seconds go to the bins it overlaps (a long
    wait fills every bin it spans), a step's images to the bin it ended in."""
    out: dict[str, dict[int, list[float]]] = {}
    for rank, start, got, on_device, end, images in train_spans:
        rows = out.setdefault(str(rank), {})

        def row_of(i: int, rows=rows) -> list[float]:
            return rows.setdefault(i, [0.0] * 4)

        for col, (a, b) in enumerate(((start, got), (got, on_device), (on_device, end))):
            _spread(row_of, t0, width, a, b, col)
        row_of(_index(max(start, end - 1e-9), t0, width))[3] += images
    return {rank: [[round(i * width, 3), *(round(v, 6) for v in rows[i])]
                   for i in sorted(rows)] for rank, rows in sorted(out.items())}


def pool_bins(stage_spans: list, t0: float, width: float) -> list[list[float]]:
    """Pool blocks (actor, start, end, images, fresh, *seconds by STAGES) binned by end time:
    rows of (t, images, fresh, *seconds by STAGES)."""
    rows: dict[int, list[float]] = {}
    for _actor, _start, end, images, fresh, *stages in stage_spans:
        row = rows.setdefault(_index(end, t0, width), [0.0] * (2 + len(STAGES)))
        row[0] += images
        row[1] += fresh
        for k, v in enumerate(stages):
            row[2 + k] += v
    return [[round(i * width, 3), *(round(v, 6) for v in rows[i])] for i in sorted(rows)]


def steady_steps(train_spans: list) -> Steady:
    """Sums over every step but each rank's first (it waited for the pool to start)."""
    firsts: dict[int, float] = {}
    for rank, start, *_ in train_spans:
        firsts[rank] = min(firsts.get(rank, start), start)
    steps = images = 0
    wait = h2d = compute = 0.0
    for rank, start, got, on_device, end, n in train_spans:
        if start == firsts[rank]:
            continue
        steps += 1
        images += n
        wait += got - start
        h2d += on_device - got
        compute += end - on_device
    return Steady(steps=steps, images=images, wait_s=wait, h2d_s=h2d, compute_s=compute,
                  ranks=len(firsts))


def actor_work(work: dict[str, dict[str, float]]) -> list[ActorWork]:
    """The monitor's per-actor sums as ActorWork, by name."""
    return [ActorWork(name=name, images=int(w.get("images", 0)), fresh=int(w.get("fresh", 0)),
                      busy_s=float(w.get("busy", 0.0)), read_bytes=int(w.get("bytes", 0)),
                      first=float(w["first"]), last=float(w["last"]),
                      stages={k: float(w.get(k, 0.0)) for k in STAGES})
            for name, w in sorted(work.items())]
