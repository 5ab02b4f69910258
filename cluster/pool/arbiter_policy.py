"""How one shared CPU pool is split between the runs that use it: pure and deterministic.

    allocation = allocate([Bid(run="a", wanted_nodes=40, gpus=64, gpu_cost_per_hour=4.0,
                               demand=96_000, node_rate=3_000, stall_fraction=0.2), ...],
                          ArbiterConfig(max_nodes=64))
    allocation.total_nodes       # the ONE request for the pool
    allocation.shares["a"]       # Share(nodes, short, reason)

Every run's own policy (`cluster.pool.policy`) says how many nodes it wants (`Bid.wanted_nodes`).
When the wants fit under the pool's max (the quota), each run gets what it wants and the pool's
request is their sum. When they do not, nodes go one at a time where the accelerator time they
recover is worth most: the k-th node of a run recovers `min(node_rate, what the first k-1 leave
uncovered) / demand` of its GPUs' time, worth `gpus x gpu price` per hour of it (the same
marginal value the single-run policy weighs a node's price against). Every run keeps one node
while the quota allows (so its throughput stays measured). A run that gets less than it wants
is `short`: its scaler plans with its share as its max, so its own policy's echo fallback covers
the rest. Leases (`expire`) drop runs whose driver stopped renewing.

No I/O, no clock reads: the arbiter actor (`cluster.pool.arbiter`) holds the state and the clock.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass

__all__ = ["ArbiterConfig", "Bid", "Share", "Allocation", "allocate", "expire", "ready_share"]


@dataclass(frozen=True, kw_only=True)
class ArbiterConfig:
    max_nodes: int = 64
    """The pool's max (the quota: the cpu-pool group's maxReplicas); every run's --pool-max-nodes
    should say the same."""
    min_nodes: int = 0
    """Nodes the pool keeps asked for when no run wants any."""
    lease_s: float = 180.0
    """A run that has not renewed its lease (sent a bid) for this long is forgotten (its driver
    was killed, or it hangs): its share returns to the others."""
    resend_s: float = 10.0
    """Seconds between two requests of the pool when no bid arrives (a request replaces the
    cluster's previous one, and Ray Data's coordinator sends its own)."""

    def __post_init__(self) -> None:
        if not 0 <= self.min_nodes <= self.max_nodes:
            raise ValueError(f"need 0 <= min_nodes <= max_nodes, got {self.min_nodes}, "
                             f"{self.max_nodes}")
        if self.lease_s <= 0:
            raise ValueError(f"lease_s must be > 0, got {self.lease_s}")


@dataclass(frozen=True, kw_only=True)
class Bid:
    run: str
    wanted_nodes: int
    """Nodes the run's own policy wants (its decision, with no pool max in the way)."""
    gpus: int
    gpu_cost_per_hour: float
    demand: float
    """Examples/s the run's trainers would take if they never waited (0: not measured yet)."""
    node_rate: float | None = None
    """Fresh examples/s one pool node makes for this run (None: not measured yet)."""
    stall_fraction: float = 0.0
    max_nodes: int | None = None
    """The run's own cap (its --pool-max-nodes); None: the pool's."""


@dataclass(frozen=True)
class Share:
    nodes: int
    short: bool
    """Less than the run wants: it plans with `nodes` as its max, and echoes."""
    reason: str


@dataclass(frozen=True)
class Allocation:
    total_nodes: int
    shares: dict[str, Share]
    binding: bool
    """The wants did not fit under the pool's max."""
    reason: str


def _value_of_node(bid: Bid, k: int) -> float:
    """$/h of GPU time the run's k-th node (1-based) recovers."""
    want = max(1, bid.wanted_nodes)
    rate = bid.node_rate if bid.node_rate and bid.node_rate > 0 else None
    if bid.demand <= 0 or rate is None:
        # Nothing measured: every wanted node counts the same, its GPUs' share of one node.
        return bid.gpus * bid.gpu_cost_per_hour / want
    uncovered = max(0.0, bid.demand - (k - 1) * rate)
    return bid.gpus * bid.gpu_cost_per_hour * min(rate, uncovered) / bid.demand


def _split(bids: list[Bid], quota: int) -> dict[str, int]:
    """Nodes per run under `quota`: one each first (while the quota allows), then greedily by
    marginal value; ties go to the run with fewer nodes, then by name (even and deterministic)."""
    got = {b.run: 0 for b in bids}
    caps = {b.run: b.wanted_nodes for b in bids}
    left = quota
    for b in sorted(bids, key=lambda b: b.run):
        if left > 0 and caps[b.run] > 0:
            got[b.run], left = 1, left - 1
    heap = [(-_value_of_node(b, got[b.run] + 1), got[b.run], b.run, b) for b in bids
            if got[b.run] < caps[b.run]]
    heapq.heapify(heap)
    while left > 0 and heap:
        *_, run, b = heapq.heappop(heap)
        got[run] += 1
        left -= 1
        if got[run] < caps[run]:
            heapq.heappush(heap, (-_value_of_node(b, got[run] + 1), got[run], run, b))
    return got


def allocate(bids: list[Bid], cfg: ArbiterConfig) -> Allocation:
    """The pool's one request and each run's share of it. Pure."""
    bids = [Bid(**{**b.__dict__, "wanted_nodes": max(0, min(
        b.wanted_nodes, cfg.max_nodes if b.max_nodes is None else b.max_nodes))})
        for b in sorted(bids, key=lambda b: b.run)]
    wanted = sum(b.wanted_nodes for b in bids)
    binding = wanted > cfg.max_nodes
    got = _split(bids, cfg.max_nodes) if binding else {b.run: b.wanted_nodes for b in bids}
    shares = {}
    for b in bids:
        n = got[b.run]
        if n < b.wanted_nodes:
            why = (f"pool max {cfg.max_nodes} binds ({wanted} wanted by {len(bids)} runs): "
                   f"{n} of {b.wanted_nodes} wanted, next node worth "
                   f"${_value_of_node(b, n + 1):.2f}/h of GPU time here: echo covers the rest")
        else:
            why = (f"{n} node(s) as wanted; pool {min(wanted, cfg.max_nodes)} of max "
                   f"{cfg.max_nodes} for {len(bids)} run(s)")
        shares[b.run] = Share(n, n < b.wanted_nodes, why)
    total = max(cfg.min_nodes, sum(got.values()))
    reason = (f"{len(bids)} run(s) want {wanted} node(s); "
              + (f"max {cfg.max_nodes} binds: split by marginal value" if binding
                 else f"asking for {total}"))
    return Allocation(total, shares, binding, reason)


def expire(renewed_at: dict[str, float], now: float, cfg: ArbiterConfig) -> list[str]:
    """Runs whose lease has run out at `now` (last renewal `lease_s` or more ago)."""
    return sorted(run for run, t in renewed_at.items() if now - t >= cfg.lease_s)


def ready_share(ready_total: int, share: int | None, pool_total: int) -> int:
    """The ready pool nodes a run counts as its own: all of them before its first share, else
    its share of them in proportion (the runs' actor pools fill the nodes between them)."""
    if share is None or pool_total <= 0:
        return ready_total
    return min(ready_total, math.floor(ready_total * share / pool_total + 0.5))
