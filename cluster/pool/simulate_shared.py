"""Several training jobs on ONE preprocessing CPU pool with a max (a quota), to compare how the
pool is shared: the multi-job sibling of `cluster.pool.simulate` (same node model, prices, echo
value, start-up, ±10 % seeded measurement noise, and the same summary columns, summed over
jobs).

The model, in steps of `step_s`: jobs arrive at `arrive_h` and end when their fresh-equivalent
progress reaches `hours` at full speed. Each job has its own GPUs (count, examples/s per GPU,
price) and its own per-node throughput (its augmentation). The pool's ready nodes are split
between the active jobs in proportion to their claims: their shares where a policy assigns
shares, else what each job's demand needs (Ray Data actor pools competing for the nodes). Nodes
bill from the request until released, start-up included; pending nodes are cancelled first.

Policies (`SHARED_POLICIES`):
- `per-job-feedline`: every job runs feedline's PoolPolicy and sends its own request; a request
  replaces the previous one, so each interval the last job to send (a seeded random order) sets
  the pool's size. What happens today without the arbiter.
- `ray-demand`: Ray-style demand scaling of the whole pool: to the max while it is busy, release
  nodes idle for 5 minutes.
- `fair-split`: a fixed equal split of the pool's max between the active jobs, no scaling.
- `oracle`: the true wants (the least nodes meeting each job's demand), split by marginal value
  where the max binds, no start-up delay, echo where a job is short.
- `feedline`: every job's PoolPolicy bids to the arbiter (`cluster.pool.arbiter_policy`), which
  sends the one request; short jobs plan with their share as max and echo.
"""

from __future__ import annotations

import dataclasses
import heapq
import math
import random
from dataclasses import dataclass, field

from cluster.pool.arbiter_policy import ArbiterConfig, Bid, allocate
from cluster.pool.policy import Observation, PolicyConfig, PoolPolicy
from cluster.pool.simulate import HOUR, NODE_RATE, Result, reversals

__all__ = ["Job", "SharedScenario", "SharedResult", "SHARED_SCENARIOS", "SHARED_POLICIES",
           "simulate_shared", "run_all_shared", "shortened", "peak_need"]


@dataclass(frozen=True, kw_only=True)
class Job:
    name: str
    gpus: int
    arrive_h: float
    hours: float
    """Length at full speed (sets the job's work)."""
    gpu_rate: float = 1500.0
    node_rate: float = NODE_RATE
    """Fresh examples/s one pool node makes for this job (its augmentation's cost)."""
    gpu_cost_per_hour: float = 4.0

    @property
    def consume(self) -> float:
        return self.gpus * self.gpu_rate

    @property
    def need(self) -> int:
        return math.ceil(self.consume / self.node_rate - 1e-9)


@dataclass(frozen=True, kw_only=True)
class SharedScenario:
    name: str
    description: str
    jobs: tuple[Job, ...]
    max_nodes: int
    """The pool's max (quota), for every job together."""
    cpus_per_node: int = 16
    startup_s: float = 150.0
    interval_s: float = 30.0
    step_s: float = 10.0
    noise: float = 0.10
    node_cost_per_hour: float = 0.8
    echo_max: float = 4.0
    echo_value: float = 0.5

    @property
    def binds(self) -> bool:
        """Whether the jobs active at some moment need more than the max (checked at every
        arrival, with each job's full-speed length)."""
        return peak_need(self.jobs) > self.max_nodes


def peak_need(jobs: tuple[Job, ...]) -> int:
    """The most nodes the jobs running at one moment need (checked at every arrival, with each
    job's full-speed length)."""
    return max(sum(k.need for k in jobs if k.arrive_h <= j.arrive_h < k.arrive_h + k.hours)
               for j in jobs)


def _scenarios() -> tuple[SharedScenario, ...]:
    day = (Job(name="r18-64", gpus=64, arrive_h=0.0, hours=8.0, gpu_rate=3000.0,
               gpu_cost_per_hour=2.0),
           Job(name="r50-128-heavy", gpus=128, arrive_h=3.0, hours=10.0,
               node_rate=NODE_RATE * 2 / 3),
           Job(name="r50-256", gpus=256, arrive_h=6.0, hours=8.0),
           Job(name="r50-512", gpus=512, arrive_h=12.0, hours=10.0))
    quota = (Job(name="r50-256", gpus=256, arrive_h=0.0, hours=8.0),
             Job(name="r18-128-cheap", gpus=128, arrive_h=0.0, hours=8.0, gpu_rate=3000.0,
                 gpu_cost_per_hour=1.5),
             Job(name="r50-64", gpus=64, arrive_h=2.0, hours=4.0),
             Job(name="r50-128-late", gpus=128, arrive_h=5.0, hours=6.0,
                 node_rate=NODE_RATE * 5 / 6))
    day_max, quota_need = math.ceil(peak_need(day) * 4 / 3), peak_need(quota)
    quota_max = round(quota_need * 0.55)
    return (
        SharedScenario(name="shared-day", jobs=day, max_nodes=day_max,
                       description="4 jobs of 64-512 GPUs arriving and leaving over a day; the "
                                   f"pool's max ({day_max}) does not bind"),
        SharedScenario(name="shared-quota", jobs=quota, max_nodes=quota_max,
                       description="4 jobs of 64-256 GPUs whose needs (up to "
                                   f"{quota_need} nodes) exceed the pool's max of "
                                   f"{quota_max} for hours"),
    )


SHARED_SCENARIOS: dict[str, SharedScenario] = {s.name: s for s in _scenarios()}


def shortened(sc: SharedScenario, factor: float) -> SharedScenario:
    """The scenario with every arrival and length times `factor` (fast tests)."""
    return dataclasses.replace(sc, jobs=tuple(
        dataclasses.replace(j, arrive_h=j.arrive_h * factor, hours=j.hours * factor)
        for j in sc.jobs))


@dataclass
class SharedResult(Result):
    span_hours: float = 0.0
    """From the first arrival to the last job's end."""

    @property
    def reversals_per_hour(self) -> float:
        return self.reversals / self.span_hours if self.span_hours else 0.0


@dataclass
class Seen:
    """One job's measurements over the last interval (noise applied), and its physical nodes."""
    job: Job
    stall: float
    consume: float
    produce: float
    busy: float
    ready: int
    pending: int
    echo: float


# ---- policies: each maps the jobs' windows to (pool target, claims, echo per job) -----------

class _PerJob:
    """A feedline PoolPolicy per job, its max set by `cap`."""

    def __init__(self, sc: SharedScenario):
        self.sc = sc
        self.policies: dict[str, PoolPolicy] = {}

    def _policy(self, job: Job) -> PoolPolicy:
        if job.name not in self.policies:
            self.policies[job.name] = PoolPolicy(PolicyConfig(
                min_nodes=0, max_nodes=self.sc.max_nodes, cpus_per_node=self.sc.cpus_per_node,
                gpus=job.gpus, cpu_node_cost_per_hour=self.sc.node_cost_per_hour,
                gpu_cost_per_hour=job.gpu_cost_per_hour, echo_max=self.sc.echo_max))
        return self.policies[job.name]

    def _decide(self, s: Seen, t: float):
        return self._policy(s.job).decide(Observation(
            now_s=t, stall_fraction=s.stall, consume_rate=s.consume, produce_rate=s.produce,
            pool_nodes=s.ready, pending_nodes=s.pending, echo_factor=s.echo,
            pool_busy_fraction=s.busy))


class LastWins(_PerJob):
    name = "per-job-feedline"

    def __init__(self, sc: SharedScenario, rng: random.Random):
        super().__init__(sc)
        self.rng = rng

    def decide(self, t: float, seen: list[Seen], ready: int):
        decisions = {s.job.name: self._decide(s, t) for s in seen}
        order = [s.job.name for s in seen]
        self.rng.shuffle(order)
        target = decisions[order[-1]].target_nodes if order else 0
        return target, {s.job.name: s.job.need for s in seen}, {
            n: d.echo_factor for n, d in decisions.items()}


class RayDemandShared:
    name = "ray-demand"

    def __init__(self, sc: SharedScenario, rng: random.Random, idle_timeout_s: float = 300.0):
        self.sc, self.idle_timeout_s = sc, idle_timeout_s
        self.idle_since: float | None = None
        self.target = 0

    def decide(self, t: float, seen: list[Seen], ready: int):
        claims = {s.job.name: s.job.need for s in seen}
        cap = sum(s.ready for s in seen)
        busy = sum(s.busy * s.ready for s in seen) / cap if cap else 1.0
        if seen and busy >= 0.95:
            self.idle_since, self.target = None, self.sc.max_nodes
        elif not seen:
            self.target = 0
        else:
            self.idle_since = t if self.idle_since is None else self.idle_since
            if t - self.idle_since >= self.idle_timeout_s:
                self.idle_since, self.target = None, math.ceil(ready * busy)
        return self.target, claims, {s.job.name: 1.0 for s in seen}


class FairSplit:
    name = "fair-split"

    def __init__(self, sc: SharedScenario, rng: random.Random):
        self.sc = sc

    def decide(self, t: float, seen: list[Seen], ready: int):
        each = self.sc.max_nodes // max(1, len(seen))
        return each * len(seen), {s.job.name: each for s in seen}, {
            s.job.name: 1.0 for s in seen}


class OracleShared:
    name = "oracle"

    def __init__(self, sc: SharedScenario, rng: random.Random):
        self.sc = sc

    def decide(self, t: float, seen: list[Seen], ready: int):
        bids = [Bid(run=s.job.name, wanted_nodes=s.job.need, gpus=s.job.gpus,
                    gpu_cost_per_hour=s.job.gpu_cost_per_hour, demand=s.job.consume,
                    node_rate=s.job.node_rate) for s in seen]
        alloc = allocate(bids, ArbiterConfig(max_nodes=self.sc.max_nodes))
        claims = {r: sh.nodes for r, sh in alloc.shares.items()}
        echo = {s.job.name: min(self.sc.echo_max, max(1.0, s.job.consume / max(
            1e-9, claims[s.job.name] * s.job.node_rate))) for s in seen}
        return alloc.total_nodes, claims, echo


class Arbitrated(_PerJob):
    name = "feedline"

    def __init__(self, sc: SharedScenario, rng: random.Random):
        super().__init__(sc)
        self.cfg = ArbiterConfig(max_nodes=sc.max_nodes)
        self.shares: dict[str, tuple[int, bool]] = {}

    def decide(self, t: float, seen: list[Seen], ready: int):
        bids, echo = [], {}
        for s in seen:
            p = self._policy(s.job)
            nodes, short = self.shares.get(s.job.name, (self.sc.max_nodes, False))
            p.config = dataclasses.replace(p.config, max_nodes=nodes if short
                                           else self.sc.max_nodes)
            d = self._decide(s, t)
            echo[s.job.name] = d.echo_factor
            bids.append(Bid(run=s.job.name, wanted_nodes=d.wanted_nodes or d.target_nodes,
                            gpus=s.job.gpus, gpu_cost_per_hour=s.job.gpu_cost_per_hour,
                            demand=p.state.demand_avg or s.consume,
                            node_rate=p.state.node_rate, stall_fraction=s.stall))
        alloc = allocate(bids, self.cfg)
        self.shares = {r: (sh.nodes, sh.short) for r, sh in alloc.shares.items()}
        return alloc.total_nodes, {r: sh.nodes for r, sh in alloc.shares.items()}, echo


SHARED_POLICIES = {p.name: p for p in (LastWins, RayDemandShared, FairSplit, OracleShared,
                                       Arbitrated)}


# ---- the model ------------------------------------------------------------------------------

@dataclass
class _JobState:
    job: Job
    progress: float = 0.0
    nodes: float = 0.0
    echo: float = 1.0
    ended_s: float | None = None
    win: dict[str, float] = field(default_factory=lambda: dict.fromkeys(
        ("stall", "fresh", "busy", "s"), 0.0))


def _split(ready: int, claims: dict[str, float], live: list[_JobState]) -> None:
    """Spread the ready nodes over the live jobs in proportion to their claims, whole nodes
    (largest remainder first): a node's actors belong to one job."""
    weights = [max(0.0, claims.get(j.job.name, 0.0)) for j in live]
    total = sum(weights)
    if total <= 0:
        weights, total = [1.0] * len(live), float(len(live))
    exact = [ready * w / total for w in weights]
    whole = [math.floor(x) for x in exact]
    by_remainder = sorted(range(len(live)), key=lambda i: (whole[i] - exact[i], i))
    for i in by_remainder[:ready - sum(whole)]:
        whole[i] += 1
    for j, n in zip(live, whole, strict=True):
        j.nodes = float(n)


def _advance(sc: SharedScenario, j: _JobState, t: float, dt: float) -> tuple[float, float]:
    """Integrate one job over [t, t+dt] (or to its end); returns (stalled GPU-s, GPU-s)."""
    job = j.job
    work = job.consume * job.hours * HOUR
    capacity = j.nodes * job.node_rate
    fresh = min(capacity, job.consume / j.echo)
    delivered = min(job.consume, capacity * j.echo)
    gain = fresh + (delivered - fresh) * sc.echo_value
    if gain > 0 and j.progress + gain * dt >= work:
        dt = (work - j.progress) / gain
        j.ended_s = t + dt
    j.progress += gain * dt
    stall = 1 - delivered / job.consume
    for key, value in (("stall", stall), ("fresh", fresh),
                       ("busy", fresh / capacity if capacity else 0.0), ("s", 1.0)):
        j.win[key] += value * dt
    return stall * dt * job.gpus, dt * job.gpus


def _seen(sc: SharedScenario, j: _JobState, pending: float, rng: random.Random) -> Seen:
    s = max(j.win["s"], 1e-9)

    def noisy(x: float) -> float:
        return x * (1 + rng.uniform(-sc.noise, sc.noise))

    out = Seen(j.job, min(1.0, noisy(j.win["stall"] / s)), noisy(j.job.consume),
               noisy(j.win["fresh"] / s), min(1.0, noisy(j.win["busy"] / s)),
               round(j.nodes), round(pending), j.echo)
    j.win = dict.fromkeys(j.win, 0.0)
    return out


def _resize(target: int, ready: int, pending: list[float], t: float, startup_s: float) -> int:
    """Ask for or release nodes towards `target`; returns the ready nodes after."""
    coming = ready + len(pending)
    for _ in range(target - coming):
        heapq.heappush(pending, t + startup_s)
    drop = coming - target
    while drop > 0 and pending:  # cancel the latest asked-for first
        pending.remove(max(pending))
        heapq.heapify(pending)
        drop -= 1
    return ready - max(0, drop)


def simulate_shared(sc: SharedScenario, policy: str, seed: int = 0) -> SharedResult:
    rng = random.Random(f"{sc.name}/{seed}")
    ctl = SHARED_POLICIES[policy](sc, random.Random(f"{sc.name}/{seed}/order"))
    oracle = policy == "oracle"
    jobs = [_JobState(j) for j in sorted(sc.jobs, key=lambda j: j.arrive_h)]
    ready, pending, claims = 0, [], {}
    t = node_s = stall_gs = gpu_s = 0.0
    targets, timeline = [], []
    every = max(1, round(sc.interval_s / sc.step_s))
    limit = 3 * HOUR * max(j.arrive_h + j.hours for j in sc.jobs)
    for step in range(int(limit / sc.step_s)):
        live = [j for j in jobs if j.job.arrive_h * HOUR <= t and j.ended_s is None]
        if not live and all(j.ended_s is not None for j in jobs):
            break
        if step % every == 0 and live:
            seen = [_seen(sc, j, len(pending) * j.nodes / max(1e-9, ready), rng)
                    for j in live]
            target, claims, echo = ctl.decide(t, seen, ready)
            target = max(0, min(sc.max_nodes, target))
            if oracle:
                ready, pending = target, []
            else:
                ready = _resize(target, ready, pending, t, sc.startup_s)
            for j in live:
                j.echo = echo.get(j.job.name, 1.0)
            targets.append(target)
        _split(ready, claims, live)
        for j in live:
            stalled, gpus = _advance(sc, j, t, sc.step_s)
            stall_gs += stalled
            gpu_s += gpus
        node_s += (ready + len(pending)) * sc.step_s
        t += sc.step_s
        while pending and pending[0] <= t:
            heapq.heappop(pending)
            ready += 1
        if step % every == 0:
            timeline.append((t / HOUR, ready + len(pending),
                             sum(j.win["stall"] for j in live) / max(1, len(live)) /
                             sc.step_s, max((j.echo for j in live), default=1.0)))
    return _result(sc, policy, jobs, t, node_s, stall_gs, gpu_s, targets, timeline)


def _result(sc, policy, jobs, t, node_s, stall_gs, gpu_s, targets, timeline) -> SharedResult:
    ends = [j.ended_s if j.ended_s is not None else t for j in jobs]
    hours = sum(e / HOUR - j.job.arrive_h for e, j in zip(ends, jobs, strict=True))
    gpu_cost = sum((e / HOUR - j.job.arrive_h) * j.job.gpus * j.job.gpu_cost_per_hour
                   for e, j in zip(ends, jobs, strict=True))
    node_hours = node_s / HOUR
    span = max(ends) / HOUR - min(j.job.arrive_h for j in jobs)
    return SharedResult(sc.name, policy, hours, stall_gs / gpu_s if gpu_s else 0.0, node_hours,
                        gpu_cost + sc.node_cost_per_hour * node_hours, reversals(targets),
                        timeline, span_hours=span)


def run_all_shared(names: list[str] | None = None, seed: int = 0) -> list[SharedResult]:
    """Every shared policy on every shared scenario named (default: all)."""
    chosen = [SHARED_SCENARIOS[n] for n in (names or list(SHARED_SCENARIOS))]
    return [simulate_shared(sc, p, seed) for sc in chosen for p in SHARED_POLICIES]
