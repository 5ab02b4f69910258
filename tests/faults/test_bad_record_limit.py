"""Tier 1: the bad-record limit itself, and validation passes held against it one at a time
(local Parquet files, no Ray, no network)."""


import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipelines import PipelineConfig, PreprocessConfig, SourceConfig, plan_source
from pipelines.badrecords import BadDataError, BadRecordLimit, BadRecords, label_problems
from pipelines.build import Preprocessor
from tests.helpers import encode


def test_allowance_is_the_floor_of_the_fraction_of_an_epoch():
    assert BadRecordLimit("u", 1437, 0.001).allowed == 1
    assert BadRecordLimit("u", 999, 0.001).allowed == 0
    assert BadRecordLimit("u", 1000, 0.001).allowed == 1  # no float round-off below 1
    assert BadRecordLimit("u", 500, 0.0).allowed == 0


def test_the_error_names_the_worst_shard_the_counts_and_what_to_do():
    ledger = BadRecords()
    for i in range(3):
        ledger.add_bad("truncated", f"k{i}", "s3://b/d/part-1.parquet", epoch=4)
    ledger.add_bad("bad_label", "k9", "s3://b/d/part-2.parquet", epoch=4)
    ledger.add_bad("truncated", "old", "s3://b/d/part-2.parquet", epoch=3)
    limit = BadRecordLimit("s3://b/d", 2000, 0.001)  # 2 allowed
    with pytest.raises(BadDataError) as err:
        ledger.check(4, limit)
    text = str(err.value)
    assert text.startswith("4 bad records in epoch 5 of s3://b/d (bad_label 1, truncated 3) "
                           "exceed --max-bad-fraction 0.001 (2 of 2000 rows allowed)")
    assert "most in shard s3://b/d/part-1.parquet (3)" in text and "k0, k1, k2, k9" in text
    assert "raise --max-bad-fraction" in text
    ledger.check(3, limit)  # epoch 4 (index 3) had 1: within


def test_labels_outside_the_classes_are_problems():
    labels = np.array([0, 9, 10, -1, 3])
    assert label_problems(labels, 10).tolist() == [False, False, True, True, False]
    assert label_problems(labels, None).tolist() == [False, False, False, True, False]


def _png(v: int) -> bytes:
    return encode(Image.new("L", (8, 8), v), "PNG")


def test_each_validation_pass_is_held_against_the_limit_on_its_own(tmp_path):
    images = [_png(i) for i in range(100)]
    images[5] = b""  # one bad record: the 1 of 100 rows 1% allows
    pq.write_table(pa.table({"image": images, "label": np.arange(100) % 10}),
                   str(tmp_path / "part-0.parquet"))
    cfg = PipelineConfig(source=SourceConfig(url=str(tmp_path), max_bad_fraction=0.01),
                         preprocess=PreprocessConfig(recipe="small", image_size=8),
                         train=False, shuffle=False)
    units = plan_source(cfg.source).units
    evaluator = Preprocessor(cfg, units)
    for _ in range(3):  # three validations, one bad record each: within the limit every time
        evaluator.start_pass()
        assert sum(len(b["label"]) for b in evaluator({"seq": np.arange(len(units))})) == 99
    assert evaluator.stats.bad == {"zero_bytes": 3}
    with pytest.raises(BadDataError, match="2 bad records in epoch 1"):
        list(evaluator({"seq": np.arange(len(units))}))  # a pass not started: counts add up
