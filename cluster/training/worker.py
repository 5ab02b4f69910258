"""What one training worker (DDP rank) is given: a frozen, typed config the driver builds once."""

from __future__ import annotations

from dataclasses import dataclass

import ray

from cluster.training.config import TrainConfig
from pipelines.badrecords import BadRecordLimit
from pipelines.config import EchoConfig, PipelineConfig
from pipelines.sources import ShardPlan

__all__ = ["WorkerConfig", "WORKER_KEY"]

WORKER_KEY = "worker"
"""The key of the WorkerConfig in Ray Train's `train_loop_config` dict."""


@dataclass(frozen=True, kw_only=True)
class WorkerConfig:
    """Everything `train_loop_per_worker` needs besides Ray Train's own context."""

    train: TrainConfig
    """Model, optimisation and layout."""
    rows_per_epoch: int
    """Rows of one epoch of the training stream (all ranks together), from the plan."""
    num_classes: int
    """Outputs of the model."""
    image_size: int
    """Side of the images the stream carries."""
    echo: EchoConfig
    """Echo of the training stream (batch mode is done by the trainers)."""
    val: PipelineConfig | None = None
    """Validation stream, run in the trainer processes; None: no validation."""
    val_plan: ShardPlan | None = None
    """The plan of `val`."""
    run: str = ""
    """The `run` label of the metrics."""
    monitor: ray.actor.ActorHandle | None = None
    """The run's RunMonitor (bad records, steps for the timeline), or None."""
    timeline: bool = False
    """Keep every step's spans for the timeline."""
    echo_control: ray.actor.ActorHandle | None = None
    """The run's EchoController, or None."""
    report_rates: bool = False
    """Report step times to `echo_control` even without an automatic echo factor (for the
    pool scaler)."""
    deterministic: bool = False
    """The stream hands out blocks in stream order and deals them alike every run."""
    ledger: ray.actor.ActorHandle | None = None
    """The run's StreamLedger: rank 0 tells it where each attempt's stream starts."""
    bad_limit: BadRecordLimit | None = None
    """The training stream's bad-record limit, checked over all pool actors at every epoch's
    end."""

    def rows_per_rank(self, world: int) -> int:
        """Every rank's share of an epoch: the same for all, so they take equal step counts."""
        rows = self.rows_per_epoch // world
        if rows < 2:
            raise ValueError(f"{self.rows_per_epoch} training rows cannot feed {world} workers")
        return rows

    @property
    def padded(self) -> bool:
        """Whether the stream's blocks are padded to one size (pipelines.build: deterministic
        streams the trainers do not echo in the pool)."""
        return self.deterministic and not self.echo.in_pool

    @property
    def small_input(self) -> bool:
        """Whether the model gets the small-input stem."""
        tc = self.train
        return tc.small_input if tc.small_input is not None else self.image_size <= 64
