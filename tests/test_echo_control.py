"""Tier 2 (local Ray): the part that applies the automatic echo factor. The EchoController
turns rate reports into a factor through the pure rule, exports it, and pool actors pick it up
through a non-blocking poll. Plus the throttling proxy's token bucket (pure)."""

from __future__ import annotations

import time

import pytest

from cluster.local.throttle import TokenBucket
from pipelines.config import EchoConfig


def _wait_for(predicate, timeout_s: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return False


@pytest.mark.ray
def test_controller_raises_the_factor_for_a_slow_pool_and_pool_actors_see_it(ray_cluster):
    import ray

    from cluster.echo.controller import ControllerFactor, EchoController

    ctl = EchoController.remote("t-auto", EchoConfig(auto=True, max_factor=4.0), world=2)
    source = ControllerFactor(ctl, initial=1.0, refresh_s=0.1)
    assert source.factor() == 1.0  # the first call only asks; it never blocks
    # The faster rank trains 150 rows/s when it does not wait (the other's compute time holds
    # all-reduce waits): 300/s for 2 ranks; the pool makes 100 fresh/s: 3 copies per example.
    for _ in range(4):
        ray.get([ctl.add_pool.remote("a1", 100, 1.0),
                 ctl.add_train.remote(0, 150, 1.0), ctl.add_train.remote(1, 120, 1.0)])
        time.sleep(1.05)
    assert ray.get(ctl.factor.remote()) == pytest.approx(3.0, rel=0.1)
    assert _wait_for(lambda: abs(source.factor() - 3.0) < 0.3)
    consume, produce = ray.get(ctl.rates.remote())
    assert consume == pytest.approx(300) and produce == pytest.approx(100)
    history = ray.get(ctl.history.remote())
    assert history[0][1] == 1.0 and "consume 300.0/s" in history[-1][2]
    ray.kill(ctl)


@pytest.mark.ray
def test_controller_keeps_a_fixed_factor_and_one_when_the_pool_keeps_up(ray_cluster):
    import ray

    from cluster.echo.controller import EchoController

    fixed = EchoController.remote("t-fixed", EchoConfig(factor=2.0), world=1)
    keeps_up = EchoController.remote("t-up", EchoConfig(auto=True), world=1)
    for _ in range(3):
        ray.get([fixed.add_pool.remote("a", 10, 1.0), fixed.add_train.remote(0, 500, 1.0),
                 keeps_up.add_pool.remote("a", 400, 1.0), keeps_up.add_train.remote(0, 300, 1.0)])
        time.sleep(1.05)
    assert ray.get(fixed.factor.remote()) == 2.0  # not auto: reports change nothing
    assert ray.get(keeps_up.factor.remote()) == 1.0
    assert len(ray.get(keeps_up.history.remote())) == 1  # never changed
    ray.kill(fixed)
    ray.kill(keeps_up)


def test_token_bucket_paces_to_the_rate_with_a_fake_clock():
    now = [0.0]
    bucket = TokenBucket(rate=1000, burst=500, clock=lambda: now[0])
    assert bucket.wait_s(500) == 0.0  # the burst is there at once
    assert bucket.wait_s(100) == pytest.approx(0.1)  # then 1000/s
    now[0] = 0.1
    assert bucket.wait_s(100) == 0.0
    now[0] = 10.0  # a long idle spell banks no more than the burst
    assert bucket.wait_s(500) == 0.0 and bucket.wait_s(1) > 0
    with pytest.raises(ValueError):
        TokenBucket(rate=0, burst=1)
