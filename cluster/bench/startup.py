"""Where feedline's first batch goes on a running Ray, in four parts that add up to it:

- `build`: `build_dataset` in the driver (planning the source, putting the position blocks);
- `actors_up`: from then to the first pool actor's first call (Ray starting the actors' worker
  processes, each importing Ray, Ray Data and pipelines, and the actors' `__init__`);
- `first_block`: that call's first block (numba's first kernel load from its cache, reading the
  unit, decoding and augmenting `output_rows` images);
- `to_driver`: from the first block to the first batch in the driver's hands (the blocks the
  batch still needs, Ray Data handing them over, the batch's assembly).

The pool actors report each block's span (`SpanFile`, a `BlockObserver` that appends to a file:
the benchmark runs on one machine), the driver when each dataset was built (`BuildClock`).
"""

from __future__ import annotations

import os
import statistics
import time
from dataclasses import dataclass, field

from pipelines.observe import BlockSpan

__all__ = ["SpanFile", "BuildClock", "PARTS", "first_batch_parts"]

PARTS = ("build", "actors_up", "first_block", "to_driver")


@dataclass(frozen=True)
class SpanFile:
    """Appends `pid start end` (epoch seconds) of every block a pool actor makes to `path`."""

    path: str

    def on_block(self, span: BlockSpan) -> None:
        try:
            with open(self.path, "a") as f:
                f.write(f"{os.getpid()} {span.start:.6f} {span.end:.6f}\n")
        except OSError:
            pass  # an observer never raises: a lost line only leaves a part unknown


@dataclass
class BuildClock:
    """When each dataset was built (`time.time()` before and after `build_dataset`), in order,
    and the spans its actors reported."""

    spans: SpanFile
    builds: list[tuple[float, float]] = field(default_factory=list)

    def timed(self, build):
        start = time.time()
        ds = build()
        self.builds.append((start, time.time()))
        return ds


def _spans(path: str) -> list[tuple[float, float]]:
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [(float(a), float(b)) for _, a, b in (line.split() for line in f if line.strip())]


def first_batch_parts(clock: BuildClock, firsts: list[float]) -> dict[str, float]:
    """The median of each part over the last `len(firsts)` datasets built, whose first batches
    took `firsts` seconds from the start of their build; a part no span told is left out."""
    spans, builds = _spans(clock.spans.path), clock.builds[-len(firsts):]
    parts: dict[str, list[float]] = {p: [] for p in PARTS}
    for i, ((start, built), first) in enumerate(zip(builds, firsts, strict=True)):
        until = builds[i + 1][0] if i + 1 < len(builds) else float("inf")
        mine = [(a, b) for a, b in spans if start <= a < until]
        parts["build"].append(built - start)
        if not mine:
            continue
        call, block = min(a for a, _ in mine), min(b for _, b in mine)
        parts["actors_up"].append(call - built)
        parts["first_block"].append(block - call)
        parts["to_driver"].append(start + first - block)
    return {p: statistics.median(v) for p, v in parts.items() if v}
