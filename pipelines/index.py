"""`UnitIndex`: the stream of work-unit positions 0 .. n-1 as a lazy Ray Data source.

Kept apart from `pipelines.build` on purpose: the index's read tasks run in their own Ray worker,
and unpickling a read function imports the module that defines it. Here that costs pyarrow and
ray.data only; defined next to the `Preprocessor` it imported torch and torchvision as well
(6.3 s on this machine, measured with `python -c 'import torchvision'`), all of it on the path
to the first batch.
"""

from __future__ import annotations

import functools

import pyarrow as pa
from ray.data import Datasource, ReadTask
from ray.data.block import BlockMetadata

__all__ = ["UnitIndex", "SEQ"]

SEQ = "seq"


def _seq_block(start: int, stop: int) -> list[pa.Table]:
    return [pa.table({SEQ: pa.array(range(start, stop), pa.int64())})]


class UnitIndex(Datasource):
    """Positions 0 .. n-1 in blocks of `per_task` consecutive positions, made lazily by read
    tasks as the stream pulls them: nothing is materialised up front.

    Ray Data puts every read task into the object store before the first block, about 1 ms
    each here: one task per position cost 11 s before the first block at 8,000 positions and
    83 s at 79,000 (measured), so positions are grouped; see `pipelines.build` for the size.
    """

    def __init__(self, n: int, per_task: int = 1):
        super().__init__()
        self.n, self.per_task = n, max(1, per_task)

    @property
    def num_tasks(self) -> int:
        return -(-self.n // self.per_task)

    def estimate_inmemory_data_size(self) -> int:
        return 8 * self.n

    def get_read_tasks(self, parallelism: int, per_task_row_limit=None, data_context=None
                       ) -> list[ReadTask]:
        tasks = []
        for start in range(0, self.n, self.per_task):
            stop = min(self.n, start + self.per_task)
            meta = BlockMetadata(num_rows=stop - start, size_bytes=8 * (stop - start),
                                 exec_stats=None, input_files=None)
            tasks.append(ReadTask(functools.partial(_seq_block, start, stop), meta))
        return tasks
