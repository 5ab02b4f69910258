"""Tier 1: the data-echoing experiment's analysis (cluster.bench.echo_experiment) on made-up run
summaries: its rows, medians, files and checks, without a run."""

import csv
import json
import types

import pytest

from cluster.bench.echo_experiment import (
    COLUMNS,
    SETTINGS,
    EchoExperimentConfig,
    first_at_target,
    report,
    result_row,
    setting_table,
)


def summary(speed: float, fresh_per_s: float, echo: float):
    """A run's training summary: accuracy climbs with steps; fresh examples follow the pipeline."""
    history = []
    for i in range(1, 9):
        t = 10.0 * i
        fresh = fresh_per_s * t
        history.append({"epoch": i / 4, "at": 1030.0 + t, "elapsed_s": t,
                        "val_accuracy": min(0.99, 0.02 * speed * t), "run_fresh": fresh,
                        "run_echoed": fresh * (echo - 1), "run_steps": fresh * echo / 64})
    return types.SimpleNamespace(history=history, first_read_at=1000.0, h2d_s=1.0,
                                 compute_s=40.0, num_workers=2,
                                 echo_factor=echo, data_wait_fraction=0.5, wall_s=100.0,
                                 echo_changes=[[0.0, echo, "fixed"]])


def runs(speeds=(0.6, 0.9, 1.4, 1.3), repeats=2, target=0.9) -> list[dict]:
    rows = []
    for repeat in range(repeats):
        for (mode, factor), speed, echo in zip(SETTINGS, speeds, (1, 2, 4, 3.5), strict=True):
            row = result_row(mode, factor, summary(speed, 40.0, echo), target=target)
            row["repeat"] = repeat
            rows.append(row)
    return rows


def test_a_run_row_counts_from_the_first_validation_at_target():
    row = result_row("example", "2", summary(0.9, 40.0, 2), target=0.9)
    # accuracy 0.018 * t reaches 0.9 at t = 50 s: 2,000 fresh examples, 2 x 2,000 / 64 steps
    assert row["reached"] and row["wall_s_to_target"] == 50.0
    assert row["from_first_read_s_to_target"] == 80.0  # the first read was 30 s before t = 0
    assert (row["fresh_examples_to_target"], row["steps_to_target"]) == (2000, 62)
    assert row["trainer_rate"] == pytest.approx(2 * 3200 * 2 / 41.0)
    assert row["fresh_rate"] == pytest.approx(40.0)
    missed = result_row("none", "1", summary(0.1, 40.0, 1), target=0.9)
    assert not missed["reached"] and missed["wall_s_to_target"] is None
    assert first_at_target([{"val_accuracy": None}, {"val_accuracy": 0.5}], 0.5) == {
        "val_accuracy": 0.5}


def test_the_table_takes_medians_over_the_runs_that_reached_the_target():
    rows = runs(repeats=1) + runs(speeds=(0.6, 0.9, 1.4, 0.1), repeats=1)
    auto = setting_table(rows)[3]
    assert auto["runs"] == 2 and not auto["reached"]  # one auto run missed
    assert auto["wall_s_to_target"] == 40.0  # the median of the one that reached it
    assert EchoExperimentConfig(quick=True).runs_per_setting == 1
    assert EchoExperimentConfig(repeats=1).runs_per_setting == 2


def test_a_missed_target_fails_the_checks_and_says_what_to_do(tmp_path, capsys):
    rows = runs(speeds=(0.1, 0.9, 1.4, 1.3))  # no echo never reaches the target
    assert report(EchoExperimentConfig(out=str(tmp_path), target=0.9), rows) == 1
    out = capsys.readouterr().out
    assert "auto or no echo missed the accuracy target: raise --epochs" in out
    assert "FAIL  auto_wall_at_most_0.5x" in out


def test_echo_experiment_report_writes_the_csv_the_plot_and_checks_the_targets(tmp_path):
    rows = runs()
    cfg = EchoExperimentConfig(out=str(tmp_path), target=0.9, read_kbps=7.0)
    code = report(cfg, rows)
    with open(tmp_path / "results.csv") as f:
        table = list(csv.DictReader(f))
    assert tuple(table[0])[:len(COLUMNS)] == COLUMNS
    assert [(r["mode"], r["factor"]) for r in table] == list(SETTINGS)
    assert table[0]["wall_s_to_target"] == "80.0" and table[3]["wall_s_to_target"] == "40.0"
    assert (tmp_path / "results.png").read_bytes()[:4] == b"\x89PNG"
    checks = json.loads((tmp_path / "summary.json").read_text())["checks"]
    assert checks["auto_wall_at_most_0.5x"] and checks["auto_fresh_at_most_1.25x"]
    assert code == (0 if all(checks.values()) else 1)


def test_the_job_flags_default_to_the_config():
    from cluster.cli.flags import parse_config
    from jobs.echo_experiment import parser

    def parse(*argv):
        return parse_config(parser(), EchoExperimentConfig, list(argv))

    assert parse("--out", "d") == EchoExperimentConfig(out="d")
    assert parse("--out", "d", "--quick").runs_per_setting == 1
    assert parse("--out", "d", "--echo-mode", "batch").echo_mode == "batch"
