"""Bad records: skipped, counted by kind and by shard, and the limit above which a run stops.

A record is bad when its image does not decode (zero bytes, not an image, truncated, too large,
undecodable), its label is missing or outside the declared classes (`bad_label`), or the shard
holding it cannot be read (`unreadable_shard`: every row of the unread part counts). Each is
skipped and counted; a few keys are kept as a sample for the log and the run summary. While the
bad records of an epoch stay within `max_bad_fraction` of its rows the run goes on; past that it
stops with a `BadDataError` that names the shard with the most of them and the counts.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from pipelines.errors import FeedlineError

__all__ = ["BadDataError", "BadRecord", "BadRecords", "BadRecordLimit", "label_problems",
           "SAMPLE_KEYS"]

log = logging.getLogger(__name__)
SAMPLE_KEYS = 5
"""Keys of bad records kept (per process) for the log and the summary."""


class BadDataError(FeedlineError, RuntimeError):
    """More bad records than `--max-bad-fraction` allows: the run stops."""


@dataclass(frozen=True)
class BadRecordLimit:
    """How many bad records one epoch of a source may have."""

    url: str
    rows_per_epoch: int
    max_fraction: float

    @property
    def allowed(self) -> int:
        return math.floor(self.max_fraction * self.rows_per_epoch + 1e-9)

    def error(self, epoch: int, count: int, by_kind: dict[str, int],
              by_shard: dict[str, int], sample: list[str]) -> BadDataError:
        shard, worst = max(by_shard.items(), key=lambda kv: kv[1]) if by_shard else ("?", 0)
        kinds = ", ".join(f"{k} {v}" for k, v in sorted(by_kind.items()))
        return BadDataError(
            f"{count} bad records in epoch {epoch + 1} of {self.url} ({kinds}) exceed "
            f"--max-bad-fraction {self.max_fraction:g} ({self.allowed} of "
            f"{self.rows_per_epoch} rows allowed); most in shard {shard} ({worst}); sample keys: "
            f"{', '.join(sample) or 'none'}. Fix or remove those records, or raise "
            "--max-bad-fraction")

    def check(self, epoch: int, count: int, by_kind: dict[str, int], by_shard: dict[str, int],
              sample: list[str]) -> None:
        if count > self.allowed:
            raise self.error(epoch, count, by_kind, by_shard, sample)


@dataclass(frozen=True)
class BadRecord:
    """One bad record as a user would fix it: its key and shard, what is wrong and why. A shard
    that cannot be read is one record (its key is the shard) of `count` rows."""

    key: str
    shard: str
    kind: str
    why: str
    epoch: int
    row: int = -1
    """Its row id in the plan (pipelines.position), -1 if unknown; a shard's first row."""
    count: int = 1


@dataclass
class BadRecords:
    """The ledger of one process: good records, bad ones by kind, by shard and by epoch."""

    ok: int = 0
    bad: Counter = field(default_factory=Counter)
    """Bad records by kind."""
    sample_keys: list[str] = field(default_factory=list)
    """A few keys of bad records (a whole unreadable shard: its URL)."""
    by_shard: Counter = field(default_factory=Counter)
    """Bad records by shard (Parquet file, or image file for image folders)."""
    by_epoch: Counter = field(default_factory=Counter)
    kinds_by_epoch: dict[int, Counter] = field(default_factory=dict)
    shards_by_epoch: dict[int, Counter] = field(default_factory=dict)
    records: list[BadRecord] = field(default_factory=list)
    """Every bad record met since the last `take_records()`."""

    def add_bad(self, kind: str, key: str, shard: str = "", epoch: int = 0, count: int = 1,
                why: str = "", row: int = -1) -> None:
        self.bad[kind] += count
        self.by_shard[shard or key] += count
        self.by_epoch[epoch] += count
        self.kinds_by_epoch.setdefault(epoch, Counter())[kind] += count
        self.shards_by_epoch.setdefault(epoch, Counter())[shard or key] += count
        if len(self.sample_keys) < SAMPLE_KEYS:
            self.sample_keys.append(key)
        self.records.append(BadRecord(key, shard, kind, why, epoch, row, count))
        log.warning("skipping %s bad record%s %s (%s)%s", count, "s" * (count != 1), key, kind,
                    f": {why}" if why else "")

    def take_records(self) -> tuple[BadRecord, ...]:
        """The bad records met since the last call (each reported once)."""
        taken, self.records = tuple(self.records), []
        return taken

    def forget_epochs(self) -> None:
        """Start the per-epoch counts over (a validation pass reads its units again as epoch 0);
        the totals by kind and shard are kept."""
        self.by_epoch.clear()
        self.kinds_by_epoch.clear()
        self.shards_by_epoch.clear()

    def check(self, epoch: int, limit: BadRecordLimit) -> None:
        """Raise BadDataError when this process alone has seen more bad records in `epoch`
        than the limit allows."""
        limit.check(epoch, self.by_epoch[epoch], dict(self.kinds_by_epoch.get(epoch, {})),
                    dict(self.shards_by_epoch.get(epoch, {})), self.sample_keys)


def label_problems(labels: np.ndarray, num_classes: int | None) -> np.ndarray:
    """Mask of labels that are not a class: missing (read as -1), negative, or >= num_classes
    when the number of classes is declared."""
    bad = labels < 0
    if num_classes is not None:
        bad |= labels >= num_classes
    return bad
