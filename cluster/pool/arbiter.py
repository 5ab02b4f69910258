"""The cluster-wide pool arbiter: one named, detached actor per cluster and namespace that every
feedline run's PoolScaler bids to, and that alone calls `ray.autoscaler.sdk.request_resources`
for the pool (a request replaces the cluster's previous one: two runs sending their own would
undo each other every interval).

    arbiter = get_arbiter(ArbiterConfig(max_nodes=64), "preprocess_cpu", cpus_per_node=16)
    ray.get(arbiter.register.remote("run-a"))
    share, total = ray.get(arbiter.bid.remote(Bid(run="run-a", wanted_nodes=12, ...)))
    ray.get(arbiter.leave.remote("run-a"))

Each bid renews the run's lease; a run that stops bidding for `lease_s` (its driver was killed,
taking its scaler with it) is forgotten on the next tick and its nodes go to the others. The
split is `cluster.pool.arbiter_policy.allocate` (pure); this file holds the state, the clock and
the one side effect. `PoolArbiter` is the plain class (tests drive it with a fake clock and a
fake request function); `ArbiterActor` is it as a zero-CPU Ray actor with a thread that re-sends
the request and expires leases every `resend_s`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import ray

from cluster.pool.arbiter_policy import Allocation, ArbiterConfig, Bid, Share, allocate, expire

__all__ = ["PoolArbiter", "ArbiterActor", "get_arbiter", "arbiter_name", "ARBITER_NAMESPACE"]

log = logging.getLogger("feedline.arbiter")

ARBITER_NAMESPACE = "feedline"


def arbiter_name(pool_resource: str) -> str:
    """The arbiter's actor name for the pool that declares `pool_resource`."""
    return f"feedline-pool-arbiter-{pool_resource}"


class PoolArbiter:
    """The arbiter's state: the runs' latest bids and lease renewals, the allocation, and every
    request sent (time, nodes) for inspection."""

    def __init__(self, cfg: ArbiterConfig, pool_resource: str, cpus_per_node: int,
                 clock: Callable[[], float] = time.monotonic,
                 request: Callable[[int], None] | None = None):
        self.cfg, self.pool_resource, self.cpus_per_node = cfg, pool_resource, cpus_per_node
        self.clock = clock
        self._send = request or self._request_resources
        self.bids: dict[str, Bid] = {}
        self.renewed_at: dict[str, float] = {}
        self.allocation = allocate([], cfg)
        self.requests: list[tuple[float, int]] = []
        self.forgotten: list[tuple[float, str, str]] = []
        self._lock = threading.Lock()

    def _request_resources(self, nodes: int) -> None:
        from ray.autoscaler.sdk import request_resources

        bundle = {self.pool_resource: float(self.cpus_per_node)}
        request_resources(bundles=[dict(bundle) for _ in range(nodes)])

    def _reallocate(self) -> Allocation:
        now = self.clock()
        for run in expire(self.renewed_at, now, self.cfg):
            self._drop(run, f"lease expired: no bid for {now - self.renewed_at[run]:.0f} s")
        self.allocation = allocate(list(self.bids.values()), self.cfg)
        self._send(self.allocation.total_nodes)
        self.requests.append((now, self.allocation.total_nodes))
        del self.requests[:-1000]
        return self.allocation

    def _drop(self, run: str, why: str) -> None:
        self.bids.pop(run, None)
        self.renewed_at.pop(run, None)
        self.forgotten.append((self.clock(), run, why))
        log.warning("pool arbiter: forgot run %s (%s)", run, why)

    def register(self, run: str) -> None:
        """A run starts: its lease begins (it gets nodes with its first bid)."""
        with self._lock:
            self.renewed_at[run] = self.clock()

    def bid(self, bid: Bid) -> tuple[Share, int]:
        """A run's latest want: renews its lease; returns its share and the pool's request."""
        with self._lock:
            self.bids[bid.run] = bid
            self.renewed_at[bid.run] = self.clock()
            alloc = self._reallocate()
            share = alloc.shares.get(bid.run) or Share(0, bid.wanted_nodes > 0, alloc.reason)
            return share, alloc.total_nodes

    def leave(self, run: str) -> int:
        """A run ends: its share returns to the others. Returns the pool's new request."""
        with self._lock:
            if run in self.renewed_at or run in self.bids:
                self._drop(run, "left")
            return self._reallocate().total_nodes

    def tick(self) -> int:
        """Expire leases and re-send the request; returns the nodes asked for."""
        with self._lock:
            return self._reallocate().total_nodes

    def runs(self) -> list[str]:
        """Runs holding a lease now."""
        with self._lock:
            return sorted(self.renewed_at)

    def state(self) -> dict:
        """Runs, shares, the last requests and the runs forgotten (for people and tests)."""
        with self._lock:
            a = self.allocation
            return {"runs": sorted(self.renewed_at), "total_nodes": a.total_nodes,
                    "binding": a.binding, "reason": a.reason,
                    "shares": {r: {"nodes": s.nodes, "short": s.short, "reason": s.reason}
                               for r, s in a.shares.items()},
                    "requests": list(self.requests[-100:]), "forgotten": list(self.forgotten),
                    "max_nodes": self.cfg.max_nodes, "lease_s": self.cfg.lease_s}


class _ArbiterWithThread(PoolArbiter):
    def __init__(self, cfg: ArbiterConfig, pool_resource: str, cpus_per_node: int):
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
        super().__init__(cfg, pool_resource, cpus_per_node)
        self._stop = threading.Event()
        threading.Thread(target=self._loop, name="feedline-arbiter", daemon=True).start()

    def _loop(self) -> None:
        while not self._stop.wait(self.cfg.resend_s):
            try:
                self.tick()
            except Exception:  # one failed request must not end the pool's arbitration
                log.exception("pool arbiter tick failed")


ArbiterActor = ray.remote(num_cpus=0, max_concurrency=16)(_ArbiterWithThread)


def get_arbiter(cfg: ArbiterConfig, pool_resource: str, cpus_per_node: int,
                namespace: str = ARBITER_NAMESPACE) -> ray.actor.ActorHandle:
    """The cluster's arbiter for this pool, started detached by the first run that asks (its
    `cfg` then holds for every run until the actor is killed)."""
    return ArbiterActor.options(name=arbiter_name(pool_resource), namespace=namespace,
                                lifetime="detached", get_if_exists=True).remote(
        cfg, pool_resource, cpus_per_node)
