"""The scaling simulator, tier 1 (pure): the model's invariants, determinism, the CLI's outputs,
and feedline's targets on the standard scenarios (the simulator is deterministic, so they are
checked exactly as `jobs/simulate_scaling.py` reports them)."""

from __future__ import annotations

import csv
import dataclasses
import math
import os
import subprocess
import sys

import pytest

from cluster.pool.simulate import HOUR, POLICIES, SCENARIOS, Change, Scenario, reversals, simulate

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEADY = Scenario(name="steady", description="nothing changes", gpus=64, max_nodes=80,
                  hours=2.0)


def test_a_pool_that_keeps_up_finishes_on_time_with_no_stall():
    for policy in ("fixed", "oracle", "feedline"):
        r = simulate(STEADY, policy)
        assert r.gpu_stall_fraction < 0.005, policy
        assert r.job_hours == pytest.approx(2.0, rel=0.005), policy


def test_fixed_pool_accounting_is_exact():
    # Half the throughput from hour 1: the fixed pool (32 nodes) feeds half the demand, so the
    # second half of the work takes twice as long and the GPUs wait half the time.
    sc = Scenario(name="halved", description="", gpus=64, max_nodes=80, hours=2.0,
                  changes=(Change(HOUR, node_rate_factor=0.5),))
    r = simulate(sc, "fixed")
    assert r.job_hours == pytest.approx(3.0, rel=1e-6)
    assert r.gpu_stall_fraction == pytest.approx(1.0 / 3.0, rel=1e-6)
    assert r.cpu_node_hours == pytest.approx(32 * 3.0, rel=1e-6)
    assert r.total_cost == pytest.approx(64 * 4.0 * 3.0 + 0.8 * 32 * 3.0, rel=1e-6)
    assert r.reversals == 0


def test_echoed_examples_count_for_less_than_fresh_ones():
    sc = Scenario(name="capped", description="", gpus=64, max_nodes=16, hours=2.0)
    r = simulate(sc, "oracle")  # 16 of the 32 nodes it needs: echo 2, no stall
    assert r.gpu_stall_fraction < 0.001
    assert all(e == pytest.approx(2.0) for _, _, _, e in r.timeline)
    # Half the examples fresh, half echoed at half the value: 3/4 of full speed.
    assert r.job_hours == pytest.approx(2.0 / 0.75, rel=0.01)


def test_oracle_never_stalls_where_the_max_allows_and_uses_the_least_nodes():
    for sc in SCENARIOS.values():
        o = simulate(sc, "oracle")
        assert o.gpu_stall_fraction < 0.001, sc.name
        for p in POLICIES:
            r = simulate(sc, p)
            if r.gpu_stall_fraction < 0.01:  # anything that also fed the GPUs used more
                assert r.cpu_node_hours >= o.cpu_node_hours * 0.999, (sc.name, p)


def test_same_seed_same_result_and_the_seed_matters():
    sc = SCENARIOS["noisy-neighbour-64"]
    assert simulate(sc, "feedline", seed=3) == simulate(sc, "feedline", seed=3)
    assert simulate(sc, "feedline", seed=3).timeline != simulate(sc, "feedline", seed=4).timeline


def test_only_feedline_and_the_oracle_echo():
    sc = SCENARIOS["quota-64"]
    for p in POLICIES:
        echoes = {e for _, _, _, e in simulate(sc, p).timeline}
        assert (max(echoes) > 1.0) == (p in ("feedline", "oracle")), p


def test_node_startup_delay_is_paid():
    # Throughput halves at hour 1: until new nodes are up the GPUs wait; a slower start-up
    # costs more stall.
    base = Scenario(name="drop", description="", gpus=64, max_nodes=80, hours=3.0,
                    changes=(Change(HOUR, node_rate_factor=0.5),))
    fast = simulate(base, "feedline")
    slow = simulate(dataclasses.replace(base, startup_s=900.0), "feedline")
    assert slow.gpu_stall_fraction > fast.gpu_stall_fraction + 0.01


def test_reversals_count_direction_changes_only():
    assert reversals([3, 3, 5, 7, 7, 4, 4, 6]) == 2
    assert reversals([1, 2, 3, 4]) == 0
    assert reversals([]) == 0


def test_feedline_meets_its_targets_on_every_standard_scenario():
    for sc in SCENARIOS.values():
        by = {p: simulate(sc, p) for p in POLICIES}
        f, o = by["feedline"], by["oracle"]
        assert f.gpu_stall_fraction <= 0.05, sc.name
        assert f.cpu_node_hours <= 1.15 * o.cpu_node_hours, sc.name
        assert min((r.total_cost, p) for p, r in by.items() if p != "oracle")[1] == "feedline", \
            sc.name
        assert f.reversals_per_hour <= 2, sc.name


def test_cli_writes_the_summary_and_plots(tmp_path):
    out = tmp_path / "sim"
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "jobs", "simulate_scaling.py"),
                           "--out", str(out), "--scenario", "quota-64", "--scenario",
                           "larger-images-1024"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "feedline targets: all met" in proc.stdout
    with open(out / "summary.csv") as f:
        table = list(csv.DictReader(f))
    assert list(table[0]) == ["scenario", "policy", "gpu_stall_fraction", "cpu_node_hours",
                              "oracle_cpu_node_hours", "total_cost", "job_hours",
                              "reversals_per_hour"]
    assert {(r["scenario"], r["policy"]) for r in table} == {
        (s, p) for s in ("quota-64", "larger-images-1024") for p in POLICIES}
    for r in table:
        assert all(math.isfinite(float(r[k])) for k in r if k not in ("scenario", "policy"))
    for name in ("quota-64", "larger-images-1024"):
        assert (out / f"{name}.png").stat().st_size > 10_000
