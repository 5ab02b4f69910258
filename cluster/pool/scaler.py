"""Applies the pool policy (`cluster.pool.policy`) to a running job on Ray: the thin, side-effecting
half of feedline's pool scaling.

    every interval_s:  EchoController.observe()  +  ray.nodes()  ->  Observation
                       PoolPolicy.decide(observation)             ->  Decision
                       ray.autoscaler.sdk.request_resources(bundles=[{pool: cpus}] x target)
                       EchoController.set_factor(decision.echo_factor)
                       metrics + a log line when something changes

`PoolScaler` is a zero-CPU Ray actor per run with a background thread. Observations come from
the run's own reports (the ranks' wait and busy seconds, the pool actors' fresh examples and
busy seconds, gathered by the run's EchoController), and the pool's nodes from `ray.nodes()`:
alive nodes that declare the pool resource are ready; nodes asked for and not there yet are
pending until `node_start_timeout_s` (after that the cluster is taken not to deliver them:
quota). The request is re-sent every interval, not only on change: `request_resources` replaces
the whole cluster's previous request, and Ray Data's own autoscaling coordinator sends its
request too (every ~20 s), so a request sent once would not last. On stop, the request falls
back to `min_nodes`, and Ray's autoscaler removes the idle pool nodes after its idle timeout.

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
        self.log: list[dict] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="feedline-scaler", daemon=True)
        self._thread.start()

    def _observe(self) -> Observation:
        seen = ray.get(self.rates.observe.remote(self.cfg.interval_s), timeout=30)
        ready = pool_nodes(self.cfg.pool_resource)
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
            self.policy.config = self.cfg.policy
        stall = seen["stall"]
        if stall is None:
            # No step has finished yet: with no pool node the GPUs can only be waiting.
            stall = 1.0 if ready == 0 and now - self.started > self.cfg.interval_s else 0.0
        return Observation(now_s=now - self.started, stall_fraction=stall,
                           consume_rate=seen["consume"] or 0.0, produce_rate=seen["produce"],
                           pool_nodes=ready, pending_nodes=pending, echo_factor=self.echo,
                           pool_busy_fraction=seen["busy"])

    def _apply(self, obs: Observation, d: Decision) -> None:
        if d.target_nodes != max(self.requested, obs.pool_nodes) or d.action == "up":
            self.requested_at = time.monotonic()
        self.requested = d.target_nodes
        self._request(d.target_nodes)
        if d.echo_factor != self.echo:
            self.echo = d.echo_factor
            self.rates.set_factor.remote(d.echo_factor, d.reason)
        self.metrics.observe(d.target_nodes, obs.pool_nodes, obs.pending_nodes, d.action)
        entry = {"t_s": round(obs.now_s, 1), "action": d.action, "target_nodes": d.target_nodes,
                 "ready": obs.pool_nodes, "pending": obs.pending_nodes,
                 "stall": round(obs.stall_fraction, 3), "echo": d.echo_factor,
                 "reason": d.reason}
        self.log.append(entry)
        if d.action not in ("hold", "wait"):
            log.info("%s: %s -> %d nodes, echo %.2f: %s", self.run, d.action, d.target_nodes,
                     d.echo_factor, d.reason)

    def _request(self, nodes: int) -> None:
        from ray.autoscaler.sdk import request_resources

        bundle = {self.cfg.pool_resource: float(self.cfg.policy.cpus_per_node)}
        request_resources(bundles=[dict(bundle) for _ in range(nodes)])

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
        """Stop deciding; ask for `min_nodes` only (idle pool nodes then go)."""
        self._stop.set()
        self._thread.join(timeout=self.cfg.interval_s + 30)
        self._request(self.cfg.policy.min_nodes)
        self.metrics.observe(self.cfg.policy.min_nodes, pool_nodes(self.cfg.pool_resource), 0,
                             None)


def start_scaler(run: str, cfg: ScalerConfig, rates: ray.actor.ActorHandle
                 ) -> ray.actor.ActorHandle:
    return PoolScaler.remote(run, cfg, rates)
