"""What each rank reports at the end of an epoch (and after a validation inside one): the figures
summed over the ranks, the run's history, the one log line, and whether training stops.

Reports stay small: Ray Train logs every `ray.train.report` and keeps only metrics reported with a
checkpoint in `Result.metrics`, so the per-epoch history rides on the last report alone.
"""

from __future__ import annotations

import importlib.util
import logging
import sys
import time
from dataclasses import astuple

import torch
import torch.distributed as dist

from cluster.training.collectives import all_reduce
from cluster.training.config import TrainConfig
from cluster.training.stepper import EpochTotals, Stepper

__all__ = ["EpochReporter", "HISTORY_KEYS", "say", "quiet_reports"]

HISTORY_KEYS = ("epoch", "at", "elapsed_s", "val_accuracy", "train_loss", "run_fresh",
                "run_echoed", "run_steps", "images_per_s", "data_wait_fraction", "echo_factor")
"""Per-epoch figures kept in `history` (seconds since the first batch, cumulative counts)."""


def quiet_reports(level: str) -> None:
    """Give Ray Train's per-report log line the run's `--train-log-level`. Ray Train 2.60 logs
    every `ray.train.report` ("Reporting training result N: TrainingReport(...)", the whole
    metrics dict) at INFO on a logger named after its source file (`getLogger(__file__)` in
    ray/train/v2/_internal/execution/context.py), which its LoggingConfig filter, keyed on
    `ray.train.*` logger names, never sees."""
    spec = importlib.util.find_spec("ray.train.v2._internal.execution.context")
    if spec is not None and spec.origin:
        logging.getLogger(spec.origin).setLevel(level)


def say(line: str) -> None:
    """A line in the job log. Ray Train v2 reroutes print() on workers through its logger,
    which shows each line twice in job logs; a plain write reaches the driver once."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


class EpochReporter:
    """The run's sums and history on one rank; every rank calls it alike (it all-reduces)."""

    def __init__(self, tc: TrainConfig, rank: int, world: int, device: torch.device,
                 rows: int, echo: bool, resumed_at_epoch: int):
        self.tc, self.rank, self.world, self.device = tc, rank, world, device
        self.rows, self.echo, self.resumed_at_epoch = rows, echo, resumed_at_epoch
        self.attempt = 0
        self.run = EpochTotals()
        self.run_wall = 0.0
        self.history: list[dict] = []

    def validation_inside_epoch(self, step: Stepper, t: EpochTotals) -> bool:
        """Record a validation made inside an epoch; True when it reached the target."""
        correct, count, echoed, steps = all_reduce(
            [t.val_correct, t.val_count, step.echoed_total, step.steps_total], self.device)
        acc = correct / count if count else None
        self.history.append({
            "epoch": round(step.consumed / self.rows, 3), "at": time.time(),
            "elapsed_s": time.perf_counter() - (step.first_batch_at or time.perf_counter()),
            "val_accuracy": acc, "train_loss": None, "run_fresh": step.consumed * self.world,
            "run_echoed": echoed, "run_steps": steps / self.world, "images_per_s": None,
            "data_wait_fraction": None, "echo_factor": None})
        if self.rank == 0 and acc is not None:
            say(f"  epoch {step.consumed / self.rows:.2f}  val_acc {acc:.4f}")
        return self._reached(acc)

    def _reached(self, acc: float | None) -> bool:
        target = self.tc.target_accuracy
        return acc is not None and target is not None and acc >= target

    def end_epoch(self, epoch: int, totals: EpochTotals, train_wall: float, step: Stepper,
                  epoch_start: float) -> tuple[dict, bool]:
        """The epoch's metrics (with the history when it is the last) and whether it is the
        last one (all epochs done, or the accuracy target reached). Logs the epoch's line."""
        summed = EpochTotals(*all_reduce(list(astuple(totals)), self.device))
        (wall,) = all_reduce([train_wall], self.device, op=dist.ReduceOp.MAX)
        self.run = EpochTotals(*(a + b for a, b in zip(astuple(self.run), astuple(summed),
                                                       strict=True)))
        self.run_wall += wall
        metrics = self._metrics(epoch, summed, wall, step, epoch_start)
        self.history.append({k: metrics[k] for k in HISTORY_KEYS})
        reached = self._reached(metrics["val_accuracy"])
        last = epoch + 1 == self.tc.epochs or reached
        if last:  # the summary reads the last report; Ray logs every report in full
            metrics["history"] = self.history
        if self.rank == 0:
            self._say(epoch, metrics, summed, wall, reached)
        return metrics, last

    def _metrics(self, epoch: int, summed: EpochTotals, wall: float, step: Stepper,
                 epoch_start: float) -> dict:
        run, run_wall = self.run, self.run_wall
        val = summed.val_correct / summed.val_count if summed.val_count else None
        return {
            "epoch": epoch + 1,
            "train_loss": summed.loss_sum / max(1.0, summed.images),
            "train_accuracy": summed.correct / max(1.0, summed.images),
            "val_accuracy": val,
            "val_loss": summed.val_loss_sum / summed.val_count if summed.val_count else None,
            "images_per_s": summed.images / wall,
            "data_wait_fraction": summed.wait_s / max(1e-9, summed.step_s),
            "epoch_s": wall,
            "run_images": run.images,
            "run_train_s": run_wall,
            "run_images_per_s": run.images / run_wall,
            "run_data_wait_fraction": run.wait_s / max(1e-9, run.step_s),
            "run_h2d_fraction": run.h2d_s / max(1e-9, run.step_s),
            "run_compute_fraction": run.compute_s / max(1e-9, run.step_s),
            "run_wait_s": run.wait_s,
            "run_h2d_s": run.h2d_s,
            "run_compute_s": run.compute_s,
            "fresh": summed.fresh,
            "echoed": summed.echoed,
            "echo_factor": (summed.fresh + summed.echoed) / max(1.0, summed.fresh),
            "run_fresh": run.fresh,
            "run_echoed": run.echoed,
            "run_steps": run.steps / self.world,
            # Seconds since the first batch was in hand (the pool's cold start excluded: it is
            # the same for every setting of a run), to the end of this epoch's validation.
            "elapsed_s": time.perf_counter() - (step.first_batch_at or epoch_start),
            "at": time.time(),
            "resumed_at_epoch": self.resumed_at_epoch,
            "attempt": self.attempt,
        }

    def _say(self, epoch: int, m: dict, summed: EpochTotals, wall: float,
             reached: bool) -> None:
        val = m["val_accuracy"]
        say(f"epoch {epoch + 1}/{self.tc.epochs}  loss {m['train_loss']:.4f}  "
            f"val_acc {'n/a' if val is None else f'{val:.4f}'}  "
            f"images/s {m['images_per_s']:.0f}  "
            f"waiting for data {100 * m['data_wait_fraction']:.1f}%  ({wall:.1f}s)"
            + (f"  fresh {summed.fresh:.0f} echoed {summed.echoed:.0f} "
               f"(x{m['echo_factor']:.2f})" if self.echo else ""))
        if reached:
            say(f"validation accuracy {val:.4f} reached the target {self.tc.target_accuracy}: "
                f"stopping after epoch {epoch + 1}")
