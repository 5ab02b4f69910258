"""Tier 3: jobs/make_dataset.py writes both shard kinds to a real S3 endpoint, readable back."""

import os
import subprocess
import sys

import pytest

from pipelines import SourceConfig, plan_source
from pipelines.decode import decode_image
from pipelines.sources import read_unit
from pipelines.storage import resolve

pytestmark = pytest.mark.services
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("fmt", ["parquet", "folder"])
def test_synthetic_jpegs_of_the_requested_size(s3_prefix, fmt):
    out = subprocess.run(
        [sys.executable, os.path.join(ROOT, "jobs", "make_dataset.py"), "--dataset", "synthetic",
         "--count", "20", "--size", "64x48", "--format", fmt, "--out", s3_prefix],
        capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "train 18" in out.stdout and "val 2" in out.stdout
    plan = plan_source(SourceConfig(url=f"{s3_prefix}/train"))
    assert plan.format == fmt and plan.num_rows == 18
    rows = read_unit(plan.units[0], resolve(s3_prefix).fs)
    image = decode_image(rows["image"][0])
    assert image.shape == (48, 64, 3)
    assert rows["image"][0][:2] == b"\xff\xd8"  # JPEG


def split_keys(url: str) -> dict[str, set[str]]:
    loc = resolve(url)
    keys = {}
    for split in ("train", "val"):
        plan = plan_source(SourceConfig(url=f"{url}/{split}"))
        keys[split] = {k for u in plan.units for k in read_unit(u, loc.fs)["key"].tolist()}
    return keys


def test_digits_split_is_seeded_disjoint_and_complete(s3_prefix):
    from pipelines.datasets import write_digits

    assert write_digits(f"{s3_prefix}/a").rows == {"train": 1437, "val": 360}
    write_digits(f"{s3_prefix}/b")
    a, b = split_keys(f"{s3_prefix}/a"), split_keys(f"{s3_prefix}/b")
    assert a == b  # the same split every time
    assert not a["train"] & a["val"] and len(a["train"] | a["val"]) == 1797


def test_photos_are_the_bundled_camera_jpegs_unchanged(s3_prefix):
    from sklearn.datasets import load_sample_images

    out = subprocess.run(
        [sys.executable, os.path.join(ROOT, "jobs", "make_dataset.py"), "--dataset", "photos",
         "--count", "5", "--out", s3_prefix], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "train 5" in out.stdout
    plan = plan_source(SourceConfig(url=f"{s3_prefix}/train"))
    rows = read_unit(plan.units[0], resolve(s3_prefix).fs)
    originals = []
    for path in sorted(load_sample_images().filenames):
        with open(path, "rb") as f:
            originals.append(f.read())
    assert rows["image"].tolist() == [originals[i % 2] for i in range(5)]
    assert rows["label"].tolist() == [0, 1, 0, 1, 0]
    assert decode_image(rows["image"][0]).shape == (427, 640, 3)
