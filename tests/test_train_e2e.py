"""Tier 2+3: the end-to-end slice. Digits from SeaweedFS, through the preprocessing actor pool,
into 2 Ray Train DDP workers on CPU; checkpoints written to s3://."""

import pyarrow.fs as pafs
import pytest

from cluster.config import TrainConfig
from cluster.trainer import run_training
from pipelines import PipelineConfig, PreprocessConfig, SourceConfig
from pipelines.storage import resolve

pytestmark = [pytest.mark.ray, pytest.mark.services]


def test_digits_reach_093_with_two_ddp_workers(ray_cluster, digits_url, object_store):
    pre = PreprocessConfig(recipe="small", image_size=8, min_actors=1, max_actors=2)
    train = PipelineConfig(source=SourceConfig(url=f"{digits_url}/train"), preprocess=pre)
    val = PipelineConfig(source=SourceConfig(url=f"{digits_url}/val"), preprocess=pre,
                         train=False, shuffle=False)
    results = f"s3://{object_store.bucket}/results"
    tc = TrainConfig(epochs=5, batch_size=32, lr=0.05, num_workers=2, cpus_per_worker=1,
                     storage_path=results, run_name="e2e")
    summary = run_training(tc, train, val)

    assert summary.val_accuracy >= 0.93, summary
    assert summary.epochs == 5 and summary.train_rows == 1437 and summary.val_rows == 360
    assert summary.images_per_s > 0 and 0.0 <= summary.data_wait_fraction < 1.0
    # The final checkpoint is in the object store, under the run's name.
    loc = resolve(results)
    files = loc.fs.get_file_info(pafs.FileSelector(f"{loc.path}/e2e", recursive=True))
    assert any(f.path.endswith("state.pt") for f in files), [f.path for f in files]
    assert summary.checkpoint and "e2e" in summary.checkpoint
