"""What a rank has trained, row by row, and the run's progress a step checkpoint holds.

Every batch carries each row's epoch and row id (`pipelines.position`); a rank marks the rows it
trained (a fresh copy, with echo). At a checkpoint the ranks OR their marks together, rank 0 adds
the rows the pool skipped as bad (they will never be trained, and are done too), and the result
is the `StreamPosition` a resumed stream starts from: on any number of ranks, every row not done
is made once more, and no done row again.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.distributed as dist

from pipelines.echo import ECHO
from pipelines.position import BLOCK, EPOCH, ROW, StreamPosition
from pipelines.sources import LABEL

__all__ = ["TrainedRows", "Progress", "valid_rows"]


@dataclass
class Progress:
    """The run's progress at a checkpoint: world-size free, so any world can resume it."""

    epoch: int = 0
    """The trainers' epoch in progress (epochs before it are done)."""
    epoch_rows: int = 0
    """Rows of `epoch` trained so far, all ranks together (fresh rows, with echo)."""
    epoch_rows_total: int = 0
    """Rows `epoch` holds for the trainers in all (0: a whole epoch of this world)."""
    consumed: float = 0.0
    """Progress rows over the run, all ranks together (drives the learning-rate schedule)."""
    steps: int = 0
    """Optimizer steps taken over the run."""
    attempt: int = 0
    """Resumes from a checkpoint before this attempt (0: the first start)."""
    echo_factor: float = 1.0
    """The echo factor in force at the checkpoint."""
    history: list = field(default_factory=list)
    """Per-validation figures so far (the run summary's history)."""

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, state: dict) -> Progress:
        names = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in state.items() if k in names})


class TrainedRows:
    """One rank's trained rows, per epoch, as bitmaps over the plan's rows."""

    def __init__(self, rows: int, position: StreamPosition | None = None):
        self.rows = rows
        self.done: dict[int, np.ndarray] = {}
        self.lo = 0
        self.start_block = 0
        self.last_block = -1
        """Stream-wide index of the block of the last row trained (deterministic streams)."""
        if position is not None:
            self.lo, self.start_block = position.lo, position.start_block
            self.done = {e: b.copy() for e, b in position.done.items()}

    def mark(self, batch: dict) -> None:
        """The rows of a trained batch (placeholders and echoed copies are not marked)."""
        if ROW not in batch:
            return
        rows, epochs = np.asarray(batch[ROW]), np.asarray(batch[EPOCH])
        keep = rows >= 0
        if ECHO in batch:
            keep &= np.asarray(batch[ECHO]) == 0
        if BLOCK in batch and len(rows):
            self.last_block = max(self.last_block, int(np.asarray(batch[BLOCK]).max()))
        for epoch in np.unique(epochs[keep]):
            sel = keep & (epochs == epoch)
            bits = self.done.setdefault(int(epoch), np.zeros(self.rows, dtype=bool))
            bits[rows[sel]] = True

    def add_bad(self, bad_rows: dict[int, list[int]]) -> None:
        """Rows the pool skipped as bad: done, as no rank will ever train them."""
        for epoch, rows in bad_rows.items():
            if rows:
                bits = self.done.setdefault(int(epoch), np.zeros(self.rows, dtype=bool))
                bits[np.asarray(rows, dtype=np.int64)] = True

    def gather(self, rank: int, world: int, device: torch.device) -> StreamPosition:
        """Every rank's marks ORed together (a collective: every rank calls it)."""
        hi = max([self.lo - 1, *self.done])
        lo, hi = _reduce_ints([self.lo, -hi], dist.ReduceOp.MIN, device)
        hi = -hi
        merged: dict[int, np.ndarray] = {}
        for epoch in range(lo, hi + 1):
            mine = self.done.get(epoch, np.zeros(self.rows, dtype=bool))
            t = torch.from_numpy(mine.astype(np.uint8)).to(device)
            if dist.is_initialized():
                dist.all_reduce(t, op=dist.ReduceOp.MAX)
            merged[epoch] = t.cpu().numpy().astype(bool)
        return StreamPosition.from_bitmaps(self.rows, merged,
                                           self._start_block(rank, world, device), lo=lo)

    def _start_block(self, rank: int, world: int, device: torch.device) -> int:
        """The first block a deterministic resumed stream must make: every block of this
        world's ranks before it was trained whole (block g went to rank g % world)."""
        own = ((self.last_block - rank) // world if self.last_block >= 0
               else self.start_block // world)
        (least,) = _reduce_ints([own], dist.ReduceOp.MIN, device)
        return max(self.start_block, least * world)


def _reduce_ints(values: list[int], op, device: torch.device) -> list[int]:
    t = torch.tensor(values, dtype=torch.int64, device=device)
    if dist.is_initialized():
        dist.all_reduce(t, op=op)
    return [int(v) for v in t.tolist()]


def valid_rows(batch: dict) -> int:
    """Rows of a batch that are not placeholders."""
    return int((np.asarray(batch[LABEL]) >= 0).sum()) if LABEL in batch else 0
