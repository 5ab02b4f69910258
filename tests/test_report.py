"""The run report: pure verdict and advice from figures, the data model's round trip, and the
page rendered in a real headless Chromium (no console errors, not blank, no sideways scrolling,
nothing fetched). The verdicts of real runs are checked in test_report_runs.py and
test_observability.py."""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from report_pages import (
    CONFIG,
    chromium,
    console_messages,
    ensure_chromium,
    fabricated_spans,
    fabricated_summary,
    page_width,
    pixel_spread,
)

from cluster.observability.report import build_report, load_facts, write_report
from cluster.observability.report.advice import actors_needed, advise, echo_needed
from cluster.observability.report.collect import collect
from cluster.observability.report.figures import Figures, figures
from cluster.observability.report.model import RunFacts
from cluster.observability.report.series import bin_width
from cluster.observability.report.verdict import BALANCED, COMPUTE, INPUT, verdict
from cluster.observability.timeline import write_timeline

ROOT = Path(__file__).parent.parent


def fig(**kw) -> Figures:
    base = dict(wait_fraction=0.4, run_wait_fraction=0.42, compute_fraction=0.6,
                trainer_rate=1860.0, trainer_demand=3100.0, actors=4, pool_rate=1840.0,
                pool_fresh_rate=1840.0, pool_busy=0.97, actor_rate=1840 / 4 / 0.97,
                stage_share={"read": 0.1, "decode": 0.3, "augment": 0.5, "other": 0.05,
                             "handoff": 0.05}, read_mb_s=180.0, echo_factor=1.0,
                pool_window_s=600.0)
    return Figures(**{**base, **kw})


CFG = {**CONFIG, "pool_max": 4}


# ---------------------------------------------------------------- pure: verdict
@pytest.mark.parametrize(("wait", "kind"), [(0.40, INPUT), (0.25, INPUT), (0.24, BALANCED),
                                            (0.11, BALANCED), (0.10, COMPUTE), (0.0, COMPUTE)])
def test_verdict_follows_the_wait_fraction(wait, kind):
    assert verdict(fig(wait_fraction=wait)).kind == kind


def test_verdict_line_carries_the_numbers_behind_it():
    line = verdict(fig()).line
    assert line.startswith("input-bound: the trainers waited for data 40% of step time")
    assert "(42% counting start-up)" in line
    assert "they took 1,860 img/s and would take 3,100 img/s" in line
    assert "the pool made 1,840 img/s with 4 actors at 97% busy" in line


# ---------------------------------------------------------------- pure: advice
def test_saturated_pool_asks_for_cores_or_an_echo_factor():
    assert actors_needed(fig()) == 7 and echo_needed(fig()) == 1.7
    (line,) = advise(fig(), CFG, {})
    assert line == ("the pool makes 1,840 img/s with 4 actors at 97% busy, the trainers would "
                    "take 3,100 img/s: add 3 pool cores (`--pool-max 7`), or "
                    "`--echo-factor 1.7` removes the stall.")


def test_pool_max_already_high_enough_points_at_the_pool_resource():
    (line,) = advise(fig(), {**CFG, "pool_max": 8}, {})
    assert "add 3 pool cores (`preprocess_cpu` resources; `--pool-max 8` already allows them)" \
        in line


def test_slow_store_is_named_with_its_share_and_speed():
    f = fig(stage_share={"read": 0.41, "decode": 0.2, "augment": 0.3, "other": 0.04,
                         "handoff": 0.05}, read_mb_s=12.0)
    lines = advise(f, CFG, {})
    assert lines[0].startswith("storage reads take 41% of pool time at 12.0 MB/s: the store "
                               "is the bottleneck")
    assert "`--echo-factor 1.7` removes the stall" in lines[0]


def test_idle_pool_with_waiting_trainers_points_between_them():
    (line,) = advise(fig(pool_busy=0.35, actors=2), CFG, {})
    assert line.startswith("only 2 of `--pool-max 4` actors ran, and the pool is 35% busy, "
                           "yet the trainers wait 40% of step time")
    assert "`--prefetch-batches 4`" in line


def test_compute_bound_run_gives_back_pool_cores_and_echo():
    f = fig(wait_fraction=0.02, pool_busy=0.38, echo_factor=1.5)
    assert advise(fig(wait_fraction=0.02, pool_busy=0.1), CFG, {})[0].endswith(
        "`--pool-max 1` would do (3 pool cores fewer).")
    assert "(1 pool core fewer)" in advise(fig(wait_fraction=0.02, pool_busy=0.5), CFG, {})[0]
    lines = advise(f, CFG, {})
    assert lines[0] == "compute-bound: the pool is 38% busy, `--pool-max 2` would do (2 pool " \
                       "cores fewer)."
    assert any("`--amp`" in line for line in lines)  # GPU run without bf16
    assert any("`--echo-factor 1`" in line for line in lines)


def test_balanced_run_suggests_headroom_and_bad_records_are_counted():
    summary = fabricated_summary(0.18)
    lines = advise(fig(wait_fraction=0.18), CFG, summary)
    assert lines[0].startswith("balanced: the pool (4 actors at 97% busy, 1,840 img/s)")
    assert "`--pool-max 5`" in lines[0]
    assert lines[-1] == ("7 bad records were skipped (not_an_image 1, truncated 4, "
                         "zero_bytes 2): fix them at the source; each is listed in "
                         "`s3://results/resnet50-imagenet-0412/bad_records.jsonl`.")


# ---------------------------------------------------------------- pure: data model
def _facts(wait: float, **kw) -> RunFacts:
    train, pool, work = fabricated_spans(wait, **kw)
    return collect(fabricated_summary(0.5), CONFIG, train, pool, work, "timeline.png")


def test_figures_from_spans_leave_out_the_cold_start_and_use_the_training_window():
    facts = _facts(0.25)
    f = figures(facts)
    # every step but the first waits 0.25 s of 0.46 s; the first waits 8 s (the cold start)
    assert f.wait_fraction == pytest.approx(0.25 / 0.46, rel=1e-6)
    assert f.trainer_demand == pytest.approx(2 * 64 / 0.21, rel=1e-6)
    assert f.actors == 2 and 0.8 < f.pool_busy < 1.0
    assert f.stage_share["read"] == pytest.approx(0.2, abs=0.01)
    assert f.read_mb_s == pytest.approx(2 * 9000 * 256 / (0.2 * facts.actors[0].busy_s
                                                          / (facts.actors[0].images / 256))
                                        / 1e6, rel=0.01)
    assert verdict(f).kind == INPUT


def test_run_facts_survive_json_and_bins_stay_few():
    facts = _facts(0.25)
    again = RunFacts.from_json(facts.to_json())
    assert again == facts
    assert len(facts.pool_bins) <= 60 and all(len(v) <= 60 for v in facts.step_bins.values())
    assert bin_width(59) == 1.0 and bin_width(61) == 2.0 and bin_width(7200) == 120.0
    with pytest.raises(ValueError, match="version"):
        RunFacts.from_json(json.dumps({**dataclasses.asdict(facts), "version": 99}))


# ---------------------------------------------------------------- the page in Chromium
@pytest.fixture(scope="module")
def chromium_bin():
    return ensure_chromium()


@pytest.fixture(scope="module")
def report_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("report")
    train, pool, work = fabricated_spans(0.25)
    write_timeline(str(d), train, [(a, s, e, n, 0) for a, s, e, n, *_ in pool])
    facts = collect(fabricated_summary(0.5), CONFIG, train, pool, work, "timeline.png")
    return d, Path(write_report(str(d), facts))


def test_report_is_self_contained(report_dir):
    _, page = report_dir
    text = page.read_text()
    assert not re.search(r"""(src|href)=["']?(https?:|//|file:)""", text)
    assert "<script" not in text and "script-src 'none'" in text
    assert text.count('src="data:image/png;base64,') == 5  # 4 charts and the timeline


def test_report_renders_in_chromium_without_console_errors_and_is_not_blank(report_dir,
                                                                            chromium_bin):
    d, page = report_dir
    shot = d / "shot.png"
    out = chromium(chromium_bin, page, f"--screenshot={shot}")
    assert shot.exists(), out.stderr[-2000:]
    assert console_messages(out.stderr) == []
    assert pixel_spread(shot.read_bytes()) > 20  # charts, text: far from one flat colour
    dom = chromium(chromium_bin, page, "--dump-dom").stdout
    assert "input-bound" in dom and "What to do" in dom and "--pool-max" in dom
    assert "train/n01440764/n01440764_10026.JPEG" in dom  # a bad record's key


@pytest.mark.parametrize("width", [1280, 800])
def test_report_needs_no_sideways_scrolling(report_dir, chromium_bin, width):
    _, page = report_dir
    scroll, client = page_width(chromium_bin, page, width)
    assert scroll <= client, (scroll, client)


def test_the_chromium_checks_can_fail(report_dir, chromium_bin, tmp_path):
    """A page that fetches from the network logs a console error; a page wider than the
    window scrolls sideways: the checks above would see both."""
    _, page = report_dir
    bad = tmp_path / "bad.html"
    bad.write_text(page.read_text().replace(
        "</body>", '<img src="http://127.0.0.1:9/x.png"><div style="width:3000px">'
                   'x</div></body>'))
    assert console_messages(chromium(chromium_bin, bad, "--dump-dom").stderr)
    scroll, client = page_width(chromium_bin, bad, 1024)
    assert scroll > client


def test_report_job_rebuilds_the_page_from_the_run_files(report_dir):
    d, page = report_dir
    page.unlink()
    out = subprocess.run([sys.executable, str(ROOT / "jobs" / "report.py"), str(d)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("input-bound: the trainers waited")
    assert f"report: {page}" in out.stdout and page.exists()
    assert load_facts(str(d)).run == "resnet50-imagenet-0412"
    assert build_report(str(d)) == str(page)
    missing = subprocess.run([sys.executable, str(ROOT / "jobs" / "report.py"),
                              str(d / "nope")], capture_output=True, text=True, timeout=120)
    assert missing.returncode == 2 and "run.json not found" in missing.stderr
