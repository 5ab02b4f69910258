"""Cut one continuous stream of batches into epochs of an exact number of rows.

The pipeline runs all epochs as one Ray Data execution, so each rank sees one long stream. An
epoch is `rows` rows of it: the plan knows the row count up front, so every rank takes the same
share and does the same number of steps (DDP needs that). A batch that straddles the boundary is
split; a piece smaller than half a batch is merged into its neighbour, so there is never a
1-row batch (BatchNorm cannot train on one value per channel).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch

__all__ = ["EpochSlicer", "batch_len"]

Batch = dict[str, torch.Tensor]


def batch_len(batch: Batch) -> int:
    return len(next(iter(batch.values())))


def _split(batch: Batch, n: int) -> tuple[Batch, Batch]:
    return {k: v[:n] for k, v in batch.items()}, {k: v[n:] for k, v in batch.items()}


def _concat(a: Batch, b: Batch) -> Batch:
    return {k: torch.cat([a[k], b[k]]) for k in a}


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
