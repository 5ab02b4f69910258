"""Cut one continuous stream of batches into epochs of an exact number of rows.

The pipeline runs all epochs as one Ray Data execution, so each rank sees one long stream. An
epoch is `rows` rows of it: the plan knows the row count up front, so every rank takes the same
share and does the same number of steps (DDP needs that). A batch that straddles the boundary is
split; a piece smaller than half a batch is merged into its neighbour, so there is never a
1-row batch (BatchNorm cannot train on one value per channel).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

import numpy as np
import torch

from pipelines.echo import ECHO
from pipelines.sources import LABEL

__all__ = ["EpochSlicer", "FreshEpochs", "compact", "agreed", "batch_len", "FRESH", "ECHOED",
           "PROGRESS"]

Batch = dict[str, torch.Tensor]
FRESH, ECHOED, PROGRESS = "fresh_rows", "echoed_rows", "progress_rows"
"""Per-batch counts (ints) added to an echoed stream's batches: fresh and echoed rows of this
rank's batch, and the rows of progress through the data it stands for (fresh rows of the step
over all ranks, divided by the number of ranks)."""


def batch_len(batch: Batch) -> int:
    return len(next(iter(batch.values())))


def _split(batch: Batch, n: int) -> tuple[Batch, Batch]:
    return {k: v[:n] for k, v in batch.items()}, {k: v[n:] for k, v in batch.items()}


def _cat(parts: list) -> torch.Tensor | np.ndarray:
    return torch.cat(parts) if isinstance(parts[0], torch.Tensor) else np.concatenate(parts)


def _concat(a: Batch, b: Batch) -> Batch:
    """Columns are tensors, or numpy arrays for what stays on the host (keys, row ids)."""
    return {k: _cat([a[k], b[k]]) for k in a}


def compact(batches: Iterable[Batch], batch_size: int) -> Iterator[Batch]:
    """A deterministic stream's batches without its placeholder rows (label -1), re-cut into
    batches of exactly `batch_size` rows (the last may be short): the same rows make the same
    batches however the stream was cut into blocks."""
    held: list[Batch] = []
    rows = 0
    for batch in batches:
        keep = np.flatnonzero(np.asarray(batch[LABEL]) >= 0)
        if len(keep) < batch_len(batch):
            index = torch.from_numpy(keep)
            batch = {k: v[index] if isinstance(v, torch.Tensor) else v[keep]
                     for k, v in batch.items()}
        if not len(keep):
            continue
        held.append(batch)
        rows += len(keep)
        while rows >= batch_size:
            merged = held[0] if len(held) == 1 else {k: _cat([b[k] for b in held])
                                                      for k in held[0]}
            out, rest = _split(merged, batch_size)
            yield out
            rows -= batch_size
            held = [rest] if rows else []
    if rows:
        yield held[0] if len(held) == 1 else {k: _cat([b[k] for b in held]) for k in held[0]}


def agreed(batches: Iterable[Batch], world: int,
           reduce: Callable[[list[float]], list[float]]) -> Iterator[Batch]:
    """`batches` for as long as every rank has one: the ranks agree before every step (one
    small all-reduce), so they take the same number of steps even when their streams hold
    different numbers of rows (a deterministic stream's placeholders are dealt unevenly)."""
    it = iter(batches)
    while True:
        batch = next(it, None)
        (have,) = reduce([batch is not None])
        if have < world:
            return
        yield batch


class EpochSlicer:
    """Hands out consecutive epochs of a batch stream; keeps the boundary remainder."""

    def __init__(self, batches: Iterable[Batch], batch_size: int):
        self._it = iter(batches)
        self._carry: Batch | None = None
        self._half = max(1, batch_size // 2)
        self.exhausted = False

    def _pieces(self, rows: int) -> Iterator[Batch]:
        remaining = rows
        while remaining > 0:
            chunk = self._carry if self._carry is not None else next(self._it, None)
            self._carry = None
            if chunk is None:
                self.exhausted = True
                return
            n = batch_len(chunk)
            if n > remaining:
                chunk, self._carry = _split(chunk, remaining)
                n = remaining
            remaining -= n
            yield chunk

    def epoch(self, rows: int) -> Iterator[Batch]:
        """The next `rows` rows, in batches of about batch_size: never under half a batch (unless
        the epoch itself is smaller), at most 1.5x when a remainder is merged in (2x only when
        an epoch holds under two batches)."""
        pending: Batch | None = None
        for piece in self._pieces(rows):
            if pending is None:
                pending = piece
            elif batch_len(pending) < self._half or batch_len(piece) < self._half:
                pending = _concat(pending, piece)
            else:
                yield pending
                pending = piece
        if pending is not None:
            yield pending


class FreshEpochs:
    """Cuts a stream whose rows carry the echo copy index (``echo``, 0 = fresh) into epochs of
    `fresh_per_epoch` fresh examples summed over all ranks: an epoch stays one pass over the
    fresh data, however many copies the pool made.

    Which rows are fresh differs from rank to rank, so the ranks agree on every step with one
    small all-reduce (`reduce`, a sum over ranks) of [fresh rows, has a batch, batch has >= 2
    rows]: all ranks see the same totals, end each epoch on the same step and stop together
    when any rank's stream ends (a rank's last 1-row batch is dropped: BatchNorm cannot train
    on it). An epoch ends with the step that reaches its fresh count; the overshoot, under one
    global batch, counts towards the next epoch.
    """

    def __init__(self, batches: Iterable[Batch], fresh_per_epoch: int, world: int,
                 reduce: Callable[[list[float]], list[float]]):
        if fresh_per_epoch < 1:
            raise ValueError(f"fresh_per_epoch must be >= 1, got {fresh_per_epoch}")
        self._it = iter(batches)
        self.fresh_per_epoch, self.world, self.reduce = fresh_per_epoch, world, reduce
        self.fresh_seen = 0
        """Fresh rows trained on so far, summed over ranks."""
        self.epochs_started = 0
        self.exhausted = False

    def epoch(self) -> Iterator[Batch]:
        self.epochs_started += 1
        end = self.epochs_started * self.fresh_per_epoch
        while self.fresh_seen < end and not self.exhausted:
            batch = next(self._it, None)
            fresh = rows = 0
            if batch is not None:
                echo = np.asarray(batch[ECHO])  # kept: the trained-rows ledger reads it
                rows, fresh = len(echo), int((echo == 0).sum())
            total, have, usable = self.reduce([fresh, batch is not None, rows >= 2])
            if have < self.world or usable < self.world:
                self.exhausted = True
                return
            self.fresh_seen += int(total)
            yield {**batch, FRESH: fresh, ECHOED: rows - fresh, PROGRESS: total / self.world}
