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

from pipelines.augment import build_transform, decode_side
from pipelines.badrecords import BadRecordLimit, BadRecords, label_problems
from pipelines.config import PipelineConfig
from pipelines.decode import bad_kind, decode_many
from pipelines.echo import FactorSource, FixedFactor, ShuffleBuffer, copy_counts, repeat_rows
from pipelines.fused import FusedRecipe, augment_batch
from pipelines.index import positions_of, unit_positions
from pipelines.observe import BlockObserver, BlockSpan
from pipelines.position import (
    BLOCK,
    EPOCH,
    ROW,
    PositionSource,
    StreamPosition,
    row_offsets,
)
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
_UNKNOWN = object()
MAX_INDEX_BLOCKS = 512
"""Most blocks the stream of positions is cut into (each is put before the first batch)."""


def unit_order(num_units: int, epoch: int, seed: int, shuffle: bool) -> np.ndarray:
    """The order in which epoch `epoch` visits the units: a seeded permutation per epoch."""
    order = np.arange(num_units)
    if shuffle:
        np.random.default_rng([seed, epoch]).shuffle(order)
    return order


def _kept(block: dict[str, np.ndarray], keep: np.ndarray) -> dict[str, np.ndarray]:
    """The rows of `block` that `keep` marks; the block itself when it marks all of them (the
    usual case: no copy of the images, 19 MB a block)."""
    return block if keep.all() else {k: v[keep] for k, v in block.items()}


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
                 factor_source: FactorSource | None = None, rows_per_epoch: int | None = None,
                 position: PositionSource | None = None):
        self.config, self.units = config, units
        p = config.preprocess
        self.loc = resolve(config.source.url, config.source.storage)
        self.fs = self.loc.fs
        self.transform = build_transform(p.recipe, p.image_size, config.train)
        self.min_side = decode_side(p.recipe, p.image_size, config.train)
        self.fused = FusedRecipe(self.transform, p.image_size)
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
        self.offsets = row_offsets(units)
        self.position_source = position
        self._position = _UNKNOWN
        # Deterministic streams keep every block one size (placeholders fill the gaps), so
        # that a resumed stream is dealt to the ranks as the uninterrupted one was.
        self.pad = config.train and config.deterministic and self.echo is None
        ranks = max(1, config.split_ranks)
        self._unit_blocks = np.array([ranks * -(-u.num_rows // (ranks * p.output_rows))
                                      for u in units], np.int64)
        self._block_starts: dict[int, np.ndarray] = {}
        self._shard_of = ""

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

    def _read(self, unit: WorkUnit, epoch: int, first_row: int = -1
              ) -> dict[str, np.ndarray] | None:
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
                               why=str(e).strip().splitlines()[0] if str(e).strip() else "",
                               row=first_row)
            return None

    def _images(self, images: list, rngs: list[np.random.Generator], keys: np.ndarray,
                rows: np.ndarray, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """The augmented block of `images` (the fused path where it applies) and the mask of
        the entries kept: a JPEG whose header passed but whose data no decoder reads is a bad
        record, counted here (once per row, however many copies it had)."""
        out, failed = augment_batch(self.fused, self.transform, images, rngs, self.min_side)
        keep = np.ones(len(images), bool)
        seen = set()
        for i, err in failed.items():
            keep[i] = False
            if id(images[i]) not in seen:
                seen.add(id(images[i]))
                self.stats.add_bad(bad_kind(err, images[i].data), str(keys[i]), self._shard_of,
                                   epoch, why=str(err), row=int(rows[i]))
                self.stats.ok -= 1
        return out, keep

    def _augment(self, images: list, labels: np.ndarray, keys: np.ndarray,
                 rows: np.ndarray, epoch: int, echo_rng: np.random.Generator
                 ) -> tuple[dict[str, np.ndarray], int]:
        """The block of decoded `images` (rows `rows` of `epoch`): augmented, and echoed when
        this stream echoes, and the number of rows dropped as bad on the way. Each row's
        augmentation is drawn from a generator of its own, seeded by (seed, epoch, row id):
        the same pixels whichever actor makes it, whatever else is in its block, and whichever
        rows a resumed stream leaves out."""
        seed = self.config.seed
        cols = {LABEL: labels, KEY: keys, EPOCH: np.full(len(rows), epoch, np.int32),
                ROW: rows.astype(np.int64)}
        rngs = [np.random.default_rng([seed, epoch, int(r), 3]) for r in rows]
        if self.echo is None:
            out, keep = self._images(images, rngs, keys, rows, epoch)
            return _kept({IMAGE: out, **cols}, keep), int((~keep).sum())
        counts = copy_counts(len(images), self.factor_source.factor(), echo_rng)
        if self.echo.mode == "example":  # echo before augmentation: each copy its own crop
            pick = np.repeat(np.arange(len(images)), counts)
            out, keep = self._images([images[i] for i in pick], [rngs[i] for i in pick],
                                     keys[pick], rows[pick], epoch)
            block = {IMAGE: out, **repeat_rows(cols, counts)}
            dropped = len(set(pick[~keep].tolist()))
            return _kept(block, keep), dropped
        out, keep = self._images(images, rngs, keys, rows, epoch)
        block = repeat_rows(_kept({IMAGE: out, **cols}, keep), counts[keep])
        return block, int((~keep).sum())

    def _resume(self) -> StreamPosition | None:
        """The position this stream resumes from, asked once per process."""
        if self._position is _UNKNOWN:
            self._position = (self.position_source.position()
                              if self.position_source is not None else None)
        return self._position

    def _first_block(self, seq: int) -> int:
        """Deterministic streams: the stream-wide index of position `seq`'s first block."""
        n = len(self.units)
        epoch, pos = divmod(seq, n)
        if epoch not in self._block_starts:
            order = unit_order(n, epoch, self.config.seed, self.config.shuffle)
            blocks = self._unit_blocks[order]
            self._block_starts = {epoch: np.concatenate([[0], np.cumsum(blocks)])}
        return epoch * int(self._unit_blocks.sum()) + int(self._block_starts[epoch][pos])

    def _placeholders(self, n: int, epoch: int) -> dict[str, np.ndarray]:
        """`n` rows that stand for nothing (label -1): they keep a deterministic stream's
        blocks all one size, so Ray Train deals them to the ranks in turn."""
        size = self.config.preprocess.image_size
        return {IMAGE: np.zeros((n, 3, size, size), np.uint8), LABEL: np.full(n, -1, np.int64),
                KEY: np.full(n, "", dtype=object), EPOCH: np.full(n, epoch, np.int32),
                ROW: np.full(n, -1, np.int64)}

    def _padded(self, block: dict[str, np.ndarray] | None, epoch: int, g: int
                ) -> dict[str, np.ndarray]:
        rows = self.config.preprocess.output_rows
        have = 0 if block is None else len(block[LABEL])
        parts = [block] if block is not None else []
        if have < rows:
            parts.append(self._placeholders(rows - have, epoch))
        out = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        out[BLOCK] = np.full(rows, g, np.int64)
        return out

    def _unit_blocks_out(self, seq: int, epoch: int, index: int, unit: WorkUnit,
                         report: _Reporter) -> Iterator[dict[str, np.ndarray]]:
        """The blocks of one stream position: its unit read, the rows a resumed stream has
        done dropped before decode, the rest decoded and augmented."""
        cfg = self.config
        position = self._resume()
        first = self._first_block(seq) if self.pad else 0
        nblocks = int(self._unit_blocks[index])
        start_block = position.start_block if (self.pad and position is not None) else 0
        if first + nblocks <= start_block:
            return
        if not self.pad and position is not None and position.epoch_done(epoch):
            return
        t = time.perf_counter()
        rows = self._read(unit, epoch, int(self.offsets[index]))
        report.read(time.perf_counter() - t, rows)
        if rows is None:
            for j in range(nblocks) if self.pad else ():
                if first + j >= start_block:
                    yield self._padded(None, epoch, first + j)
            return
        n = len(rows[LABEL])
        order = np.arange(n)
        if cfg.shuffle:
            np.random.default_rng([cfg.seed, epoch, index]).shuffle(order)
        echo_rng = np.random.default_rng([cfg.seed, epoch, index, 2])
        ids = self.offsets[index] + np.arange(n)
        for j, take in enumerate(self._chunks(order, index)):
            if first + j < start_block:
                continue
            if position is not None:
                take = take[~position.done_rows(epoch, ids[take])]
            block = self._block(rows, take, ids, epoch, echo_rng, report)
            if self.pad:
                yield self._padded(block, epoch, first + j)
            elif block is not None:
                yield block

    def _chunks(self, order: np.ndarray, index: int) -> list[np.ndarray]:
        """A unit's rows (in `order`) as its blocks: `output_rows` each; in a deterministic
        stream the unit's blocks (a multiple of the ranks, so they are dealt evenly) share its
        rows evenly, the longer ones turned by the unit's index, so every rank gets nearly the
        same rows (a rank that runs dry first ends the last epoch for all)."""
        size = self.config.preprocess.output_rows
        if not self.pad:
            return [order[s:s + size] for s in range(0, len(order), size)]
        chunks = np.array_split(order, int(self._unit_blocks[index]))
        turn = index % len(chunks)
        return chunks[turn:] + chunks[:turn]

    def _block(self, rows: dict[str, np.ndarray], take: np.ndarray, ids: np.ndarray,
               epoch: int, echo_rng: np.random.Generator, report: _Reporter
               ) -> dict[str, np.ndarray] | None:
        """Rows `take` of a unit: bad labels and undecodable images skipped and counted, the
        rest augmented (None when none is left)."""
        num_classes = self.config.source.num_classes
        shard = self._shard_of
        bad_label = label_problems(rows[LABEL][take], num_classes)
        for i in np.flatnonzero(bad_label):
            self.stats.add_bad("bad_label", str(rows[KEY][take[i]]), shard, epoch,
                               why=f"label {rows[LABEL][take[i]]} is not a class"
                               + (f" of 0..{num_classes - 1}" if num_classes else ""),
                               row=int(ids[take[i]]))
        take = take[~bad_label]
        keys = rows[KEY][take]
        t = time.perf_counter()
        images, kept = decode_many(rows[IMAGE][take], keys, self.stats, self.min_side,
                                   shard, epoch, rows=ids[take],
                                   probe=self.fused.probe if self.fused.enabled else None)
        decoded = time.perf_counter()
        report.decode_s += decoded - t
        if not kept:
            return None
        fused_decode = self.fused.decode_s  # the fused path decodes inside the augmentation
        block, dropped = self._augment(images, rows[LABEL][take][kept], keys[kept],
                                       ids[take][kept], epoch, echo_rng)
        inside = self.fused.decode_s - fused_decode
        report.decode_s += inside
        report.augment_s += time.perf_counter() - decoded - inside
        report.fresh += len(kept) - dropped
        return block if len(block[LABEL]) else None

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
        for seq in seqs:
            epoch, index, unit = self._unit(int(seq))
            self._shard_of = self._shard(unit)
            for block in self._unit_blocks_out(int(seq), epoch, index, unit, report):
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
    taken, the fresh examples read and the bad records skipped in it, and where its time went
    (read, decode, augment: perf_counter around each call, 3 readings per block and 2 per unit
    read; the hand-off needs none: it is the gap between one block's end and the next's
    start, both read already)."""

    def __init__(self, observer: BlockObserver | None, stats: BadRecords):
        self.observer, self.stats = observer, stats
        self.fresh = 0
        self._stages()
        self._mark()
        self._started = self._ended = time.time()

    def _stages(self) -> None:
        self.read_s = self.decode_s = self.augment_s = self.handoff_s = 0.0
        self.read_bytes = 0

    def read(self, seconds: float, rows: dict[str, np.ndarray] | None) -> None:
        """A unit read in `seconds` (`rows`: None when it could not be read)."""
        self.read_s += seconds
        if rows is not None:
            self.read_bytes += sum(len(b) for b in rows[IMAGE] if b)

    def _mark(self) -> None:
        self._bad, self._shards = dict(self.stats.bad), dict(self.stats.by_shard)
        self._keys = len(self.stats.sample_keys)

    def block(self, images: int, epoch: int) -> None:
        self._ended = time.time()
        if self.observer is not None:
            bad = _delta(self.stats.bad, self._bad)
            shards = _delta(self.stats.by_shard, self._shards) if bad else {}
            keys = tuple(self.stats.sample_keys[self._keys:])
            self.observer.on_block(BlockSpan(
                self._started, self._ended, images, epoch, bad, fresh=self.fresh,
                bad_shards=shards, bad_keys=keys, bad_records=self.stats.take_records(),
                read_s=self.read_s, decode_s=self.decode_s, augment_s=self.augment_s,
                handoff_s=self.handoff_s, read_bytes=self.read_bytes))
        else:
            self.stats.take_records()
        self.fresh = 0
        self._stages()
        self._mark()

    def restart(self) -> None:
        """The block just yielded was taken: the time since it ended was its hand-off."""
        self._started = time.time()
        self.handoff_s += max(0.0, self._started - self._ended)

    def rest(self, epoch: int) -> None:
        """Report what no block carried (records all skipped as bad at the end of a call, the
        last block's hand-off)."""
        if self.fresh or self.stats.bad != self._bad or self.handoff_s or self.read_s:
            self.block(0, epoch)


def build_dataset(config: PipelineConfig, *, plan: ShardPlan | None = None,
                  observer: BlockObserver | None = None,
                  factor_source: FactorSource | None = None,
                  position: PositionSource | None = None) -> ray.data.Dataset:
    """The preprocessed stream of `config.epochs` passes over `config.source`.

    Rows are ``image`` (uint8, 3 x S x S), ``label`` (int64) and ``key`` (str). Pass `plan`
    when the caller already planned the source (it needs the row count anyway), `observer`
    to hear of every block a pool actor makes, and `factor_source` to change the echo factor
    of `config.echo` while the stream runs (both are pickled into each actor), and `position`
    to resume a stream where a checkpoint left it (pipelines.position): done rows are dropped
    before decode. Rows also carry ``epoch`` (int32) and ``row`` (int64 row id), with echo in
    the pool ``echo`` (uint8 copy index, 0 = fresh), and in a deterministic stream ``block``
    (its block's index; blocks are then all `output_rows` long, placeholder rows with label -1
    filling them).
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
                               "factor_source": factor_source, "position": position},
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
