"""`build_dataset(config) -> ray.data.Dataset`: the training stream, wired stage by stage.

Shape of the stream, chosen for speed (see README, "Why one stream"):

    unit_positions(epochs*units)                    stream positions, a few per block, put up front
      -> map_batches(Preprocessor, ActorPoolStrategy(min, max), resources={pool: 1}, num_cpus=0)
           per position: read its unit from object storage -> decode -> augment ->
           uint8 (N, 3, S, S) blocks, each sent on as soon as it is made
           (with data echoing in the pool: decode -> echo -> augment -> shuffle buffer, or
           decode -> augment -> echo -> shuffle buffer; see pipelines/echo.py)

All epochs are ONE Ray Data execution, so the actor pool starts once per run (not once per epoch)
and keeps streaming across epoch boundaries while trainers validate. The trainer cuts the stream
into epochs by the exact row count the plan knows up front.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

import numpy as np
import ray
from PIL import Image

from pipelines.augment import apply_batch, build_transform, decode_side
from pipelines.badrecords import BadRecordLimit, BadRecords, label_problems
from pipelines.config import PipelineConfig
from pipelines.decode import decode_many
from pipelines.echo import FactorSource, FixedFactor, ShuffleBuffer, copy_counts, repeat_rows
from pipelines.index import positions_of, unit_positions
from pipelines.observe import BlockObserver, BlockSpan
from pipelines.sources import (
    IMAGE,
    KEY,
    LABEL,
    ShardPlan,
    WorkUnit,
    is_unreadable,
    plan_source,
    read_unit,
)
from pipelines.storage import explain, resolve, retry_transient

__all__ = ["build_dataset", "Preprocessor", "unit_order", "MAX_INDEX_BLOCKS"]

log = logging.getLogger(__name__)
MAX_INDEX_BLOCKS = 512
"""Most blocks the stream of positions is cut into (each is put before the first batch)."""


def unit_order(num_units: int, epoch: int, seed: int, shuffle: bool) -> np.ndarray:
    """The order in which epoch `epoch` visits the units: a seeded permutation per epoch."""
    order = np.arange(num_units)
    if shuffle:
        np.random.default_rng([seed, epoch]).shuffle(order)
    return order


class Preprocessor:
    """Ray Data actor on the dedicated CPU pool: read a unit, decode, augment, emit uint8 blocks.

    Holds the filesystem (built from this process's own AWS environment, so no credential is
    ever pickled) and the transform for its whole life. Also usable in-process (the trainers
    run validation through it): call it with ``{"seq": array of unit indices}``, after
    `start_pass()` for each new pass. `rows_per_epoch` (default: the rows of `units`) sizes the
    bad-record limit: give the whole source's rows when `units` is one rank's share.
    """

    def __init__(self, config: PipelineConfig, units: tuple[WorkUnit, ...],
                 observer: BlockObserver | None = None,
                 factor_source: FactorSource | None = None, rows_per_epoch: int | None = None):
        self.config, self.units = config, units
        p = config.preprocess
        self.loc = resolve(config.source.url, config.source.storage)
        self.fs = self.loc.fs
        self.transform = build_transform(p.recipe, p.image_size, config.train)
        self.min_side = decode_side(p.recipe, p.image_size, config.train)
        self.stats = BadRecords()
        self.limit = BadRecordLimit(
            config.source.url,
            rows_per_epoch if rows_per_epoch is not None else sum(u.num_rows for u in units),
            config.source.max_bad_fraction)
        self.footers: dict = {}  # Parquet footers by path: each shard's is read once
        self.observer = observer
        echo = config.echo
        self.echo = echo if config.train and echo.in_pool else None
        self.factor_source = factor_source or FixedFactor(echo.factor)
        self._order_epoch, self._order = -1, np.arange(0)

    def _unit(self, seq: int) -> tuple[int, int, WorkUnit]:
        """Epoch, unit index and unit of stream position `seq` (units arrive epoch by epoch, so
        one epoch's order is kept at a time)."""
        n = len(self.units)
        epoch, pos = divmod(seq, n)
        if epoch != self._order_epoch:
            self._order_epoch = epoch
            self._order = unit_order(n, epoch, self.config.seed, self.config.shuffle)
        index = int(self._order[pos])
        return epoch, index, self.units[index]

    def start_pass(self) -> None:
        """Called before each in-process pass over the same units (validation): its bad records
        are held against the limit on their own, not added to the previous passes'."""
        self.stats.forget_epochs()

    def _shard(self, unit: WorkUnit) -> str:
        """The shard of a Parquet unit as the user knows it (image-folder rows: "", each file
        is its own shard and named by its key)."""
        if not unit.path:
            return ""
        return f"s3://{unit.path}" if self.fs.type_name == "s3" else unit.path

    def _read(self, unit: WorkUnit, epoch: int) -> dict[str, np.ndarray] | None:
        """The unit's rows; retried while the store is down (up to the storage deadline, then
        a StorageError stops the run); None, with its rows counted as bad, when the shard
        cannot be read."""
        shard = self._shard(unit) or f"{len(unit.files)} image files"
        try:
            return retry_transient(lambda: read_unit(unit, self.fs, footers=self.footers),
                                   shard, self.loc, self.config.source.storage.outage_deadline_s)
        except Exception as e:
            if not is_unreadable(e):
                raise explain(e, self.loc) if isinstance(e, OSError) else e from None
            self.footers.pop(unit.path, None)
            self.stats.add_bad("unreadable_shard", shard, shard, epoch, count=unit.num_rows,
                               why=str(e).strip().splitlines()[0] if str(e).strip() else "")
            return None

    def _augment(self, images: list[Image.Image], labels: np.ndarray, keys: np.ndarray,
                 aug_rng: np.random.Generator, echo_rng: np.random.Generator
                 ) -> dict[str, np.ndarray]:
        """The block of decoded `images`: augmented, and echoed when this stream echoes."""
        size = self.config.preprocess.image_size
        if self.echo is None:
            return {IMAGE: apply_batch(self.transform, images, size, aug_rng), LABEL: labels,
                    KEY: keys}
        counts = copy_counts(len(images), self.factor_source.factor(), echo_rng)
        if self.echo.mode == "example":  # echo before augmentation: each copy its own crop
            images = [a for a, c in zip(images, counts, strict=True) for _ in range(c)]
            return {IMAGE: apply_batch(self.transform, images, size, aug_rng),
                    **repeat_rows({LABEL: labels, KEY: keys}, counts)}
        return repeat_rows({IMAGE: apply_batch(self.transform, images, size, aug_rng),
                            LABEL: labels, KEY: keys}, counts)

    def __call__(self, batch: dict[str, np.ndarray]) -> Iterator[dict[str, np.ndarray]]:
        cfg, p = self.config, self.config.preprocess
        seqs = positions_of(batch)
        # Echoed copies leave through a shuffle buffer. Ray Data cannot tell an actor that the
        # stream ended, so the buffer is flushed at the end of every call: nothing is held back.
        buffer = (ShuffleBuffer(self.echo.shuffle_rows, p.output_rows,
                                np.random.default_rng([cfg.seed, int(seqs[0]), 1]))
                  if self.echo is not None and len(seqs) else None)
        report = _Reporter(self.observer, self.stats)
        epoch = 0
        num_classes = cfg.source.num_classes
        for seq in seqs:
            epoch, index, unit = self._unit(int(seq))
            rows = self._read(unit, epoch)
            if rows is None:
                self.stats.check(epoch, self.limit)
                continue
            shard = self._shard(unit)
            n = len(rows[LABEL])
            order = np.arange(n)
            if cfg.shuffle:
                np.random.default_rng([cfg.seed, epoch, index]).shuffle(order)
            # Seeded per unit: the same seed, epoch and unit give the same augmentation
            # whichever actor processes it.
            aug_rng = np.random.default_rng([cfg.seed, epoch, index, 3])
            echo_rng = np.random.default_rng([cfg.seed, epoch, index, 2])
            for start in range(0, n, p.output_rows):
                take = order[start : start + p.output_rows]
                bad_label = label_problems(rows[LABEL][take], num_classes)
                for i in np.flatnonzero(bad_label):
                    self.stats.add_bad("bad_label", str(rows[KEY][take[i]]), shard, epoch,
                                       why=f"label {rows[LABEL][take[i]]} is not a class"
                                       + (f" of 0..{num_classes - 1}" if num_classes else ""))
                take = take[~bad_label]
                keys = rows[KEY][take]
                images, kept = decode_many(rows[IMAGE][take], keys, self.stats, self.min_side,
                                           shard, epoch)
                report.fresh += len(kept)
                if not kept:
                    continue
                block = self._augment(images, rows[LABEL][take][kept], keys[kept], aug_rng,
                                      echo_rng)
                for out in (buffer.add(block) if buffer is not None else (block,)):
                    report.block(len(out[LABEL]), epoch)
                    yield out
                    report.restart()  # the block was taken: the next one's work starts now
            self.stats.check(epoch, self.limit)
        for out in (buffer.flush() if buffer is not None else ()):
            report.block(len(out[LABEL]), epoch)
            yield out
            report.restart()
        report.rest(epoch)


def _delta(now: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {k: v - before.get(k, 0) for k, v in now.items() if v != before.get(k, 0)}


class _Reporter:
    """Hands the observer one BlockSpan per block out: the work since the previous block was
    taken, the fresh examples read and the bad records skipped in it."""

    def __init__(self, observer: BlockObserver | None, stats: BadRecords):
        self.observer, self.stats = observer, stats
        self.fresh = 0
        self._mark()
        self._started = time.time()

    def _mark(self) -> None:
        self._bad, self._shards = dict(self.stats.bad), dict(self.stats.by_shard)
        self._keys = len(self.stats.sample_keys)

    def block(self, images: int, epoch: int) -> None:
        if self.observer is not None:
            bad = _delta(self.stats.bad, self._bad)
            shards = _delta(self.stats.by_shard, self._shards) if bad else {}
            keys = tuple(self.stats.sample_keys[self._keys:])
            self.observer.on_block(BlockSpan(self._started, time.time(), images, epoch, bad,
                                             fresh=self.fresh, bad_shards=shards,
                                             bad_keys=keys))
        self.fresh = 0
        self._mark()

    def restart(self) -> None:
        self._started = time.time()

    def rest(self, epoch: int) -> None:
        """Report what no block carried (records all skipped as bad at the end of a call)."""
        if self.fresh or self.stats.bad != self._bad:
            self.block(0, epoch)


def build_dataset(config: PipelineConfig, *, plan: ShardPlan | None = None,
                  observer: BlockObserver | None = None,
                  factor_source: FactorSource | None = None) -> ray.data.Dataset:
    """The preprocessed stream of `config.epochs` passes over `config.source`.

    Rows are ``image`` (uint8, 3 x S x S), ``label`` (int64) and ``key`` (str). Pass `plan`
    when the caller already planned the source (it needs the row count anyway), `observer`
    to hear of every block a pool actor makes, and `factor_source` to change the echo factor
    of `config.echo` while the stream runs (both are pickled into each actor). With echo in the
    pool, rows also carry ``echo`` (uint8 copy index, 0 = fresh).
    """
    plan = plan or plan_source(config.source)
    p = config.preprocess
    n = config.epochs * len(plan.units)
    # Group positions so the stream has at most MAX_INDEX_BLOCKS blocks (each is put into the
    # object store before the first batch), but keep each group well under one epoch's share
    # per actor: actors work on different groups at once, and a group that spans an epoch
    # boundary mixes two epochs' units.
    per_block = max(1, min(-(-n // MAX_INDEX_BLOCKS), len(plan.units) // (2 * p.max_actors)))
    seqs = unit_positions(n, per_block)
    ds = seqs.map_batches(
        Preprocessor,
        fn_constructor_kwargs={"config": config, "units": plan.units, "observer": observer,
                               "factor_source": factor_source},
        batch_size=1,
        compute=ray.data.ActorPoolStrategy(min_size=p.min_actors, max_size=p.max_actors),
        num_cpus=0,
        resources={p.pool_resource: p.resource_per_actor},
    )
    # Without a bound, a cluster that never gets a pool node would wait for the actors forever.
    ds.context.wait_for_min_actors_s = p.actor_start_timeout_s
    if config.deterministic:
        ds.context.execution_options.preserve_order = True
    # An actor call covers one range of `per_block` units and yields a block per `output_rows`
    # images. Ray Data merges yields until a block passes target_max_block_size (128 MiB): set
    # it just under one full block so each block leaves as soon as it is made (and is never
    # sliced: slicing starts at 1.5x the target).
    ds.context.target_max_block_size = int(0.9 * p.output_rows * 3 * p.image_size ** 2)
    return ds
