"""The stream of work-unit positions 0 .. n-1, as Ray Data blocks made in the calling process.

The positions are tiny (8 bytes each) and known up front, so they are put into the object store
here, a block per group of consecutive positions, with no read task. A read task needs a Ray
worker that imports ray.data (about 2 s on this machine), and that worker stood on the path to
the first batch: the pool actors had nothing to work on until it ran (README, "First batch").
"""

from __future__ import annotations

import ray

__all__ = ["SEQ", "unit_positions"]

SEQ = "seq"


def unit_positions(n: int, per_block: int) -> ray.data.Dataset:
    """Positions 0 .. n-1 in order, in blocks of at most `per_block` consecutive positions."""
    if n <= 0:
        raise ValueError(f"the stream needs at least one position, got {n}")
    per_block = max(1, per_block)
    return ray.data.from_items([{SEQ: i} for i in range(n)],
                               override_num_blocks=-(-n // per_block))
