"""GPU tier: the same training code on CUDA (skipped without it)."""

import pytest
import torch

from cluster.training.config import TrainConfig
from cluster.training.trainer import run_training
from pipelines import PipelineConfig, PreprocessConfig, SourceConfig

pytestmark = [pytest.mark.gpu, pytest.mark.ray, pytest.mark.services]


def test_digits_train_on_gpu_workers(ray_cluster, digits_url):
    gpus = torch.cuda.device_count()
    pre = PreprocessConfig(recipe="small", image_size=8)
    train = PipelineConfig(source=SourceConfig(url=f"{digits_url}/train"), preprocess=pre)
    val = PipelineConfig(source=SourceConfig(url=f"{digits_url}/val"), preprocess=pre,
                         train=False, shuffle=False)
    tc = TrainConfig(epochs=5, batch_size=32, lr=0.05, num_workers=min(2, gpus), use_gpu=True,
                     cpus_per_worker=0.5)
    summary = run_training(tc, train, val)
    assert summary.use_gpu and summary.val_accuracy >= 0.93, summary
