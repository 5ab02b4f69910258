"""Tier 2+3 (local Ray, real SeaweedFS): bad records are skipped and counted by kind and shard,
every good record still arrives exactly once, and past --max-bad-fraction the run stops with an
error naming the shard and the count."""

import gc
import io
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import ray

from pipelines import PipelineConfig, PreprocessConfig, SourceConfig, build_dataset, plan_source
from pipelines.badrecords import BadDataError, BadRecord, BadRecordLimit
from pipelines.storage import resolve
from tests.helpers import encode, wait_for

pytestmark = [pytest.mark.ray, pytest.mark.services]

PRE = PreprocessConfig(recipe="small", image_size=8, min_actors=1, max_actors=2, output_rows=64)
BAD_IMAGES = {3: b"", 7: b"no image here", 11: None}  # row -> bytes (None: PNG cut short)
BAD_LABELS = {20: None, 21: 12, 22: -3}  # row -> label (num_classes is 10)


def png(value: int) -> bytes:
    return encode(np.full((8, 8), value, np.uint8), "PNG")


def shard(start: int, n: int) -> pa.Table:
    images, labels = [], []
    for i in range(n):
        data = png((start + i) % 256)
        if start == 0 and i in BAD_IMAGES:
            data = BAD_IMAGES[i] if BAD_IMAGES[i] is not None else data[: len(data) * 2 // 3]
        images.append(data)
        labels.append(BAD_LABELS.get(i, i % 10) if start == 0 else i % 10)
    return pa.table({"image": pa.array(images, pa.binary()), "label": pa.array(labels, pa.int64()),
                     "key": [f"k{start + i:04d}" for i in range(n)]})


def write(prefix: str, garbage: bool) -> None:
    """part-0: 200 rows with 3 bad images and 3 bad labels; part-1: 100 rows whose data pages
    are corrupt (the footer reads fine, the rows do not); part-3: 100 good rows; with
    `garbage`, part-2: bytes that are no Parquet file at all."""
    loc = resolve(prefix)
    pq.write_table(shard(0, 200), f"{loc.path}/part-0.parquet", filesystem=loc.fs,
                   row_group_size=100, compression="none")
    buf = io.BytesIO()
    pq.write_table(shard(200, 100), buf, compression="none")
    data = bytearray(buf.getvalue())
    data[4:40] = b"\xff" * 36  # the first page header, just after the PAR1 magic
    with loc.fs.open_output_stream(f"{loc.path}/part-1.parquet") as f:
        f.write(bytes(data))
    pq.write_table(shard(300, 100), f"{loc.path}/part-3.parquet", filesystem=loc.fs,
                   compression="none")
    if garbage:
        with loc.fs.open_output_stream(f"{loc.path}/part-2.parquet") as f:
            f.write(b"this is not a parquet file" * 10)


@pytest.fixture(scope="module")
def mixed(object_store):
    url = f"s3://{object_store.bucket}/faults/mixed"
    write(url, garbage=False)
    return url


def good_keys() -> set[str]:
    bad_rows = set(BAD_IMAGES) | set(BAD_LABELS)
    return ({f"k{i:04d}" for i in range(200) if i not in bad_rows}
            | {f"k{i:04d}" for i in range(300, 400)})


def test_bad_records_are_skipped_counted_by_kind_and_shard(ray_cluster, mixed):
    from cluster.observability.monitor import PoolReporter, start_monitor

    cfg = PipelineConfig(source=SourceConfig(url=mixed, num_classes=10, max_bad_fraction=0.5),
                         preprocess=PRE, epochs=2)
    plan = plan_source(cfg.source)
    assert plan.num_rows == 400 and not plan.unreadable  # part-1's footer is fine
    monitor = start_monitor(timeline=False)
    keys = [k for b in build_dataset(cfg, plan=plan, observer=PoolReporter("bad", monitor))
            .iter_batches(batch_size=None) for k in b["key"]]
    # every good record exactly once per epoch, no bad one
    assert len(keys) == 2 * len(good_keys()) and set(keys) == good_keys()
    # each bad record once (1 + 1 + 1 + 3 + part-1's 100 rows), met once in each epoch
    distinct = {"zero_bytes": 1, "not_an_image": 1, "truncated": 1, "bad_label": 3,
                "unreadable_shard": 100}
    skips = {kind: 2 * n for kind, n in distinct.items()}
    # the actors report without waiting: let them land
    wait_for(lambda: ray.get(monitor.bad_skips.remote()) == skips, 30,
             lambda: f"bad-record skips {skips}, have {ray.get(monitor.bad_skips.remote())}",
             interval=0.5)
    assert ray.get(monitor.bad_records.remote()) == distinct
    shards, sample = ray.get(monitor.bad_detail.remote())
    base = mixed.removeprefix("s3://")
    assert shards == {f"s3://{base}/part-0.parquet": 6, f"s3://{base}/part-1.parquet": 100}
    assert sample and set(sample) <= {f"k{i:04d}" for i in (*BAD_IMAGES, *BAD_LABELS)} | {
        f"s3://{base}/part-1.parquet"}
    listed = ray.get(monitor.bad_list.remote())
    assert len(listed) == 7 and all({"key", "shard", "kind", "why"} <= set(r) for r in listed)
    count, kinds, by_shard, _ = ray.get(monitor.epoch_bad.remote(1))
    assert count == 106 and kinds["bad_label"] == 3
    ray.kill(monitor)


def test_too_many_bad_records_stop_the_stream_naming_shard_and_count(ray_cluster, mixed):
    cfg = PipelineConfig(source=SourceConfig(url=mixed, num_classes=10), preprocess=PRE)
    with pytest.raises(Exception, match="exceed --max-bad-fraction 0.001") as err:
        for _ in build_dataset(cfg).iter_batches(batch_size=None):
            pass
    text = str(err.value)
    del err  # its traceback holds the failed stream, whose pool actor holds a pool unit
    gc.collect()  # (frames and generators form cycles: freed by the collector, not at once)
    assert "(0 of 400 rows allowed)" in text and "most in shard s3://" in text
    assert "part-0.parquet" in text or "part-1.parquet (100)" in text


def test_unreadable_shard_at_planning_is_skipped_or_stops_the_run(object_store):
    url = f"s3://{object_store.bucket}/faults/garbage"
    write(url, garbage=True)
    plan = plan_source(SourceConfig(url=url, max_bad_fraction=0.5))
    assert plan.num_rows == 400 and plan.num_shards == 4
    assert [u[0] for u in plan.unreadable] == [f"{url}/part-2.parquet"]
    assert "part-2.parquet" in plan.unreadable[0][1]
    with pytest.raises(BadDataError, match=r"133 bad records in epoch 1 .*unreadable_shard 133"
                                           r".*most in shard .*part-2\.parquet"):
        plan_source(SourceConfig(url=url))  # about 133 rows lost of 533: far above 0.1%


def test_run_training_stops_with_the_bad_data_error_itself(ray_cluster, mixed, tmp_path):
    from cluster.training.config import TrainConfig
    from cluster.training.trainer import run_training

    train = PipelineConfig(source=SourceConfig(url=mixed), preprocess=PRE)
    tc = TrainConfig(epochs=1, batch_size=32, num_workers=1, cpus_per_worker=1,
                     num_classes=10, storage_path=str(tmp_path), run_name="bad")
    started = time.perf_counter()
    with pytest.raises(BadDataError, match=r"bad records in epoch 1 of s3://.*/faults/mixed "
                                           r".*exceed --max-bad-fraction 0\.001") as err:
        run_training(tc, train, None)
    assert "\n" not in str(err.value)  # one line, not Ray's wrapped traceback
    assert time.perf_counter() - started < 240
    # the failed run let go of the pool: the next run (or test) gets its actors
    def pool_free() -> bool:
        gc.collect()
        return ray.available_resources().get("preprocess_cpu", 0) == 2

    wait_for(pool_free, 60, lambda: f"the pool's resources back; alive: {alive_ray_processes()}",
             interval=1.0)


def alive_ray_processes() -> list[str]:
    """Titles of the Ray worker processes alive now, for the failure message."""
    from cluster.local.procfs import local_processes

    return [f"{p.pid} {p.cmdline[:80]}" for p in local_processes()
            if p.alive and p.cmdline.startswith("ray::")]


def test_the_limit_counts_bad_records_of_all_actors_together(ray_cluster):
    from cluster.observability.monitor import start_monitor
    from cluster.training.loop import check_bad_records
    from pipelines.observe import BlockSpan

    monitor = start_monitor(timeline=False)
    limit = BadRecordLimit("s3://b/data", rows_per_epoch=1000, max_fraction=0.001)  # 1 allowed
    for actor, shard in (("a", "s3://b/data/p0.parquet"), ("b", "s3://b/data/p1.parquet")):
        record = BadRecord(key=actor, shard=shard, kind="truncated", why="cut short", epoch=0)
        monitor.add_block.remote(actor, BlockSpan(0, 1, 10, 0, {"truncated": 1},
                                                  bad_shards={shard: 1}, bad_keys=(actor,),
                                                  bad_records=(record,)))
    import torch
    check_bad_records(monitor, limit, epoch=1, rank=0, device=torch.device("cpu"))  # none
    with pytest.raises(BadDataError, match=r"2 bad records in epoch 1 .*truncated 2.*\(1 of "
                                           r"1000 rows allowed\)"):
        check_bad_records(monitor, limit, epoch=0, rank=0, device=torch.device("cpu"))
    ray.kill(monitor)
