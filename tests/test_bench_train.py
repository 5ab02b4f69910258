"""Tier 1: the training benchmark's settings and table (cluster.bench.train), without a run; the
flags of jobs/bench_train.py take their defaults from its config."""

import pytest

from cluster.bench.train import LOADERS, TrainBenchConfig, print_results


def test_the_pool_gets_the_cores_the_trainers_leave():
    assert TrainBenchConfig(num_workers=1).pool_size(cores=8) == 7
    assert TrainBenchConfig(num_workers=2, use_gpu=True).pool_size(cores=8) == 8
    assert TrainBenchConfig(num_workers=4).pool_size(cores=2) == 1  # never none
    assert TrainBenchConfig(pool=3).pool_size(cores=8) == 3


def test_both_loaders_train_with_the_same_settings():
    tc = TrainBenchConfig(model="resnet50", epochs=3, batch_size=16, use_gpu=True,
                          amp=True).train_config(num_classes=10)
    assert (tc.model, tc.num_classes, tc.epochs, tc.batch_size) == ("resnet50", 10, 3, 16)
    assert tc.use_gpu and tc.amp and not tc.small_input and tc.cpus_per_worker == 0.5
    assert TrainBenchConfig().train_config(num_classes=10).cpus_per_worker == 1.0


def test_loaders_and_models_are_checked_when_the_config_is_made():
    assert TrainBenchConfig().loader_names == list(LOADERS)
    assert TrainBenchConfig(loaders=" plain, ").loader_names == ["plain"]
    for bad in ("feedline,torch", ",", ""):
        with pytest.raises(ValueError, match="unknown loaders"):
            TrainBenchConfig(loaders=bad)
    with pytest.raises(ValueError, match="unknown model"):
        TrainBenchConfig(model="vit")


def test_the_table_has_a_row_per_loader(capsys):
    bench = {"device": "CPU (2 cores)", "num_rows": 600, "pool": 1,
             "results": {"feedline": {"images_per_s": 101.04, "data_wait_fraction": 0.081,
                                      "wall_s": 30.0},
                         "plain": {"images_per_s": 52.0, "data_wait_fraction": 0.5,
                                   "wall_s": 61.25}}}
    print_results(TrainBenchConfig(), bench)
    lines = capsys.readouterr().out.splitlines()
    assert lines[1] == ("resnet18 64px, 1 worker(s) on CPU (2 cores), 600 images x 2 epochs, "
                        "1 preprocessing actors")
    assert lines[3].split() == ["feedline", "101.0", "8.1%", "30.0"]
    assert lines[4].split() == ["plain", "52.0", "50.0%", "61.2"]


def test_the_job_flags_default_to_the_config():
    from cluster.cli.flags import parse_config
    from jobs.bench_train import parser

    assert parse_config(parser(), TrainBenchConfig, []) == TrainBenchConfig()
    cfg = parse_config(parser(), TrainBenchConfig, ["--pool", "2", "--amp", "--loaders", "plain"])
    assert cfg.pool == 2 and cfg.amp and cfg.loader_names == ["plain"]
    with pytest.raises(SystemExit):
        parse_config(parser(), TrainBenchConfig, ["--loaders", "torch"])
