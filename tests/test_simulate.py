"""The scaling simulators, tier 1 (pure): the model's invariants, determinism, the CLI's outputs,
and feedline's targets on the single-job scenarios (the simulator is deterministic, so they are
checked exactly as `jobs/simulate_scaling.py` reports them) and, on shortened shared-pool
scenarios, the arbiter against the other ways of sharing a pool."""

from __future__ import annotations

import csv
import dataclasses
import math
import os
import subprocess
import sys

import pytest

from cluster.pool.report import check, worst
from cluster.pool.report import rows as report_rows
from cluster.pool.simulate import HOUR, POLICIES, SCENARIOS, Change, Scenario, reversals, simulate
from cluster.pool.simulate_shared import (
    SHARED_POLICIES,
    SHARED_SCENARIOS,
    shortened,
    simulate_shared,
)

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
                  node_rate=3000.0, changes=(Change(HOUR, node_rate_factor=0.5),))
    r = simulate(sc, "fixed")
    assert r.job_hours == pytest.approx(3.0, rel=1e-6)
    assert r.gpu_stall_fraction == pytest.approx(1.0 / 3.0, rel=1e-6)
    assert r.cpu_node_hours == pytest.approx(32 * 3.0, rel=1e-6)
    assert r.total_cost == pytest.approx(64 * 4.0 * 3.0 + 0.8 * 32 * 3.0, rel=1e-6)
    assert r.reversals == 0


def test_echoed_examples_count_for_less_than_fresh_ones():
    sc = Scenario(name="capped", description="", gpus=64, max_nodes=16, hours=2.0,
                  node_rate=3000.0)
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


def test_feedline_meets_its_targets_on_every_single_job_scenario():
    results = [(0, simulate(sc, p)) for sc in SCENARIOS.values() for p in POLICIES]
    assert check(results) == []
    for sc in SCENARIOS.values():
        by = {r.policy: r for _, r in results if r.scenario == sc.name}
        f, o = by["feedline"], by["oracle"]
        assert f.gpu_stall_fraction <= 0.05, sc.name
        assert f.cpu_node_hours <= 1.15 * o.cpu_node_hours, sc.name
        assert f.reversals_per_hour <= o.reversals_per_hour + 1, sc.name


def test_steady_world_no_reversal_under_noise_on_several_seeds():
    for name in ("constant-64", "constant-1024"):
        assert SCENARIOS[name].noise == pytest.approx(0.10)
        for seed in range(3):
            assert simulate(SCENARIOS[name], "feedline", seed).reversals == 0, (name, seed)


def test_check_reports_a_policy_that_flaps_or_costs_more():
    sc = SCENARIOS["constant-64"]
    results = [(0, simulate(sc, p)) for p in POLICIES]
    flappy = dataclasses.replace(results[-1][1], reversals=30)
    misses = check(results[:-1] + [(0, flappy)])
    assert any("reversals/h > 2" in m for m in misses)
    assert any("+ 1" in m for m in misses)
    dear = dataclasses.replace(results[-1][1], total_cost=1e9)
    assert any("costs less" in m for m in check(results[:-1] + [(0, dear)]))


def test_worst_of_seeds_takes_the_highest_of_every_column():
    sc = SCENARIOS["step-down-64"]
    results = [(seed, simulate(sc, p, seed)) for seed in range(2) for p in ("oracle",
                                                                          "feedline")]
    table = report_rows(results)
    (_, f), = [(r["policy"], r) for r in worst(table) if r["policy"] == "feedline"]
    seeds = [r for r in table if r["policy"] == "feedline"]
    for col in ("gpu_stall_fraction", "cpu_node_hours", "reversals_per_hour"):
        assert f[col] == max(r[col] for r in seeds)


SHORT = {name: shortened(sc, 0.25) for name, sc in SHARED_SCENARIOS.items()}


@pytest.fixture(scope="module")
def shared_results():
    return {name: {p: simulate_shared(sc, p) for p in SHARED_POLICIES}
            for name, sc in SHORT.items()}


def test_shared_arbiter_is_cheapest_and_close_to_the_oracle(shared_results):
    for name, by in shared_results.items():
        f, o = by["feedline"], by["oracle"]
        assert f.cpu_node_hours <= 1.15 * o.cpu_node_hours, name
        assert min((r.total_cost, p) for p, r in by.items() if p != "oracle")[1] == "feedline", \
            name
    day = shared_results["shared-day"]
    assert not SHORT["shared-day"].binds and SHORT["shared-quota"].binds
    assert day["feedline"].gpu_stall_fraction <= 0.05
    assert day["oracle"].gpu_stall_fraction < 0.01


def test_requests_that_overwrite_each_other_starve_the_jobs(shared_results):
    # The last request wins: the pool follows one job's want at a time and flaps.
    for name, by in shared_results.items():
        last, f = by["per-job-feedline"], by["feedline"]
        assert last.gpu_stall_fraction > f.gpu_stall_fraction + 0.3, name
        assert last.reversals_per_hour > 10 * max(0.5, f.reversals_per_hour), name


def test_shared_jobs_all_finish_and_the_pool_stays_under_its_max(shared_results):
    for name, by in shared_results.items():
        sc = SHORT[name]
        for p, r in by.items():
            assert max(n for _, n, _, _ in r.timeline) <= sc.max_nodes, (name, p)
        # Every job's work is done: at full speed it would take sum(hours).
        assert by["oracle"].job_hours >= sum(j.hours for j in sc.jobs) * 0.999, name
        f = by["feedline"]
        assert f.job_hours < 1.2 * by["oracle"].job_hours, name


def test_binding_max_goes_to_the_jobs_whose_gpus_it_is_worth_most_for():
    # shared-quota: the cheap-GPU job gets what is left; fair split gives it an equal share.
    sc = SHORT["shared-quota"]
    f = simulate_shared(sc, "feedline")
    fair = simulate_shared(sc, "fair-split")
    assert f.total_cost < 0.9 * fair.total_cost


def test_cli_writes_the_summary_and_plots(tmp_path):
    out = tmp_path / "sim"
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "jobs", "simulate_scaling.py"),
                           "--out", str(out), "--scenario", "quota-64", "--scenario",
                           "larger-images-1024", "--seeds", "2"], capture_output=True,
                          text=True, timeout=300)
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
    with open(out / "summary_seeds.csv") as f:
        assert {r["seed"] for r in csv.DictReader(f)} == {"0", "1"}
