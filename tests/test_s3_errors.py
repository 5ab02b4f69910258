"""Tier 3 (real SeaweedFS): bad input gets one clear line naming the thing and what to do, fast,
before any Ray work starts."""

import os
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cluster.local.ports import free_port
from pipelines.storage import resolve

pytestmark = pytest.mark.services
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def train(*flags, env=None):
    out = subprocess.run(
        [sys.executable, os.path.join(ROOT, "jobs", "train_resnet.py"), *flags],
        capture_output=True, text=True, timeout=120, env=env or os.environ.copy())
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    return out.returncode, errors, out


def assert_one_clear_line(code, errors, out, *words):
    assert code == 2, out.stdout + out.stderr
    assert len(errors) == 1, out.stderr
    for word in words:
        assert word in errors[0], errors[0]
    assert "ray:" not in out.stdout  # failed before connecting to Ray


def test_missing_bucket(object_store):
    assert_one_clear_line(*train("--data", "s3://no-such-bucket/digits"),
                          "bucket 'no-such-bucket' not found", object_store.endpoint)


def test_missing_prefix(object_store):
    assert_one_clear_line(*train("--data", f"s3://{object_store.bucket}/nothing-here"),
                          "no Parquet shards or image files", "nothing-here/train", "--data")


def test_unreachable_endpoint(object_store):
    dead = f"http://127.0.0.1:{free_port()}"
    assert_one_clear_line(*train("--data", "s3://feedline/digits", "--endpoint", dead),
                          "cannot reach the object store", dead, "--endpoint")


def test_wrong_credentials(object_store, digits_url):
    env = {**os.environ, "AWS_SECRET_ACCESS_KEY": "definitely-wrong-secret"}
    code, errors, out = train("--data", digits_url, env=env)
    assert_one_clear_line(code, errors, out, "rejected the credentials", "AWS_SECRET_ACCESS_KEY")
    assert "definitely-wrong-secret" not in out.stdout + out.stderr


def test_shard_without_image_and_label_columns(s3_prefix):
    loc = resolve(f"{s3_prefix}/train")
    pq.write_table(pa.table({"pixels": [b"x"], "y": [1]}), f"{loc.path}/part-0.parquet",
                   filesystem=loc.fs)
    assert_one_clear_line(*train("--data", s3_prefix, "--no-val"),
                          "part-0.parquet", "pixels", "expected image")


def test_empty_data_set(s3_prefix):
    loc = resolve(f"{s3_prefix}/train")
    empty = pa.table({"image": pa.array([], pa.binary()), "label": pa.array([], pa.int64())})
    pq.write_table(empty, f"{loc.path}/part-0.parquet", filesystem=loc.fs)
    assert_one_clear_line(*train("--data", s3_prefix, "--no-val"), "no Parquet shards with data")


def test_object_store_refuses_a_disk_too_full_for_writable_volumes(tmp_path, monkeypatch):
    import shutil
    from types import SimpleNamespace

    from cluster.local import object_store

    def usage(free):
        return lambda path: SimpleNamespace(total=total, used=total - free, free=free)

    total = 252 * 2**30
    monkeypatch.setattr(shutil, "disk_usage", usage(2**30))
    with pytest.raises(OSError, match=r"1\.0 GiB free of 252 GiB.*read-only under 1% free"):
        object_store.EmbeddedObjectStore(data_dir=str(tmp_path)).start()
    monkeypatch.setattr(shutil, "disk_usage", usage(10 * 2**30))
    object_store.check_disk(str(tmp_path))  # 10 GiB free: enough
