"""The per-worker training loop: one DDP rank, one continuous stream cut into epochs.

Each step is timed in three phases: waiting for the next batch (the data stall), host-to-device
copy, and compute (forward, backward, optimizer step including DDP's all-reduce). On GPU the
batch arrives through a DevicePrefetcher (its copy overlapped the previous step) and the phases
are closed by synchronizing the compute stream only, so the split is true without serialising the
next copy; on CPU wall time is the truth.
"""

from __future__ import annotations

import math
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import astuple, dataclass

import numpy as np
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
from ray.data.collate_fn import NumpyBatchCollateFn
from torch import nn

from cluster.echo.controller import ConsumeReporter, ControllerFactor
from cluster.observability.metrics import StepMetrics
from cluster.observability.monitor import PoolReporter
from cluster.training.config import TrainConfig
from cluster.training.epochs import ECHOED, FRESH, PROGRESS, EpochSlicer, FreshEpochs, batch_len
from cluster.training.model import build_model, normalize_on_device
from cluster.training.prefetch import DevicePrefetcher
from pipelines.badrecords import BadRecordLimit
from pipelines.build import Preprocessor
from pipelines.config import EchoConfig, PipelineConfig
from pipelines.echo import ECHO, echo_batches
from pipelines.readahead import ReadAhead
from pipelines.sources import IMAGE, LABEL, ShardPlan

__all__ = ["train_loop_per_worker", "lr_at", "Collate", "EpochTotals", "all_reduce"]

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CHECKPOINT_FILE = "state.pt"

# Ray Data hands out read-only numpy views of its blocks; torch warns on wrapping them. Nothing
# here writes into a batch in place (normalisation makes a new float tensor on the device).
warnings.filterwarnings("ignore", message="The given NumPy array is not writable")


class Collate(NumpyBatchCollateFn):
    """Ray Data numpy batch -> CPU tensors, zero-copy; uint8 stays uint8 until the device."""

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        out = {IMAGE: torch.from_numpy(batch[IMAGE]), LABEL: torch.from_numpy(batch[LABEL])}
        if ECHO in batch:  # the echo copy index stays on the host: it is only counted
            out[ECHO] = torch.from_numpy(batch[ECHO])
        return out


def _say(line: str) -> None:
    # Ray Train v2 reroutes print() on workers through its logger, which shows each line twice
    # in job logs; a plain write reaches the driver once.
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


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


def all_reduce(values: list[float], device: torch.device, op=dist.ReduceOp.SUM) -> list[float]:
    """Reduce `values` across ranks (a no-op for a single worker without a process group)."""
    t = torch.tensor(values, dtype=torch.float64, device=device)
    if dist.is_initialized():
        dist.all_reduce(t, op=op)
    return t.tolist()


def _sync(device: torch.device) -> None:
    """Wait for the compute stream only: a device-wide sync would also wait for the next batch's
    copy on the prefetcher's side stream and undo the overlap."""
    if device.type == "cuda":
        torch.cuda.current_stream(device).synchronize()


def _evaluate(model: nn.Module, batches, device, mean, std, totals: EpochTotals) -> None:
    """Validation on this rank's share of the validation units, here and now: no collectives.
    It runs the module DDP wraps, not the wrapper, whose forward broadcasts rank 0's buffers
    (BatchNorm statistics) at every call, a collective that ranks with different batch counts
    (a rank may have no validation units at all) would not all join: a hang. Every rank calls
    `_share_buffers` before it instead."""
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


def _share_buffers(model: nn.Module) -> None:
    """Rank 0's buffers (BatchNorm statistics) to every rank, as DDP's forward does, so that
    every rank validates with the same model. A collective: every rank calls it, validation
    units or not."""
    net = getattr(model, "module", model)
    if net is not model and dist.is_initialized():
        for buffer in net.buffers():
            dist.broadcast(buffer.data, src=0)


def _save(model: nn.Module, optimizer, epoch: int, step: int, directory: str) -> None:
    module = getattr(model, "module", model)
    torch.save({"model": module.state_dict(), "optimizer": optimizer.state_dict(),
                "epoch": epoch, "step": step}, os.path.join(directory, CHECKPOINT_FILE))


def _restore(model: nn.Module, optimizer) -> tuple[int, int]:
    """Load the latest checkpoint if Ray Train gives one (a restart after a failure, or a run
    resumed from its storage path). Returns the first epoch to run and the optimizer steps
    already taken. Checkpoints are taken at epoch ends, so a restart resumes at the start of
    the epoch after the checkpoint: the steps of the epoch that was cut short are done again."""
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return 0, 0
    with checkpoint.as_directory() as d:
        state = torch.load(os.path.join(d, CHECKPOINT_FILE), map_location="cpu",
                           weights_only=True)
    getattr(model, "module", model).load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    return int(state["epoch"]) + 1, int(state.get("step", 0))


@dataclass
class _Stepper:
    """Runs and times the steps of one rank; `consumed` drives the learning-rate schedule."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    loss_fn: nn.Module
    device: torch.device
    mean: torch.Tensor
    std: torch.Tensor
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

    def __post_init__(self) -> None:
        self.steps: list[tuple[float, float, float, float, int]] = []
        self.echoed_total = 0
        self.steps_total = 0
        self.stopped = False
        # perf_counter for durations, shifted to epoch seconds so that spans of different
        # processes (ranks, pool actors) line up on one timeline.
        self._to_wall = time.time() - time.perf_counter()

    def epoch(self, batches, end: float) -> EpochTotals:
        """Train on `batches` (already on the device) up to progress `end`; an echoed
        stream's batches carry their fresh / echoed / progress counts. Validates every
        `val_every` progress rows before the epoch's end, and returns early (`stopped`) when
        such a validation says so."""
        totals = EpochTotals()
        batches = iter(batches)
        due = self.consumed + self.val_every
        use_amp = self.tc.amp and self.device.type == "cuda"
        while True:
            t0 = time.perf_counter()
            batch = next(batches, None)
            t1 = time.perf_counter()
            if batch is None:
                return totals
            if self.first_batch_at is None:
                self.first_batch_at = t1
            x = normalize_on_device(batch[IMAGE], self.mean, self.std)
            if self.tc.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            y = batch[LABEL]
            _sync(self.device)
            t2 = time.perf_counter()
            lr = lr_at(self.consumed / self.total_rows, self.tc.peak_lr(),
                       self.tc.warmup_fraction)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
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
            fresh, echoed = batch.get(FRESH, n), batch.get(ECHOED, 0)
            self.consumed += batch.get(PROGRESS, n)
            totals.images += n
            totals.fresh += fresh
            totals.echoed += echoed
            totals.steps += 1
            totals.wait_s += t1 - t0
            totals.h2d_s += t2 - t1
            totals.compute_s += t3 - t2
            totals.step_s += t3 - t0
            if self.metrics is not None:
                self.metrics.observe(t1 - t0, t2 - t1, t3 - t2, fresh=fresh, echoed=echoed,
                                     now=t3)
            if self.consume is not None:
                self.consume.add(n, t3 - t1, t1 - t0)
            self.echoed_total += echoed
            self.steps_total += 1
            # Every rank has the same progress after every step, so they validate together.
            if self.val_every > 0 and self.validate is not None and self.consumed >= due:
                due = self.consumed + self.val_every
                if self.consumed + self.val_every / 2 <= end and self.validate():
                    self.stopped = True
                    return totals
            if self.keep_steps:
                w = self._to_wall
                self.steps.append((t0 + w, t1 + w, t2 + w, t3 + w, n))


HISTORY_KEYS = ("epoch", "at", "elapsed_s", "val_accuracy", "train_loss", "run_fresh",
                "run_echoed", "run_steps", "images_per_s", "data_wait_fraction", "echo_factor")
"""Per-epoch figures kept in `history` (seconds since the first batch, cumulative counts)."""


def _batch_factor(echo: EchoConfig, control, rank: int, device: torch.device):
    """For batch echoing: the factor every rank uses for the next fresh batch (None when the
    trainers do not echo). An automatic factor is read by rank 0 and all-reduced, so all ranks
    repeat each batch alike and take the same number of steps."""
    if not echo.enabled or echo.in_pool:
        return None
    if not echo.auto or control is None:
        return lambda: echo.factor
    source = ControllerFactor(control, echo.factor) if rank == 0 else None

    def agreed() -> float:
        return all_reduce([source.factor() if source is not None else 0.0], device)[0]

    return agreed


def _echo_batches(batches, factor, echo: EchoConfig, tc: TrainConfig, epoch: int):
    """Batch echoing of one epoch's device batches: whole batches repeated and shuffled in a
    buffer of `echo.shuffle_rows` rows' worth; seeded alike on every rank."""
    rng = np.random.default_rng([tc.seed, epoch, 3])
    for batch, fresh in echo_batches(batches, factor, rng, echo.shuffle_rows // tc.batch_size):
        n = batch_len(batch)
        yield {**batch, FRESH: n if fresh else 0, ECHOED: 0 if fresh else n,
               PROGRESS: n if fresh else 0}


def _check_bad_records(monitor, limit: BadRecordLimit, epoch: int, rank: int,
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


def train_loop_per_worker(config: dict) -> None:
    """Ray Train entry point. `config` holds: train (TrainConfig), rows_per_epoch (int),
    num_classes (int), image_size (int), val (PipelineConfig | None), val_plan (ShardPlan),
    run (str, the metrics' run label), monitor (RunMonitor handle or None), timeline (bool),
    echo (EchoConfig of the training stream), echo_control (EchoController handle or None),
    bad_limit (BadRecordLimit of the training stream, checked at every epoch's end),
    report_rates (bool: report step times to echo_control even without an automatic echo
    factor, for the pool scaler)."""
    tc: TrainConfig = config["train"]
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    rows = config["rows_per_epoch"] // world  # every rank the same share: equal step counts
    if rows < 2:
        raise ValueError(f"{config['rows_per_epoch']} training rows cannot feed {world} workers")

    torch.manual_seed(tc.seed)
    small = tc.small_input if tc.small_input is not None else config["image_size"] <= 64
    model = build_model(tc.model, config["num_classes"], small_input=small)
    if tc.channels_last:
        model = model.to(memory_format=torch.channels_last)
    model = ray.train.torch.prepare_model(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=tc.peak_lr(), momentum=tc.momentum,
                                nesterov=True, weight_decay=tc.weight_decay)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=tc.label_smoothing)
    mean = torch.tensor(MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(STD, device=device).view(1, 3, 1, 1)
    start_epoch, start_step = _restore(model, optimizer)
    if start_epoch and rank == 0:
        _say(f"resumed from the checkpoint of epoch {start_epoch} (step {start_step}): "
             f"training goes on at the start of epoch {start_epoch + 1}")

    shard = ray.train.get_dataset_shard("train")
    # Read ahead on our own thread: Ray Data's look-ahead holds each batch back until the
    # next prefetch_batches are in too (pipelines/readahead.py).
    stream = ReadAhead(shard.iter_torch_batches(
        batch_size=tc.batch_size, collate_fn=Collate(), prefetch_batches=0,
        local_shuffle_buffer_size=tc.shuffle_buffer_rows or None,
        local_shuffle_seed=tc.seed + rank if tc.shuffle_buffer_rows else None,
        pin_memory=device.type == "cuda",
    ), depth=tc.prefetch_batches)
    echo: EchoConfig = config.get("echo") or EchoConfig()
    control = config.get("echo_control")
    if echo.in_pool:
        # The pool echoes: rows carry their copy index, epochs are counted in fresh rows and
        # the ranks agree on every step.
        slicer = FreshEpochs(stream, config["rows_per_epoch"], world,
                             reduce=lambda values: all_reduce(values, device))
    else:
        slicer = EpochSlicer(stream, tc.batch_size)
    batch_factor = _batch_factor(echo, control, rank, device)
    val_cfg: PipelineConfig | None = config.get("val")
    val_plan: ShardPlan | None = config.get("val_plan")
    val_units = val_plan.units[rank::world] if val_cfg is not None else ()
    monitor = config.get("monitor")
    run_label = config.get("run", "")
    evaluator = (Preprocessor(val_cfg, val_units,
                              observer=PoolReporter(run_label, monitor, stage="val"),
                              rows_per_epoch=val_plan.num_rows)
                 if val_units else None)
    step = _Stepper(model, optimizer, loss_fn, device, mean, std, tc,
                    total_rows=rows * tc.epochs, metrics=StepMetrics(run_label, rank),
                    keep_steps=bool(config.get("timeline")) and monitor is not None,
                    consumed=rows * start_epoch,
                    consume=(ConsumeReporter(control, rank)
                             if (echo.auto or config.get("report_rates")) and control is not None
                             else None))
    step.steps_total = start_step
    if start_epoch and rank == 0 and monitor is not None:
        # The stream starts over with the restart: bad-record counts by epoch start over too.
        ray.get(monitor.reset_epochs.remote())
    run = EpochTotals()
    run_wall = 0.0
    history: list[dict] = []

    def validate_inside_epoch() -> bool:
        t = EpochTotals()
        _share_buffers(model)
        if evaluator is not None:
            evaluator.start_pass()
            _evaluate(model, evaluator({"seq": np.arange(len(val_units))}), device, mean, std, t)
        correct, count, echoed, steps = all_reduce(
            [t.val_correct, t.val_count, step.echoed_total, step.steps_total], device)
        acc = correct / count if count else None
        history.append({
            "epoch": round(step.consumed / rows, 3), "at": time.time(),
            "elapsed_s": time.perf_counter()
            - (step.first_batch_at or time.perf_counter()), "val_accuracy": acc,
            "train_loss": None, "run_fresh": step.consumed * world, "run_echoed": echoed,
            "run_steps": steps / world, "images_per_s": None, "data_wait_fraction": None,
            "echo_factor": None})
        if rank == 0 and acc is not None:
            _say(f"  epoch {step.consumed / rows:.2f}  val_acc {acc:.4f}")
        return acc is not None and tc.target_accuracy is not None and acc >= tc.target_accuracy

    if tc.val_every_rows and val_cfg is not None:  # ranks without val units join all-reduces
        step.val_every, step.validate = tc.val_every_rows / world, validate_inside_epoch

    for epoch in range(start_epoch, tc.epochs):
        epoch_start = time.perf_counter()
        if echo.in_pool:
            batches = DevicePrefetcher(slicer.epoch(), device)
        else:
            batches = DevicePrefetcher(slicer.epoch(rows), device)
            if batch_factor is not None:
                batches = _echo_batches(batches, batch_factor, echo, tc, epoch)
        totals = step.epoch(batches, end=rows * (epoch + 1))
        if echo.in_pool:
            got = slicer.fresh_seen - (slicer.epochs_started - 1) * slicer.fresh_per_epoch
            got_text = f"{got} of {config['rows_per_epoch']} fresh rows (all ranks)"
        else:
            got_text = f"{int(totals.images)} of {rows} rows per rank"
        if slicer.exhausted and epoch + 1 < tc.epochs:
            raise RuntimeError(
                f"rank {rank}: the data stream ended in epoch {epoch + 1} of {tc.epochs} after "
                f"{got_text}: far more records than planned were skipped as bad (see the "
                "bad-record counts in the log and metrics), or the dataset changed while "
                "training"
            )
        if slicer.exhausted and rank == 0:
            # Records skipped as bad shorten the stream; every epoch but the last borrows from
            # the next, so the shortfall lands here. Ray Train splits the stream equally, so
            # every rank is short by the same rows and takes the same steps. (An echoed stream
            # also leaves out the rows that do not split equally over the ranks.)
            _say(f"last epoch: {got_text}; the stream ended there (records skipped as bad, "
                 "or rows left over by the equal split across ranks)")
        train_wall = time.perf_counter() - epoch_start
        if monitor is not None and config.get("bad_limit") is not None:
            # the stream restarts with each attempt: its epochs count from this attempt's first
            _check_bad_records(monitor, config["bad_limit"], epoch - start_epoch, rank, device)
        if step.steps:
            monitor.add_steps.remote(rank, step.steps)
            step.steps = []
        if val_cfg is not None:
            _share_buffers(model)
        if evaluator is not None:  # ranks without val units still join the all-reduce
            evaluator.start_pass()
            blocks = evaluator({"seq": np.arange(len(val_units))})
            _evaluate(model, blocks, device, mean, std, totals)

        summed = EpochTotals(*all_reduce(list(astuple(totals)), device))
        (wall,) = all_reduce([train_wall], device, op=dist.ReduceOp.MAX)
        run = EpochTotals(*(a + b for a, b in zip(astuple(run), astuple(summed), strict=True)))
        run_wall += wall
        metrics = {
            "epoch": epoch + 1,
            "train_loss": summed.loss_sum / max(1.0, summed.images),
            "train_accuracy": summed.correct / max(1.0, summed.images),
            "val_accuracy": summed.val_correct / summed.val_count if summed.val_count else None,
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
            "run_steps": run.steps / world,
            # Seconds since the first batch was in hand (the pool's cold start excluded: it is
            # the same for every setting of a run), to the end of this epoch's validation.
            "elapsed_s": time.perf_counter() - (step.first_batch_at or epoch_start),
            "at": time.time(),
            "resumed_at_epoch": start_epoch,
        }
        history.append({k: metrics[k] for k in HISTORY_KEYS})
        reached = (tc.target_accuracy is not None and metrics["val_accuracy"] is not None
                   and metrics["val_accuracy"] >= tc.target_accuracy)
        last = epoch + 1 == tc.epochs or reached
        if last:  # the summary reads the last report; Ray logs every report in full
            metrics["history"] = history
        if rank == 0:
            val = metrics["val_accuracy"]
            _say(
                f"epoch {epoch + 1}/{tc.epochs}  loss {metrics['train_loss']:.4f}  "
                f"val_acc {'n/a' if val is None else f'{val:.4f}'}  "
                f"images/s {metrics['images_per_s']:.0f}  "
                f"waiting for data {100 * metrics['data_wait_fraction']:.1f}%  "
                f"({wall:.1f}s)"
                + (f"  fresh {summed.fresh:.0f} echoed {summed.echoed:.0f} "
                   f"(x{metrics['echo_factor']:.2f})" if echo.enabled else "")
            )
            if reached:
                _say(f"validation accuracy {metrics['val_accuracy']:.4f} reached the target "
                     f"{tc.target_accuracy}: stopping after epoch {epoch + 1}")
        # The last epoch always checkpoints: Ray Train v2 keeps only metrics reported with a
        # checkpoint in Result.metrics, which the run summary is built from.
        due = (epoch + 1) % tc.checkpoint_every == 0 or last
        all_steps = start_step + run.steps / world
        if rank == 0 and due:
            with tempfile.TemporaryDirectory() as d:
                _save(model, optimizer, epoch, int(all_steps), d)
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))
        else:
            ray.train.report(metrics)
        if reached:  # every rank sees the same all-reduced accuracy: all stop here
            break
    stream.close()
    if monitor is not None:
        # This rank's reports (steps, bad validation records) are all in before the driver
        # reads the bad-record counts.
        ray.get(monitor.flush.remote())
