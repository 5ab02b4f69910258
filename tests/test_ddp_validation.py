"""Tier 1 (torch.distributed on gloo, two local processes, no Ray): validation when ranks hold
different numbers of validation batches, here one rank none at all, as when the validation set
has fewer work units than there are ranks. It must not hang, and every rank must validate with
rank 0's BatchNorm statistics, as DDP's forward would give them."""

import multiprocessing as mp
import os
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from cluster.local.ports import free_port
from cluster.training.collectives import all_reduce, share_buffers
from cluster.training.stepper import EpochTotals
from cluster.training.validation import evaluate
from pipelines.sources import IMAGE, LABEL


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(4, 3))


def _batches(count: int) -> list[dict]:
    rng = np.random.default_rng(1)
    return [{IMAGE: rng.integers(0, 256, (8, 3, 8, 8), dtype=np.uint8),
             LABEL: rng.integers(0, 3, 8)} for _ in range(count)]


def _rank(rank: int, port: int, out) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2, timeout=timedelta(seconds=20))
    try:
        model = nn.parallel.DistributedDataParallel(_model())
        # rank 1's BatchNorm statistics drift from rank 0's, as after a last local forward
        if rank == 1:
            model.module[1].running_mean.add_(5.0)
        device = torch.device("cpu")
        mean, std = torch.zeros(1, 3, 1, 1), torch.ones(1, 3, 1, 1)
        totals = EpochTotals()
        share_buffers(model)
        evaluate(model, _batches(2) if rank == 0 else [], device, mean, std, totals)
        correct, count, loss = all_reduce(
            [totals.val_correct, totals.val_count, totals.val_loss_sum], device)
        out.put((rank, count, loss, model.module[1].running_mean.tolist(), model.training))
    finally:
        dist.destroy_process_group()


def test_ranks_with_unequal_validation_batches_finish_with_rank_0s_statistics():
    port = free_port()
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_rank, args=(r, port, out)) for r in (0, 1)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=90)
    for p in procs:
        if p.is_alive():
            p.kill()
    assert [p.exitcode for p in procs] == [0, 0], "a rank hung or failed in validation"
    results = sorted(out.get(timeout=5) for _ in procs)
    (_, count0, loss0, stats0, training0), (_, count1, loss1, stats1, training1) = results
    assert count0 == count1 == 16  # both ranks see the sum: rank 0's 2 batches of 8
    assert loss0 == loss1 > 0
    assert stats1 == stats0 == [0.0] * 4  # rank 1 got rank 0's statistics, not its own
    assert training0 and training1  # back in training mode afterwards

    # The same validation done locally through an unwrapped model gives rank 0's figures.
    totals = EpochTotals()
    evaluate(_model(), _batches(2), torch.device("cpu"), torch.zeros(1, 3, 1, 1),
              torch.ones(1, 3, 1, 1), totals)
    assert totals.val_loss_sum == loss0 and totals.val_count == 16
