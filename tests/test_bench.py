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
         "limit,feedline", "--seconds", "2", "--count", "1100", "--json", str(out)],
        capture_output=True, text=True, timeout=400)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["cores"] == os.cpu_count()
    assert set(result["systems"]) == {"limit", "feedline"}
    for name, figures in result["systems"].items():
        assert FIELDS <= set(figures), name
        assert figures["images_per_s"] > 0 and figures["first_batch_s"] > 0
    # A Ray system's cold start (the first dataset on its fresh Ray) is reported beside it.
    assert result["systems"]["feedline"]["first_batch_cold_s"] > 0
    assert "first_batch_cold_s" not in result["systems"]["limit"]
    assert "x limit" in run.stdout and "feedline" in run.stdout  # the printed table
