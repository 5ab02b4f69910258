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
from pipelines.badrecords import SAMPLE_KEYS, BadRecord
from pipelines.observe import STAGES, BlockSpan

__all__ = ["RunMonitor", "PoolReporter", "start_monitor", "MAX_SPANS"]

MAX_SPANS = 200_000
"""Spans kept per kind (train steps, pool blocks); a timeline of a long run shows its start."""


@ray.remote(num_cpus=0)
class RunMonitor:
    def __init__(self, timeline: bool):
        self.timeline = timeline
        self.skips: Counter = Counter()
        """Skip events by kind: every time a bad record is met (every epoch, every pass)."""
        self.distinct: dict[tuple[str, str], BadRecord] = {}
        """Each bad record once, by (key, shard): what a user fixes."""
        # training stream: its distinct bad records per epoch (the run-wide limit) and their
        # row ids (done rows for a resumed stream: no rank will ever train them)
        self.epoch_records: dict[int, dict[tuple[str, str], BadRecord]] = {}
        self.epoch_rows: dict[int, set[int]] = {}
        self.first_read: float | None = None
        self.pool_spans: list[tuple[str, float, float, int, int]] = []
        self.train_spans: list[tuple[int, float, float, float, float, int]] = []
        self.pool_work: dict[str, dict[str, float]] = {}
        """Per pool actor: sums over its training blocks (images, fresh, busy, bytes, seconds
        by stage) and its first start and last end: kept always, a few numbers per actor."""
        self.pool_stage_spans: list[tuple] = []
        """With a timeline: (actor, start, end, images, fresh, *seconds by STAGES) per block."""
        self.train_rows = 0
        """Rows the pool made for training (placeholders included)."""
        self.train_blocks = 0

    def add_block(self, actor: str, span: BlockSpan, stage: str = "train") -> None:
        self.skips.update(span.bad)
        for record in span.bad_records:
            self.distinct.setdefault((record.key, record.shard), record)
            if stage == "train":
                per_epoch = self.epoch_records.setdefault(record.epoch, {})
                per_epoch.setdefault((record.key, record.shard), record)
                if record.row >= 0:
                    self.epoch_rows.setdefault(record.epoch, set()).update(
                        range(record.row, record.row + record.count))
        if stage == "train":
            self.train_rows += span.images
            self.train_blocks += span.images > 0
            if self.first_read is None or span.start < self.first_read:
                self.first_read = span.start
        # Validation blocks are made inside the trainers, not by the pool: only their bad
        # records count here.
        if stage != "train":
            return
        self._add_work(actor, span)
        if self.timeline and len(self.pool_spans) < MAX_SPANS:
            self.pool_spans.append((actor, span.start, span.end, span.images, span.epoch))
            stages = span.stages
            self.pool_stage_spans.append((actor, span.start, span.end, span.images, span.fresh,
                                          *(stages[k] for k in STAGES)))

    def _add_work(self, actor: str, span: BlockSpan) -> None:
        work = self.pool_work.setdefault(actor, {"first": span.start, "last": span.end})
        work["first"], work["last"] = min(work["first"], span.start), max(work["last"], span.end)
        for key, value in (("images", span.images), ("fresh", span.fresh),
                           ("busy", span.end - span.start), ("bytes", span.read_bytes),
                           *span.stages.items()):
            work[key] = work.get(key, 0) + value

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
        """Distinct bad records (by key and shard; an unreadable shard counts its rows), by
        kind, training and validation."""
        return dict(_by_kind(self.distinct.values()))

    def bad_skips(self) -> dict[str, int]:
        """Skip events by kind: each bad record every time it was met."""
        return dict(self.skips)

    def bad_list(self) -> list[dict]:
        """Every distinct bad record: key, shard, kind, why (and rows, for a shard)."""
        return [{"key": r.key, "shard": r.shard, "kind": r.kind, "why": r.why,
                 **({"rows": r.count} if r.count != 1 else {})}
                for r in self.distinct.values()]

    def bad_detail(self) -> tuple[dict[str, int], list[str]]:
        """The shards with the most bad records (up to 10, with counts) and sample keys."""
        shards: Counter = Counter()
        for r in self.distinct.values():
            shards[r.shard or r.key] += r.count
        return dict(shards.most_common(10)), [r.key for r in list(self.distinct.values())
                                              [:SAMPLE_KEYS]]

    def bad_rows(self, lo: int = 0) -> dict[int, list[int]]:
        """Row ids of the training stream's bad records, by epoch, from epoch `lo` on."""
        return {e: sorted(rows) for e, rows in self.epoch_rows.items() if e >= lo}

    def epoch_bad(self, epoch: int) -> tuple[int, dict[str, int], dict[str, int], list[str]]:
        """Distinct bad records of the training stream's `epoch` over all pool actors (however
        often a restart met them): the count, by kind, by shard, and sample keys."""
        records = list(self.epoch_records.get(epoch, {}).values())
        shards: Counter = Counter()
        for r in records:
            shards[r.shard or r.key] += r.count
        return (sum(r.count for r in records), dict(_by_kind(records)), dict(shards),
                [r.key for r in records[:SAMPLE_KEYS]])

    def produced(self) -> tuple[int, int]:
        """Rows and blocks the pool made for training so far."""
        return self.train_rows, self.train_blocks

    def spans(self) -> tuple[list, list]:
        return self.train_spans, self.pool_spans

    def pool_stages(self) -> tuple[dict[str, dict[str, float]], list[tuple]]:
        """Per-actor sums of the pool's training work and (with a timeline) its blocks with
        their seconds by stage (`pipelines.observe.STAGES`)."""
        return self.pool_work, self.pool_stage_spans


def _by_kind(records) -> Counter:
    kinds: Counter = Counter()
    for r in records:
        kinds[r.kind] += r.count
    return kinds


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
            self._metrics.observe(span.images, span.end - span.start, span.bad, span.stages)
        else:
            self._metrics.observe(0, 0.0, span.bad)
        if self.monitor is not None:
            self.monitor.add_block.remote(self._actor, span, self.stage)
        if self.echo is not None and self.stage == "train":
            # The pool's side of the automatic echo factor: fresh examples per busy second.
            self.echo.add_pool.remote(self._actor, span.fresh, span.end - span.start)
