"""Applies the echo factor to a running stream: measures the two rates, runs the pure rule
(`cluster.echo.policy`), and hands the factor to whoever echoes.

    pool actors --(fresh examples, busy s per block)--> EchoController <--(rows, busy s)-- ranks
    pool actors (example modes) <--factor, asked at most once a second-- EchoController
    rank 0 (batch mode) <--factor--  ...and all-reduced so every rank echoes alike

`EchoController` is a zero-CPU Ray actor per run; it also exports the factor in force as the
`feedline_echo_factor` gauge (1 when the run does not echo). Every call to it from the data path
is fire-and-forget, or a poll that waits at most WAIT_S (50 ms) once a second.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

import ray

from cluster.echo.policy import EchoRuleConfig, EchoState, next_factor
from cluster.observability.metrics import EchoMetrics
from pipelines.config import EchoConfig

__all__ = ["EchoControl", "EchoController", "ControllerFactor", "ConsumeReporter",
           "start_echo_controller"]

WINDOW_S = 5.0
"""Reports older than this do not count in a rate (the latest one always does)."""
UPDATE_EVERY_S = 1.0
WAIT_S = 0.05
"""Longest a pool actor waits for the controller's answer before using the factor it has."""
WARMUP_STEPS = 1
"""A rank's first steps (allocation, first-iteration set-up) do not count in its rate."""


def _rate(reports: deque, now: float) -> float | None:
    """Sum of amounts over sum of busy seconds of the recent reports."""
    amount = busy = 0.0
    for i, (at, n, seconds) in enumerate(reversed(reports)):
        if i and at < now - WINDOW_S:
            break
        amount += n
        busy += seconds
    return amount / busy if busy > 0 else None


class EchoControl:
    """The controller's state and rule, on the clock it is given (`clock`, seconds; a fake one
    in tests). `EchoController` is this class as the zero-CPU Ray actor a run starts."""

    def __init__(self, run: str, echo: EchoConfig, world: int,
                 rule: EchoRuleConfig | None = None, external: bool = False,
                 clock: Callable[[], float] = time.monotonic):
        self.echo, self.world, self.external, self.clock = echo, world, external, clock
        self.rule = rule or EchoRuleConfig(max_factor=echo.max_factor)
        self.state = EchoState(factor=echo.factor if echo.enabled else 1.0,
                               reason=("set by the pool policy" if external else
                                       "fixed" if not echo.auto else "starting value"))
        self.pool: dict[str, deque] = {}
        self.train: dict[int, deque] = {}
        self.waits: dict[int, deque] = {}
        self.started = self.clock()
        self._updated = float("-inf")
        self.changes: list[tuple[float, float, str]] = [(0.0, self.state.factor,
                                                          self.state.reason)]
        self.metrics = EchoMetrics(run)
        self.metrics.set(self.state.factor)

    def add_pool(self, actor: str, fresh: int, busy_s: float) -> None:
        """One pool block: fresh examples read for it and the seconds its work took."""
        self.pool.setdefault(actor, deque(maxlen=4096)).append(
            (self.clock(), fresh, busy_s))
        self._update()

    def add_train(self, rank: int, rows: int, busy_s: float, wait_s: float = 0.0) -> None:
        """A rank's recent steps: rows trained on, their h2d + compute seconds, and the
        seconds they waited for data."""
        self.train.setdefault(rank, deque(maxlen=4096)).append((self.clock(), rows, busy_s))
        self.waits.setdefault(rank, deque(maxlen=4096)).append(
            (self.clock(), wait_s, busy_s))
        self._update()

    def observe(self, window_s: float) -> dict:
        """What the pool policy needs over the last `window_s`: consume (examples/s the
        trainers take when they do not wait, None before any report), produce (fresh
        examples/s the pool delivered), busy (share of the reporting actors' time spent
        working), stall (share of the ranks' step time spent waiting, None before any
        report), actors (pool actors that reported)."""
        now = self.clock()
        since = now - window_s
        consume, _ = self.rates(now)
        recent = [[r for r in q if r[0] >= since] for q in self.pool.values()]
        recent = [r for r in recent if r]
        fresh = sum(n for q in recent for _, n, _ in q)
        busy = sum(b for q in recent for _, _, b in q)
        waited = [(w, b) for q in self.waits.values() for at, w, b in q if at >= since]
        wait_s = sum(w for w, _ in waited)
        step_s = wait_s + sum(b for _, b in waited)
        return {"consume": consume, "produce": fresh / window_s,
                "busy": min(1.0, busy / (window_s * len(recent))) if recent else None,
                "stall": wait_s / step_s if step_s > 0 else None, "actors": len(recent)}

    def set_factor(self, factor: float, reason: str) -> None:
        """The pool policy's echo factor (with `external`, the rule here stays off)."""
        if factor != self.state.factor:
            self.state = EchoState(factor=factor, smoothed=factor, at_s=self.clock(),
                                   reason=reason)
            self.changes.append((self.clock() - self.started, factor, reason))
            self.metrics.set(factor)

    def rates(self, now: float | None = None) -> tuple[float | None, float | None]:
        """(consume, produce) examples/s from the recent reports, or None where unknown."""
        now = self.clock() if now is None else now
        stale = now - 3 * WINDOW_S  # an actor gone quiet this long has left the pool
        produce = [r for q in self.pool.values() if q and q[-1][0] >= stale
                   if (r := _rate(q, now)) is not None]
        consume = [r for q in self.train.values() if (r := _rate(q, now)) is not None]
        # DDP ranks step in lockstep, and without a per-step agreement before the forward pass
        # (batch echo) a rank's compute time includes its all-reduce wait for a rank still
        # waiting for data: the fastest rank's rate is the closest to what a rank does when
        # nobody waits. Every rank must be fed at that pace.
        return (self.world * max(consume) if consume else None,
                sum(produce) if produce else None)

    def _update(self) -> None:
        now = self.clock()
        if self.external or not self.echo.auto or now - self._updated < UPDATE_EVERY_S:
            return
        self._updated = now
        consume, produce = self.rates(now)
        before = self.state.factor
        self.state = next_factor(self.state, now, consume, produce, self.rule)
        if self.state.factor != before:
            self.changes.append((now - self.started, self.state.factor, self.state.reason))
            self.metrics.set(self.state.factor)

    def factor(self) -> float:
        return self.state.factor

    def history(self) -> list[tuple[float, float, str]]:
        """(seconds since start, factor, reason) at the start and at every change."""
        return list(self.changes)


EchoController = ray.remote(num_cpus=0)(EchoControl)
"""The run's echo controller: `EchoControl` as a zero-CPU Ray actor, on the real clock."""


def start_echo_controller(run: str, echo: EchoConfig, world: int,
                          external: bool = False) -> ray.actor.ActorHandle:
    return EchoController.remote(run, echo, world, external=external)


class ControllerFactor:
    """The `pipelines.echo.FactorSource` pool actors get: the controller's factor, asked for
    at most every `refresh_s` and waited for at most WAIT_S (a slow controller never stalls a
    block: the factor in hand is used, and the answer picked up at a later block)."""

    def __init__(self, controller: ray.actor.ActorHandle, initial: float, refresh_s: float = 1.0):
        self.controller, self.initial, self.refresh_s = controller, initial, refresh_s
        self._value = initial
        self._ref = None
        self._asked = float("-inf")

    def __getstate__(self) -> dict:
        return {"controller": self.controller, "initial": self.initial,
                "refresh_s": self.refresh_s}

    def __setstate__(self, state: dict) -> None:
        self.__init__(**state)

    def factor(self) -> float:
        now = time.monotonic()
        if self._ref is None and now - self._asked >= self.refresh_s:
            self._ref, self._asked = self.controller.factor.remote(), now
        if self._ref is not None:
            # The controller answers in about a millisecond; wait a little for it so a new
            # factor applies to this block, not the next one, but never stall on it.
            ready, _ = ray.wait([self._ref], timeout=WAIT_S)
            if ready:
                self._value, self._ref = float(ray.get(self._ref)), None
        return self._value


class ConsumeReporter:
    """A rank's side of the consume rate: sums rows and busy seconds (after its first
    WARMUP_STEPS steps), sends them every `every_s` (fire-and-forget)."""

    def __init__(self, controller: ray.actor.ActorHandle, rank: int, every_s: float = 0.5):
        self.controller, self.rank, self.every_s = controller, rank, every_s
        self._rows, self._busy, self._wait = 0, 0.0, 0.0
        self._sent = time.monotonic()
        self._skip = WARMUP_STEPS

    def add(self, rows: int, busy_s: float, wait_s: float = 0.0) -> None:
        if self._skip:
            self._skip -= 1
            return
        self._rows += rows
        self._busy += busy_s
        self._wait += wait_s
        now = time.monotonic()
        if now - self._sent >= self.every_s and self._busy > 0:
            self.controller.add_train.remote(self.rank, self._rows, self._busy, self._wait)
            self._rows, self._busy, self._wait, self._sent = 0, 0.0, 0.0, now
