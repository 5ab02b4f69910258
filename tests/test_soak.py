"""Tier 1: the endurance check behind `jobs/soak.py` (cluster.bench.soak: its settings and its
verdict on sampled memory), without a run."""

import csv
import json
import types

import pytest

from cluster.bench import soak

ENDS = [10.0, 20.0, 30.0]  # three epochs, one every 10 s


def samples(actor_mb_at: dict[float, float], store_mb: float = 100.0, store_last: float = 100.0):
    out = []
    for t, mb in sorted(actor_mb_at.items()):
        out.append((t, 7, "ray::MapWorker(Preprocessor)", mb))
        out.append((t, 0, "object store", store_mb if t <= ENDS[1] else store_last))
        out.append((t, 8, "ray::RayTrainWorker", 900.0))  # steady
    return out


def test_flat_memory_passes():
    v = soak.verdict(samples({12.0: 500.0, 19.0: 510.0, 25.0: 520.0, 29.0: 540.0, 31.0: 540.0}),
                     ENDS, 2, 3)
    assert v["ok"] and {p["pid"] for p in v["processes"]} == {7, 8}
    [actor] = [p for p in v["processes"] if p["pid"] == 7]
    # compared at the end of each epoch: the last sample in it wins
    assert (actor["rss_mb_first"], actor["rss_mb_last"]) == (510.0, 540.0)
    assert actor["compared_at_epoch"] == 3


def test_a_process_that_ended_early_is_compared_at_the_last_epoch_it_outlived():
    # epochs of 10 s; a pool actor lives into epoch 4 and grows only while shutting down
    ends = [10.0, 20.0, 30.0, 40.0, 50.0]
    actor = [(t, 7, "ray::MapWorker(Preprocessor)", mb)
             for t, mb in ((19.0, 500.0), (29.0, 505.0), (33.0, 506.0), (34.0, 590.0))]
    trainer = [(t, 8, "ray::RayTrainWorker", 900.0) for t in (19.0, 49.0, 51.0)]
    v = soak.verdict(sorted(actor + trainer), ends, 2, 5)
    by_pid = {p["pid"]: p for p in v["processes"]}
    assert by_pid[7]["compared_at_epoch"] == 3 and by_pid[7]["rss_mb_last"] == 505.0
    assert by_pid[8]["compared_at_epoch"] == 5
    assert v["ok"]


def test_a_process_growing_past_ten_percent_fails_and_is_named():
    v = soak.verdict(samples({19.0: 500.0, 29.0: 560.0, 31.0: 560.0}), ENDS, 2, 3)
    assert not v["ok"]
    assert [p["title"] for p in v["processes"] if not p["ok"]] == ["ray::MapWorker(Preprocessor)"]


def test_object_store_growth_fails_beyond_ten_percent_and_the_floor():
    # +30 MiB on 100: past 10% and past the 16 MiB floor
    flat = {19.0: 500.0, 29.0: 500.0, 31.0: 500.0}
    assert not soak.verdict(samples(flat, 100.0, 130.0), ENDS, 2, 3)["ok"]
    # +12 MiB on 20: 60%, but under the floor for tiny figures
    assert soak.verdict(samples(flat, 20.0, 32.0), ENDS, 2, 3)["ok"]


def test_processes_not_alive_in_both_epochs_are_not_compared_and_none_at_all_fails():
    v = soak.verdict([(19.0, 7, "ray::A", 100.0), (29.0, 9, "ray::B", 900.0)], ENDS, 2, 3)
    assert v["processes"] == [] and not v["ok"]
    assert soak.epoch_of(10.0, ENDS) == 1 and soak.epoch_of(10.1, ENDS) == 2
    assert soak.epoch_of(31.0, ENDS) == 0


def test_settings_are_checked_once_and_the_read_cap_follows_the_data():
    assert soak.SoakConfig().last_epoch == 10
    assert soak.SoakConfig(epochs=4, first=1, last=3).last_epoch == 3
    for bad in ({"first": 0}, {"first": 10}, {"epochs": 4, "last": 5}, {"first": 3, "last": 3}):
        with pytest.raises(ValueError, match="--first < --last"):
            soak.SoakConfig(**bad)
    assert soak.SoakConfig().read_cap_kb_per_s == 12.0  # digits: capped
    assert soak.SoakConfig(synthetic=100).read_cap_kb_per_s == 0.0
    assert soak.SoakConfig(synthetic=100, read_kb_per_s=50.0).read_cap_kb_per_s == 50.0


def test_results_place_each_sample_in_its_epoch_and_hold_the_run_figures(tmp_path, capsys):
    cfg = soak.SoakConfig(out=str(tmp_path), epochs=3)
    run = types.SimpleNamespace(history=[{"at": end} for end in ENDS], val_accuracy=0.97,
                                wall_s=31.26)
    given = samples({19.0: 500.0, 29.0: 600.0, 31.0: 600.0})
    result = soak.write_results(cfg, given, run)
    assert not result["ok"] and result["val_accuracy"] == 0.97 and result["wall_s"] == 31.3
    assert json.loads((tmp_path / "soak.json").read_text()) == result
    with open(tmp_path / "samples.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(given) == result["samples"]
    assert [r["epoch"] for r in rows if r["pid"] == "7"] == ["2", "3", "0"]
    soak.print_report(cfg, result)
    out = capsys.readouterr().out
    assert "ray::MapWorker(Preprocessor)" in out and "20.0%  !" in out
    assert "memory flat from epoch 2 to 3: NO (val accuracy 0.9700, 31 s)" in out


def test_the_job_flags_default_to_the_config():
    from cluster.cli.flags import parse_config
    from jobs.soak import parser

    assert parse_config(parser(), soak.SoakConfig, ["--out", "d"]) == soak.SoakConfig(out="d")
    cfg = parse_config(parser(), soak.SoakConfig, ["--out", "d", "--last", "5",
                                                   "--read-kb-per-s", "0"])
    assert (cfg.last_epoch, cfg.read_cap_kb_per_s) == (5, 0.0)
