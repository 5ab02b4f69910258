"""feedline's scaling policy for the dedicated preprocessing CPU pool: pure and deterministic.

    policy = PoolPolicy(PolicyConfig(min_nodes=0, max_nodes=64, cpus_per_node=16, gpus=8,
                                     cpu_node_cost_per_hour=0.8, gpu_cost_per_hour=4.0,
                                     target_stall=0.05, echo_max=4.0))
    decision = policy.decide(Observation(now_s=..., stall_fraction=..., consume_rate=...,
                                         produce_rate=..., pool_nodes=..., pending_nodes=...,
                                         echo_factor=...))
    decision.target_nodes, decision.echo_factor, decision.reason

It acts on what the GPUs measure, not on queued work:

- **Up**, sized by the measured shortfall: while the GPUs stall above `target_stall`, the pool
  goes straight to the nodes that cover the trainers' demand (`consume_rate`, examples/s when
  they do not wait) plus `headroom`, using the per-node throughput measured on this job (fresh
  examples/s per ready node: over the actors' busy time when `pool_busy_fraction` is known, else
  only while the pool is the bottleneck, when what it delivers is what it can do). Pending nodes
  count as coming, so a slow start-up does not make it ask twice.
- **Worth it** (Pecan-like marginal cost): a node is added only while the GPU time its
  throughput recovers is worth more than it costs: `gpus x gpu_cost x min(node rate, shortfall)
  / demand >= cpu_node_cost`.
- **Down**, with hysteresis and a cool-down: only when the pool's capacity exceeds the demand by
  more than `down_margin` on top of the headroom, and by more than the readings' measured noise
  (the relative spread of the per-node rate and demand readings: the dead band widens to it),
  and at least a node, without stall, for `down_after_s` in a row, and not within `cooldown_s`
  of the last scale-up; then straight to the sized count.
- **Echo fallback**: when no more nodes will come (the pool is at `max_nodes` or at the last
  node worth its cost, none pending) and the stall persists for `echo_after_s`, the echo factor
  rises to consume / capacity (at most `echo_max`); it follows the capacity down as headroom
  returns, and it goes back to 1 *before* any node is added again (echoed examples are worth
  less than fresh ones, so nodes are not bought while echo still stands in for them).

Every decision says why (`reason`, for people; `action`, a short label for metrics). No I/O, no
clock reads, no randomness: the same observations give the same decisions. The state between
decisions is an explicit frozen `PolicyState`; `PoolPolicy` only holds it. `cluster.pool.scaler`
applies decisions to Ray (through the cluster's pool arbiter: `Decision.wanted_nodes` is the
run's bid); `cluster.pool.simulate` runs this same code at 1,024-GPU scale.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Literal

__all__ = ["PolicyConfig", "Observation", "Decision", "PolicyState", "PoolPolicy", "decide",
           "ACTIONS"]

Action = Literal["up", "down", "hold", "echo_up", "echo_down", "wait"]
ACTIONS: tuple[str, ...] = ("up", "down", "hold", "echo_up", "echo_down", "wait")
EPS = 1e-9
_NOT_AHEAD = {"ahead_since_s": None, "ahead_low_rate": None, "ahead_high_demand": None}


@dataclass(frozen=True, kw_only=True)
class PolicyConfig:
    min_nodes: int = 0
    """Fewest pool nodes (a floor the policy never goes under)."""
    max_nodes: int = 64
    """Most pool nodes (quota or budget); at it, echo takes over."""
    cpus_per_node: int = 16
    """CPUs (units of the pool resource) one pool node carries."""
    gpus: int = 8
    """GPUs the pool feeds (their idle time is what stall costs)."""
    cpu_node_cost_per_hour: float = 0.8
    gpu_cost_per_hour: float = 4.0
    target_stall: float = 0.05
    """Share of GPU step time waiting for data above which the pool grows."""
    echo_max: float = 4.0
    """Highest echo factor the fallback may set."""
    headroom: float = 0.05
    """Capacity is sized to the demand times (1 + headroom): measurement noise and small
    throughput dips do not turn into stall."""
    down_margin: float = 0.05
    """Hysteresis: scale down only when capacity exceeds demand x (1 + headroom + down_margin)
    and at least one node is spare, judged with the lowest per-node rate and the highest demand
    seen over the whole `down_after_s`."""
    down_after_s: float = 180.0
    """The pool must run ahead this long, every decision, before it shrinks."""
    cooldown_s: float = 300.0
    """No scale-down within this long after a scale-up (nodes just asked for are not given
    back on the first quiet window)."""
    up_every_s: float = 30.0
    """Least time between two scale-ups (pending nodes count as coming anyway)."""
    echo_after_s: float = 60.0
    """Stall must persist this long with no node coming before echo is raised."""
    echo_band: float = 0.1
    """Relative change needed before the echo factor in force moves."""
    smoothing_s: float = 60.0
    """Time constant of the exponential average of per-node throughput."""
    noise_window_s: float = 600.0
    """Time constant over which the readings' relative spread (the measurement noise) is
    averaged; the down path's dead band widens to twice that spread."""
    node_rate_prior: float | None = None
    """Fresh examples/s one node makes, used until the job has measured it (None: start with
    one node and measure)."""

    def __post_init__(self) -> None:
        if not 0 <= self.min_nodes <= self.max_nodes:
            raise ValueError(f"need 0 <= min_nodes <= max_nodes, got {self.min_nodes}, "
                             f"{self.max_nodes}")
        if self.cpus_per_node <= 0 or self.gpus <= 0:
            raise ValueError("cpus_per_node and gpus must be > 0")
        if self.echo_max < 1:
            raise ValueError(f"echo_max must be >= 1, got {self.echo_max}")
        if not 0 < self.target_stall < 1:
            raise ValueError(f"target_stall must be in (0, 1), got {self.target_stall}")


@dataclass(frozen=True, kw_only=True)
class Observation:
    now_s: float
    """Time of the observation (any monotonic clock, seconds)."""
    stall_fraction: float
    """Share of the trainers' step time spent waiting for data over the last window."""
    consume_rate: float
    """Examples/s the trainers would take if they never waited."""
    produce_rate: float
    """Fresh examples/s the pool delivered over the last window."""
    pool_nodes: int
    """Pool nodes ready."""
    pending_nodes: int
    """Pool nodes asked for and not ready yet."""
    echo_factor: float = 1.0
    """Echo factor in force."""
    pool_busy_fraction: float | None = None
    """Share of the pool actors' time spent working over the window, when known: with it the
    pool's capacity is measured even when the trainers hold it back."""


@dataclass(frozen=True)
class Decision:
    target_nodes: int
    echo_factor: float
    reason: str
    action: Action = "hold"
    """up | down | hold | echo_up | echo_down | wait (nothing measured yet)."""
    wanted_nodes: int | None = None
    """Nodes the run would take if `max_nodes` were not in the way (cost still limits them);
    None: the same as `target_nodes`. What a run bids for at a shared pool's arbiter."""


@dataclass(frozen=True)
class PolicyState:
    node_rate: float | None = None
    """Smoothed fresh examples/s per ready node."""
    rate_at_s: float | None = None
    last_up_s: float = -math.inf
    ahead_since_s: float | None = None
    """Since when the pool has run ahead enough to shrink."""
    ahead_low_rate: float | None = None
    ahead_high_demand: float | None = None
    """The lowest per-node estimate and the highest demand seen since then."""
    stall_since_s: float | None = None
    """Since when stall has persisted with no node coming."""
    rate_noise: float | None = None
    """Smoothed relative deviation of the per-node rate samples from the estimate (None: not
    two samples yet; the first deviation seen stands for it until more come)."""
    demand_noise: float | None = None
    """Smoothed relative deviation of the demand readings from their smoothed value."""
    demand_avg: float | None = None
    demand_at_s: float | None = None


def _measure_node_rate(cfg: PolicyConfig, state: PolicyState, obs: Observation) -> PolicyState:
    """The state with the smoothed per-node rate updated from this window, where it tells."""
    if obs.pool_nodes <= 0 or obs.produce_rate <= 0:
        return state
    if obs.pool_busy_fraction is not None and obs.pool_busy_fraction > 0.05:
        sample = obs.produce_rate / min(1.0, obs.pool_busy_fraction) / obs.pool_nodes
    elif obs.stall_fraction > cfg.target_stall:
        sample = obs.produce_rate / obs.pool_nodes  # the pool is the bottleneck: all it can do
    elif state.node_rate is None or obs.produce_rate / obs.pool_nodes > state.node_rate:
        sample = obs.produce_rate / obs.pool_nodes  # a lower bound, and better than we knew
    else:
        return state
    if state.node_rate is None or state.rate_at_s is None:
        return replace(state, node_rate=sample, rate_at_s=obs.now_s)
    w = _weight(cfg.smoothing_s, obs.now_s - state.rate_at_s)
    wn = _weight(cfg.noise_window_s, obs.now_s - state.rate_at_s)
    spread = abs(sample / state.node_rate - 1)
    return replace(state, node_rate=state.node_rate + w * (sample - state.node_rate),
                   rate_at_s=obs.now_s, rate_noise=_average(state.rate_noise, spread, wn))


def _average(old: float | None, sample: float, weight: float) -> float:
    """An exponential average that starts at its first sample."""
    return sample if old is None else old + weight * (sample - old)


def _weight(time_constant_s: float, dt: float) -> float:
    """Weight of a new sample in an exponential average after `dt` seconds."""
    return 1.0 if time_constant_s <= 0 else 1.0 - math.exp(-max(0.0, dt) / time_constant_s)


def _measure_demand(cfg: PolicyConfig, state: PolicyState, obs: Observation) -> PolicyState:
    """The state with the demand readings' smoothed value and relative spread updated."""
    if obs.consume_rate <= 0:
        return state
    if state.demand_avg is None or state.demand_at_s is None:
        return replace(state, demand_avg=obs.consume_rate, demand_at_s=obs.now_s)
    w = _weight(cfg.noise_window_s, obs.now_s - state.demand_at_s)
    spread = abs(obs.consume_rate / state.demand_avg - 1)
    return replace(state, demand_avg=state.demand_avg + w * (obs.consume_rate - state.demand_avg),
                   demand_at_s=obs.now_s, demand_noise=_average(state.demand_noise, spread, w))


def _nodes_worth(cfg: PolicyConfig, demand: float, node_rate: float, want: int) -> int:
    """The most nodes, up to `want`, whose last one still recovers more GPU time than it costs."""
    gpu_value = cfg.gpus * cfg.gpu_cost_per_hour  # $/h of all GPUs; a share s of it per s stalled
    sized = demand * (1 + cfg.headroom)
    n = 0
    while n < want:
        adds = min(node_rate, max(0.0, sized - n * node_rate))
        if gpu_value * adds / demand < cfg.cpu_node_cost_per_hour:
            break
        n += 1
    return n


def _echo_for(cfg: PolicyConfig, demand: float, capacity: float) -> float:
    """The echo factor that covers the demand from this capacity. No headroom: echo beyond
    the need replaces fresh examples the pool could have delivered by less useful copies."""
    if capacity <= 0:
        return cfg.echo_max
    return min(cfg.echo_max, max(1.0, demand / capacity))


@dataclass(frozen=True)
class _Now:
    """What one decision knows: the observation and the estimates made from it."""
    obs: Observation
    state: PolicyState
    demand: float
    node_rate: float
    need: int
    want: int
    limit: str | None
    facts: str
    uncapped: int
    """The nodes worth their cost with no max_nodes."""

    @property
    def coming(self) -> int:
        return self.obs.pool_nodes + self.obs.pending_nodes

    @property
    def capacity(self) -> float:
        return self.node_rate * self.obs.pool_nodes

    @property
    def stall(self) -> str:
        return f"stall {self.obs.stall_fraction:.0%}"


Out = tuple[Decision, PolicyState]


def _out(cfg: PolicyConfig, now: _Now, target: int | None, factor: float, action: Action,
         why: str, **changes) -> Out:
    """A decision (target None: hold what is coming, within the bounds) and the next state."""
    if target is None:
        target = max(cfg.min_nodes, min(cfg.max_nodes, now.coming))
    wanted = max(target, now.uncapped) if now.limit == "max_nodes" else None
    return Decision(target, factor, why, action, wanted), replace(now.state, **changes)


def _noise(cfg: PolicyConfig, state: PolicyState) -> float:
    """How much the down path's dead band widens beyond `headroom + down_margin`: enough to
    cover the measured relative spread of the per-node rate and demand readings, so a reading
    one noise-width high never looks like spare capacity."""
    spread = (state.rate_noise or 0.0) + (state.demand_noise or 0.0)
    return max(0.0, spread - cfg.headroom - cfg.down_margin)


def _with_echo(cfg: PolicyConfig, now: _Now) -> Out:
    """Echo in force: it stands in for nodes that cannot come. Give it back first."""
    obs, echo = now.obs, max(1.0, now.obs.echo_factor)
    if now.want > now.coming:
        return _out(cfg, now, None, 1.0, "echo_down",
                    f"{now.facts}; room for {now.want - now.coming} more node(s): echo back "
                    f"to 1 before adding nodes", stall_since_s=None)
    supported = _echo_for(cfg, now.demand, now.capacity)
    if supported == 1.0 or supported < echo * (1 - cfg.echo_band):
        return _out(cfg, now, None, supported, "echo_down",
                    f"{now.facts}; capacity {now.capacity:.0f}/s covers echo {supported:.2f}: "
                    f"echo lowered", stall_since_s=None)
    if obs.stall_fraction > cfg.target_stall and supported > echo * (1 + cfg.echo_band):
        return _out(cfg, now, None, supported, "echo_up",
                    f"{now.facts}; still at {now.limit or 'the limit'} and {now.stall}: "
                    f"echo raised")
    return _out(cfg, now, None, echo, "hold", f"{now.facts}; echo {echo:.2f} covers the gap")


def _when_stalled(cfg: PolicyConfig, now: _Now) -> Out:
    """Stall: grow by the shortfall, or echo when no node can come."""
    obs, state = now.obs, now.state
    if now.want > now.coming:
        if obs.now_s - state.last_up_s < cfg.up_every_s:
            return _out(cfg, now, None, 1.0, "hold", f"{now.facts}; {now.stall}, last "
                        f"scale-up {obs.now_s - state.last_up_s:.0f} s ago")
        return _out(cfg, now, now.want, 1.0, "up",
                    f"{now.facts}; {now.stall} > {cfg.target_stall:.0%}: {now.coming} -> "
                    f"{now.want} nodes (shortfall {max(0.0, now.demand - now.capacity):.0f}/s)",
                    last_up_s=obs.now_s, stall_since_s=None, **_NOT_AHEAD)
    if obs.pending_nodes > 0:
        return _out(cfg, now, None, 1.0, "hold",
                    f"{now.facts}; {now.stall}, {obs.pending_nodes} node(s) still starting")
    if now.limit is None:
        # Enough nodes by the estimate, yet stalling: the estimate is high; it is re-measured
        # while the pool is the bottleneck, and the next decision will size up.
        return _out(cfg, now, None, 1.0, "hold", f"{now.facts}; {now.stall} with the nodes "
                    f"the estimate asks for: re-measuring")
    if cfg.echo_max <= 1.0:
        return _out(cfg, now, None, 1.0, "hold",
                    f"{now.facts}; at {now.limit}, {now.stall}, echo off (echo_max 1)")
    since = state.stall_since_s if state.stall_since_s is not None else obs.now_s
    if obs.now_s - since < cfg.echo_after_s:
        return _out(cfg, now, None, 1.0, "hold", f"{now.facts}; at {now.limit}, {now.stall} "
                    f"for {obs.now_s - since:.0f} s", stall_since_s=since)
    factor = _echo_for(cfg, now.demand, now.capacity)
    return _out(cfg, now, None, factor, "echo_up",
                f"{now.facts}; at {now.limit} with {now.stall} for {obs.now_s - since:.0f} s: "
                f"echo {factor:.2f}", stall_since_s=since)


def _when_keeping_up(cfg: PolicyConfig, now: _Now) -> Out:
    """No stall: shrink only when well ahead (beyond the measured noise), for long enough, and
    not just after growing. Sized with the lowest per-node estimate and the highest demand
    seen while ahead: one noisy reading must not take away nodes that the next window needs."""
    obs, state, nodes = now.obs, now.state, now.obs.pool_nodes
    low = min(now.node_rate, state.ahead_low_rate or now.node_rate)
    high = max(now.demand, state.ahead_high_demand or now.demand)
    keep = max(cfg.min_nodes, min(cfg.max_nodes,
                                  math.ceil(high * (1 + cfg.headroom) / low - EPS)))
    band = cfg.headroom + cfg.down_margin + _noise(cfg, state)
    spare = low * nodes >= high * (1 + band) and keep < nodes
    if not spare or obs.pending_nodes > 0:
        return _out(cfg, now, None, 1.0, "hold", f"{now.facts}; {now.stall}: pool keeps up "
                    f"(dead band {band:.0%})", stall_since_s=None, **_NOT_AHEAD)
    since = state.ahead_since_s if state.ahead_since_s is not None else obs.now_s
    if obs.now_s - since < cfg.down_after_s or obs.now_s - state.last_up_s < cfg.cooldown_s:
        return _out(cfg, now, None, 1.0, "hold", f"{now.facts}; ahead by more than {band:.0%} "
                    f"for {obs.now_s - since:.0f} s: waiting before shrinking",
                    ahead_since_s=since, ahead_low_rate=low, ahead_high_demand=high,
                    stall_since_s=None)
    return _out(cfg, now, keep, 1.0, "down",
                f"{now.facts}; capacity {low * nodes:.0f}/s ahead by more than {band:.0%} for "
                f"{obs.now_s - since:.0f} s: {nodes} -> {keep} nodes", stall_since_s=None,
                **_NOT_AHEAD)


def _estimate(cfg: PolicyConfig, state: PolicyState, obs: Observation, node_rate: float,
              demand: float) -> _Now:
    need = math.ceil(demand * (1 + cfg.headroom) / node_rate - EPS)
    worth = _nodes_worth(cfg, demand, node_rate, need)
    want = max(cfg.min_nodes, min(cfg.max_nodes, worth))
    limit = ("max_nodes" if want == cfg.max_nodes and need > cfg.max_nodes
             else "cost" if worth < need else None)
    facts = (f"demand {demand:.0f}/s, {node_rate:.0f}/s per node, {obs.pool_nodes} ready + "
             f"{obs.pending_nodes} pending, need {need}")
    return _Now(obs, state, demand, node_rate, need, want, limit, facts,
                max(cfg.min_nodes, worth))


def decide(cfg: PolicyConfig, state: PolicyState, obs: Observation) -> Out:
    """One decision and the state after it. Pure."""
    state = _measure_demand(cfg, _measure_node_rate(cfg, state, obs), obs)
    node_rate = state.node_rate if state.node_rate is not None else cfg.node_rate_prior
    demand = max(0.0, obs.consume_rate)
    stalled = obs.stall_fraction > cfg.target_stall
    if node_rate is None or node_rate <= 0 or demand <= 0:
        coming = obs.pool_nodes + obs.pending_nodes
        held = max(cfg.min_nodes, min(cfg.max_nodes, coming))
        echo = max(1.0, obs.echo_factor)
        if stalled and coming == 0 and cfg.max_nodes > 0:
            first = max(1, cfg.min_nodes)
            return (Decision(first, echo, f"stall {obs.stall_fraction:.0%} and no pool node "
                             f"yet: starting {first} to measure its throughput", "up"),
                    replace(state, last_up_s=obs.now_s))
        return Decision(held, echo, "nothing measured yet (no throughput or no demand)",
                        "wait"), state
    now = _estimate(cfg, state, obs, node_rate, demand)
    if obs.echo_factor > 1.0:
        return _with_echo(cfg, now)
    if stalled:
        return _when_stalled(cfg, now)
    return _when_keeping_up(cfg, now)


class PoolPolicy:
    """Holds the policy's state between decisions; `decide` is the pure function above."""

    def __init__(self, config: PolicyConfig, state: PolicyState | None = None):
        self.config = config
        self.state = state or PolicyState()

    def decide(self, observation: Observation) -> Decision:
        decision, self.state = decide(self.config, self.state, observation)
        return decision
