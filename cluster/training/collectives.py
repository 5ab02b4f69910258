"""The few collectives the ranks share outside DDP's own: sums of figures, rank 0's buffers."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

__all__ = ["all_reduce", "share_buffers"]


def all_reduce(values: list[float], device: torch.device, op=dist.ReduceOp.SUM) -> list[float]:
    """Reduce `values` across ranks (a no-op for a single worker without a process group)."""
    t = torch.tensor(values, dtype=torch.float64, device=device)
    if dist.is_initialized():
        dist.all_reduce(t, op=op)
    return t.tolist()


def share_buffers(model: nn.Module) -> None:
    """Rank 0's buffers (BatchNorm statistics) to every rank, as DDP's forward does, so that
    every rank validates with the same model. A collective: every rank calls it, validation
    units or not."""
    net = getattr(model, "module", model)
    if net is not model and dist.is_initialized():
        for buffer in net.buffers():
            dist.broadcast(buffer.data, src=0)
