"""Data echoing stages: repeat examples (or batches) and shuffle the copies apart.

Choi et al., "Faster Neural Network Training with Data Echoing" (2019): when the stages upstream of
the echo are slower than the trainers, reusing each fresh example e times cuts wall-clock. Echo
before augmentation (every copy is augmented on its own), shuffle after the echo.

Everything here is plain numpy and works on any columns; `Preprocessor` (pipelines.build) uses
`copy_counts`, `repeat_rows` and `ShuffleBuffer` for the example modes, the trainers use
`echo_batches` for batch mode. Where the factor comes from (fixed, or chosen while the run goes
on) is a `FactorSource`.

Accounting: the first copy of an example is fresh, the others are echoed; the `echo` column holds
each row's copy index (0 = fresh), so the consumer counts both exactly.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from typing import Protocol, TypeVar

import numpy as np

__all__ = ["ECHO", "copy_counts", "repeat_rows", "ShuffleBuffer", "echo_batches",
           "FactorSource", "FixedFactor"]

ECHO = "echo"
"""Column with each row's copy index: 0 for the fresh copy, 1.. for echoes."""

Columns = dict[str, np.ndarray]
T = TypeVar("T")


class FactorSource(Protocol):
    """Where an echo stage reads the current factor (pickled into each pool actor)."""

    def factor(self) -> float: ...


class FixedFactor:
    def __init__(self, value: float):
        self.value = float(value)

    def factor(self) -> float:
        return self.value


def copy_counts(n: int, factor: float, rng: np.random.Generator) -> np.ndarray:
    """Copies of each of `n` examples for echo factor `factor` >= 1: floor(factor) each, plus
    one more for a random subset of about frac(factor) * n of them (floor(frac * n + u), u
    uniform in [0, 1)), so the expected total is exactly factor * n."""
    if factor < 1.0:
        raise ValueError(f"echo factor must be >= 1, got {factor}")
    whole = math.floor(factor)
    counts = np.full(n, whole, dtype=np.int64)
    extra = min(n, math.floor((factor - whole) * n + rng.random()))
    if extra:
        counts[rng.choice(n, extra, replace=False)] += 1
    return counts


def repeat_rows(columns: Columns, counts: np.ndarray) -> Columns:
    """Each row repeated `counts[i]` times (copies adjacent), plus the `echo` copy-index column."""
    out = {k: np.repeat(v, counts, axis=0) for k, v in columns.items()}
    starts = np.repeat(np.cumsum(counts) - counts, counts)
    out[ECHO] = (np.arange(int(counts.sum())) - starts).astype(np.uint8)
    return out


def _take(columns: Columns, index: np.ndarray) -> Columns:
    return {k: v[index] for k, v in columns.items()}


def _concat(parts: list[Columns]) -> Columns:
    if len(parts) == 1:
        return parts[0]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


class ShuffleBuffer:
    """A shuffle buffer of `capacity` rows over column dicts (tf.data-style, vectorised): once
    full, every arriving row takes the slot of a random resident row, which leaves. Each row is
    copied in once and out once, whatever the capacity. Output comes in blocks of `block_rows`.

    `flush()` empties it; a caller that cannot be told when its stream ends must flush at the
    end of each of its calls so that no row is ever held back.
    """

    def __init__(self, capacity: int, block_rows: int, rng: np.random.Generator):
        if block_rows < 1:
            raise ValueError(f"block_rows must be >= 1, got {block_rows}")
        self.capacity, self.block_rows, self.rng = max(0, capacity), block_rows, rng
        self._pool: Columns | None = None
        self._size = 0
        self._out: list[Columns] = []
        self._out_rows = 0

    def __len__(self) -> int:
        return self._size + self._out_rows

    def _allocate(self, columns: Columns) -> None:
        self._pool = {k: np.empty((self.capacity, *v.shape[1:]), dtype=v.dtype)
                      for k, v in columns.items()}

    def add(self, columns: Columns) -> Iterator[Columns]:
        """Take rows in; yields every full output block this makes ready."""
        n = len(next(iter(columns.values())))
        if self.capacity == 0:
            self._emit(columns)
            yield from self._blocks(final=False)
            return
        if self._pool is None:
            self._allocate(columns)
        pool = self._pool
        fill = min(self.capacity - self._size, n)
        for k, v in columns.items():
            pool[k][self._size:self._size + fill] = v[:fill]
        self._size += fill
        rest = n - fill
        while rest > 0:  # buffer full: each new row evicts a random resident
            r = min(rest, self.capacity)
            slots = self.rng.choice(self.capacity, r, replace=False)
            self._emit({k: p[slots] for k, p in pool.items()})
            for k, v in columns.items():
                pool[k][slots] = v[n - rest:n - rest + r]
            rest -= r
        yield from self._blocks(final=False)

    def flush(self) -> Iterator[Columns]:
        """Everything still held, shuffled, in blocks (the last one may be short)."""
        if self._size:
            order = self.rng.permutation(self._size)
            self._emit(_take({k: p[:self._size] for k, p in self._pool.items()}, order))
            self._size = 0
        yield from self._blocks(final=True)

    def _emit(self, columns: Columns) -> None:
        n = len(next(iter(columns.values())))
        if n:
            self._out.append(columns)
            self._out_rows += n

    def _blocks(self, final: bool) -> Iterator[Columns]:
        while self._out_rows >= self.block_rows or (final and self._out_rows):
            ready = _concat(self._out)
            take = min(self.block_rows, self._out_rows)
            yield {k: v[:take] for k, v in ready.items()}
            rest = {k: v[take:] for k, v in ready.items()}
            self._out_rows -= take
            self._out = [rest] if self._out_rows else []


def echo_batches(batches: Iterable[T], factor: Callable[[], float], rng: np.random.Generator,
                 buffer_batches: int) -> Iterator[tuple[T, bool]]:
    """Batch echoing: each batch `copy_counts` times (the factor read once per fresh batch),
    through a shuffle buffer of `buffer_batches` whole batches. Yields (batch, fresh): fresh is
    True for the first copy of a batch to come out. Deterministic for a given rng and factor
    sequence, so DDP ranks that share both take the same number of steps."""
    buffer: list[list] = []  # one entry per copy: [batch, record]; record = [copies out so far]

    def out() -> tuple[T, bool]:
        i = int(rng.integers(len(buffer)))
        (batch, record), buffer[i] = buffer[i], buffer[-1]
        buffer.pop()
        record[0] += 1
        return batch, record[0] == 1

    for batch in batches:
        record = [0]
        buffer.extend([batch, record] for _ in range(int(copy_counts(1, factor(), rng)[0])))
        while len(buffer) > buffer_batches:
            yield out()
    while buffer:
        yield out()
