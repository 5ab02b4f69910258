"""Stall-time observability.

Pure: the stall window, the Chrome trace and the PNG. Ray + services: a short training run on
local Ray, scraped by a real Prometheus; every dashboard panel's query must return data, the
feedline_ metrics must be on Ray's metrics endpoint, and --timeline's files must be written.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from cluster.observability import metrics as m
from cluster.observability.timeline import chrome_trace, write_timeline

DASHBOARDS = sorted((Path(__file__).parent.parent / "dashboards").glob("*.json"))
# What Grafana would substitute; the test evaluates panels over the run's time range.
GRAFANA_VARS = {"$__rate_interval": "30s", "$__interval": "2s", "$__range": "5m", "$run": ".*"}


# ---------------------------------------------------------------- pure
def test_stall_window_tracks_the_recent_share_of_waiting():
    w = m.StallWindow(window_s=10.0)
    assert w.add(wait=0.0, step=1.0, now=0.0) == 0.0
    assert w.add(wait=1.0, step=1.0, now=1.0) == pytest.approx(0.5)
    # 20 s later the first two steps have left the window: only the stalled one counts.
    assert w.add(wait=3.0, step=4.0, now=21.0) == pytest.approx(0.75)


def test_exported_names_follow_rays_prometheus_conventions():
    assert m.exported(m.DATA_WAIT, "_bucket") == "ray_feedline_data_wait_seconds_bucket"
    assert m.exported(m.EXAMPLES) == "ray_feedline_examples_total"
    assert all(name.startswith("feedline_") for name in m.METRICS)


def _spans():
    train = [(r, 100.0 + i, 100.0 + i + 0.3 * (r + 1), 100.0 + i + 0.35 * (r + 1),
              101.0 + i, 64) for r in (0, 1) for i in range(5)]
    pool = [("host:1", 99.0 + 0.8 * i, 99.7 + 0.8 * i, 256, 0) for i in range(6)]
    return train, pool


def test_chrome_trace_has_a_track_per_rank_and_per_actor_with_phase_spans():
    trace = chrome_trace(*_spans())
    names = {(e["pid"], e.get("tid"), e["args"]["name"]) for e in trace["traceEvents"]
             if e["ph"] == "M" and e["name"] == "thread_name"}
    assert {n for *_, n in names} == {"rank 0", "rank 1", "actor host:1"}
    spans = [e for e in trace["traceEvents"] if e["ph"] == "X"]
    assert {e["name"] for e in spans} == {"wait", "h2d", "compute", "block"}
    assert min(e["ts"] for e in spans) == 0.0  # relative to the first span
    wait0 = next(e for e in spans if e["name"] == "wait" and e["tid"] == 0)
    assert wait0["ts"] == pytest.approx(1e6) and wait0["dur"] == pytest.approx(0.3e6)


def test_write_timeline_writes_json_and_png(tmp_path):
    trace_path, png_path = write_timeline(str(tmp_path / "tl"), *_spans())
    assert json.loads(Path(trace_path).read_text())["traceEvents"]
    assert Path(png_path).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _panel_queries() -> list[tuple[str, str, str]]:
    out = []
    for path in DASHBOARDS:
        board = json.loads(path.read_text())
        for panel in board["panels"]:
            for target in panel["targets"]:
                expr = target["expr"]
                for var, value in GRAFANA_VARS.items():
                    expr = expr.replace(var, value)
                out.append((path.name, panel["title"], expr))
    return out


def test_dashboards_are_importable_grafana_json_with_a_datasource_variable():
    assert {p.name for p in DASHBOARDS} == {"feedline-stall.json", "feedline-pool.json"}
    for path in DASHBOARDS:
        board = json.loads(path.read_text())
        variables = {v["name"]: v for v in board["templating"]["list"]}
        assert variables["datasource"]["type"] == "datasource"
        for panel in board["panels"]:
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
            assert panel["targets"], panel["title"]
    assert (DASHBOARDS[0].parent / "provisioning" / "dashboards.yaml").exists()
    # Every feedline series a panel reads is one cluster/observability/metrics.py defines.
    known = {m.exported(n, s) for n, (kind, *_ ) in m.METRICS.items()
             for s in (("_bucket", "_sum", "_count") if kind == "histogram" else ("",))}
    used = {name for *_, expr in _panel_queries()
            for name in re.findall(r"ray_feedline_\w+", expr)}
    assert used and used <= known, used - known


# ---------------------------------------------------------------- real run + real Prometheus
@pytest.fixture(scope="session")
def prometheus_bin():
    if shutil.which("prometheus") is None:
        # The Debian package; the test setup installs it where it is missing (root, as in CI).
        subprocess.run("apt-get update -qq && DEBIAN_FRONTEND=noninteractive "
                       "apt-get install -y -qq --no-install-recommends prometheus",
                       shell=True, check=True, timeout=900, stdout=subprocess.DEVNULL)
    return shutil.which("prometheus")


@pytest.fixture(scope="module")
def observed_run(ray_cluster, object_store, prometheus_bin, tmp_path_factory):
    """A short digits run scraped by a real Prometheus, with 3 bad records planted in each
    split: the run must finish (skipped training rows shorten the last epoch) and count them.
    It echoes (e = 1.5, before augmentation), so the echo path, its accounting and its metrics
    run end to end here too, and the pool scaler watches it (one pool node, the max: it holds,
    and with echo_max 1 it leaves the run's own echo factor alone)."""
    from cluster.local.prometheus import LocalPrometheus, ray_metrics_targets
    from cluster.pool.policy import PolicyConfig
    from cluster.pool.scaler import ScalerConfig
    from cluster.training.config import TrainConfig
    from cluster.training.trainer import run_training
    from pipelines import EchoConfig, PipelineConfig, PreprocessConfig, SourceConfig
    from pipelines.datasets import write_digits

    url = write_digits(f"s3://{object_store.bucket}/observed", bad_train=3, bad_val=3).url
    pre = PreprocessConfig(recipe="small", image_size=8, min_actors=1, max_actors=2)
    # 3 bad records of 360 validation rows: above the default 0.1%, within 1%
    train = PipelineConfig(source=SourceConfig(url=f"{url}/train", max_bad_fraction=0.01),
                           preprocess=pre, echo=EchoConfig(factor=1.5))
    val = PipelineConfig(source=SourceConfig(url=f"{url}/val", max_bad_fraction=0.01),
                         preprocess=pre, train=False, shuffle=False)
    tc = TrainConfig(epochs=2, batch_size=32, lr=0.05, num_workers=2, cpus_per_worker=1,
                     run_name="observed", storage_path=str(tmp_path_factory.mktemp("results")))
    timeline = tmp_path_factory.mktemp("timeline")
    scaling = ScalerConfig(policy=PolicyConfig(min_nodes=1, max_nodes=1, cpus_per_node=2,
                                               gpus=2, echo_max=1.0), interval_s=2.0)
    with LocalPrometheus(targets=ray_metrics_targets(), scrape_s=1.0) as prom:
        start = time.time()
        summary = run_training(tc, train, val, timeline_dir=str(timeline), scaling=scaling)
        # Ray's metrics agent exports what workers reported up to ~10 s ago: wait until every
        # panel has data (or 30 s, and the panel test names the empty ones).
        deadline = time.time() + 30
        while time.time() < deadline and any(
                not prom.query_range(expr, start - 5, time.time(), step=2)
                for _, _, expr in _panel_queries()):
            time.sleep(1)
        time.sleep(2)  # one more scrape after the last panel filled
        yield {"prom": prom, "summary": summary, "start": start - 5, "end": time.time(),
               "timeline": timeline}




@pytest.mark.ray
@pytest.mark.services
def test_feedline_metrics_are_on_rays_prometheus_endpoint(observed_run, object_store):
    from cluster.local.prometheus import ray_metrics_targets

    text = "".join(urllib.request.urlopen(f"http://{t}/metrics", timeout=10).read().decode()
                   for t in ray_metrics_targets())
    # no credential in any metric name, label or value
    assert object_store.access_key not in text and object_store.secret_key not in text
    for name, suffix in ((m.DATA_WAIT, "_bucket"), (m.STEP, "_count"), (m.STALL_FRACTION, ""),
                         (m.EXAMPLES, ""), (m.PREPROCESS_IMAGES, "")):
        assert re.search(rf"^{m.exported(name, suffix)}\{{.*run=\"observed\"", text, re.M), name
    examples = [line for line in text.splitlines()
                if line.startswith(m.exported(m.EXAMPLES)) and 'run="observed"' in line]
    assert any('kind="echoed"' in line for line in examples)  # the run echoes (e = 1.5)
    assert any('kind="fresh"' in line for line in examples)


@pytest.mark.ray
@pytest.mark.services
def test_every_dashboard_panel_query_returns_data_from_a_real_prometheus(observed_run):
    prom, start, end = observed_run["prom"], observed_run["start"], observed_run["end"]
    assert all(t["health"] == "up" for t in prom.active_targets())
    empty = [(board, title, expr) for board, title, expr in _panel_queries()
             if not prom.query_range(expr, start, end, step=2)]
    assert not empty, "panels without data:\n" + "\n".join(map(str, empty))
    # The check can fail: a query on a metric nobody exports comes back empty.
    assert not prom.query_range("sum(rate(ray_feedline_no_such_metric_total[30s]))",
                                start, end, step=2)


@pytest.mark.ray
@pytest.mark.services
def test_prometheus_saw_the_echo_factor_of_the_run(observed_run):
    # The gauge lives in the run's echo controller, which ends with the run (and its series
    # with it on the live endpoint): Prometheus has it for the run's time range.
    prom, start, end = observed_run["prom"], observed_run["start"], observed_run["end"]
    series = prom.query_range(f'{m.exported(m.ECHO_FACTOR)}{{run="observed"}}', start, end)
    assert series and {float(v) for s in series for _, v in s["values"]} == {1.5}


@pytest.mark.ray
@pytest.mark.services
def test_pool_scaler_decided_and_prometheus_saw_it(observed_run):
    s = observed_run["summary"]
    assert len(s.pool_decisions) >= 5  # every 2 s over the run
    assert {d["target_nodes"] for d in s.pool_decisions} == {1}  # at its max of one node
    assert {d["ready"] for d in s.pool_decisions} == {1} and all(d["reason"]
                                                                  for d in s.pool_decisions)
    prom, start, end = observed_run["prom"], observed_run["start"], observed_run["end"]
    target = prom.query_range(f'{m.exported(m.POOL_TARGET_NODES)}{{run="observed"}}', start,
                              end)
    assert target and {float(v) for t in target for _, v in t["values"]} == {1.0}
    actions = prom.query_range(f'sum by (action) ({m.exported(m.POOL_DECISIONS)}'
                               f'{{run="observed"}})', start, end)
    assert actions and {a["metric"]["action"] for a in actions} <= {"hold", "wait"}


@pytest.mark.ray
@pytest.mark.services
def test_run_summary_carries_the_totals(observed_run, object_store):
    s = observed_run["summary"]
    # 1,434 good training rows per epoch: every one is trained on once as a fresh example
    # (the equal split across 2 ranks may leave out the last odd row).
    assert 2 * 1434 - 2 <= s.fresh_examples <= 2 * 1434
    # e = 1.5: half the fresh examples once more (random, seeded), so about 1,434 echoes.
    assert s.echoed_examples == pytest.approx(0.5 * s.fresh_examples, rel=0.03)
    assert s.echo_mode == "example" and s.echo_factor == pytest.approx(1.5, rel=0.03)
    assert [h["epoch"] for h in s.history] == [1, 2]
    assert s.history[-1]["run_fresh"] == s.fresh_examples
    # 3 bad records per split, met in each of 2 epochs (and 2 validations): each counted once,
    # every meeting a skip, and each written once to bad_records.jsonl for the user to fix.
    assert s.bad_records == 3 + 3 and s.bad_skips == 2 * 3 + 2 * 3
    assert s.bad_by_kind == {"zero_bytes": 2, "not_an_image": 2, "truncated": 2}
    listed = [json.loads(line) for line in _read(s.bad_records_file).splitlines()]
    assert sorted(r["kind"] for r in listed) == sorted(["zero_bytes", "not_an_image",
                                                        "truncated"] * 2)
    assert all(r["key"].startswith("digits/") and r["shard"].startswith("s3://") and r["why"]
               for r in listed)
    # where they are: the first shard of each split, and a sample of their keys
    assert set(s.bad_shards) == {f"s3://{object_store.bucket}/observed/{split}/part-00000.parquet"
                                 for split in ("train", "val")}
    assert sum(s.bad_shards.values()) == s.bad_records
    assert s.bad_sample_keys and all(k.startswith("digits/") for k in s.bad_sample_keys)
    assert s.data_wait_s > 0 and s.compute_s > 0 and s.h2d_s >= 0
    assert s.data_wait_fraction == pytest.approx(
        s.data_wait_s / (s.data_wait_s + s.h2d_s + s.compute_s), rel=1e-6)
    assert s.val_rows == 360


@pytest.mark.ray
@pytest.mark.services
def test_timeline_has_every_step_of_every_rank_and_the_pool_blocks(observed_run):
    d = observed_run["timeline"]
    trace = json.loads((d / "timeline.json").read_text())
    spans = [e for e in trace["traceEvents"] if e["ph"] == "X"]
    steps = {rank: sum(1 for e in spans if e["name"] == "compute" and e["tid"] == rank)
             for rank in (0, 1)}
    assert steps[0] == steps[1] > 0  # DDP: equal step counts
    assert any(e["name"] == "block" for e in spans)
    assert (d / "timeline.png").read_bytes()[:4] == b"\x89PNG"


def _read(path: str) -> str:
    """A file the run wrote to its storage folder (local here)."""
    return Path(path).read_text()
