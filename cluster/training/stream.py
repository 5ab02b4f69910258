"""One rank's side of the training stream: its Ray Data shard read ahead on a thread, cut into
epochs, echoed in whole batches when the trainers echo, and copied to the device one batch ahead.

    shard.iter_torch_batches(prefetch_batches=0) -> ReadAhead -> EpochSlicer | FreshEpochs
        -> DevicePrefetcher -> [batch echo] -> the Stepper
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator

import numpy as np
import ray.train
import torch
from ray.data.collate_fn import NumpyBatchCollateFn

from cluster.echo.controller import ControllerFactor
from cluster.training.collectives import all_reduce
from cluster.training.epochs import (
    ECHOED,
    FRESH,
    PROGRESS,
    EpochSlicer,
    FreshEpochs,
    agreed,
    batch_len,
    compact,
)
from cluster.training.prefetch import DevicePrefetcher
from cluster.training.progress import Progress
from cluster.training.worker import WorkerConfig
from pipelines.echo import ECHO, echo_batches
from pipelines.position import BLOCK, EPOCH, ROW
from pipelines.readahead import ReadAhead
from pipelines.sources import IMAGE, KEY, LABEL

__all__ = ["Collate", "TrainStream"]

# Ray Data hands out read-only numpy views of its blocks; torch warns on wrapping them. Nothing
# here writes into a batch in place (normalisation makes a new float tensor on the device).
warnings.filterwarnings("ignore", message="The given NumPy array is not writable")


class Collate(NumpyBatchCollateFn):
    """Ray Data numpy batch -> CPU tensors, zero-copy; uint8 stays uint8 until the device.
    What only the host reads (epoch and row ids, echo copy index, block, and with `keys` the
    keys) stays numpy: it is counted and written down, never copied to the device."""

    def __init__(self, keys: bool = False):
        super().__init__()
        self.host = (EPOCH, ROW, BLOCK, ECHO) + ((KEY,) if keys else ())

    def __call__(self, batch: dict[str, np.ndarray]) -> dict:
        out = {IMAGE: torch.from_numpy(batch[IMAGE]), LABEL: torch.from_numpy(batch[LABEL])}
        out.update({k: np.asarray(batch[k]) for k in self.host if k in batch})
        return out


class TrainStream:
    """The epochs of this rank's share of the stream, as device batches."""

    def __init__(self, cfg: WorkerConfig, rank: int, world: int, device: torch.device,
                 progress: Progress):
        tc = cfg.train
        self.cfg, self.rank, self.world, self.device = cfg, rank, world, device
        self.rows = cfg.rows_per_rank(world)
        shard = ray.train.get_dataset_shard("train")
        # Read ahead on our own thread: Ray Data's look-ahead holds each batch back until the
        # next prefetch_batches are in too (pipelines/readahead.py).
        self._read = ReadAhead(shard.iter_torch_batches(
            batch_size=tc.batch_size, collate_fn=Collate(keys=tc.trace_samples is not None),
            prefetch_batches=0, local_shuffle_buffer_size=tc.shuffle_buffer_rows or None,
            local_shuffle_seed=tc.seed + rank if tc.shuffle_buffer_rows else None,
            pin_memory=device.type == "cuda",
        ), depth=tc.prefetch_batches)
        reduce = lambda values: all_reduce(values, device)  # noqa: E731
        # A deterministic stream's blocks are padded to one size (so that a resumed stream is
        # dealt as the uninterrupted one): the placeholders go, and the ranks agree per step.
        self.padded = cfg.padded
        batches = compact(self._read, tc.batch_size) if self.padded else self._read
        if cfg.echo.in_pool:
            # The pool echoes: rows carry their copy index, epochs are counted in fresh rows
            # and the ranks agree on every step.
            self.slicer = FreshEpochs(batches, cfg.rows_per_epoch, world, reduce=reduce)
            self.slicer.epochs_started = progress.epoch
            self.slicer.fresh_seen = progress.epoch * cfg.rows_per_epoch + progress.epoch_rows
        else:
            self.slicer = EpochSlicer(batches, tc.batch_size)
        self._reduce = reduce
        self._batch_factor = _batch_factor(cfg, rank, device)
        self._resumed = progress

    def rows_in(self, epoch: int) -> int:
        """This rank's rows of `epoch`: its share, or of what a resumed epoch has left."""
        p = self._resumed
        if epoch != p.epoch or not p.epoch_rows:
            return self.rows
        total = p.epoch_rows_total or self.rows * self.world
        return max(0, total - p.epoch_rows) // self.world

    def epoch(self, epoch: int) -> Iterator[dict]:
        """The device batches of epoch `epoch` (this rank's rows of it)."""
        if self.cfg.echo.in_pool:
            batches = self.slicer.epoch()
        else:
            batches = self.slicer.epoch(self.rows_in(epoch))
        if self.padded:
            batches = agreed(batches, self.world, self._reduce)
        batches = iter(DevicePrefetcher(batches, self.device))
        if self._batch_factor is None or self.cfg.echo.in_pool:
            return batches
        return _echo_batches(batches, self._batch_factor, self.cfg, epoch)

    def got_text(self, totals_images: float, epoch: int) -> str:
        """What this epoch received, for the messages on a short stream."""
        s = self.slicer
        if self.cfg.echo.in_pool:
            got = s.fresh_seen - (s.epochs_started - 1) * s.fresh_per_epoch
            return f"{got} of {self.cfg.rows_per_epoch} fresh rows (all ranks)"
        return f"{int(totals_images)} of {self.rows_in(epoch)} rows per rank"

    def check_end(self, epoch: int, totals_images: float, say: Callable[[str], None]) -> None:
        """Fail when the stream ended before the last epoch; say so when it ended in it."""
        epochs = self.cfg.train.epochs
        if not self.slicer.exhausted:
            return
        if epoch + 1 < epochs:
            raise RuntimeError(
                f"rank {self.rank}: the data stream ended in epoch {epoch + 1} of {epochs} "
                f"after {self.got_text(totals_images, epoch)}: far more records than planned "
                "were skipped as bad (see the bad-record counts in the log and metrics), or "
                "the dataset changed while training")
        if self.rank == 0:
            # Records skipped as bad shorten the stream; every epoch but the last borrows from
            # the next, so the shortfall lands here. Ray Train splits the stream equally, so
            # every rank is short by the same rows and takes the same steps. (An echoed stream
            # also leaves out the rows that do not split equally over the ranks.)
            say(f"last epoch: {self.got_text(totals_images, epoch)}; the stream ended there "
                "(records skipped as bad, or rows left over by the equal split across ranks)")

    def close(self) -> None:
        self._read.close()


def _batch_factor(cfg: WorkerConfig, rank: int, device: torch.device):
    """For batch echoing: the factor every rank uses for the next fresh batch (None when the
    trainers do not echo). An automatic factor is read by rank 0 and all-reduced, so all ranks
    repeat each batch alike and take the same number of steps."""
    echo, control = cfg.echo, cfg.echo_control
    if not echo.enabled or echo.in_pool:
        return None
    if not echo.auto or control is None:
        return lambda: echo.factor
    source = ControllerFactor(control, echo.factor) if rank == 0 else None

    def agreed() -> float:
        return all_reduce([source.factor() if source is not None else 0.0], device)[0]

    return agreed


def _echo_batches(batches, factor, cfg: WorkerConfig, epoch: int):
    """Batch echoing of one epoch's device batches: whole batches repeated and shuffled in a
    buffer of `echo.shuffle_rows` rows' worth; seeded alike on every rank."""
    tc = cfg.train
    rng = np.random.default_rng([tc.seed, epoch, 3])
    buffer = cfg.echo.shuffle_rows // tc.batch_size
    for batch, fresh in echo_batches(batches, factor, rng, buffer):
        n = batch_len(batch)
        yield {**batch, FRESH: n if fresh else 0, ECHOED: 0 if fresh else n,
               PROGRESS: n if fresh else 0}
