"""A discrete-event model of a training job's GPUs fed by a preprocessing CPU pool, to compare
pool-scaling policies at scales this machine cannot run (64 and 1,024 GPUs).

The model: `gpus` GPUs each consume `gpu_rate` examples/s when they do not wait; each ready pool
node makes `node_rate` fresh examples/s times the scenario's multiplier in force (heavier
augmentation, larger images) and, during a noisy-neighbour episode, a share of the nodes runs
slower. With echo factor e the trainers get min(consume, capacity x e) examples/s, of which
min(capacity, consume / e) are fresh; an echoed example advances training `echo_value` as much as
a fresh one (Choi et al. find echoed examples useful but worth less than fresh ones). The job
ends when its fresh-equivalent progress reaches `job_examples`. Nodes bill from the moment they
are asked for (start-up included) until released; pending nodes are cancelled before ready ones
are released. Between events (decision ticks, node start-ups, scenario changes, the job's end)
every rate is constant, so the model integrates exactly; the only randomness is the seeded
measurement noise the policies see.

Policies compared (`POLICIES`): a fixed pool sized for the start, Ray-style demand scaling (to
the max while work is queued, down when nodes idle), a Cachew-style hill climb on batch time,
an oracle (the least nodes meeting demand at every moment, no start-up delay, echo only where
the max binds), and feedline's `cluster.pool.policy.PoolPolicy`.
"""

from __future__ import annotations

import heapq
import math
import random
from dataclasses import dataclass, field

from cluster.pool.policy import Observation, PolicyConfig, PoolPolicy

__all__ = ["Scenario", "Change", "Result", "SCENARIOS", "POLICIES", "simulate", "run_all",
           "reversals"]

HOUR = 3600.0

POOL_CORE_RATE = 341.0
"""Fresh images/s one pool core makes: feedline's stream on ImageNet-like JPEGs (decode +
ImageNet augmentation at 224 px, Ray included; docs/benchmarks.md, issue 21's table)."""
NODE_RATE = 16 * POOL_CORE_RATE
"""Fresh images/s one 16-core pool node makes (5,456)."""
MAX_OVER_NEED = 2.5
"""A single-run scenario's pool max, in multiples of what its start needs."""


@dataclass(frozen=True)
class Change:
    at_s: float
    node_rate_factor: float | None = None
    """Multiplier of every node's throughput from now on (None: unchanged)."""
    slow_share: float | None = None
    """Share of nodes slowed by a noisy neighbour from now on (None: unchanged)."""
    slow_factor: float = 1.0
    """Their throughput multiplier."""


@dataclass(frozen=True, kw_only=True)
class Scenario:
    name: str
    description: str
    gpus: int
    gpu_rate: float = 1500.0
    """Examples/s one GPU takes when it never waits (ResNet-50-class on a current GPU)."""
    node_rate: float = NODE_RATE
    """Fresh examples/s one 16-core pool node makes at the start."""
    cpus_per_node: int = 16
    min_nodes: int = 0
    max_nodes: int
    startup_s: float = 150.0
    """Seconds from asking for a node to its actors producing."""
    hours: float = 6.0
    """Job length at full speed (sets `job_examples`)."""
    gpu_cost_per_hour: float = 4.0
    node_cost_per_hour: float = 0.8
    echo_max: float = 4.0
    echo_value: float = 0.5
    changes: tuple[Change, ...] = ()
    noise: float = 0.10
    """Relative noise of every measurement a policy sees (uniform, seeded)."""
    interval_s: float = 30.0
    """Seconds between two decisions of every policy."""

    @property
    def consume(self) -> float:
        return self.gpus * self.gpu_rate

    @property
    def job_examples(self) -> float:
        return self.consume * self.hours * HOUR

    @property
    def start_nodes(self) -> int:
        """The pool every policy starts with: what the start needs (capped by the max)."""
        return min(self.max_nodes, math.ceil(self.consume / self.node_rate - 1e-9))


def _ramp(start_h: float, end_h: float, frm: float, to: float, steps: int = 24
          ) -> tuple[Change, ...]:
    """A slow linear drift of the per-node throughput from `frm` to `to`, in small steps."""
    span = (end_h - start_h) * HOUR
    return tuple(Change(start_h * HOUR + span * (i + 1) / steps,
                        node_rate_factor=frm + (to - frm) * (i + 1) / steps)
                 for i in range(steps))


def _scenarios() -> tuple[Scenario, ...]:
    out = []
    for gpus in (64, 1024):
        max_nodes = math.ceil(MAX_OVER_NEED * gpus * Scenario.gpu_rate / NODE_RATE)
        out += [
            Scenario(name=f"constant-{gpus}", gpus=gpus, max_nodes=max_nodes,
                     description="nothing changes: the best pool size is constant"),
            Scenario(name=f"slow-drift-{gpus}", gpus=gpus, max_nodes=max_nodes,
                     description="per-node throughput drifts down 25% over hours 1-4, then "
                                 "back up over hours 4-6",
                     changes=_ramp(1, 4, 1.0, 0.75) + _ramp(4, 6, 0.75, 1.0, steps=16)),
            Scenario(name=f"step-down-{gpus}", gpus=gpus, max_nodes=max_nodes,
                     description="per-node throughput steps down 30% at hour 2 and stays",
                     changes=(Change(2 * HOUR, node_rate_factor=0.7),)),
            Scenario(name=f"step-up-{gpus}", gpus=gpus, max_nodes=max_nodes,
                     description="per-node throughput steps up 40% at hour 2 (lighter "
                                 "augmentation) and stays",
                     changes=(Change(2 * HOUR, node_rate_factor=1.4),)),
            Scenario(name=f"heavier-augmentation-{gpus}", gpus=gpus, max_nodes=max_nodes,
                     description="augmentation 1.7x costlier from hour 2 to hour 4",
                     changes=(Change(2 * HOUR, node_rate_factor=0.6),
                              Change(4 * HOUR, node_rate_factor=1.0))),
            Scenario(name=f"larger-images-{gpus}", gpus=gpus, max_nodes=max_nodes,
                     description="progressive resizing: images twice as costly from hour 3",
                     changes=(Change(3 * HOUR, node_rate_factor=0.5),)),
            Scenario(name=f"noisy-neighbour-{gpus}", gpus=gpus, max_nodes=max_nodes,
                     description="30% of the nodes at 0.4x speed, hours 1.5-2.5 and 4-4.5",
                     changes=(Change(1.5 * HOUR, slow_share=0.3, slow_factor=0.4),
                              Change(2.5 * HOUR, slow_share=0.0),
                              Change(4 * HOUR, slow_share=0.3, slow_factor=0.4),
                              Change(4.5 * HOUR, slow_share=0.0))),
            Scenario(name=f"quota-{gpus}", gpus=gpus, max_nodes=max_nodes * 5 // 16,
                     description="node quota at 60% of the need; augmentation 1.7x costlier "
                                 "from hour 2 to hour 4",
                     changes=(Change(2 * HOUR, node_rate_factor=0.6),
                              Change(4 * HOUR, node_rate_factor=1.0))),
        ]
    return tuple(out)


SCENARIOS: dict[str, Scenario] = {s.name: s for s in _scenarios()}


# ---- policies: each maps the last window's measurements to (target nodes, echo factor) ------

@dataclass
class Window:
    """What a policy measures over the last interval (noise already applied)."""
    now_s: float
    stall: float
    consume: float
    produce: float
    busy: float
    ready: int
    pending: int
    echo: float
    true_node_rate: float
    """Each node's real throughput now, which only the oracle reads."""


class Fixed:
    name = "fixed"

    def __init__(self, sc: Scenario):
        self.nodes = sc.start_nodes

    def decide(self, w: Window) -> tuple[int, float]:
        return self.nodes, 1.0


class RayDemand:
    """Ray-style demand scaling: while work is queued (the pool is busy), ask for the max;
    release nodes that sat idle for `idle_timeout_s` (Ray's idle_timeout_minutes)."""
    name = "ray-demand"

    def __init__(self, sc: Scenario, idle_timeout_s: float = 300.0):
        self.sc, self.idle_timeout_s = sc, idle_timeout_s
        self.idle_since: float | None = None

    def decide(self, w: Window) -> tuple[int, float]:
        coming = w.ready + w.pending
        if w.busy >= 0.95:
            self.idle_since = None
            return self.sc.max_nodes, 1.0
        self.idle_since = w.now_s if self.idle_since is None else self.idle_since
        if w.now_s - self.idle_since >= self.idle_timeout_s:
            self.idle_since = None
            return max(self.sc.min_nodes, math.ceil(w.ready * w.busy)), 1.0
        return coming, 1.0


class HillClimb:
    """Cachew-style: add one node at a time while the trainers' batch time improves by more
    than `threshold`; when it stops improving give the last node back and hold; climb again
    when the batch time gets `threshold` worse than where it settled."""
    name = "cachew-hill-climb"

    def __init__(self, sc: Scenario, threshold: float = 0.03):
        self.sc, self.threshold = sc, threshold
        self.target = sc.start_nodes
        self.climbing = True
        self.before: float | None = None
        self.settled: float | None = None

    def decide(self, w: Window) -> tuple[int, float]:
        if w.pending:
            return self.target, 1.0  # measure only with the last node in place
        batch = 1.0 / max(1e-9, w.consume * (1 - w.stall))  # seconds per example delivered
        if self.climbing:
            if self.before is not None and batch > self.before * (1 - self.threshold):
                self.climbing, self.settled = False, self.before
                self.target = max(self.sc.min_nodes, self.target - 1)  # no gain: give it back
                self.before = None
                return self.target, 1.0
            self.before = batch
            self.target = min(self.sc.max_nodes, self.target + 1)
            return self.target, 1.0
        if self.settled is not None and batch > self.settled * (1 + self.threshold):
            self.climbing, self.before = True, batch
            self.target = min(self.sc.max_nodes, self.target + 1)
        return self.target, 1.0


class Oracle:
    """Knows the true capacity: the least nodes meeting demand now, ready at once; echo only
    where the max binds."""
    name = "oracle"

    def __init__(self, sc: Scenario):
        self.sc = sc

    def decide(self, w: Window) -> tuple[int, float]:
        need = math.ceil(self.sc.consume / w.true_node_rate - 1e-9)
        nodes = max(self.sc.min_nodes, min(self.sc.max_nodes, need))
        echo = min(self.sc.echo_max, max(1.0, self.sc.consume / (nodes * w.true_node_rate)))
        return nodes, echo


class Feedline:
    name = "feedline"

    def __init__(self, sc: Scenario):
        self.policy = PoolPolicy(PolicyConfig(
            min_nodes=sc.min_nodes, max_nodes=sc.max_nodes, cpus_per_node=sc.cpus_per_node,
            gpus=sc.gpus, cpu_node_cost_per_hour=sc.node_cost_per_hour,
            gpu_cost_per_hour=sc.gpu_cost_per_hour, echo_max=sc.echo_max))

    def decide(self, w: Window) -> tuple[int, float]:
        d = self.policy.decide(Observation(
            now_s=w.now_s, stall_fraction=w.stall, consume_rate=w.consume,
            produce_rate=w.produce, pool_nodes=w.ready, pending_nodes=w.pending,
            echo_factor=w.echo, pool_busy_fraction=w.busy))
        return d.target_nodes, d.echo_factor


POLICIES = {p.name: p for p in (Fixed, RayDemand, HillClimb, Oracle, Feedline)}


# ---- the model ------------------------------------------------------------------------------

@dataclass
class Result:
    scenario: str
    policy: str
    job_hours: float
    gpu_stall_fraction: float
    cpu_node_hours: float
    total_cost: float
    reversals: int
    timeline: list[tuple[float, int, float, float]] = field(default_factory=list)
    """(hours, nodes billed, stall over the last interval, echo) at every decision."""

    @property
    def reversals_per_hour(self) -> float:
        return self.reversals / self.job_hours


def reversals(targets: list[int]) -> int:
    """Times the asked-for pool size changed direction (up then down, or down then up)."""
    moves = [b - a for a, b in zip(targets, targets[1:], strict=False) if b != a]
    return sum(1 for a, b in zip(moves, moves[1:], strict=False) if (a > 0) != (b > 0))


def _node_factor(sc: Scenario, t: float) -> float:
    factor, share, slow = 1.0, 0.0, 1.0
    for c in sc.changes:
        if c.at_s <= t:
            if c.node_rate_factor is not None:
                factor = c.node_rate_factor
            if c.slow_share is not None:
                share, slow = c.slow_share, c.slow_factor
    return factor * (1 - share + share * slow)


def simulate(sc: Scenario, policy: str, seed: int = 0) -> Result:
    ctl = POLICIES[policy](sc)
    oracle = policy == "oracle"
    rng = random.Random(f"{sc.name}/{seed}")  # the same noise for every policy
    t, progress = 0.0, 0.0
    ready, pending = sc.start_nodes, []  # pending: heap of ready times
    echo = 1.0
    node_s = stall_s = 0.0
    win = {"stall": 0.0, "fresh": 0.0, "busy": 0.0, "s": 0.0}
    targets: list[int] = []
    timeline: list[tuple[float, int, float, float]] = []
    first = 0.0 if oracle else sc.interval_s  # the others need a window measured first
    events = [(first, 1, "decide")] + [(c.at_s, 0, "change") for c in sc.changes]
    heapq.heapify(events)
    limit = 20 * sc.hours * HOUR  # a policy that never feeds the GPUs still ends

    while progress < sc.job_examples and t < limit:
        rate = sc.node_rate * _node_factor(sc, t)
        capacity = ready * rate
        fresh = min(capacity, sc.consume / echo)
        delivered = min(sc.consume, capacity * echo)
        gain = fresh + (delivered - fresh) * sc.echo_value
        nxt = min(events[0][0], pending[0] if pending else math.inf)
        if gain > 0 and progress + gain * (nxt - t) >= sc.job_examples:
            nxt = t + (sc.job_examples - progress) / gain
        dt = nxt - t
        stall = 1 - delivered / sc.consume
        progress += gain * dt
        node_s += (ready + len(pending)) * dt
        stall_s += stall * dt
        win["stall"] += stall * dt
        win["fresh"] += fresh * dt
        win["busy"] += (fresh / capacity if capacity else 0.0) * dt
        win["s"] += dt
        t = nxt
        while pending and pending[0] <= t:
            heapq.heappop(pending)
            ready += 1
        if progress >= sc.job_examples:
            break
        if events[0][0] > t:
            continue
        _, _, kind = heapq.heappop(events)
        if kind != "decide":
            continue
        heapq.heappush(events, (t + sc.interval_s, 1, "decide"))
        s = max(win["s"], 1e-9)

        def noisy(x: float) -> float:
            return x * (1 + rng.uniform(-sc.noise, sc.noise))

        w = Window(now_s=t, stall=min(1.0, noisy(win["stall"] / s)), consume=noisy(sc.consume),
                   produce=noisy(win["fresh"] / s), busy=min(1.0, noisy(win["busy"] / s)),
                   ready=ready, pending=len(pending), echo=echo,
                   true_node_rate=sc.node_rate * _node_factor(sc, t))
        target, echo = ctl.decide(w)
        target = max(sc.min_nodes, min(sc.max_nodes, target))
        if oracle:  # no start-up delay
            ready, pending = target, []
        else:
            coming = ready + len(pending)
            for _ in range(target - coming):
                heapq.heappush(pending, t + sc.startup_s)
            drop = coming - target
            while drop > 0 and pending:  # cancel the latest asked-for first
                pending.remove(max(pending))
                heapq.heapify(pending)
                drop -= 1
            ready -= max(0, drop)
        targets.append(target)
        timeline.append((t / HOUR, ready + len(pending), win["stall"] / s, echo))
        win = {"stall": 0.0, "fresh": 0.0, "busy": 0.0, "s": 0.0}

    hours = t / HOUR
    node_hours = node_s / HOUR
    cost = sc.gpus * sc.gpu_cost_per_hour * hours + sc.node_cost_per_hour * node_hours
    return Result(sc.name, policy, hours, stall_s / t if t else 0.0, node_hours, cost,
                  reversals(targets), timeline)


def run_all(names: list[str] | None = None, seed: int = 0) -> list[Result]:
    """Every policy on every scenario named (default: all standard scenarios)."""
    chosen = [SCENARIOS[n] for n in (names or list(SCENARIOS))]
    return [simulate(sc, p, seed) for sc in chosen for p in POLICIES]
