"""Builds the Ray Train `TorchTrainer` over feedline's stream and summarises its result."""

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
from cluster.observability.timeline import write_timeline
from cluster.pool.scaler import ScalerConfig, pool_actor_bounds, start_scaler
from cluster.training.config import TrainConfig
from cluster.training.loop import train_loop_per_worker
from pipelines import PipelineConfig, ShardPlan, build_dataset, plan_source
from pipelines.badrecords import BadDataError, BadRecordLimit
from pipelines.storage import StorageError, resolve

__all__ = ["RunSummary", "build_trainer", "data_config", "run_training", "run_label"]


@dataclass(frozen=True)
class RunSummary:
    """What a user wants to know after a run; also the `--summary-json` object."""

    val_accuracy: float | None
    images_per_s: float
    """Training images per second over all epochs and ranks (validation time excluded)."""
    data_wait_fraction: float
    """Share of step time the trainers spent blocked waiting for the next batch."""
    epochs: int
    wall_s: float
    """Seconds from planning the data to the end of training, start-up included."""
    train_rows: int
    val_rows: int
    num_workers: int
    use_gpu: bool
    h2d_fraction: float
    compute_fraction: float
    final_train_loss: float
    checkpoint: str | None
    run: str
    """The `run` label of this run's metrics."""
    data_wait_s: float
    """Seconds trainers spent blocked waiting for batches, summed over ranks."""
    h2d_s: float
    compute_s: float
    fresh_examples: int
    """Examples trained on for the first time."""
    echoed_examples: int
    """Reuses of examples by data echoing (0 without echoing)."""
    bad_examples: int
    """Records skipped as bad (training and validation, every epoch), by kind in
    `bad_by_kind`: zero_bytes, not_an_image, truncated, too_large, undecodable, bad_label,
    unreadable_shard (rows of a shard part that could not be read)."""
    bad_by_kind: dict
    timeline: str | None = None
    """Directory holding timeline.json and timeline.png, when asked for."""
    echo_mode: str | None = None
    """The echo mode, None when the run did not echo."""
    echo_auto: bool = False
    """Whether the factor was chosen automatically."""
    echo_factor: float = 1.0
    """Copies per fresh example over the run: (fresh + echoed) / fresh."""
    echo_changes: list = dataclasses.field(default_factory=list)
    """(seconds since start, factor, reason) of the automatic factor, at start and each change."""
    history: list = dataclasses.field(default_factory=list)
    """Per validation: epoch (fractional inside an epoch), at (epoch seconds), elapsed_s (since
    the first batch was in hand), val_accuracy, train_loss,
    run_fresh, run_echoed, run_steps (cumulative), images_per_s, data_wait_fraction,
    echo_factor."""
    reached_target: bool | None = None
    """Whether validation accuracy reached --target-accuracy (None when none was set)."""
    first_read_at: float | None = None
    """Epoch seconds when the pool started its first training block; with each history
    entry's `at`, the wall-clock from the first data read to that validation."""
    resumed_at_epoch: int = 0
    """Epochs the last attempt found done in its checkpoint (0: no restart). After a worker
    failure the run restarts from the latest checkpoint, at the start of the next epoch."""
    bad_shards: dict = dataclasses.field(default_factory=dict)
    """Shards with the most bad records (up to 10) and their counts."""
    bad_sample_keys: list = dataclasses.field(default_factory=list)
    """Keys of a few bad records (a shard's URL for an unreadable shard)."""
    unreadable_shards: list = dataclasses.field(default_factory=list)
    """Shards skipped at planning because they cannot be read (rows unknown), with why."""
    pool_decisions: list = dataclasses.field(default_factory=list)
    """With a pool policy: every decision (t_s, action, target_nodes, ready, pending, stall,
    echo, reason)."""

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


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
                  report_rates: bool = False) -> TorchTrainer:
    """A TorchTrainer whose workers read `pipeline` (planned as `plan`) as one continuous
    multi-epoch stream and validate on `val` (planned as `val_plan`) after every epoch.
    Metrics carry the label `run`; `monitor` (a RunMonitor) counts bad records and, with
    `timeline`, every step and block; `echo_control` (an EchoController) sets the echo factor
    when `pipeline.echo.auto`, and gathers the pool's and the ranks' rates then or with
    `report_rates` (for the pool scaler)."""
    run = run or run_label(tc)
    if pipeline.epochs != tc.epochs:
        pipeline = dataclasses.replace(pipeline, epochs=tc.epochs)
    num_classes = _num_classes(tc, plan)
    pipeline, val = _with_classes(pipeline, num_classes), _with_classes(val, num_classes)
    auto = echo_control if pipeline.echo.auto else None
    rates = echo_control if pipeline.echo.auto or report_rates else None
    source = (ControllerFactor(auto, pipeline.echo.factor)
              if auto is not None and pipeline.echo.in_pool else None)
    resources = {"CPU": tc.cpus_per_worker}
    if tc.use_gpu:
        resources["GPU"] = 1
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "train": tc,
            "rows_per_epoch": plan.num_rows,
            "num_classes": num_classes,
            "image_size": pipeline.preprocess.image_size,
            "val": val,
            "val_plan": val_plan,
            "run": run,
            "monitor": monitor,
            "timeline": timeline,
            "echo": pipeline.echo,
            "echo_control": echo_control,
            "report_rates": report_rates,
            "bad_limit": BadRecordLimit(plan.url, plan.num_rows,
                                        pipeline.source.max_bad_fraction),
        },
        scaling_config=ray.train.ScalingConfig(
            num_workers=tc.num_workers, use_gpu=tc.use_gpu, resources_per_worker=resources),
        run_config=_run_config(tc, pipeline),
        datasets={"train": build_dataset(pipeline, plan=plan,
                                         observer=PoolReporter(run, monitor, echo=rates),
                                         factor_source=source)},
        dataset_config=data_config(pipeline.deterministic),
    )


_USER_ERRORS = ((BadDataError, "BadDataError: "), (StorageError, "StorageError: "))


def _user_error(error: BaseException) -> Exception | None:
    """The BadDataError or StorageError a trainer or a pool actor stopped the run with, if
    that is why it failed. Ray wraps it (WorkerGroupError -> the rank's error -> Ray Data's
    -> the actor task's) and shortens the outer messages, so the whole chain is searched."""
    for err in _causes(error):
        # Ray's task errors subclass the user's exception type, with the traceback as text.
        for kind, marker in _USER_ERRORS:
            for line in str(err).splitlines():
                if marker in line:
                    return kind(line.split(marker, 1)[1].strip())
    return None


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


def _causes(error: BaseException):
    seen, stack = set(), [error]
    while stack:
        err = stack.pop(0)
        if err is None or id(err) in seen:
            continue
        seen.add(id(err))
        yield err
        stack.extend([err.__cause__, err.__context__, getattr(err, "cause", None),
                      getattr(err, "controller_failure", None),
                      *getattr(err, "worker_failures", {}).values()])


def run_training(tc: TrainConfig, pipeline: PipelineConfig, val: PipelineConfig | None,
                 plan: ShardPlan | None = None, val_plan: ShardPlan | None = None,
                 started: float | None = None, timeline_dir: str | None = None,
                 scaling: ScalerConfig | None = None) -> RunSummary:
    """Train on `pipeline` (validating on `val` after each epoch) and summarise. Plans the data
    first unless given, so bad input fails before any Ray work; `started` is the clock reading
    the wall time counts from (default: now). With `timeline_dir`, writes timeline.json and
    timeline.png there. With `scaling`, a PoolScaler sizes the preprocessing pool while the
    run goes on (and sets the echo factor, which `pipeline.echo` must then leave automatic,
    unless the policy's echo_max is 1)."""
    start = started if started is not None else time.perf_counter()
    if scaling is not None:
        if scaling.policy.echo_max > 1 and not pipeline.echo.auto:
            raise ValueError(
                "the pool policy sets the echo factor (its fallback at max nodes, up to "
                f"echo_max={scaling.policy.echo_max:g}): give the pipeline EchoConfig(auto=True) "
                "(on the command line: no --echo-factor), or set the policy's echo_max to 1")
        low, high = pool_actor_bounds(scaling, pipeline.preprocess.resource_per_actor)
        pipeline = dataclasses.replace(pipeline, preprocess=dataclasses.replace(
            pipeline.preprocess, min_actors=low, max_actors=high))
    plan = plan or plan_source(pipeline.source)
    if val is not None and val_plan is None:
        val_plan = plan_source(val.source)
    run = run_label(tc)
    monitor = start_monitor(timeline=timeline_dir is not None)
    echo_control = start_echo_controller(run, pipeline.echo, tc.num_workers,
                                         external=scaling is not None)
    scaler = start_scaler(run, scaling, echo_control) if scaling is not None else None
    decisions: list[dict] = []
    try:
        trainer = build_trainer(tc, pipeline, val, plan, val_plan, run=run, monitor=monitor,
                                timeline=timeline_dir is not None, echo_control=echo_control,
                                report_rates=scaling is not None)
        user = None
        try:
            with _own_sigint():
                result = trainer.fit()
        except Exception as e:
            user = _user_error(e)
            if user is None:
                raise
        if user is not None:
            # Raised outside the except block, so it does not carry Ray's error as context:
            # that error's traceback holds the Train controller's handle, and with it the
            # controller, its dataset coordinator and the pool actors (their resources too).
            raise user
        if scaler is not None:
            ray.get(scaler.stop.remote())
            decisions = ray.get(scaler.decisions.remote())
        wall = time.perf_counter() - start
        bad = ray.get(monitor.bad_records.remote())
        bad_shards, bad_keys = ray.get(monitor.bad_detail.remote())
        first_read = ray.get(monitor.first_read_at.remote())
        echo_changes = ray.get(echo_control.history.remote())
        if timeline_dir is not None and result.error is None:
            write_timeline(timeline_dir, *ray.get(monitor.spans.remote()))
    finally:
        if scaler is not None:
            ray.kill(scaler)
        ray.kill(monitor)
        ray.kill(echo_control)
    if result.error is not None:
        raise _user_error(result.error) or result.error
    m = result.metrics
    if not m:
        raise RuntimeError("training finished without reporting metrics")
    return RunSummary(
        val_accuracy=m["val_accuracy"],
        images_per_s=m["run_images_per_s"],
        data_wait_fraction=m["run_data_wait_fraction"],
        epochs=m["epoch"],
        wall_s=wall,
        train_rows=plan.num_rows,
        val_rows=val_plan.num_rows if val_plan else 0,
        num_workers=tc.num_workers,
        use_gpu=tc.use_gpu,
        h2d_fraction=m["run_h2d_fraction"],
        compute_fraction=m["run_compute_fraction"],
        final_train_loss=m["train_loss"],
        checkpoint=result.checkpoint.path if result.checkpoint else None,
        run=run,
        data_wait_s=m["run_wait_s"],
        h2d_s=m["run_h2d_s"],
        compute_s=m["run_compute_s"],
        fresh_examples=int(m["run_fresh"]),
        echoed_examples=int(m["run_echoed"]),
        bad_examples=sum(bad.values()),
        bad_by_kind=bad,
        timeline=timeline_dir,
        echo_mode=pipeline.echo.mode if pipeline.echo.enabled else None,
        echo_auto=pipeline.echo.auto,
        echo_factor=(m["run_fresh"] + m["run_echoed"]) / max(1.0, m["run_fresh"]),
        echo_changes=[list(c) for c in echo_changes],
        history=m.get("history", []),
        first_read_at=first_read,
        pool_decisions=decisions,
        resumed_at_epoch=int(m.get("resumed_at_epoch", 0)),
        bad_shards=bad_shards,
        bad_sample_keys=bad_keys,
        unreadable_shards=[list(u) for p in (plan, val_plan) if p for u in p.unreadable],
        reached_target=(None if tc.target_accuracy is None else
                        m["val_accuracy"] is not None and m["val_accuracy"] >= tc.target_accuracy),
    )
