"""Tier 1: planning and reading both shard kinds, on the local filesystem (no Ray, no network)."""


import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipelines import SchemaError, SourceConfig, StorageError, plan_source
from pipelines.sources import read_unit
from tests.helpers import encode


def png(value: int) -> bytes:
    return encode(Image.new("L", (4, 4), value), "PNG")


def write_shard(path, n, start=0, row_group=8, with_key=True):
    cols = {"image": [png(i % 256) for i in range(start, start + n)],
            "label": np.arange(start, start + n, dtype=np.int64) % 10}
    if with_key:
        cols["key"] = [f"k{i}" for i in range(start, start + n)]
    pq.write_table(pa.table(cols), str(path), row_group_size=row_group)


def test_parquet_plan_counts_rows_groups_units_and_labels(tmp_path):
    write_shard(tmp_path / "a.parquet", 40)
    write_shard(tmp_path / "b.parquet", 25, start=40)
    plan = plan_source(SourceConfig(url=str(tmp_path), rows_per_unit=16))
    assert plan.format == "parquet" and plan.num_rows == 65 and plan.num_shards == 2
    assert sum(u.num_rows for u in plan.units) == 65
    assert all(u.num_rows <= 16 for u in plan.units)
    assert plan.label_range == (0, 9)


def test_reading_every_unit_returns_every_row_once(tmp_path):
    write_shard(tmp_path / "a.parquet", 40)
    write_shard(tmp_path / "b.parquet", 25, start=40, with_key=False)
    plan = plan_source(SourceConfig(url=str(tmp_path), rows_per_unit=16))
    fs = pafs.LocalFileSystem()
    keys, count = set(), 0
    for unit in plan.units:
        rows = read_unit(unit, fs)
        assert rows["label"].dtype == np.int64
        count += len(rows["label"])
        keys.update(rows["key"])
    assert count == 65 and len(keys) == 65  # generated keys are unique too


def test_wrong_columns_name_the_shard_what_was_found_and_what_is_expected(tmp_path):
    pq.write_table(pa.table({"img": [b"x"], "target": [1]}), str(tmp_path / "bad.parquet"))
    with pytest.raises(SchemaError) as err:
        plan_source(SourceConfig(url=str(tmp_path)))
    msg = str(err.value)
    assert "bad.parquet" in msg and "img" in msg and "target" in msg
    assert "expected image" in msg and "label" in msg


def test_empty_data_sets_are_an_error_not_an_empty_run(tmp_path):
    with pytest.raises(StorageError, match="no Parquet shards or image files"):
        plan_source(SourceConfig(url=str(tmp_path)))
    pq.write_table(pa.table({"image": pa.array([], pa.binary()),
                             "label": pa.array([], pa.int64())}), str(tmp_path / "e.parquet"))
    with pytest.raises(StorageError, match="no Parquet shards with data"):
        plan_source(SourceConfig(url=str(tmp_path)))


@pytest.mark.parametrize("names,expected", [(["3", "7"], {3, 7}), (["cat", "dog"], {0, 1})])
def test_image_folders_are_labelled_by_parent_folder(tmp_path, names, expected):
    for name in names:
        (tmp_path / name).mkdir()
        for i in range(3):
            Image.new("RGB", (5, 5)).save(tmp_path / name / f"{i}.jpg")
    (tmp_path / names[0] / "README.txt").write_text("not an image")
    plan = plan_source(SourceConfig(url=str(tmp_path), rows_per_unit=4))
    assert plan.format == "folder" and plan.num_rows == 6
    rows = [read_unit(u, pafs.LocalFileSystem()) for u in plan.units]
    labels = np.concatenate([r["label"] for r in rows])
    assert set(labels.tolist()) == expected
    assert all(len(b) > 0 for r in rows for b in r["image"])
