"""Tier 2 (local Ray): the part that applies the pool policy. A PoolScaler observes a run through
its EchoController's rate reports and `ray.nodes()`, decides with PoolPolicy, asks Ray for pool
nodes, and hands the echo fallback to the controller that pool actors poll. The session cluster
has one node declaring the pool resource; a real autoscaling cluster is in
tests/test_autoscaling_cluster.py."""

from __future__ import annotations

import time

import pytest

from cluster.pool.policy import PolicyConfig
from cluster.pool.scaler import ScalerConfig, pool_actor_bounds
from pipelines.config import EchoConfig


def _wait_for(predicate, timeout_s: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.25)
    return False


def test_actor_pool_bounds_cover_the_policys_nodes():
    cfg = ScalerConfig(policy=PolicyConfig(min_nodes=2, max_nodes=10, cpus_per_node=16))
    assert pool_actor_bounds(cfg, resource_per_actor=1.0) == (32, 160)
    assert pool_actor_bounds(cfg, resource_per_actor=4.0) == (8, 40)
    zero = ScalerConfig(policy=PolicyConfig(min_nodes=0, max_nodes=1, cpus_per_node=2))
    assert pool_actor_bounds(zero, resource_per_actor=1.0) == (1, 2)


def _feed(ctl, seconds: float, pool_rate: float, train_rows: float, wait_s: float):
    """Reports as a stalled run sends them: one pool actor making `pool_rate` fresh/s, two
    ranks training `train_rows` rows per busy second and waiting `wait_s` per busy second."""
    import ray

    end = time.monotonic() + seconds
    while time.monotonic() < end:
        ray.get([ctl.add_pool.remote("a1", int(pool_rate * 0.5), 0.5),
                 ctl.add_train.remote(0, int(train_rows * 0.5), 0.5, wait_s * 0.5),
                 ctl.add_train.remote(1, int(train_rows * 0.5), 0.5, wait_s * 0.5)])
        time.sleep(0.5)


@pytest.mark.ray
def test_controller_observes_stall_consume_and_produce(ray_cluster):
    import ray

    from cluster.echo.controller import EchoController

    ctl = EchoController.remote("t-observe", EchoConfig(auto=True), world=2, external=True)
    _feed(ctl, 2.5, pool_rate=100, train_rows=200, wait_s=3.0)
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
    from cluster.pool.scaler import PoolScaler, pool_nodes

    assert pool_nodes("preprocess_cpu") == 1  # the session cluster's one node
    ctl = EchoController.remote("t-scaler", EchoConfig(auto=True), world=2, external=True)
    cfg = ScalerConfig(
        policy=PolicyConfig(min_nodes=1, max_nodes=3, cpus_per_node=2, gpus=2,
                            gpu_cost_per_hour=4.0, cpu_node_cost_per_hour=0.8,
                            echo_after_s=2.0, up_every_s=0.0),
        interval_s=1.0, node_start_timeout_s=4.0)
    scaler = PoolScaler.remote("t-scaler", cfg, ctl)
    source = ControllerFactor(ctl, initial=1.0, refresh_s=0.1)
    # The pool makes 100 fresh/s, the trainers would take 400/s and wait 75% of the time.
    _feed(ctl, 3.0, pool_rate=100, train_rows=200, wait_s=3.0)
    decisions = ray.get(scaler.decisions.remote())
    ups = [d for d in decisions if d["action"] == "up"]
    assert ups and ups[0]["target_nodes"] == 3  # ceil(400 x 1.05 / 100) capped at the max
    assert "stall" in ups[0]["reason"] and ups[0]["pending"] == 0
    # No autoscaler here: the asked-for nodes never come. Pending for node_start_timeout_s,
    # then the pool counts as at its limit and the echo fallback takes over.
    _feed(ctl, 8.0, pool_rate=100, train_rows=200, wait_s=3.0)
    decisions = ray.get(scaler.decisions.remote())
    assert any(d["pending"] == 2 for d in decisions)
    echo_up = [d for d in decisions if d["action"] == "echo_up"]
    assert echo_up and echo_up[0]["echo"] == pytest.approx(4.0)  # 400/100 = 4 = echo_max
    assert _wait_for(lambda: source.factor() == pytest.approx(4.0))  # what pool actors see
    ray.get(scaler.stop.remote())
    ray.kill(scaler)
    ray.kill(ctl)
