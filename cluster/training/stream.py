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
from cluster.training.epochs import ECHOED, FRESH, PROGRESS, EpochSlicer, FreshEpochs, batch_len
from cluster.training.prefetch import DevicePrefetcher
from cluster.training.worker import WorkerConfig
from pipelines.echo import ECHO, echo_batches
from pipelines.readahead import ReadAhead
from pipelines.sources import IMAGE, LABEL

__all__ = ["Collate", "TrainStream"]

# Ray Data hands out read-only numpy views of its blocks; torch warns on wrapping them. Nothing
# here writes into a batch in place (normalisation makes a new float tensor on the device).
warnings.filterwarnings("ignore", message="The given NumPy array is not writable")


class Collate(NumpyBatchCollateFn):
    """Ray Data numpy batch -> CPU tensors, zero-copy; uint8 stays uint8 until the device."""

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        out = {IMAGE: torch.from_numpy(batch[IMAGE]), LABEL: torch.from_numpy(batch[LABEL])}
        if ECHO in batch:  # the echo copy index stays on the host: it is only counted
            out[ECHO] = torch.from_numpy(batch[ECHO])
        return out


class TrainStream:
    """The epochs of this rank's share of the stream, as device batches."""

    def __init__(self, cfg: WorkerConfig, rank: int, world: int, device: torch.device):
        tc = cfg.train
        self.cfg, self.rank, self.world, self.device = cfg, rank, world, device
        self.rows = cfg.rows_per_rank(world)
        shard = ray.train.get_dataset_shard("train")
        # Read ahead on our own thread: Ray Data's look-ahead holds each batch back until the
        # next prefetch_batches are in too (pipelines/readahead.py).
        self._read = ReadAhead(shard.iter_torch_batches(
            batch_size=tc.batch_size, collate_fn=Collate(), prefetch_batches=0,
            local_shuffle_buffer_size=tc.shuffle_buffer_rows or None,
            local_shuffle_seed=tc.seed + rank if tc.shuffle_buffer_rows else None,
            pin_memory=device.type == "cuda",
        ), depth=tc.prefetch_batches)
        if cfg.echo.in_pool:
            # The pool echoes: rows carry their copy index, epochs are counted in fresh rows
            # and the ranks agree on every step.
            self.slicer = FreshEpochs(self._read, cfg.rows_per_epoch, world,
                                      reduce=lambda values: all_reduce(values, device))
        else:
            self.slicer = EpochSlicer(self._read, tc.batch_size)
        self._batch_factor = _batch_factor(cfg, rank, device)

    def epoch(self, epoch: int) -> Iterator[dict]:
        """The device batches of epoch `epoch` (this rank's `rows` rows of it)."""
        if self.cfg.echo.in_pool:
            return iter(DevicePrefetcher(self.slicer.epoch(), self.device))
        batches = DevicePrefetcher(self.slicer.epoch(self.rows), self.device)
        if self._batch_factor is None:
            return iter(batches)
        return _echo_batches(batches, self._batch_factor, self.cfg, epoch)

    def got_text(self, totals_images: float) -> str:
        """What this epoch received, for the messages on a short stream."""
        s = self.slicer
        if self.cfg.echo.in_pool:
            got = s.fresh_seen - (s.epochs_started - 1) * s.fresh_per_epoch
            return f"{got} of {self.cfg.rows_per_epoch} fresh rows (all ranks)"
        return f"{int(totals_images)} of {self.rows} rows per rank"

    def check_end(self, epoch: int, totals_images: float, say: Callable[[str], None]) -> None:
        """Fail when the stream ended before the last epoch; say so when it ended in it."""
        epochs = self.cfg.train.epochs
        if not self.slicer.exhausted:
            return
        if epoch + 1 < epochs:
            raise RuntimeError(
                f"rank {self.rank}: the data stream ended in epoch {epoch + 1} of {epochs} "
                f"after {self.got_text(totals_images)}: far more records than planned were "
                "skipped as bad (see the bad-record counts in the log and metrics), or the "
                "dataset changed while training")
        if self.rank == 0:
            # Records skipped as bad shorten the stream; every epoch but the last borrows from
            # the next, so the shortfall lands here. Ray Train splits the stream equally, so
            # every rank is short by the same rows and takes the same steps. (An echoed stream
            # also leaves out the rows that do not split equally over the ranks.)
            say(f"last epoch: {self.got_text(totals_images)}; the stream ended there (records "
                "skipped as bad, or rows left over by the equal split across ranks)")

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
