"""What a run tells its user when it ends: `RunSummary` (also the `--summary-json` object), built
from Ray Train's result and what the run's actors gathered."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

__all__ = ["RunSummary", "summarize", "write_bad_records"]


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
    bad_records: int
    """Distinct records skipped as bad (by key and shard, training and validation; an
    unreadable shard counts its rows): zero_bytes, not_an_image, truncated, too_large,
    undecodable, bad_label, unreadable_shard, by kind in `bad_by_kind`. Each is written once to
    `bad_records_file`."""
    bad_skips: int
    """Skip events: every time a bad record was met (each epoch, each validation pass)."""
    bad_by_kind: dict
    """Distinct bad records by kind."""
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
    """The epoch the last attempt resumed in (0: no restart, or a restart in the first
    epoch); a restart goes on from the latest checkpoint, mid-epoch after a step checkpoint."""
    bad_shards: dict = dataclasses.field(default_factory=dict)
    """Shards with the most bad records (up to 10) and their counts."""
    bad_sample_keys: list = dataclasses.field(default_factory=list)
    """Keys of a few bad records (a shard's URL for an unreadable shard)."""
    unreadable_shards: list = dataclasses.field(default_factory=list)
    """Shards skipped at planning because they cannot be read (rows unknown), with why."""
    bad_records_file: str | None = None
    """bad_records.jsonl in the run's storage folder: one line per distinct bad record (key,
    shard, kind, why)."""
    checkpoints: list = dataclasses.field(default_factory=list)
    """Every checkpoint of the last attempt but its final one: kind (step, epoch,
    preemption), step, checkpoint_s (save + upload, rank 0) and checkpoint_bytes."""
    produced_rows: int = 0
    """Rows the pool made for training in the last attempt (a resumed stream makes only the
    rows not done yet)."""
    attempt: int = 0
    """Resumes from a checkpoint before the last attempt (0: it ran in one go)."""
    pool_decisions: list = dataclasses.field(default_factory=list)
    """With a pool policy: every decision (t_s, action, target_nodes, ready, pending, stall,
    echo, reason)."""
    report: str | None = None
    """The run report (report.html), when asked for (--report DIR)."""

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def summarize(m: dict, *, wall: float, plan, val_plan, tc, pipeline, run: str, checkpoint,
              bad: dict, skips: dict, bad_shards: dict, bad_keys: list,
              first_read: float | None, produced_rows: int, echo_changes: list,
              decisions: list, timeline: str | None) -> RunSummary:
    """The summary from the last report's metrics `m` and the run actors' figures."""
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
        checkpoint=checkpoint.path if checkpoint else None,
        run=run,
        data_wait_s=m["run_wait_s"],
        h2d_s=m["run_h2d_s"],
        compute_s=m["run_compute_s"],
        fresh_examples=int(m["run_fresh"]),
        echoed_examples=int(m["run_echoed"]),
        bad_records=sum(bad.values()),
        bad_skips=sum(skips.values()),
        bad_by_kind=bad,
        timeline=timeline,
        echo_mode=pipeline.echo.mode if pipeline.echo.enabled else None,
        echo_auto=pipeline.echo.auto,
        echo_factor=(m["run_fresh"] + m["run_echoed"]) / max(1.0, m["run_fresh"]),
        echo_changes=[list(c) for c in echo_changes],
        history=m.get("history", []),
        first_read_at=first_read,
        pool_decisions=decisions,
        checkpoints=list(m.get("checkpoints", [])),
        produced_rows=produced_rows,
        attempt=int(m.get("attempt", 0)),
        resumed_at_epoch=int(m.get("resumed_at_epoch", 0)),
        bad_shards=bad_shards,
        bad_sample_keys=bad_keys,
        unreadable_shards=[list(u) for p in (plan, val_plan) if p for u in p.unreadable],
        reached_target=(None if tc.target_accuracy is None else
                        m["val_accuracy"] is not None and m["val_accuracy"] >= tc.target_accuracy),
    )


def write_bad_records(records: list[dict], result) -> str:
    """Every distinct bad record, one JSON line each, to bad_records.jsonl in the run's storage
    folder (Ray Train's `Result.path`, local or s3); returns its location."""
    path = f"{result.path}/bad_records.jsonl"
    with result.filesystem.open_output_stream(path) as f:
        f.write("".join(json.dumps(r) + "\n" for r in records).encode())
    return f"s3://{path}" if result.filesystem.type_name == "s3" else path
