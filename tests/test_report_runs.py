"""Tier 2+3: real short training runs (local Ray, SeaweedFS) made input-bound on purpose (reads
capped by the throttle proxy) and compute-bound on purpose (the same data read at full speed:
the pool makes 8x8 digits far faster than two CPU ResNet-18 ranks train on them); each run's
report must say so, name the store as the bottleneck of the throttled one, and render in
Chromium without console errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from report_pages import chromium, console_messages, ensure_chromium

from cluster.local.throttle import ThrottledProxy
from cluster.observability.report import load_facts
from cluster.observability.report.advice import advise
from cluster.observability.report.figures import figures
from cluster.observability.report.verdict import COMPUTE, INPUT, verdict

pytestmark = [pytest.mark.ray, pytest.mark.services]


@pytest.fixture(scope="module")
def small_digits(object_store):
    """A quarter of digits for training (449 rows) in 32-row row groups: a run is a handful of
    steps, and units small enough that a throttled store trickles blocks out all through it."""
    from pipelines import SourceConfig, plan_source
    from pipelines.datasets import write_digits

    url = write_digits(f"s3://{object_store.bucket}/report-digits", val_fraction=0.75,
                       row_group_rows=32).url
    source = SourceConfig(url=f"{url}/train", rows_per_unit=32)
    return source, plan_source(source)


def _run(tmp_path: Path, name: str, source, plan):
    from cluster.training.config import TrainConfig
    from cluster.training.trainer import run_training
    from pipelines import PipelineConfig, PreprocessConfig

    pre = PreprocessConfig(recipe="small", image_size=8, min_actors=1, max_actors=2,
                           output_rows=32)
    tc = TrainConfig(epochs=1, batch_size=32, lr=0.05, num_workers=2, run_name=name,
                     storage_path=str(tmp_path / "results"), report_dir=str(tmp_path / name))
    summary = run_training(tc, PipelineConfig(source=source, preprocess=pre), None, plan=plan)
    assert summary.report == str(tmp_path / name / "report.html")
    facts = load_facts(str(tmp_path / name))
    return summary, facts, figures(facts)


def test_throttled_store_makes_an_input_bound_run_and_the_report_says_so(
        ray_cluster, object_store, small_digits, tmp_path):
    import dataclasses

    from pipelines import StorageConfig

    source, plan = small_digits
    # ~450 digits of ~120 bytes each: 4 kB/s spreads the reads over the whole run, while the
    # trainers would take several times the ~30 img/s that lets through. Planned at full
    # speed (the plan is the same), read through the proxy.
    with ThrottledProxy("127.0.0.1", object_store.s3_port, bytes_per_s=4_000) as proxy:
        slow = dataclasses.replace(source, storage=StorageConfig(endpoint=proxy.endpoint))
        summary, facts, f = _run(tmp_path, "input", slow, plan)
    v = verdict(f)
    assert v.kind == INPUT, v.line
    assert f.trainer_demand > 1.5 * f.pool_rate, v.line
    assert f.stage_share["read"] > 0.5  # the actors spent their time reading
    advice = advise(f, facts.config, facts.summary)
    assert advice[0].startswith("storage reads take") and "the store is the bottleneck" \
        in advice[0], advice
    out = chromium(ensure_chromium(), Path(summary.report), "--dump-dom")
    assert console_messages(out.stderr) == [] and "input-bound" in out.stdout


def test_fast_store_and_slow_model_make_a_compute_bound_run_and_the_report_says_so(
        ray_cluster, small_digits, tmp_path):
    source, plan = small_digits
    summary, facts, f = _run(tmp_path, "compute", source, plan)
    v = verdict(f)
    assert v.kind == COMPUTE, v.line
    assert f.trainer_demand < f.actors * f.actor_rate  # the pool could make more
    assert f.pool_busy < 0.8  # the actors had room to spare
    assert sum(a.images for a in facts.actors) == plan.num_rows  # every row made once
    assert advise(f, facts.config, facts.summary)[0].startswith("compute-bound")
    assert (tmp_path / "compute" / "timeline.png").exists()
