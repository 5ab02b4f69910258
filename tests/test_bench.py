"""Tier 3: the pipeline benchmark runs against the embedded object store and writes its JSON.
(A smoke test of the contract; performance figures live in the benchmark's output, not here.)"""

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.services
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIELDS = {"images_per_s", "images_per_s_per_core", "ratio_to_limit", "first_batch_s",
          "peak_rss_mb", "object_store_peak_mb"}


def test_bench_pipeline_writes_every_field_for_every_system(tmp_path):
    out = tmp_path / "bench.json"
    run = subprocess.run(
        [sys.executable, os.path.join(ROOT, "jobs", "bench_pipeline.py"), "--systems",
         "limit,torchvision,decode_limit,ceiling,feedline", "--seconds", "2", "--count", "1100",
         "--json", str(out)],
        capture_output=True, text=True, timeout=400)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["cores"] == os.cpu_count()
    systems = result["systems"]
    assert set(systems) == {"limit", "torchvision", "decode_limit", "ceiling", "feedline"}
    cores = result["cores"]
    for name, figures in systems.items():
        assert FIELDS <= set(figures), name
        assert figures["images_per_s"] > 0 and figures["first_batch_s"] > 0
        # Every core of the steady window is accounted for, by role (idle included).
        split = figures["cpu_cores"]
        assert set(split) == {"workers", "driver", "Ray's own", "object store", "other", "idle"}
        assert abs(sum(split.values()) - cores) < 0.2 * cores, (name, split)
    # The one-process systems take turns, first and again last; the limit's figure, which
    # every ratio divides by, is the mean of its two.
    runs = systems["limit"]["images_per_s_runs"]
    assert len(runs) == 2 and systems["limit"]["images_per_s"] == pytest.approx(sum(runs) / 2)
    assert systems["feedline"]["ratio_to_limit"] == pytest.approx(
        systems["feedline"]["images_per_s"] / (sum(runs) / 2 * cores))
    # The ceiling's plain processes do the work; the limit does it in the driver; feedline's
    # pool actors are workers too, and its Ray takes a share even at rest.
    assert systems["ceiling"]["cpu_cores"]["workers"] > systems["ceiling"]["cpu_cores"]["driver"]
    assert systems["limit"]["cpu_cores"]["driver"] > 0.5
    assert systems["feedline"]["cpu_cores"]["workers"] > 0.5
    assert systems["feedline"]["ray_at_rest_cores"] > 0
    assert systems["ceiling"]["ratio_to_ceiling"] == pytest.approx(1.0)
    # The one-process systems are per-core rates; the limit is compared with both of them.
    for name in ("limit", "torchvision", "decode_limit"):
        assert systems[name]["images_per_s_per_core"] == systems[name]["images_per_s"]
        assert len(systems[name]["images_per_s_runs"]) == 2 and systems[name]["cpu_s"] > 0
    limit = systems["limit"]["images_per_s"]
    assert systems["limit"]["ratio_to_torchvision"] == pytest.approx(
        limit / systems["torchvision"]["images_per_s"])
    assert systems["limit"]["ratio_to_decode_limit"] == pytest.approx(
        limit / systems["decode_limit"]["images_per_s"])
    assert systems["feedline"]["ratio_to_ceiling"] == pytest.approx(
        systems["feedline"]["images_per_s"] / systems["ceiling"]["images_per_s"])
    assert "x torchvision" in run.stdout and "x ceiling" in run.stdout
    # A Ray system's cold start (the first dataset on its fresh Ray) is reported beside it.
    assert systems["feedline"]["first_batch_cold_s"] > 0
    # Its first batch on the running Ray is the median of five datasets built on it.
    runs = systems["feedline"]["first_batch_runs_s"]
    assert len(runs) == 5 and systems["feedline"]["first_batch_s"] == sorted(runs)[2]
    # ... and split into parts told by its actors' spans, which account for all of it.
    parts = systems["feedline"]["first_batch_parts_s"]
    assert set(parts) == {"build", "actors_up", "first_block", "to_driver"}
    assert all(v > 0 for v in parts.values()), parts
    assert sum(parts.values()) == pytest.approx(systems["feedline"]["first_batch_s"], rel=0.25)
    assert "first_batch_cold_s" not in systems["limit"]
    assert "x limit" in run.stdout and "feedline" in run.stdout  # the printed table
    assert "where the" in run.stdout and "cores went" in run.stdout


def test_first_batch_parts_are_read_from_each_datasets_own_spans(tmp_path):
    from cluster.bench.startup import BuildClock, SpanFile, first_batch_parts
    from pipelines.observe import BlockSpan

    spans = SpanFile(str(tmp_path / "spans"))
    clock = BuildClock(spans, builds=[(0.0, 0.5), (100.0, 100.4), (200.0, 200.6)])
    # Two actors per dataset; blocks of the first (cold) dataset must not count for the others.
    for start, end in ((3.0, 4.0), (102.0, 102.7), (102.5, 102.9), (203.0, 203.5),
                       (203.2, 203.4)):
        spans.on_block(BlockSpan(start, end, 128, 0))
    parts = first_batch_parts(clock, [3.0, 4.0])  # the last two datasets' first batches
    # Dataset 2: built in 0.4 s, first call at 102.0 (1.6 s on), its first block 0.7 s later,
    # the batch 0.3 s after that; dataset 3: 0.6, 2.4, 0.4 (the block of 203.4), 0.6.
    assert parts == pytest.approx({"build": 0.5, "actors_up": 2.0, "first_block": 0.55,
                                   "to_driver": 0.45})
