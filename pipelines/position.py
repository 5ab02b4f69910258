"""Where a stream stands: which rows of which epochs are done (trained, or skipped as bad), so that
a resumed stream makes exactly the rest.

Rows are named by their epoch and their row id: the row's place in the plan (the rows of unit
`u` are `offsets[u] .. offsets[u] + u.num_rows - 1`, in the order the unit reads them), whatever
the epoch's unit order and row shuffle. A position is world-size free: the trainers OR their
rows together at a checkpoint, and any number of ranks can resume from it.

    epochs < lo              every row done: no unit of them is read again
    epochs lo .. hi          a bitmap of done rows each: done rows are dropped before decode
    epochs > hi              nothing done

In a deterministic stream the pool also skips the first `start_block` output blocks of the
stream: blocks are dealt to the ranks in turn, and the resumed stream must start at a block
that goes to the same rank as it did (see `pipelines.build`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from pipelines.sources import WorkUnit

__all__ = ["StreamPosition", "PositionSource", "FixedPosition", "row_offsets", "EPOCH", "ROW",
           "BLOCK"]

EPOCH, ROW, BLOCK = "epoch", "row", "block"
"""Columns of the training stream: each row's epoch and row id; in a deterministic stream also
its block's stream-wide index (placeholder rows have row -1 and label -1)."""


def row_offsets(units: tuple[WorkUnit, ...]) -> np.ndarray:
    """The row id of each unit's first row (plan order); a last entry holds the total."""
    return np.concatenate([[0], np.cumsum([u.num_rows for u in units])]).astype(np.int64)


@dataclass(frozen=True)
class StreamPosition:
    """Done rows of a stream whose epochs have `rows` rows each (see the module docstring)."""

    rows: int
    lo: int = 0
    done: dict[int, np.ndarray] = field(default_factory=dict)
    """Epoch -> bool array of `rows`: True for a row that is done."""
    start_block: int = 0
    """Deterministic streams: output blocks of the whole stream to leave out (all done)."""

    def epoch_done(self, epoch: int) -> bool:
        return epoch < self.lo

    def done_rows(self, epoch: int, row_ids: np.ndarray) -> np.ndarray:
        """Mask of `row_ids` (of `epoch`) that are done."""
        if epoch < self.lo:
            return np.ones(len(row_ids), dtype=bool)
        bits = self.done.get(epoch)
        if bits is None:
            return np.zeros(len(row_ids), dtype=bool)
        return bits[row_ids]

    def remaining(self, epoch: int) -> int:
        """Rows of `epoch` not done yet."""
        if epoch < self.lo:
            return 0
        bits = self.done.get(epoch)
        return self.rows - (int(bits.sum()) if bits is not None else 0)

    @classmethod
    def from_bitmaps(cls, rows: int, done: dict[int, np.ndarray], start_block: int = 0,
                     lo: int = 0) -> StreamPosition:
        """The position of per-epoch done bitmaps (epochs before `lo`: all done): the leading
        complete epochs fold into `lo` (an epoch without a bitmap is not started)."""
        while lo in done and bool(done[lo].all()):
            lo += 1
        kept = {e: np.asarray(b, dtype=bool) for e, b in done.items() if e >= lo}
        return cls(rows, lo, kept, start_block)

    def to_state(self) -> dict:
        """Plain, compact data (bits packed) for a checkpoint."""
        return {"rows": self.rows, "lo": self.lo, "start_block": self.start_block,
                "done": {str(e): np.packbits(b).tobytes() for e, b in self.done.items()}}

    @classmethod
    def from_state(cls, state: dict) -> StreamPosition:
        rows = int(state["rows"])
        done = {int(e): np.unpackbits(np.frombuffer(b, dtype=np.uint8), count=rows).astype(bool)
                for e, b in state["done"].items()}
        return cls(rows, int(state["lo"]), done, int(state.get("start_block", 0)))


class PositionSource(Protocol):
    """Where a pool actor learns the position its stream resumes from (pickled into each
    actor; asked once, at the actor's first call)."""

    def position(self) -> StreamPosition | None: ...


class FixedPosition:
    """A position known when the stream is built (None: from the start)."""

    def __init__(self, value: StreamPosition | None):
        self.value = value

    def position(self) -> StreamPosition | None:
        return self.value
