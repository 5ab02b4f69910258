"""`build_dataset(config) -> ray.data.Dataset`: the training stream, wired stage by stage.

Shape of the stream, chosen for speed (see README, "Why one stream"):

    read_datasource(UnitIndex(epochs*units))        stream positions, a few per block, lazily
      -> map_batches(Preprocessor, ActorPoolStrategy(min, max), resources={pool: 1}, num_cpus=0)
           per position: read its unit from object storage -> decode -> augment ->
           uint8 (N, 3, S, S) blocks, each sent on as soon as it is made

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

from pipelines.augment import apply_batch, build_transform, decode_side
from pipelines.config import PipelineConfig
from pipelines.decode import DecodeStats, decode_many
from pipelines.index import SEQ, UnitIndex
from pipelines.observe import BlockObserver, BlockSpan
from pipelines.sources import IMAGE, KEY, LABEL, ShardPlan, WorkUnit, plan_source, read_unit
from pipelines.storage import resolve

__all__ = ["build_dataset", "Preprocessor", "unit_order", "MAX_INDEX_TASKS"]

log = logging.getLogger(__name__)
MAX_INDEX_TASKS = 512
"""Most read tasks the work-unit index is cut into (Ray Data stores each before the first block)."""


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
    run validation through it): call it with ``{"seq": array of unit indices}``.
    """

    def __init__(self, config: PipelineConfig, units: tuple[WorkUnit, ...],
                 single_thread: bool = True, observer: BlockObserver | None = None):
        import torch

        if single_thread:
            # One actor = one pool core: intra-op threads would only fight the other actors.
            torch.set_num_threads(1)
        self.config, self.units = config, units
        p = config.preprocess
        self.fs = resolve(config.source.url, config.source.storage).fs
        self.transform = build_transform(p.recipe, p.image_size, config.train)
        self.min_side = decode_side(p.recipe, p.image_size, config.train)
        self.stats = DecodeStats()
        self.observer = observer
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

    def __call__(self, batch: dict[str, np.ndarray]) -> Iterator[dict[str, np.ndarray]]:
        import torch

        cfg, p = self.config, self.config.preprocess
        for seq in batch[SEQ]:
            started = time.time()
            epoch, index, unit = self._unit(int(seq))
            rows = read_unit(unit, self.fs)
            n = len(rows[LABEL])
            order = np.arange(n)
            if cfg.shuffle:
                np.random.default_rng([cfg.seed, epoch, index]).shuffle(order)
            if cfg.train:
                # Seed torch's RNG per unit: the same seed, epoch and unit give the same
                # augmentation whichever actor processes it. (Validation transforms are
                # deterministic; leave the RNG of the trainer process that runs them alone.)
                torch.manual_seed(hash((cfg.seed, epoch, index)) & 0x7FFFFFFF)
            for start in range(0, n, p.output_rows):
                take = order[start : start + p.output_rows]
                keys = rows[KEY][take]
                bad_before = dict(self.stats.bad)
                arrays, kept = decode_many(rows[IMAGE][take], keys, self.stats, self.min_side)
                block = {
                    IMAGE: apply_batch(self.transform, arrays, p.image_size),
                    LABEL: rows[LABEL][take][kept],
                    KEY: keys[kept],
                }
                if self.observer is not None:
                    bad = {k: v - bad_before.get(k, 0) for k, v in self.stats.bad.items()
                           if v != bad_before.get(k, 0)}
                    self.observer.on_block(BlockSpan(started, time.time(), len(kept), epoch, bad))
                if kept:
                    yield block
                started = time.time()  # the next block's work starts when this one is taken


def build_dataset(config: PipelineConfig, *, plan: ShardPlan | None = None,
                  observer: BlockObserver | None = None) -> ray.data.Dataset:
    """The preprocessed stream of `config.epochs` passes over `config.source`.

    Rows are ``image`` (uint8, 3 x S x S), ``label`` (int64) and ``key`` (str). Pass `plan`
    when the caller already planned the source (it needs the row count anyway), and `observer`
    to hear of every block a pool actor makes (it is pickled into each actor).
    """
    plan = plan or plan_source(config.source)
    p = config.preprocess
    n = config.epochs * len(plan.units)
    # Group positions so the stream needs at most MAX_INDEX_TASKS read tasks (start-up cost),
    # but keep each group well under one epoch's share per actor: actors work on different
    # groups at once, and a group that spans an epoch boundary mixes two epochs' units.
    per_task = max(1, min(-(-n // MAX_INDEX_TASKS), len(plan.units) // (2 * p.max_actors)))
    index = UnitIndex(n, per_task)
    # The index reads take no CPU (they must not wait behind trainers that hold every CPU of a
    # node), so they need a concurrency cap: zero-CPU tasks are otherwise launched without bound.
    seqs = ray.data.read_datasource(index, override_num_blocks=index.num_tasks, num_cpus=0,
                                    concurrency=1)
    ds = seqs.map_batches(
        Preprocessor,
        fn_constructor_kwargs={"config": config, "units": plan.units, "observer": observer},
        batch_size=1,
        compute=ray.data.ActorPoolStrategy(min_size=p.min_actors, max_size=p.max_actors),
        num_cpus=0,
        resources={p.pool_resource: p.resource_per_actor},
    )
    # Without a bound, a cluster that never gets a pool node would wait for the actors forever.
    ds.context.wait_for_min_actors_s = p.actor_start_timeout_s
    # An actor call covers `per_task` units and yields one block per `output_rows` images. Ray
    # Data merges yields until a block passes target_max_block_size (128 MiB): set it just under
    # one full block so each block leaves as soon as it is made (and is never sliced: slicing
    # starts at 1.5x the target).
    ds.context.target_max_block_size = int(0.9 * p.output_rows * 3 * p.image_size ** 2)
    return ds
