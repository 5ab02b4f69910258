"""One rank's optimizer steps, each timed in three phases: waiting for the next batch (the data
stall), host-to-device copy, and compute (forward, backward, optimizer step including DDP's
all-reduce).

On GPU the batch arrives through a DevicePrefetcher (its copy overlapped the previous step) and
the phases are closed by synchronizing the compute stream only, so the split is true without
serialising the next copy; on CPU wall time is the truth.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch
from torch import nn

from cluster.echo.controller import ConsumeReporter
from cluster.observability.metrics import StepMetrics
from cluster.training.config import TrainConfig
from cluster.training.epochs import ECHOED, FRESH, PROGRESS, batch_len
from cluster.training.model import normalize_on_device
from cluster.training.progress import TrainedRows
from cluster.training.trace import SampleTrace
from pipelines.sources import IMAGE, LABEL

__all__ = ["EpochTotals", "Stepper", "lr_at", "MEAN", "STD"]

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
"""ImageNet's channel statistics: inputs are normalised with them on the device."""


def lr_at(progress: float, peak: float, warmup: float) -> float:
    """Linear warm-up to `peak` over the first `warmup` of training, then cosine to zero."""
    if warmup > 0 and progress < warmup:
        return peak * progress / warmup
    span = max(1e-9, 1.0 - warmup)
    return peak * 0.5 * (1.0 + math.cos(math.pi * min(1.0, (progress - warmup) / span)))


@dataclass
class EpochTotals:
    """Sums over one epoch on one rank; all-reduced (summed) across ranks."""

    images: float = 0.0
    steps: float = 0.0
    wait_s: float = 0.0
    h2d_s: float = 0.0
    compute_s: float = 0.0
    step_s: float = 0.0
    loss_sum: float = 0.0
    correct: float = 0.0
    val_loss_sum: float = 0.0
    val_correct: float = 0.0
    val_count: float = 0.0
    fresh: float = 0.0
    """Examples trained on for the first time."""
    echoed: float = 0.0
    """Reuses of examples by data echoing."""


def _sync(device: torch.device) -> None:
    """Wait for the compute stream only: a device-wide sync would also wait for the next batch's
    copy on the prefetcher's side stream and undo the overlap."""
    if device.type == "cuda":
        torch.cuda.current_stream(device).synchronize()


@dataclass(frozen=True)
class _Step:
    """One step's clock readings (perf_counter) and counts."""

    t0: float
    """Asked for the batch."""
    t1: float
    """Had the batch."""
    t2: float
    """Batch on the device."""
    t3: float
    """Step done."""
    images: int
    fresh: int
    echoed: int
    progress: float


@dataclass
class Stepper:
    """Runs and times the steps of one rank; `consumed` drives the learning-rate schedule."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    device: torch.device
    tc: TrainConfig
    total_rows: int
    """Fresh rows this rank consumes over the whole run (all epochs, resumed ones included):
    the learning-rate schedule follows passes over the fresh data, echoed or not."""
    metrics: StepMetrics | None = None
    keep_steps: bool = False
    """Keep every step's (start, got batch, on device, end, images) for the timeline."""
    consumed: float = 0.0
    consume: ConsumeReporter | None = None
    """Reports rows and busy time to the echo controller (automatic echo factor)."""
    first_batch_at: float | None = None
    """perf_counter() when the first batch was in hand: training time counts from here."""
    val_every: float = 0.0
    """Progress rows (this rank's share) between validations inside an epoch (0: none)."""
    validate: Callable[[], bool] | None = None
    """Runs a validation inside the epoch; returns True to stop training there."""
    steps_total: int = 0
    """Optimizer steps taken over the run (resumed ones included)."""
    steps: list = field(default_factory=list)
    """Kept step spans (with `keep_steps`), in epoch seconds, until handed to the monitor."""
    trained: TrainedRows | None = None
    """Marks the rows of every trained batch (the stream position of a step checkpoint)."""
    trace: SampleTrace | None = None
    """Writes every step's keys (--trace-samples)."""
    after_step: Callable[[], None] | None = None
    """Runs after every step on every rank (step checkpoints, preemption checks)."""
    epoch_index: int = 0
    """The trainers' epoch the steps belong to."""
    epoch_rows: float = 0.0
    """Rows of the current epoch trained by this rank (fresh rows, with echo)."""

    def __post_init__(self) -> None:
        self.loss_fn = nn.CrossEntropyLoss(label_smoothing=self.tc.label_smoothing)
        self.mean = torch.tensor(MEAN, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(STD, device=self.device).view(1, 3, 1, 1)
        self.echoed_total = 0
        self.stopped = False
        # perf_counter for durations, shifted to epoch seconds so that spans of different
        # processes (ranks, pool actors) line up on one timeline.
        self._to_wall = time.time() - time.perf_counter()

    def epoch(self, batches: Iterable, end: float) -> EpochTotals:
        """Train on `batches` (already on the device) up to progress `end`; an echoed
        stream's batches carry their fresh / echoed / progress counts. Validates every
        `val_every` progress rows before the epoch's end, and returns early (`stopped`) when
        such a validation says so."""
        totals = EpochTotals()
        batches = iter(batches)
        due = self.consumed + self.val_every
        while True:
            t0 = time.perf_counter()
            batch = next(batches, None)
            if batch is None:
                return totals
            step = self._train(batch, t0, totals)
            self._record(step, totals, batch)
            if self.after_step is not None:
                self.after_step()
            # Every rank has the same progress after every step, so they validate together.
            if self.val_every > 0 and self.validate is not None and self.consumed >= due:
                due = self.consumed + self.val_every
                if self.consumed + self.val_every / 2 <= end and self.validate():
                    self.stopped = True
                    return totals

    def _train(self, batch: dict, t0: float, totals: EpochTotals) -> _Step:
        """One optimizer step on `batch` (asked for at `t0`), loss and accuracy into `totals`."""
        t1 = time.perf_counter()
        if self.first_batch_at is None:
            self.first_batch_at = t1
        x = normalize_on_device(batch[IMAGE], self.mean, self.std)
        if self.tc.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        y = batch[LABEL]
        _sync(self.device)
        t2 = time.perf_counter()
        lr = lr_at(self.consumed / self.total_rows, self.tc.peak_lr(), self.tc.warmup_fraction)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        use_amp = self.tc.amp and self.device.type == "cuda"
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=use_amp):
            logits = self.model(x)
            loss = self.loss_fn(logits, y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        n = batch_len(batch)
        totals.loss_sum += loss.item() * n  # .item() also closes the step on GPU
        totals.correct += (logits.argmax(1) == y).sum().item()
        t3 = time.perf_counter()
        return _Step(t0, t1, t2, t3, n, batch.get(FRESH, n), batch.get(ECHOED, 0),
                     batch.get(PROGRESS, n))

    def _record(self, s: _Step, totals: EpochTotals, batch: dict) -> None:
        """A step's counts and phases into the totals, the metrics, the echo controller, the
        trained-rows ledger, the sample trace and (with `keep_steps`) the timeline."""
        if self.trace is not None:
            self.trace.step(self.steps_total, self.epoch_index, batch)
        if self.trained is not None:
            self.trained.mark(batch)
        self.consumed += s.progress
        self.epoch_rows += s.progress
        totals.images += s.images
        totals.fresh += s.fresh
        totals.echoed += s.echoed
        totals.steps += 1
        totals.wait_s += s.t1 - s.t0
        totals.h2d_s += s.t2 - s.t1
        totals.compute_s += s.t3 - s.t2
        totals.step_s += s.t3 - s.t0
        if self.metrics is not None:
            self.metrics.observe(s.t1 - s.t0, s.t2 - s.t1, s.t3 - s.t2, fresh=s.fresh,
                                 echoed=s.echoed, now=s.t3)
        if self.consume is not None:
            self.consume.add(s.images, s.t3 - s.t1, s.t1 - s.t0)
        self.echoed_total += s.echoed
        self.steps_total += 1
        if self.keep_steps:
            w = self._to_wall
            self.steps.append((s.t0 + w, s.t1 + w, s.t2 + w, s.t3 + w, s.images))
