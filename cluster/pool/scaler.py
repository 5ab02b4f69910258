"""Applies the pool policy (`cluster.pool.policy`) to a running job on Ray: the thin, side-effecting
half of feedline's pool scaling.

    every interval_s:  EchoController.observe()  +  ray.nodes()  ->  Observation
                       PoolPolicy.decide(observation)             ->  Decision
                       PoolArbiter.bid(Bid(wanted nodes, GPUs, price, demand, node rate))
                                                                  ->  the run's Share
                       EchoController.set_factor(decision.echo_factor)
                       metrics + a log line when something changes

`PoolScaler` is a zero-CPU Ray actor per run with a background thread. Observations come from
the run's own reports (the ranks' wait and busy seconds, the pool actors' fresh examples and
busy seconds, gathered by the run's EchoController), and the pool's nodes from `ray.nodes()`:
alive nodes that declare the pool resource, of which the run counts its share as its own
(`arbiter_policy.ready_share`); nodes of its share not there yet are pending until
`node_start_timeout_s` (after that the cluster is taken not to deliver them: quota).

The run does not call `request_resources` itself: a request replaces the whole cluster's
previous one, so runs sharing a pool would undo each other. It bids to the cluster-wide arbiter
(`cluster.pool.arbiter`, one named detached actor per cluster and namespace, started by the
first run), which sums the runs' wants, splits the pool by marginal value when its max binds,
and sends the one request. A run whose share is short plans with the share as its max, so its
own policy's echo fallback covers the rest. On stop, the run leaves the arbiter; its share
returns to the others, and Ray's autoscaler removes idle pool nodes after its idle timeout.

The preprocessing actor pool's bounds are set when the dataset is built
(`pool_actor_bounds`): from `min_nodes` to `max_nodes` worth of actors, so Ray Data's actor-pool
autoscaler can fill every node the policy brings.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass, field, replace

import ray

from cluster.observability.metrics import ScalerMetrics
from cluster.pool.arbiter import ARBITER_NAMESPACE, get_arbiter
from cluster.pool.arbiter_policy import ArbiterConfig, Bid, Share, ready_share
from cluster.pool.policy import Decision, Observation, PolicyConfig, PoolPolicy

__all__ = ["ScalerConfig", "PoolScaler", "start_scaler", "pool_actor_bounds", "pool_nodes"]

log = logging.getLogger("feedline.scaler")


@dataclass(frozen=True, kw_only=True)
class ScalerConfig:
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    pool_resource: str = "preprocess_cpu"
    """The custom resource pool nodes declare (`cpus_per_node` units each)."""
    interval_s: float = 30.0
    """Seconds between decisions (and the window each observation covers)."""
    node_start_timeout_s: float = 600.0
    """Nodes asked for and not ready after this long are no longer counted as pending: the
    cluster is taken not to deliver them (a quota below max_nodes), and the policy plans with
    the nodes it has as its max (so the echo fallback applies) until `retry_after_s`."""
    retry_after_s: float = 1800.0
    """How long a discovered limit stands before the configured max_nodes is tried again."""
    arbiter_namespace: str = ARBITER_NAMESPACE
    """Ray namespace of the cluster-wide pool arbiter the run bids to (one arbiter per cluster
    and namespace: runs that share a pool must name the same one)."""
    pool_quota_nodes: int | None = None
    """The shared pool's max for every run together (the cpu-pool group's maxReplicas; None:
    this run's max_nodes); set by the run that starts the arbiter."""
    lease_s: float = ArbiterConfig.lease_s
    """The arbiter forgets a run that has not bid for this long (its driver was killed); set by
    the run that starts the arbiter."""

    def arbiter_config(self) -> ArbiterConfig:
        """The arbiter's config when this run is the one that starts it."""
        quota = self.policy.max_nodes if self.pool_quota_nodes is None else self.pool_quota_nodes
        return ArbiterConfig(max_nodes=max(quota, self.policy.min_nodes),
                             min_nodes=self.policy.min_nodes,
                             lease_s=self.lease_s,
                             resend_s=min(ArbiterConfig.resend_s, self.interval_s))


def pool_actor_bounds(cfg: ScalerConfig, resource_per_actor: float) -> tuple[int, int]:
    """(min, max) preprocessing actors for a pool of min_nodes .. max_nodes nodes."""
    per_node = max(1, int(cfg.policy.cpus_per_node // resource_per_actor))
    return max(1, cfg.policy.min_nodes * per_node), max(1, cfg.policy.max_nodes * per_node)


def pool_nodes(resource: str) -> int:
    """Alive nodes of the cluster that declare `resource`."""
    return sum(1 for n in ray.nodes() if n.get("Alive") and n["Resources"].get(resource, 0) > 0)


@ray.remote(num_cpus=0)
class PoolScaler:
    def __init__(self, run: str, cfg: ScalerConfig, rates: ray.actor.ActorHandle):
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
        self.run, self.cfg, self.rates = run, cfg, rates
        self.policy = PoolPolicy(cfg.policy)
        self.metrics = ScalerMetrics(run)
        self.started = time.monotonic()
        self.requested = 0
        self.requested_at = -math.inf
        self.echo = 1.0
        self.limit_since: float | None = None
        self.share: Share | None = None
        self.stall_measured = False
        self.pool_total = 0
        self.log: list[dict] = []
        # Two runs may carry the same label (one made from the clock, to the second): the
        # arbiter knows each by label and Ray job.
        self.key = f"{run}/{ray.get_runtime_context().get_job_id()}"
        self.arbiter = self._join_arbiter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="feedline-scaler", daemon=True)
        self._thread.start()

    def _join_arbiter(self) -> ray.actor.ActorHandle:
        """The cluster's arbiter (started if there is none), with this run registered."""
        arbiter = get_arbiter(self.cfg.arbiter_config(), self.cfg.pool_resource,
                              self.cfg.policy.cpus_per_node, self.cfg.arbiter_namespace)
        ray.get(arbiter.register.remote(self.key), timeout=60)
        return arbiter

    def _observe(self) -> Observation:
        seen = ray.get(self.rates.observe.remote(self.cfg.interval_s), timeout=30)
        ready = ready_share(pool_nodes(self.cfg.pool_resource),
                            None if self.share is None else self.share.nodes, self.pool_total)
        now = time.monotonic()
        starting = now - self.requested_at < self.cfg.node_start_timeout_s
        pending = max(0, self.requested - ready) if starting else 0
        if not starting and self.requested > ready and self.limit_since is None:
            # Asked for, never came: plan with what the cluster gives (the echo fallback).
            self.limit_since = now
            self.policy.config = replace(self.cfg.policy, max_nodes=max(
                self.cfg.policy.min_nodes, ready))
            log.warning("%s: asked for %d pool nodes, %d ready after %.0f s: planning with %d "
                        "as the pool's max for %.0f s", self.run, self.requested, ready,
                        self.cfg.node_start_timeout_s, self.policy.config.max_nodes,
                        self.cfg.retry_after_s)
        elif self.limit_since is not None and now - self.limit_since >= self.cfg.retry_after_s:
            self.limit_since = None
            self.policy.config = self._own_config()
        stall = seen["stall"]
        self.stall_measured = stall is not None
        if stall is None:
            # No step has finished yet: with no pool node the GPUs can only be waiting.
            stall = 1.0 if ready == 0 and now - self.started > self.cfg.interval_s else 0.0
        return Observation(now_s=now - self.started, stall_fraction=stall,
                           consume_rate=seen["consume"] or 0.0, produce_rate=seen["produce"],
                           pool_nodes=ready, pending_nodes=pending, echo_factor=self.echo,
                           pool_busy_fraction=seen["busy"])

    def _own_config(self) -> PolicyConfig:
        """The run's policy config under its share: a short share is its max (so its echo
        fallback covers the rest)."""
        if self.share is not None and self.share.short:
            return replace(self.cfg.policy, max_nodes=max(self.cfg.policy.min_nodes,
                                                          self.share.nodes))
        return self.cfg.policy

    def _bid(self, obs: Observation, d: Decision) -> Share:
        """Send the run's want to the arbiter; plan with the share it gives back."""
        # The policy's smoothed estimates, not this window's readings: noisy bids would move
        # nodes between runs every interval.
        rate, demand = self.policy.state.node_rate, self.policy.state.demand_avg
        bid = Bid(run=self.key, wanted_nodes=d.wanted_nodes or d.target_nodes,
                  gpus=self.cfg.policy.gpus, gpu_cost_per_hour=self.cfg.policy.gpu_cost_per_hour,
                  demand=demand or obs.consume_rate, node_rate=rate,
                  stall_fraction=obs.stall_fraction, max_nodes=self.cfg.policy.max_nodes)
        try:
            self.share, self.pool_total = ray.get(self.arbiter.bid.remote(bid), timeout=30)
        except ray.exceptions.RayActorError:
            # The arbiter died (killed, or its node lost): the next bid starts a new one.
            log.warning("%s: the pool arbiter is gone: starting or joining a new one", self.run)
            self.arbiter = self._join_arbiter()
            self.share, self.pool_total = ray.get(self.arbiter.bid.remote(bid), timeout=30)
        if self.limit_since is None:
            self.policy.config = self._own_config()
        return self.share

    def _apply(self, obs: Observation, d: Decision) -> None:
        share = self._bid(obs, d)
        nodes = share.nodes
        if nodes != max(self.requested, obs.pool_nodes) or d.action == "up":
            self.requested_at = time.monotonic()
        self.requested = nodes
        if d.echo_factor != self.echo:
            self.echo = d.echo_factor
            self.rates.set_factor.remote(d.echo_factor, d.reason)
        self.metrics.observe(d.target_nodes, obs.pool_nodes, obs.pending_nodes, d.action, nodes)
        entry = {"t_s": round(obs.now_s, 1), "action": d.action, "target_nodes": d.target_nodes,
                 "ready": obs.pool_nodes, "pending": obs.pending_nodes,
                 "stall": round(obs.stall_fraction, 3), "echo": d.echo_factor,
                 "stall_measured": self.stall_measured, "reason": d.reason,
                 "share_nodes": nodes, "short": share.short, "pool_nodes": self.pool_total,
                 "share_reason": share.reason}
        self.log.append(entry)
        if d.action not in ("hold", "wait") or (self.log[-2:-1] and
                                                self.log[-2]["share_nodes"] != nodes):
            log.info("%s: %s -> %d nodes (share %d of the pool's %d), echo %.2f: %s; %s",
                     self.run, d.action, d.target_nodes, nodes, self.pool_total, d.echo_factor,
                     d.reason, share.reason)

    def _loop(self) -> None:
        while not self._stop.wait(self.cfg.interval_s):
            try:
                obs = self._observe()
                self._apply(obs, self.policy.decide(obs))
            except Exception:  # a failed tick must not end scaling for the rest of the run
                log.exception("%s: pool scaler tick failed", self.run)

    def decisions(self) -> list[dict]:
        """Every decision so far: time, action, target, ready, pending, stall, echo, reason."""
        return list(self.log)

    def stop(self) -> None:
        """Stop deciding and leave the arbiter: the run's share returns to the other runs (the
        pool's request falls to their sum, or min_nodes; idle pool nodes then go)."""
        self._stop.set()
        self._thread.join(timeout=self.cfg.interval_s + 30)
        self.pool_total = ray.get(self.arbiter.leave.remote(self.key), timeout=60)
        self.metrics.observe(self.cfg.policy.min_nodes, pool_nodes(self.cfg.pool_resource), 0,
                             None, 0)


def start_scaler(run: str, cfg: ScalerConfig, rates: ray.actor.ActorHandle
                 ) -> ray.actor.ActorHandle:
    return PoolScaler.remote(run, cfg, rates)
