"""Tier 2+3: a preprocessing actor's process is killed (SIGKILL) in the middle of an epoch. The
stream completes and hands out every example exactly once per epoch: nothing lost, nothing
twice."""

import collections
import os
import signal

import pytest

from cluster.local.procfs import local_processes
from cluster.local.throttle import ThrottledProxy
from pipelines import (
    PipelineConfig,
    PreprocessConfig,
    SourceConfig,
    StorageConfig,
    build_dataset,
    plan_source,
)
from tests.helpers import wait_for

pytestmark = [pytest.mark.ray, pytest.mark.services]

POOL_ACTOR = "ray::MapWorker(MapBatches(Preprocessor))"


def pool_pids() -> set[int]:
    """Live preprocessing actor processes (Ray titles each worker process after the actor it
    hosts; the state API needs the dashboard, which is off in the tests)."""
    return {p.pid for p in local_processes() if p.alive and p.cmdline.startswith(POOL_ACTOR)}


def test_killed_preprocessing_actor_loses_and_repeats_nothing(ray_cluster, digits_url,
                                                              object_store):
    # Reads capped at 60 KB/s through a proxy: an epoch of digits takes several seconds, so the
    # kill lands while both actors are in the middle of their units.
    with ThrottledProxy("127.0.0.1", object_store.s3_port, bytes_per_s=60_000) as proxy:
        cfg = PipelineConfig(
            source=SourceConfig(url=f"{digits_url}/train", rows_per_unit=64,
                                storage=StorageConfig(endpoint=proxy.endpoint)),
            preprocess=PreprocessConfig(recipe="small", image_size=8, min_actors=2,
                                        max_actors=2, output_rows=32),
            epochs=2)
        plan = plan_source(cfg.source)
        seen = collections.Counter()
        killed, seen_at_kill = None, 0
        for batch in build_dataset(cfg, plan=plan).iter_batches(batch_size=None):
            seen.update(batch["key"].tolist())
            if killed is None and sum(seen.values()) >= 200:
                pids = pool_pids()
                assert pids, "no live preprocessing actor to kill"
                killed, seen_at_kill = min(pids), sum(seen.values())
                os.kill(killed, signal.SIGKILL)
                wait_for(lambda pid=killed: pid not in pool_pids(), 10, "the killed actor to end")
    assert killed is not None and seen_at_kill < plan.num_rows  # killed in epoch 1
    assert killed not in pool_pids()
    assert len(seen) == plan.num_rows == 1437
    assert set(seen.values()) == {2}  # each example once in each of the 2 epochs
