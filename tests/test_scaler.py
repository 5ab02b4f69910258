"""Tier 2 (local Ray): the part that applies the pool policy. A PoolScaler observes a run through
its EchoController's rate reports and `ray.nodes()`, decides with PoolPolicy, bids to the
cluster's pool arbiter (which asks Ray for the pool's nodes), and hands the echo fallback to the
controller that pool actors poll. The session cluster has one node declaring the pool resource; a
real autoscaling cluster is in tests/test_autoscaling_cluster.py. Waits end on conditions (what
the scaler decided, what the controller holds), never after a fixed time."""

from __future__ import annotations

import time

import pytest

from cluster.pool.policy import PolicyConfig
from cluster.pool.scaler import ScalerConfig, pool_actor_bounds
from pipelines.config import EchoConfig


def _wait_for(predicate, timeout_s: float = 30.0, poll_s: float = 0.1) -> bool:
    """True as soon as `predicate()` holds; False if it never did within `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() >= deadline:
            return False
        time.sleep(poll_s)
    return True


def test_actor_pool_bounds_cover_the_policys_nodes():
    cfg = ScalerConfig(policy=PolicyConfig(min_nodes=2, max_nodes=10, cpus_per_node=16))
    assert pool_actor_bounds(cfg, resource_per_actor=1.0) == (32, 160)
    assert pool_actor_bounds(cfg, resource_per_actor=4.0) == (8, 40)
    zero = ScalerConfig(policy=PolicyConfig(min_nodes=0, max_nodes=1, cpus_per_node=2))
    assert pool_actor_bounds(zero, resource_per_actor=1.0) == (1, 2)


def _feed(ctl, pool_rate: float, train_rows: float, wait_s: float, until,
          timeout_s: float = 30.0) -> None:
    """Report as a stalled run does, every 0.5 s (the reports are rates over real time): one
    pool actor making `pool_rate` fresh/s, two ranks training `train_rows` rows per busy second
    and waiting `wait_s` per busy second; stop as soon as `until()` holds."""
    import ray

    def report() -> bool:
        ray.get([ctl.add_pool.remote("a1", int(pool_rate * 0.5), 0.5),
                 ctl.add_train.remote(0, int(train_rows * 0.5), 0.5, wait_s * 0.5),
                 ctl.add_train.remote(1, int(train_rows * 0.5), 0.5, wait_s * 0.5)])
        return until()

    assert _wait_for(report, timeout_s, poll_s=0.5), "the condition never held"


@pytest.mark.ray
def test_controller_observes_stall_consume_and_produce(ray_cluster):
    import ray

    from cluster.echo.controller import EchoController

    ctl = EchoController.remote("t-observe", EchoConfig(auto=True), world=2, external=True)
    reports = []
    _feed(ctl, pool_rate=100, train_rows=200, wait_s=3.0,
          until=lambda: reports.append(1) or len(reports) >= 5)  # 2.5 s of reports
    seen = ray.get(ctl.observe.remote(2.0))
    assert seen["stall"] == pytest.approx(0.75, abs=0.01)  # 3 s waiting per busy second
    assert seen["consume"] == pytest.approx(400, rel=0.05)  # 2 ranks x 200 rows/s
    assert seen["produce"] == pytest.approx(100, rel=0.35)  # fresh rows in the last 2 s
    assert seen["busy"] == pytest.approx(1.0, abs=0.3) and seen["actors"] == 1
    # External: the automatic rule stays off; only set_factor moves the factor.
    assert ray.get(ctl.factor.remote()) == 1.0
    ray.get(ctl.set_factor.remote(2.5, "test"))
    assert ray.get(ctl.factor.remote()) == 2.5
    assert ray.get(ctl.history.remote())[-1][1:] == (2.5, "test")
    ray.kill(ctl)


@pytest.mark.ray
def test_scaler_asks_for_nodes_then_echoes_at_the_max(ray_cluster):
    import ray

    from cluster.echo.controller import ControllerFactor, EchoController
    from cluster.pool.arbiter import arbiter_name
    from cluster.pool.scaler import PoolScaler, pool_nodes

    assert pool_nodes("preprocess_cpu") == 1  # the session cluster's one node
    ctl = EchoController.remote("t-scaler", EchoConfig(auto=True), world=2, external=True)
    cfg = ScalerConfig(
        policy=PolicyConfig(min_nodes=1, max_nodes=3, cpus_per_node=2, gpus=2,
                            gpu_cost_per_hour=4.0, cpu_node_cost_per_hour=0.8,
                            echo_after_s=2.0, up_every_s=0.0),
        interval_s=1.0, node_start_timeout_s=4.0, arbiter_namespace="feedline-test-scaler")
    scaler = PoolScaler.remote("t-scaler", cfg, ctl)
    source = ControllerFactor(ctl, initial=1.0, refresh_s=0.1)
    ray.get(scaler.decisions.remote())  # constructed: registered with the arbiter it started
    arbiter = ray.get_actor(arbiter_name("preprocess_cpu"), namespace="feedline-test-scaler")
    (key,) = ray.get(arbiter.runs.remote())
    assert key.startswith("t-scaler/")  # the run's label and its Ray job

    def decided(action):
        return lambda: any(d["action"] == action for d in ray.get(scaler.decisions.remote()))

    try:
        # The pool makes 100 fresh/s, the trainers would take 400/s and wait 75% of the time.
        _feed(ctl, pool_rate=100, train_rows=200, wait_s=3.0, until=decided("up"))
        ups = [d for d in ray.get(scaler.decisions.remote()) if d["action"] == "up"]
        assert ups[0]["target_nodes"] == 3  # ceil(400 x 1.05 / 100) capped at the max
        assert "stall" in ups[0]["reason"] and ups[0]["pending"] == 0
        assert ups[0]["share_nodes"] == 3 and not ups[0]["short"]  # the arbiter's answer
        state = ray.get(arbiter.state.remote())
        assert state["runs"] == [key] and state["requests"][-1][1] == 3
        # The arbiter dies: the scaler's next bid starts a new one and registers there.
        ray.kill(arbiter)
        n = len(ray.get(scaler.decisions.remote()))
        _feed(ctl, pool_rate=100, train_rows=200, wait_s=3.0,
              until=lambda: len(ray.get(scaler.decisions.remote())) >= n + 2)
        arbiter = ray.get_actor(arbiter_name("preprocess_cpu"), namespace="feedline-test-scaler")
        assert ray.get(arbiter.runs.remote()) == [key]
        # No autoscaler here: the asked-for nodes never come. Pending for node_start_timeout_s,
        # then the pool counts as at its limit and the echo fallback takes over.
        _feed(ctl, pool_rate=100, train_rows=200, wait_s=3.0, until=decided("echo_up"))
        decisions = ray.get(scaler.decisions.remote())
        assert any(d["pending"] == 2 for d in decisions)
        echo_up = [d for d in decisions if d["action"] == "echo_up"]
        factor = echo_up[0]["echo"]
        assert factor == pytest.approx(4.0, rel=0.05)  # 400/100 (as measured), echo_max 4
        assert _wait_for(lambda: source.factor() == factor)  # what pool actors see
        ray.get(scaler.stop.remote())
        # Leaving: the arbiter forgets the run and asks for min_nodes (no other run).
        state = ray.get(arbiter.state.remote())
        assert state["runs"] == [] and state["requests"][-1][1] == 1
    finally:
        ray.kill(scaler)
        ray.kill(ctl)
        ray.kill(arbiter)
