"""The stream of work-unit positions 0 .. n-1, as Ray Data blocks made in the calling process.

Each block is one row, a range of consecutive positions [start, stop): the positions are known
up front, so the ranges are put into the object store here, with no read task. A read task needs
a Ray worker that imports ray.data (about 2 s on this machine), and that worker stood on the path
to the first batch: the pool actors had nothing to work on until it ran (README, "First batch").
A row per range, not per position: rows are built in Python, and 900,000 positions (90 epochs
of 10,000 units) as rows took 4.5 s here; putting a block costs about 1 ms either way.
"""

from __future__ import annotations

import numpy as np
import ray

__all__ = ["SEQ", "START", "STOP", "unit_positions", "positions_of"]

SEQ = "seq"
"""Column of explicit positions, for in-process calls of the Preprocessor (validation)."""
START, STOP = "seq_start", "seq_stop"
"""Columns of the stream: each row stands for the positions start .. stop - 1."""


def unit_positions(n: int, per_block: int) -> ray.data.Dataset:
    """Positions 0 .. n-1 in order, a block per range of at most `per_block` positions."""
    if n <= 0:
        raise ValueError(f"the stream needs at least one position, got {n}")
    per_block = max(1, per_block)
    ranges = [{START: s, STOP: min(n, s + per_block)} for s in range(0, n, per_block)]
    return ray.data.from_items(ranges, override_num_blocks=len(ranges))


def positions_of(batch: dict[str, np.ndarray]) -> np.ndarray:
    """The positions a batch stands for: its SEQ column, or its ranges expanded in order."""
    if SEQ in batch:
        return np.asarray(batch[SEQ])
    return np.concatenate([np.arange(a, b) for a, b in zip(batch[START], batch[STOP], strict=True)]
                          or [np.arange(0)])
