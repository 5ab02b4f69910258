"""Checkpoints of a run: what a restart (Ray Train's `max_failures`, or the same run started
again on its storage path) resumes from."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass

import ray.train
import torch
from torch import nn

__all__ = ["Resume", "restore", "report"]

CHECKPOINT_FILE = "state.pt"


@dataclass(frozen=True)
class Resume:
    """Where training goes on: the first epoch to run and the optimizer steps already taken."""

    epoch: int = 0
    step: int = 0


def _save(model: nn.Module, optimizer, epoch: int, step: int, directory: str) -> None:
    module = getattr(model, "module", model)
    torch.save({"model": module.state_dict(), "optimizer": optimizer.state_dict(),
                "epoch": epoch, "step": step}, os.path.join(directory, CHECKPOINT_FILE))


def restore(model: nn.Module, optimizer) -> Resume:
    """Load the latest checkpoint if Ray Train gives one (a restart after a failure, or a run
    resumed from its storage path). Checkpoints are taken at epoch ends, so a restart resumes
    at the start of the epoch after the checkpoint: the steps of the epoch that was cut short
    are done again."""
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return Resume()
    with checkpoint.as_directory() as d:
        state = torch.load(os.path.join(d, CHECKPOINT_FILE), map_location="cpu",
                           weights_only=True)
    getattr(model, "module", model).load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    return Resume(int(state["epoch"]) + 1, int(state.get("step", 0)))


def report(metrics: dict, *, checkpoint: bool, rank: int, model: nn.Module, optimizer,
           epoch: int, step: int) -> None:
    """`ray.train.report` of this rank's metrics; with `checkpoint`, rank 0 attaches one."""
    if rank == 0 and checkpoint:
        with tempfile.TemporaryDirectory() as d:
            _save(model, optimizer, epoch, step, d)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))
    else:
        ray.train.report(metrics)
