"""Tier 1: jobs/preview.py writes the pool's first samples, pixel for pixel, and a grid."""

import os
import subprocess
import sys

import numpy as np
from PIL import Image

from pipelines import PipelineConfig, PreprocessConfig, SourceConfig
from pipelines.build import Preprocessor
from pipelines.datasets import write_synthetic
from pipelines.sources import IMAGE, plan_source

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_preview_writes_the_samples_the_pool_makes(tmp_path):
    url = write_synthetic(str(tmp_path / "data"), count=30, size=(160, 120), val_fraction=0).url
    out = tmp_path / "preview"
    run = subprocess.run([sys.executable, os.path.join(ROOT, "jobs", "preview.py"), "--data",
                          f"{url}/train", "--image-size", "64", "--count", "12", "--out",
                          str(out)], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": ROOT})
    assert run.returncode == 0, run.stderr[-2000:]
    samples = sorted(p for p in os.listdir(out) if p.startswith("sample-"))
    assert samples == [f"sample-{i:05d}.png" for i in range(12)]
    # The same pixels as the pool's Preprocessor hands the trainers, in the same order.
    cfg = PipelineConfig(source=SourceConfig(url=f"{url}/train"),
                         preprocess=PreprocessConfig(image_size=64))
    pool = next(iter(Preprocessor(cfg, plan_source(cfg.source).units)({"seq": np.array([0])})))
    for i in range(12):
        img = np.asarray(Image.open(out / samples[i]))
        assert img.shape == (64, 64, 3)
        np.testing.assert_array_equal(img.transpose(2, 0, 1), pool[IMAGE][i])
    grid = Image.open(out / "grid.png")
    assert grid.mode == "RGB" and grid.width > 3 * 64 and grid.height > 2 * 64
