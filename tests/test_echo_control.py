"""The part that applies the automatic echo factor. The controller turns rate reports into a
factor through the pure rule and exports it (tier 1: `EchoControl` on a fake clock, no sleeps);
as the run's Ray actor, pool actors pick its factor up through a non-blocking poll (tier 2).
Plus the throttling proxy's token bucket (pure)."""

from __future__ import annotations

import pytest

from cluster.echo.controller import EchoControl
from cluster.local.throttle import TokenBucket
from pipelines.config import EchoConfig
from tests.helpers import wait_for


class FakeClock:
    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def test_controller_raises_the_factor_for_a_slow_pool():
    clock = FakeClock()
    ctl = EchoControl("t-auto", EchoConfig(auto=True, max_factor=4.0), world=2, clock=clock)
    assert ctl.factor() == 1.0
    # The faster rank trains 150 rows/s when it does not wait (the other's compute time holds
    # all-reduce waits): 300/s for 2 ranks; the pool makes 100 fresh/s: 3 copies per example.
    for _ in range(4):
        ctl.add_pool("a1", 100, 1.0)
        ctl.add_train(0, 150, 1.0)
        ctl.add_train(1, 120, 1.0)
        clock.advance(1.05)
    assert ctl.factor() == pytest.approx(3.0, rel=0.1)
    consume, produce = ctl.rates()
    assert consume == pytest.approx(300) and produce == pytest.approx(100)
    history = ctl.history()
    assert history[0] == (0.0, 1.0, "starting value") and "consume 300.0/s" in history[-1][2]
    assert all(0 < at < 4.2 for at, _, _ in history[1:])  # seconds on the controller's clock


def test_the_factor_is_updated_at_most_once_a_second_of_its_clock():
    clock = FakeClock()
    ctl = EchoControl("t-pace", EchoConfig(auto=True, max_factor=4.0), world=1, clock=clock)
    ctl.add_pool("a1", 100, 1.0)  # the first report runs the rule at once: no rates yet
    ctl.add_train(0, 300, 1.0)
    changes = len(ctl.history())
    assert changes == 1
    for _ in range(20):  # many reports within the same second change nothing
        clock.advance(0.04)
        ctl.add_train(0, 300, 1.0)
    assert len(ctl.history()) == changes
    clock.advance(0.3)
    ctl.add_train(0, 300, 1.0)
    assert len(ctl.history()) == changes + 1


def test_reports_older_than_the_window_leave_the_rates():
    clock = FakeClock()
    ctl = EchoControl("t-window", EchoConfig(auto=True), world=1, clock=clock)
    ctl.add_pool("a1", 100, 1.0)
    ctl.add_train(0, 50, 1.0)
    clock.advance(6.0)  # past WINDOW_S: the latest report still counts
    ctl.add_train(0, 400, 1.0)
    assert ctl.rates() == (pytest.approx(400), pytest.approx(100))
    clock.advance(16.0)  # an actor quiet for 3 windows has left the pool
    assert ctl.rates()[1] is None
    seen = ctl.observe(window_s=5.0)
    assert seen["actors"] == 0 and seen["produce"] == 0 and seen["busy"] is None


def test_controller_keeps_a_fixed_factor_and_one_when_the_pool_keeps_up():
    clock = FakeClock()
    fixed = EchoControl("t-fixed", EchoConfig(factor=2.0), world=1, clock=clock)
    keeps_up = EchoControl("t-up", EchoConfig(auto=True), world=1, clock=clock)
    for _ in range(3):
        fixed.add_pool("a", 10, 1.0)
        fixed.add_train(0, 500, 1.0)
        keeps_up.add_pool("a", 400, 1.0)
        keeps_up.add_train(0, 300, 1.0)
        clock.advance(1.05)
    assert fixed.factor() == 2.0  # not auto: reports change nothing
    assert keeps_up.factor() == 1.0
    assert len(keeps_up.history()) == 1  # never changed


@pytest.mark.ray
def test_pool_actors_see_the_run_controllers_factor_without_blocking(ray_cluster):
    import ray

    from cluster.echo.controller import ControllerFactor, EchoController

    ctl = EchoController.remote("t-actor", EchoConfig(factor=3.0), world=2)
    source = ControllerFactor(ctl, initial=1.0, refresh_s=0.1)
    assert source.factor() == 1.0  # the first call only asks; it never blocks
    wait_for(lambda: source.factor() == 3.0, 20, "the pool side to pick up the factor")
    ray.get([ctl.add_pool.remote("a1", 100, 1.0), ctl.add_train.remote(0, 150, 1.0)])
    assert ray.get(ctl.rates.remote()) == (pytest.approx(300), pytest.approx(100))
    ray.kill(ctl)


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
