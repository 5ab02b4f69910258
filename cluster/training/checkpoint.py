"""Checkpoints of a run: what a restart (Ray Train's `max_failures`, a preemption, or the same
run started again on its storage path) resumes from.

One file, `state.pt`: the model, the optimizer, the run's `Progress` (epoch, rows of it done,
schedule progress, steps, attempt, echo factor, history) and the stream position (which rows of
which epochs are done, `pipelines.position`). Taken at epoch ends and, with
`--checkpoint-every-steps`, mid-epoch; a resume goes on at the step after it, on any number of
workers.
"""

from __future__ import annotations

import os
import tempfile
import time

import ray.train
import torch
from torch import nn

from cluster.training.progress import Progress
from pipelines.position import StreamPosition

__all__ = ["restore", "report", "CHECKPOINT_FILE"]

CHECKPOINT_FILE = "state.pt"


def _save(model: nn.Module, optimizer, progress: Progress, position: StreamPosition | None,
          directory: str) -> int:
    module = getattr(model, "module", model)
    path = os.path.join(directory, CHECKPOINT_FILE)
    torch.save({"model": module.state_dict(), "optimizer": optimizer.state_dict(),
                "progress": progress.as_dict(),
                "position": position.to_state() if position is not None else None}, path)
    return os.path.getsize(path)


def restore(model: nn.Module, optimizer) -> tuple[Progress, StreamPosition | None]:
    """Load the latest checkpoint if Ray Train gives one; returns where training goes on
    (`Progress()` and None: from the start)."""
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return Progress(), None
    with checkpoint.as_directory() as d:
        state = torch.load(os.path.join(d, CHECKPOINT_FILE), map_location="cpu",
                           weights_only=True)
    getattr(model, "module", model).load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    progress = Progress.from_dict(state["progress"])
    progress.attempt += 1
    position = state.get("position")
    return progress, StreamPosition.from_state(position) if position is not None else None


def report(metrics: dict, *, rank: int, model: nn.Module | None = None, optimizer=None,
           progress: Progress | None = None, position: StreamPosition | None = None) -> dict:
    """`ray.train.report` of this rank's metrics (every rank calls it); with `progress`, rank 0
    attaches a checkpoint. Returns what it cost: seconds and bytes (rank 0; {} otherwise)."""
    if rank != 0 or progress is None:
        ray.train.report(metrics)
        return {}
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as d:
        size = _save(model, optimizer, progress, position, d)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))
    return {"checkpoint_s": time.perf_counter() - start, "checkpoint_bytes": size}
