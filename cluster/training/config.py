"""Configuration of training: frozen, keyword-only dataclasses."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["MODELS", "TrainConfig"]

MODELS = ("resnet18", "resnet34", "resnet50")
"""The torchvision ResNets `cluster.training.model.build_model` builds (here, so that command
lines can offer them without importing torch)."""


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Model, optimisation and Ray Train layout."""

    model: str = "resnet18"
    """torchvision ResNet: resnet18, resnet34 or resnet50."""
    num_classes: int | None = None
    """Output classes; None derives it from the data's label range."""
    small_input: bool | None = None
    """3x3 stride-1 stem without max-pool; None turns it on for images of 64 px or less."""
    epochs: int = 10
    """Passes over the training data."""
    batch_size: int = 64
    """Examples per step on each worker (the global batch is this times num_workers)."""
    lr: float | None = None
    """Peak learning rate; None = 0.1 x global batch / 256 (Goyal et al.)."""
    momentum: float = 0.9
    """SGD (Nesterov) momentum."""
    weight_decay: float = 5e-4
    """L2 penalty on every parameter."""
    warmup_fraction: float = 0.05
    """Share of all steps spent warming the learning rate up linearly, then cosine to zero."""
    label_smoothing: float = 0.0
    """Cross-entropy label smoothing."""
    num_workers: int = 2
    """Ray Train workers (DDP ranks)."""
    use_gpu: bool = False
    """One GPU per worker; False trains on CPU with the same code."""
    amp: bool = False
    """bf16 autocast for forward and loss on GPU (ignored on CPU)."""
    channels_last: bool = False
    """NHWC memory format for model and inputs (faster convolutions on recent GPUs)."""
    cpus_per_worker: float = 1.0
    """Plain Ray CPUs each training worker holds (the preprocessing pool uses its own resource)."""
    prefetch_batches: int = 2
    """Batches read ahead of each worker's current step, on a thread (0: read in the step)."""
    shuffle_buffer_rows: int = 0
    """Rows of Ray Data's local shuffle buffer on each worker (0 = off: the pipeline already
    shuffles units per epoch and rows within each unit)."""
    storage_path: str | None = None
    """Where Ray Train writes results and checkpoints: a local path or s3://bucket/prefix."""
    run_name: str | None = None
    """Name of the run (the folder under storage_path)."""
    checkpoint_every: int = 1
    """Save a checkpoint every this many epochs (and after the last)."""
    checkpoint_every_steps: int = 0
    """Also save a step checkpoint (model, optimizer, schedule and the exact stream position)
    every this many optimizer steps; a restart resumes from it mid-epoch (0: epoch ends
    only)."""
    preemption_check_steps: int = 20
    """Ask Ray Train every this many steps whether a node of the run is being preempted, and
    save a step checkpoint at once when one is (0: never ask). Each ask is a barrier across
    the ranks."""
    trace_samples: str | None = None
    """Directory each rank appends one JSON line per step to (attempt-A-rank-R.jsonl): the
    attempt, the global step, the epoch and the keys of the batch."""
    min_workers: int | None = None
    """Elastic training: Ray Train 2.60 may start (and restart) the worker group with as few as
    this many workers and up to `num_workers`, resizing it as resources come and go; every
    resize resumes from the latest checkpoint with the rows left split over the new ranks
    (None: a fixed group of `num_workers`)."""
    max_failures: int = 0
    """Worker-group restarts Ray Train attempts, each resuming from the latest checkpoint."""
    seed: int = 0
    """Seed of model initialisation."""
    target_accuracy: float | None = None
    """Stop at the first validation whose accuracy reaches this (None: run all epochs)."""
    train_log_level: str = "WARNING"
    """Level of Ray Train's own console log (its files under the Ray session keep every level);
    at INFO it logs every report with its whole metrics dict."""
    report_dir: str | None = None
    """Write the run report here when the run ends: report.html (one self-contained page:
    the verdict, input-bound, compute-bound or balanced, and what to do), run.json (what it
    is made from; `python jobs/report.py DIR` rebuilds the page) and the timeline."""
    val_every_rows: int = 0
    """Also validate inside epochs, every this many fresh training rows (all ranks together);
    0 validates at epoch ends only."""

    def __post_init__(self) -> None:
        if self.model not in MODELS:
            raise ValueError(f"model {self.model!r}: choose one of {', '.join(MODELS)}")
        for name in ("epochs", "batch_size", "num_workers", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("max_failures", "prefetch_batches", "shuffle_buffer_rows",
                     "val_every_rows", "checkpoint_every_steps", "preemption_check_steps"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.min_workers is not None and not 1 <= self.min_workers <= self.num_workers:
            raise ValueError(f"min_workers must be in [1, num_workers={self.num_workers}], "
                             f"got {self.min_workers}")
        if not 0.0 <= self.warmup_fraction < 1.0:
            raise ValueError(f"warmup_fraction must be in [0, 1), got {self.warmup_fraction}")
        if self.train_log_level not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
            raise ValueError(f"train_log_level {self.train_log_level!r}: choose DEBUG, INFO, "
                             "WARNING or ERROR")

    def peak_lr(self) -> float:
        return self.lr if self.lr is not None else 0.1 * self.batch_size * self.num_workers / 256
