"""The cluster-wide pool arbiter, tier 1 (pure): how one pool is split between runs (sum of the
wants under the max, marginal value when the max binds, short runs told so), leases that expire
on an injected clock, and the one request the arbiter sends; plus its Ray actor, tier 2 (one per
namespace, detached, found again by name)."""

from __future__ import annotations

import pytest

from cluster.pool.arbiter import PoolArbiter, arbiter_name, get_arbiter
from cluster.pool.arbiter_policy import ArbiterConfig, Bid, allocate, expire, ready_share


def bid(run, wanted, gpus=64, price=4.0, demand=96_000.0, rate=3_000.0, **kw):
    return Bid(run=run, wanted_nodes=wanted, gpus=gpus, gpu_cost_per_hour=price, demand=demand,
               node_rate=rate, **kw)


def test_wants_that_fit_are_summed_into_one_request():
    a = allocate([bid("a", 12), bid("b", 20)], ArbiterConfig(max_nodes=64))
    assert a.total_nodes == 32 and not a.binding
    assert {r: s.nodes for r, s in a.shares.items()} == {"a": 12, "b": 20}
    assert not any(s.short for s in a.shares.values())
    assert "asking for 32" in a.reason


def test_no_run_asks_nothing_but_min_nodes():
    assert allocate([], ArbiterConfig(max_nodes=8, min_nodes=2)).total_nodes == 2
    assert allocate([bid("a", 0)], ArbiterConfig(max_nodes=8)).total_nodes == 0


def test_a_binding_max_goes_where_gpu_time_is_worth_most():
    # Same need (32 nodes) each, but b's GPUs cost 4x a's: b gets every node beyond one each.
    a = allocate([bid("a", 32, price=1.0), bid("b", 32, price=4.0)], ArbiterConfig(max_nodes=40))
    assert a.binding and a.total_nodes == 40
    assert a.shares["b"].nodes == 32 and not a.shares["b"].short
    assert a.shares["a"].nodes == 8 and a.shares["a"].short
    assert "pool max 40 binds" in a.shares["a"].reason and "echo" in a.shares["a"].reason


def test_equal_value_is_split_evenly_and_each_run_keeps_a_node():
    a = allocate([bid("a", 30), bid("b", 30)], ArbiterConfig(max_nodes=20))
    assert (a.shares["a"].nodes, a.shares["b"].nodes) == (10, 10)
    # A nearly worthless run still keeps one node (its throughput stays measured).
    a = allocate([bid("a", 30, price=0.01), bid("b", 30)], ArbiterConfig(max_nodes=20))
    assert (a.shares["a"].nodes, a.shares["b"].nodes) == (1, 19)


def test_the_last_node_of_a_run_is_worth_only_the_shortfall_it_covers():
    # a needs 3.2 nodes (9,600/s at 3,000/s a node): each full node recovers 31% of its GPUs'
    # time ($80/h), its 4th only 6% ($16/h); each of b's recovers 10% ($25.6/h). With 5
    # nodes: one each, then a's 2nd and 3rd, then b's 2nd before a's partial 4th.
    a = allocate([bid("a", 4, demand=9_600.0), bid("b", 10, demand=30_000.0)],
                 ArbiterConfig(max_nodes=5))
    assert (a.shares["a"].nodes, a.shares["b"].nodes) == (3, 2)
    a = allocate([bid("a", 4, demand=9_600.0), bid("b", 10, demand=30_000.0)],
                 ArbiterConfig(max_nodes=4))
    assert (a.shares["a"].nodes, a.shares["b"].nodes) == (3, 1)  # not an even 2 + 2
    a = allocate([bid("a", 4, demand=9_600.0), bid("b", 10, demand=30_000.0)],
                 ArbiterConfig(max_nodes=6))
    assert (a.shares["a"].nodes, a.shares["b"].nodes) == (3, 3)


def test_a_runs_own_max_caps_its_share():
    a = allocate([bid("a", 50, max_nodes=10)], ArbiterConfig(max_nodes=64))
    assert a.shares["a"].nodes == 10 and a.total_nodes == 10


def test_leases_expire_only_after_lease_s():
    cfg = ArbiterConfig(lease_s=60)
    assert expire({"a": 0.0, "b": 30.0}, 59.0, cfg) == []
    assert expire({"a": 0.0, "b": 30.0}, 60.0, cfg) == ["a"]
    assert expire({"a": 0.0, "b": 30.0}, 90.0, cfg) == ["a", "b"]


def test_ready_nodes_are_counted_in_proportion_to_the_share():
    assert ready_share(10, None, 0) == 10  # before the first share: all of them
    assert ready_share(10, 4, 10) == 4
    assert ready_share(5, 4, 10) == 2  # half the pool up: half of each share
    assert ready_share(3, 4, 0) == 3


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_arbiter_sends_one_merged_request_and_forgets_a_run_that_stops_renewing():
    clock, sent = Clock(), []
    arb = PoolArbiter(ArbiterConfig(max_nodes=16, lease_s=60), "preprocess_cpu", 16,
                      clock=clock, request=sent.append)
    arb.register("a")
    arb.register("b")
    share, total = arb.bid(bid("a", 6))
    assert (share.nodes, total, sent[-1]) == (6, 6, 6)
    clock.t = 10
    share, total = arb.bid(bid("b", 8))
    assert (share.nodes, total, sent[-1]) == (8, 14, 14)  # the sum, one request
    # b's driver dies: it stops bidding. a keeps renewing; b is forgotten after lease_s.
    for t in (40, 69):
        clock.t = t
        arb.bid(bid("a", 6))
    assert arb.runs() == ["a", "b"] and sent[-1] == 14
    clock.t = 70
    assert arb.tick() == 6 and sent[-1] == 6
    assert arb.runs() == ["a"]
    assert arb.forgotten[-1][1] == "b" and "lease expired" in arb.forgotten[-1][2]
    # a leaves: the pool falls to min_nodes.
    assert arb.leave("a") == 0 and sent[-1] == 0 and arb.runs() == []


def test_a_short_share_is_reported_to_the_run():
    clock, sent = Clock(), []
    arb = PoolArbiter(ArbiterConfig(max_nodes=10), "preprocess_cpu", 16, clock=clock,
                      request=sent.append)
    arb.bid(bid("a", 8, price=4.0))
    share, total = arb.bid(bid("b", 8, price=1.0))
    assert total == 10 and share.short and share.nodes == 2
    assert arb.state()["shares"]["a"] == {"nodes": 8, "short": False,
                                          "reason": arb.allocation.shares["a"].reason}


@pytest.mark.ray
def test_one_detached_arbiter_per_namespace(ray_cluster):
    import ray

    cfg = ArbiterConfig(max_nodes=4, resend_s=3600)
    first = get_arbiter(cfg, "test_pool_res", 1, namespace="feedline-test")
    try:
        again = get_arbiter(ArbiterConfig(max_nodes=99), "test_pool_res", 1,
                            namespace="feedline-test")
        assert ray.get(again.state.remote())["max_nodes"] == 4  # the first one's, found by name
        found = ray.get_actor(arbiter_name("test_pool_res"), namespace="feedline-test")
        ray.get(found.register.remote("r1"))
        assert ray.get(first.runs.remote()) == ["r1"]
        other = get_arbiter(cfg, "test_pool_res", 1, namespace="feedline-test-2")
        assert ray.get(other.runs.remote()) == []
        ray.kill(other)
    finally:
        ray.kill(first)
