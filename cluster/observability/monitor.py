"""One run's sink for what its processes measure: bad-record counts and timeline spans.

`RunMonitor` is a zero-CPU Ray actor the driver starts per run. Pool actors reach it through a
`PoolReporter` (the `pipelines.observe.BlockObserver` they are given), trainer ranks through
the handle in their config. Everything it holds is small (counters, and spans only when a
timeline was asked for, capped), and calls to it are fire-and-forget: nothing on the data path
waits for it.
"""

from __future__ import annotations

import os
import socket
from collections import Counter

import ray

from cluster.observability.metrics import PoolMetrics
from pipelines.badrecords import SAMPLE_KEYS
from pipelines.observe import BlockSpan

__all__ = ["RunMonitor", "PoolReporter", "start_monitor", "MAX_SPANS"]

MAX_SPANS = 200_000
"""Spans kept per kind (train steps, pool blocks); a timeline of a long run shows its start."""


@ray.remote(num_cpus=0)
class RunMonitor:
    def __init__(self, timeline: bool):
        self.timeline = timeline
        self.bad: Counter = Counter()
        self.bad_shards: Counter = Counter()
        self.bad_keys: list[str] = []
        # training stream: bad records per epoch, by kind and by shard, for the run-wide limit
        self.epoch_kinds: dict[int, Counter] = {}
        self.epoch_shards: dict[int, Counter] = {}
        self.first_read: float | None = None
        self.pool_spans: list[tuple[str, float, float, int, int]] = []
        self.train_spans: list[tuple[int, float, float, float, float, int]] = []

    def add_block(self, actor: str, span: BlockSpan, stage: str = "train") -> None:
        self.bad.update(span.bad)
        if span.bad:
            self.bad_shards.update(span.bad_shards)
            self.bad_keys.extend(span.bad_keys[:max(0, SAMPLE_KEYS - len(self.bad_keys))])
            if stage == "train":
                self.epoch_kinds.setdefault(span.epoch, Counter()).update(span.bad)
                self.epoch_shards.setdefault(span.epoch, Counter()).update(span.bad_shards)
        if stage == "train" and (self.first_read is None or span.start < self.first_read):
            self.first_read = span.start
        # Validation blocks are made inside the trainers, not by the pool: only their bad
        # records count here. (Pool throughput and utilisation are in the Prometheus metrics.)
        if stage == "train" and self.timeline and len(self.pool_spans) < MAX_SPANS:
            self.pool_spans.append((actor, span.start, span.end, span.images, span.epoch))

    def add_steps(self, rank: int, steps: list[tuple[float, float, float, float, int]]) -> None:
        """Steps of one rank: (start, got_batch, on_device, end, images), epoch seconds."""
        room = MAX_SPANS - len(self.train_spans)
        self.train_spans.extend((rank, *s) for s in steps[:max(0, room)])

    def flush(self) -> None:
        """A caller that waits for this has had every earlier report of its own processed
        (Ray runs one caller's calls on an actor in order)."""

    def first_read_at(self) -> float | None:
        """When the pool started its first training block (epoch seconds): the moment the
        training data started flowing."""
        return self.first_read

    def bad_records(self) -> dict[str, int]:
        """Records skipped as bad so far, by kind (training and validation)."""
        return dict(self.bad)

    def bad_detail(self) -> tuple[dict[str, int], list[str]]:
        """The shards with the most bad records (up to 10, with counts) and sample keys."""
        return dict(self.bad_shards.most_common(10)), list(self.bad_keys)

    def reset_epochs(self) -> None:
        """Forget the per-epoch counts (the training stream started over: a restart)."""
        self.epoch_kinds, self.epoch_shards = {}, {}

    def epoch_bad(self, epoch: int) -> tuple[int, dict[str, int], dict[str, int], list[str]]:
        """Bad records of the training stream's `epoch` over all pool actors: the count, by
        kind, by shard, and sample keys."""
        kinds = self.epoch_kinds.get(epoch, Counter())
        return (sum(kinds.values()), dict(kinds), dict(self.epoch_shards.get(epoch, {})),
                list(self.bad_keys))

    def spans(self) -> tuple[list, list]:
        return self.train_spans, self.pool_spans


def start_monitor(timeline: bool) -> ray.actor.ActorHandle:
    return RunMonitor.remote(timeline)


class PoolReporter:
    """The observer pool actors are given: feeds the Prometheus pool metrics of this process
    and tells the run's monitor of every block (and the echo controller, `echo`, when the
    factor is automatic). `stage="val"` (validation inside the trainers) reports bad records
    only: its work is not the pool's."""

    def __init__(self, run: str, monitor: ray.actor.ActorHandle | None, stage: str = "train",
                 echo: ray.actor.ActorHandle | None = None):
        self.run, self.monitor, self.stage, self.echo = run, monitor, stage, echo
        self._metrics: PoolMetrics | None = None
        self._actor = ""

    def __getstate__(self) -> dict:
        return {"run": self.run, "monitor": self.monitor, "stage": self.stage, "echo": self.echo}

    def __setstate__(self, state: dict) -> None:
        self.__init__(**state)

    def on_block(self, span: BlockSpan) -> None:
        if self._metrics is None:  # first block in this process
            self._actor = f"{socket.gethostname()}:{os.getpid()}"
            self._metrics = PoolMetrics(self.run, self._actor)
        if self.stage == "train":
            self._metrics.observe(span.images, span.end - span.start, span.bad)
        else:
            self._metrics.observe(0, 0.0, span.bad)
        if self.monitor is not None:
            self.monitor.add_block.remote(self._actor, span, self.stage)
        if self.echo is not None and self.stage == "train":
            # The pool's side of the automatic echo factor: fresh examples per busy second.
            self.echo.add_pool.remote(self._actor, span.fresh, span.end - span.start)
