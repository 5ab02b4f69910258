"""Checkpoints as the loop takes them: at epoch ends, every `--checkpoint-every-steps` steps,
and at once when Ray Train says a node of the run is being preempted.

Every rank calls in at the same steps (the stream position is gathered with collectives, and
Ray Train's report and preemption check are collectives too); rank 0 writes the file.
"""

from __future__ import annotations

import ray
import ray.train
import torch

from cluster.training import checkpoint
from cluster.training.epoch_report import EpochReporter, say
from cluster.training.progress import Progress, TrainedRows
from cluster.training.stepper import Stepper
from cluster.training.worker import WorkerConfig

__all__ = ["Saver"]


class Saver:
    def __init__(self, cfg: WorkerConfig, rank: int, world: int, device: torch.device,
                 step: Stepper, reporter: EpochReporter, trained: TrainedRows,
                 resumed: Progress, epoch_total: int):
        self.cfg, self.rank, self.world, self.device = cfg, rank, world, device
        self.step, self.reporter, self.trained = step, reporter, trained
        self.resumed = resumed
        self.epoch_total = epoch_total
        """Rows of the current epoch for the trainers, all ranks (set by the loop)."""
        self.costs: list[dict] = []
        """Rank 0: every checkpoint's kind, step, seconds and bytes."""
        self._preempted = False

    def epoch_rows_done(self) -> int:
        """Rows of the current epoch trained, all ranks, this attempt and those before."""
        before = self.resumed.epoch_rows if self.step.epoch_index == self.resumed.epoch else 0
        return before + round(self.step.epoch_rows * self.world)

    def _progress(self, epoch_end: bool) -> Progress:
        s = self.step
        return Progress(epoch=s.epoch_index + epoch_end,
                        epoch_rows=0 if epoch_end else self.epoch_rows_done(),
                        epoch_rows_total=0 if epoch_end else self.epoch_total,
                        consumed=s.consumed * self.world, steps=s.steps_total,
                        attempt=self.resumed.attempt, echo_factor=self.cfg.echo.factor,
                        history=list(self.reporter.history))

    def save(self, metrics: dict, epoch_end: bool, kind: str) -> None:
        """A checkpoint now, reported with `metrics` (a collective)."""
        if self.rank == 0 and self.cfg.monitor is not None:
            self.trained.add_bad(ray.get(self.cfg.monitor.bad_rows.remote(self.trained.lo)))
        position = self.trained.gather(self.rank, self.world, self.device)
        cost = checkpoint.report(metrics, rank=self.rank, model=self.step.model,
                                 optimizer=self.step.optimizer,
                                 progress=self._progress(epoch_end), position=position)
        if cost:
            self.costs.append({"kind": kind, "step": self.step.steps_total, **cost})

    def after_step(self) -> None:
        """Runs after every step: a step checkpoint when one is due or a preemption comes."""
        tc, steps = self.cfg.train, self.step.steps_total
        scheduled = bool(tc.checkpoint_every_steps) and steps % tc.checkpoint_every_steps == 0
        preempted = False
        if tc.preemption_check_steps and steps % tc.preemption_check_steps == 0 \
                and not self._preempted:
            info = ray.train.get_preemption_info()  # a barrier: every rank asks alike
            if info is not None:
                self._preempted = preempted = True
                if self.rank == 0:
                    say(f"step {steps}: Ray Train says a node of the run is being preempted "
                        f"({info}); saving a step checkpoint now")
        if scheduled or preempted:
            epoch = self.step.epoch_index
            self.save({"epoch": epoch + 1, "step": steps, "checkpoint": "step"},
                      epoch_end=False, kind="step" if scheduled else "preemption")
