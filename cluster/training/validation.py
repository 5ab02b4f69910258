"""Validation in the trainer processes: each rank decodes and transforms its share of the
validation units (`units[rank::world]`, the pool's own Preprocessor code, deterministic
transform) and evaluates them with rank 0's BatchNorm statistics; the figures are summed over
the ranks afterwards."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from cluster.observability.monitor import PoolReporter
from cluster.training.collectives import share_buffers
from cluster.training.model import normalize_on_device
from cluster.training.stepper import EpochTotals
from cluster.training.worker import WorkerConfig
from pipelines.build import Preprocessor
from pipelines.sources import IMAGE, LABEL

__all__ = ["Validator", "evaluate"]


def evaluate(model: nn.Module, batches, device, mean, std, totals: EpochTotals) -> None:
    """Validation on this rank's share of the validation units, here and now: no collectives.
    It runs the module DDP wraps, not the wrapper, whose forward broadcasts rank 0's buffers
    (BatchNorm statistics) at every call, a collective that ranks with different batch counts
    (a rank may have no validation units at all) would not all join: a hang. Every rank calls
    `share_buffers` before it instead."""
    net = getattr(model, "module", model)
    loss_fn = nn.CrossEntropyLoss(reduction="sum")
    net.eval()
    with torch.no_grad():
        for block in batches:
            x = normalize_on_device(torch.from_numpy(block[IMAGE]).to(device), mean, std)
            y = torch.from_numpy(block[LABEL]).to(device)
            logits = net(x)
            totals.val_loss_sum += loss_fn(logits, y).item()
            totals.val_correct += (logits.argmax(1) == y).sum().item()
            totals.val_count += len(y)
    net.train()


class Validator:
    """This rank's validation pass; `enabled` is the same on every rank (a rank without
    validation units still joins the collectives)."""

    def __init__(self, cfg: WorkerConfig, rank: int, world: int):
        self.enabled = cfg.val is not None
        self.units = cfg.val_plan.units[rank::world] if self.enabled else ()
        self.evaluator = (Preprocessor(cfg.val, self.units,
                                       observer=PoolReporter(cfg.run, cfg.monitor, stage="val"),
                                       rows_per_epoch=cfg.val_plan.num_rows)
                          if self.units else None)

    def run(self, model: nn.Module, device: torch.device, mean: torch.Tensor,
            std: torch.Tensor, totals: EpochTotals) -> None:
        """One pass over this rank's units into `totals` (val_* fields). A collective."""
        if self.enabled:
            share_buffers(model)
        if self.evaluator is not None:
            self.evaluator.start_pass()
            blocks = self.evaluator({"seq": np.arange(len(self.units))})
            evaluate(model, blocks, device, mean, std, totals)
