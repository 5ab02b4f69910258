"""The per-worker training loop: one DDP rank, one continuous stream cut into epochs.

Reads top to bottom: build the model, restore, open the stream, then per epoch train (timed
steps, `stepper`), check the stream and the bad-record limit, validate, report and checkpoint.
Each piece is its own module; this file only wires them.
"""

from __future__ import annotations

import time

import ray
import ray.train
import ray.train.torch
import torch

from cluster.echo.controller import ConsumeReporter
from cluster.observability.metrics import StepMetrics
from cluster.training import checkpoint
from cluster.training.collectives import all_reduce
from cluster.training.epoch_report import EpochReporter, quiet_reports, say
from cluster.training.model import build_model
from cluster.training.progress import Progress, TrainedRows
from cluster.training.saver import Saver
from cluster.training.stepper import EpochTotals, Stepper
from cluster.training.stream import TrainStream
from cluster.training.trace import SampleTrace
from cluster.training.validation import Validator
from cluster.training.worker import WORKER_KEY, WorkerConfig
from pipelines.badrecords import BadRecordLimit
from pipelines.position import StreamPosition

__all__ = ["train_loop_per_worker", "check_bad_records"]


def _model_and_optimizer(cfg: WorkerConfig):
    tc = cfg.train
    torch.manual_seed(tc.seed)
    model = build_model(tc.model, cfg.num_classes, small_input=cfg.small_input)
    if tc.channels_last:
        model = model.to(memory_format=torch.channels_last)
    model = ray.train.torch.prepare_model(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=tc.peak_lr(), momentum=tc.momentum,
                                nesterov=True, weight_decay=tc.weight_decay)
    return model, optimizer


def check_bad_records(monitor, limit: BadRecordLimit, epoch: int, rank: int,
                      device: torch.device) -> None:
    """Stop every rank when the pool actors together skipped more bad records in `epoch` than
    the limit allows (each actor checks only its own share). Rank 0 asks the monitor and the
    ranks agree on its answer, so they all stop on the same step."""
    found = ray.get(monitor.epoch_bad.remote(epoch)) if rank == 0 else None
    (count,) = all_reduce([found[0] if found else 0], device)
    if count > limit.allowed:
        if found is not None:
            raise limit.error(epoch, *found)
        raise limit.error(epoch, int(count), {}, {}, [])


def _stepper(cfg: WorkerConfig, model, optimizer, device, rank: int, world: int, rows: int,
             progress: Progress, trained: TrainedRows) -> Stepper:
    tc, control = cfg.train, cfg.echo_control
    reports = (cfg.echo.auto or cfg.report_rates) and control is not None
    trace = (SampleTrace(tc.trace_samples, progress.attempt, rank)
             if tc.trace_samples is not None else None)
    return Stepper(model, optimizer, device, tc, total_rows=rows * tc.epochs,
                   metrics=StepMetrics(cfg.run, rank),
                   keep_steps=cfg.timeline and cfg.monitor is not None,
                   consumed=progress.consumed / world,
                   consume=ConsumeReporter(control, rank) if reports else None,
                   steps_total=progress.steps, trained=trained, trace=trace)


def _resume(cfg: WorkerConfig, rank: int, model, optimizer
            ) -> tuple[Progress, StreamPosition | None]:
    """Restore the latest checkpoint (if any) and tell the pool where this attempt's stream
    starts: rank 0 answers the pool actors' wait (cluster.training.resume)."""
    progress, position = checkpoint.restore(model, optimizer)
    if rank == 0 and cfg.ledger is not None:
        attempt = ray.get(cfg.ledger.current.remote())
        cfg.ledger.publish.remote(attempt, position.to_state() if position else None)
    if rank == 0 and progress.steps:
        left = (f"{progress.epoch_rows} rows into epoch {progress.epoch + 1}"
                if progress.epoch_rows else f"at the start of epoch {progress.epoch + 1}")
        say(f"resumed from the checkpoint of step {progress.steps} (resume "
            f"{progress.attempt}): training goes on {left}")
    return progress, position


def train_loop_per_worker(config: dict) -> None:
    """Ray Train entry point; `config[WORKER_KEY]` is the run's WorkerConfig."""
    cfg: WorkerConfig = config[WORKER_KEY]
    tc = cfg.train
    quiet_reports(tc.train_log_level)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    rows = cfg.rows_per_rank(world)
    model, optimizer = _model_and_optimizer(cfg)
    progress, position = _resume(cfg, rank, model, optimizer)
    stream = TrainStream(cfg, rank, world, device, progress)
    validator = Validator(cfg, rank, world)
    trained = TrainedRows(cfg.rows_per_epoch, position)
    step = _stepper(cfg, model, optimizer, device, rank, world, rows, progress, trained)
    reporter = EpochReporter(tc, rank, world, device, rows, cfg.echo.enabled, progress.epoch)
    reporter.history, reporter.attempt = list(progress.history), progress.attempt
    saver = Saver(cfg, rank, world, device, step, reporter, trained, progress, rows * world)
    step.after_step = saver.after_step

    def validate_inside_epoch() -> bool:
        t = EpochTotals()
        validator.run(model, device, step.mean, step.std, t)
        return reporter.validation_inside_epoch(step, t)

    if tc.val_every_rows and validator.enabled:  # ranks without val units join all-reduces
        step.val_every, step.validate = tc.val_every_rows / world, validate_inside_epoch

    for epoch in range(progress.epoch, tc.epochs):
        epoch_start = time.perf_counter()
        step.epoch_index, step.epoch_rows = epoch, 0.0
        saver.epoch_total = (progress.epoch_rows_total or rows * world
                             if epoch == progress.epoch and progress.epoch_rows
                             else rows * world)
        totals = step.epoch(stream.epoch(epoch), end=rows * (epoch + 1))
        stream.check_end(epoch, totals.images, say)
        train_wall = time.perf_counter() - epoch_start
        if cfg.monitor is not None and cfg.bad_limit is not None:
            check_bad_records(cfg.monitor, cfg.bad_limit, epoch, rank, device)
        if step.steps:
            cfg.monitor.add_steps.remote(rank, step.steps)
            step.steps = []
        validator.run(model, device, step.mean, step.std, totals)
        metrics, last = reporter.end_epoch(epoch, totals, train_wall, step, epoch_start)
        metrics["checkpoints"] = saver.costs
        # The last epoch always checkpoints: Ray Train v2 keeps only metrics reported with a
        # checkpoint in Result.metrics, which the run summary is built from.
        if (epoch + 1) % tc.checkpoint_every == 0 or last:
            saver.save(metrics, epoch_end=True, kind="epoch")
        else:
            checkpoint.report(metrics, rank=rank)
        if last:  # every rank sees the same all-reduced accuracy: all stop here
            break
    stream.close()
    if step.trace is not None:
        step.trace.close()
    if cfg.monitor is not None:
        # This rank's reports (steps, bad validation records) are all in before the driver
        # reads the bad-record counts.
        ray.get(cfg.monitor.flush.remote())
