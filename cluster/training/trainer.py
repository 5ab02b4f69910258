"""Builds the Ray Train `TorchTrainer` over feedline's stream, runs it with the run's helper
actors (monitor, echo controller, pool scaler) and summarises its result."""

from __future__ import annotations

import contextlib
import dataclasses
import signal
import threading
import time
from dataclasses import dataclass

import ray
import ray.train
from ray.train.torch import TorchTrainer

from cluster.echo.controller import ControllerFactor, start_echo_controller
from cluster.observability.monitor import PoolReporter, start_monitor
from cluster.observability.report.files import write_run_report
from cluster.observability.timeline import write_timeline
from cluster.pool.scaler import ScalerConfig, pool_actor_bounds, start_scaler
from cluster.training.config import TrainConfig
from cluster.training.errors import user_error
from cluster.training.loop import train_loop_per_worker
from cluster.training.resume import TrainDataset, start_ledger
from cluster.training.summary import RunSummary, summarize, write_bad_records
from cluster.training.worker import WORKER_KEY, WorkerConfig
from pipelines import PipelineConfig, ShardPlan, plan_source
from pipelines.badrecords import BadRecordLimit
from pipelines.storage import resolve

__all__ = ["RunSummary", "build_trainer", "data_config", "run_training", "run_label"]


def _num_classes(tc: TrainConfig, plan: ShardPlan) -> int:
    if tc.num_classes is not None:
        return tc.num_classes
    if plan.label_range is None:
        raise ValueError(
            f"cannot tell the number of classes of {plan.url} (no label statistics): pass "
            "--num-classes")
    low, high = plan.label_range
    if high < 0:
        raise ValueError(f"every label of {plan.url} is negative ({low}..{high}); labels are "
                         "classes 0..N-1")
    return int(high) + 1  # negative labels are skipped and counted as bad_label


def _with_classes(pipeline: PipelineConfig | None, num_classes: int) -> PipelineConfig | None:
    """The pipeline, told the model's number of classes: a label outside them is a bad record
    (the loss would fail on it)."""
    if pipeline is None or pipeline.source.num_classes == num_classes:
        return pipeline
    return dataclasses.replace(pipeline, source=dataclasses.replace(
        pipeline.source, num_classes=num_classes))


def _run_config(tc: TrainConfig, pipeline: PipelineConfig) -> ray.train.RunConfig:
    storage_path, storage_fs = tc.storage_path, None
    if storage_path and storage_path.startswith(("s3://", "s3a://")):
        # Same endpoint and credential chain as the data; the filesystem carries no keys.
        loc = resolve(storage_path, pipeline.source.storage)
        storage_path, storage_fs = loc.path, loc.fs
    return ray.train.RunConfig(
        name=tc.run_name,
        storage_path=storage_path,
        storage_filesystem=storage_fs,
        failure_config=ray.train.FailureConfig(max_failures=tc.max_failures),
        checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
        logging_config=ray.train.LoggingConfig(log_level=tc.train_log_level),
    )


def data_config(deterministic: bool) -> ray.train.DataConfig:
    """How Ray Train splits the stream over the ranks. Deterministic: blocks in stream order and
    dealt without regard to where they live, so each rank gets the same rows every run (Ray's
    splitter gives the next block to the rank with the fewest rows so far)."""
    if not deterministic:
        return ray.train.DataConfig(datasets_to_split=["train"])
    options = ray.train.DataConfig.default_ingest_options()
    options.preserve_order = True
    return ray.train.DataConfig(datasets_to_split=["train"], execution_options=options,
                                enable_shard_locality=False)


def run_label(tc: TrainConfig) -> str:
    """The `run` label of the metrics: the run's name, or one made from the clock."""
    return tc.run_name or time.strftime("feedline-%Y%m%d-%H%M%S")


def build_trainer(tc: TrainConfig, pipeline: PipelineConfig, val: PipelineConfig | None,
                  plan: ShardPlan, val_plan: ShardPlan | None, *, run: str | None = None,
                  monitor: ray.actor.ActorHandle | None = None, timeline: bool = False,
                  echo_control: ray.actor.ActorHandle | None = None,
                  report_rates: bool = False,
                  ledger: ray.actor.ActorHandle | None = None) -> TorchTrainer:
    """A TorchTrainer whose workers read `pipeline` (planned as `plan`) as one continuous
    multi-epoch stream and validate on `val` (planned as `val_plan`) after every epoch.
    Metrics carry the label `run`; `monitor` (a RunMonitor) counts bad records and, with
    `timeline`, every step and block; `echo_control` (an EchoController) sets the echo factor
    when `pipeline.echo.auto`, and gathers the pool's and the ranks' rates then or with
    `report_rates` (for the pool scaler); `ledger` (a StreamLedger, default: a new one) tells
    each attempt's stream where to start."""
    run = run or run_label(tc)
    if pipeline.deterministic and tc.min_workers is not None:
        raise ValueError("a deterministic stream is dealt to a fixed number of ranks: drop "
                         "--min-workers or --deterministic")
    if pipeline.epochs != tc.epochs or pipeline.split_ranks != tc.num_workers:
        pipeline = dataclasses.replace(pipeline, epochs=tc.epochs, split_ranks=tc.num_workers)
    num_classes = _num_classes(tc, plan)
    pipeline, val = _with_classes(pipeline, num_classes), _with_classes(val, num_classes)
    auto = echo_control if pipeline.echo.auto else None
    rates = echo_control if pipeline.echo.auto or report_rates else None
    source = (ControllerFactor(auto, pipeline.echo.factor)
              if auto is not None and pipeline.echo.in_pool else None)
    ledger = ledger or start_ledger()
    worker = WorkerConfig(
        train=tc, rows_per_epoch=plan.num_rows, num_classes=num_classes,
        image_size=pipeline.preprocess.image_size, echo=pipeline.echo, val=val,
        val_plan=val_plan, run=run, monitor=monitor, timeline=timeline,
        echo_control=echo_control, report_rates=report_rates,
        deterministic=pipeline.deterministic, ledger=ledger,
        bad_limit=BadRecordLimit(plan.url, plan.num_rows, pipeline.source.max_bad_fraction))
    resources = {"CPU": tc.cpus_per_worker}
    if tc.use_gpu:
        resources["GPU"] = 1
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={WORKER_KEY: worker},
        scaling_config=ray.train.ScalingConfig(
            num_workers=(tc.num_workers if tc.min_workers is None
                         else (tc.min_workers, tc.num_workers)),
            use_gpu=tc.use_gpu, resources_per_worker=resources),
        run_config=_run_config(tc, pipeline),
        # A callable: Ray Train builds the stream anew for every worker group it starts, each
        # resuming where the checkpoint that group restores left it.
        datasets={"train": TrainDataset(pipeline, plan, ledger,
                                        observer=PoolReporter(run, monitor, echo=rates),
                                        factor_source=source)},
        dataset_config=data_config(pipeline.deterministic),
    )


@contextlib.contextmanager
def _own_sigint():
    """Put back the caller's SIGINT handler after `fit`. Ray Train installs one (Ctrl-C aborts
    the run) that holds the Train controller's handle and never removes it: the controller,
    and after a failed run its dataset coordinator and pool actors with their resources, would
    live as long as the driver process."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGINT)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _fit(trainer: TorchTrainer) -> ray.train.Result:
    """`trainer.fit()`, with feedline's own error raised as it was when that is why it failed."""
    user = None
    try:
        with _own_sigint():
            result = trainer.fit()
    except Exception as e:
        user = user_error(e)
        if user is None:
            raise
    if user is not None:
        # Raised outside the except block, so it does not carry Ray's error as context: that
        # error's traceback holds the Train controller's handle, and with it the controller,
        # its dataset coordinator and the pool actors (their resources too).
        raise user
    if result.error is not None:
        raise user_error(result.error) or result.error
    if not result.metrics:
        raise RuntimeError("training finished without reporting metrics")
    return result


@dataclass
class _RunActors:
    """The run's helper actors: the monitor, the echo controller and (with a pool policy) the
    scaler; `gather` collects what they know for the summary, `stop` ends them."""

    monitor: ray.actor.ActorHandle
    echo_control: ray.actor.ActorHandle
    scaler: ray.actor.ActorHandle | None
    ledger: ray.actor.ActorHandle

    @classmethod
    def start(cls, run: str, pipeline: PipelineConfig, world: int, timeline: bool,
              scaling: ScalerConfig | None) -> _RunActors:
        monitor = start_monitor(timeline=timeline)
        control = start_echo_controller(run, pipeline.echo, world, external=scaling is not None)
        scaler = start_scaler(run, scaling, control) if scaling is not None else None
        return cls(monitor, control, scaler, start_ledger())

    def gather(self, timeline_dir: str | None) -> dict:
        decisions = []
        if self.scaler is not None:
            ray.get(self.scaler.stop.remote())
            decisions = ray.get(self.scaler.decisions.remote())
        bad_shards, bad_keys = ray.get(self.monitor.bad_detail.remote())
        if timeline_dir is not None:
            write_timeline(timeline_dir, *ray.get(self.monitor.spans.remote()))
        return {"bad": ray.get(self.monitor.bad_records.remote()),
                "skips": ray.get(self.monitor.bad_skips.remote()),
                "bad_list": ray.get(self.monitor.bad_list.remote()), "bad_shards": bad_shards,
                "bad_keys": bad_keys, "first_read": ray.get(self.monitor.first_read_at.remote()),
                "produced_rows": ray.get(self.monitor.produced.remote())[0],
                "echo_changes": ray.get(self.echo_control.history.remote()),
                "decisions": decisions, "timeline": timeline_dir}

    def report_data(self) -> tuple[list, list, dict]:
        """What the run report needs beyond the summary: step spans, pool blocks with their
        stage seconds, and the per-actor sums."""
        train_spans, _ = ray.get(self.monitor.spans.remote())
        work, stage_spans = ray.get(self.monitor.pool_stages.remote())
        return train_spans, stage_spans, work

    def stop(self) -> None:
        for actor in (self.scaler, self.monitor, self.echo_control, self.ledger):
            if actor is not None:
                ray.kill(actor)


def _with_pool_bounds(pipeline: PipelineConfig, scaling: ScalerConfig) -> PipelineConfig:
    """The pipeline with the actor pool bounds the pool policy's node bounds allow."""
    if scaling.policy.echo_max > 1 and not pipeline.echo.auto:
        raise ValueError(
            "the pool policy sets the echo factor (its fallback at max nodes, up to "
            f"echo_max={scaling.policy.echo_max:g}): give the pipeline EchoConfig(auto=True) "
            "(on the command line: no --echo-factor), or set the policy's echo_max to 1")
    low, high = pool_actor_bounds(scaling, pipeline.preprocess.resource_per_actor)
    return dataclasses.replace(pipeline, preprocess=dataclasses.replace(
        pipeline.preprocess, min_actors=low, max_actors=high))


def run_training(tc: TrainConfig, pipeline: PipelineConfig, val: PipelineConfig | None,
                 plan: ShardPlan | None = None, val_plan: ShardPlan | None = None,
                 started: float | None = None, timeline_dir: str | None = None,
                 scaling: ScalerConfig | None = None) -> RunSummary:
    """Train on `pipeline` (validating on `val` after each epoch) and summarise. Plans the data
    first unless given, so bad input fails before any Ray work; `started` is the clock reading
    the wall time counts from (default: now). With `timeline_dir`, writes timeline.json and
    timeline.png there. With `scaling`, a PoolScaler sizes the preprocessing pool while the
    run goes on (and sets the echo factor, which `pipeline.echo` must then leave automatic,
    unless the policy's echo_max is 1). With `tc.report_dir`, writes the run report there
    (run.json, report.html; and the timeline, unless `timeline_dir` puts it elsewhere)."""
    start = started if started is not None else time.perf_counter()
    if scaling is not None:
        pipeline = _with_pool_bounds(pipeline, scaling)
    plan = plan or plan_source(pipeline.source)
    if val is not None and val_plan is None:
        val_plan = plan_source(val.source)
    run = run_label(tc)
    report_dir = tc.report_dir
    if report_dir is not None and timeline_dir is None:
        timeline_dir = report_dir
    actors = _RunActors.start(run, pipeline, tc.num_workers, timeline_dir is not None, scaling)
    try:
        trainer = build_trainer(tc, pipeline, val, plan, val_plan, run=run,
                                monitor=actors.monitor, timeline=timeline_dir is not None,
                                echo_control=actors.echo_control,
                                report_rates=scaling is not None, ledger=actors.ledger)
        result = _fit(trainer)
        wall = time.perf_counter() - start
        gathered = actors.gather(timeline_dir)
        report_data = actors.report_data() if report_dir is not None else None
    finally:
        actors.stop()
    bad_list = gathered.pop("bad_list")
    summary = summarize(result.metrics, wall=wall, plan=plan, val_plan=val_plan, tc=tc,
                        pipeline=pipeline, run=run, checkpoint=result.checkpoint, **gathered)
    if bad_list:
        summary = dataclasses.replace(summary, bad_records_file=write_bad_records(
            bad_list, result))
    if report_data is not None:
        summary = dataclasses.replace(summary, report=write_run_report(
            report_dir, summary, tc, pipeline, *report_data, timeline_dir=timeline_dir))
    return summary
