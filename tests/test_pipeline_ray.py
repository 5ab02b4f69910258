"""Tier 2+3: the Ray Data stream from SeaweedFS through the preprocessing actor pool."""

import collections

import numpy as np
import pytest
import ray

from pipelines import PipelineConfig, PreprocessConfig, SourceConfig, build_dataset, plan_source
from pipelines.datasets import write_synthetic

pytestmark = [pytest.mark.ray, pytest.mark.services]


def test_multi_epoch_stream_delivers_every_example_once_per_epoch(ray_cluster, digits_url):
    cfg = PipelineConfig(
        source=SourceConfig(url=f"{digits_url}/train"),
        preprocess=PreprocessConfig(recipe="small", image_size=8, max_actors=2), epochs=2)
    plan = plan_source(cfg.source)
    seen = collections.Counter()
    pool_held = []
    for batch in build_dataset(cfg, plan=plan).iter_batches(batch_size=256):
        assert batch["image"].dtype == np.uint8 and batch["image"].shape[1:] == (3, 8, 8)
        assert batch["label"].dtype == np.int64
        seen.update(batch["key"].tolist())
        pool_held.append(ray_cluster.available_resources().get("preprocess_cpu", 0.0))
    assert len(seen) == plan.num_rows == 1437
    assert set(seen.values()) == {2}
    # The actors live on the dedicated pool's resource...
    assert min(pool_held) <= 1.0


def test_epochs_differ_in_order_but_not_in_content(ray_cluster, digits_url):
    cfg = PipelineConfig(source=SourceConfig(url=f"{digits_url}/val"),
                         preprocess=PreprocessConfig(recipe="small", image_size=8), epochs=2)
    keys = [k for b in build_dataset(cfg).iter_batches(batch_size=None) for k in b["key"]]
    first, second = keys[:360], keys[360:]
    assert sorted(first) == sorted(second) and first != second


def test_image_folder_shards_stream_through_the_imagenet_recipe(ray_cluster, s3_prefix):
    write_synthetic(s3_prefix, count=24, size=(96, 64), fmt="folder", num_classes=3,
                    val_fraction=0)
    cfg = PipelineConfig(source=SourceConfig(url=f"{s3_prefix}/train", rows_per_unit=8),
                         preprocess=PreprocessConfig(recipe="imagenet", image_size=32))
    rows = build_dataset(cfg).take_batch(100)
    assert rows["image"].shape == (24, 3, 32, 32)
    assert set(rows["label"].tolist()) <= {0, 1, 2}
    assert all(k.endswith(".jpg") for k in rows["key"])


def test_a_cluster_without_the_pool_fails_instead_of_waiting_forever(ray_cluster, digits_url):
    cfg = PipelineConfig(
        source=SourceConfig(url=f"{digits_url}/val"),
        preprocess=PreprocessConfig(recipe="small", image_size=8, pool_resource="absent_pool",
                                    actor_start_timeout_s=5))
    with pytest.raises(ray.exceptions.GetTimeoutError, match="Timed out while starting actors"):
        build_dataset(cfg).take_batch(10)


def test_positions_come_in_ranges_that_cover_the_stream_once(ray_cluster):
    from pipelines.index import positions_of, unit_positions

    ds = unit_positions(23, 5)
    assert ds.num_blocks() == 5
    rows = ds.take_all()
    batch = {k: np.array([r[k] for r in rows]) for k in rows[0]}
    assert positions_of(batch).tolist() == list(range(23))
    assert positions_of({"seq": np.array([4, 2])}).tolist() == [4, 2]
    with pytest.raises(ValueError, match="at least one position"):
        unit_positions(0, 5)
