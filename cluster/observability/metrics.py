"""feedline's Prometheus metrics: every name defined once, here, and the recorders that feed them.

Metrics go through Ray's metrics system (`ray.util.metrics`), so a Prometheus that scrapes the
Ray nodes' metrics port (KubeRay's PodMonitor, or `file_sd_configs` on
/tmp/ray/prom_metrics_service_discovery.json) sees them. On export Ray prefixes every name with
``ray_``, and Prometheus's conventions add ``_bucket/_sum/_count`` to histograms and ``_total``
to counters: `exported()` gives the name a query must use, and the dashboards use exactly that.
"""

from __future__ import annotations

import time
from collections import deque

__all__ = [
    "DATA_WAIT", "H2D", "COMPUTE", "STEP", "STALL_FRACTION", "EXAMPLES", "PREPROCESS_IMAGES",
    "PREPROCESS_BUSY", "PREPROCESS_STAGE", "BAD_RECORDS", "ECHO_FACTOR", "POOL_TARGET_NODES",
    "POOL_NODES", "POOL_DECISIONS", "POOL_SHARE_NODES", "METRICS", "exported", "StepMetrics",
    "PoolMetrics", "EchoMetrics", "ScalerMetrics", "SECONDS_BUCKETS", "StallWindow",
]

# name -> (type, labels, meaning). Ray adds its own labels (SessionName, NodeAddress, ...).
DATA_WAIT = "feedline_data_wait_seconds"
H2D = "feedline_h2d_seconds"
COMPUTE = "feedline_compute_seconds"
STEP = "feedline_step_seconds"
STALL_FRACTION = "feedline_data_stall_fraction"
EXAMPLES = "feedline_examples"
PREPROCESS_IMAGES = "feedline_preprocess_images"
PREPROCESS_BUSY = "feedline_preprocess_busy_seconds"
PREPROCESS_STAGE = "feedline_preprocess_stage_seconds"
BAD_RECORDS = "feedline_bad_records"
ECHO_FACTOR = "feedline_echo_factor"
POOL_TARGET_NODES = "feedline_pool_target_nodes"
POOL_NODES = "feedline_pool_nodes"
POOL_DECISIONS = "feedline_pool_decisions"
POOL_SHARE_NODES = "feedline_pool_share_nodes"

METRICS: dict[str, tuple[str, tuple[str, ...], str]] = {
    DATA_WAIT: ("histogram", ("run", "rank"),
                "Seconds a training step was blocked waiting for its batch (the data stall)."),
    H2D: ("histogram", ("run", "rank"), "Seconds copying a batch host-to-device and normalising "
          "it, not hidden behind the previous step."),
    COMPUTE: ("histogram", ("run", "rank"),
              "Seconds of forward, backward and optimizer step, DDP all-reduce included."),
    STEP: ("histogram", ("run", "rank"), "Seconds of a whole training step (wait + h2d + "
           "compute)."),
    STALL_FRACTION: ("gauge", ("run", "rank"), "Share of step time spent waiting for data over "
                     "the last 30 s of steps (0 = never waits, 1 = only waits)."),
    EXAMPLES: ("counter", ("run", "rank", "kind"), "Examples consumed by training, kind=fresh "
               "(first use) or echoed (a reuse by data echoing; Ray's counters cannot be "
               "incremented by 0, so that series appears with the first echoed example)."),
    PREPROCESS_IMAGES: ("counter", ("run", "actor"),
                        "Images decoded and augmented by each CPU-pool actor."),
    PREPROCESS_BUSY: ("counter", ("run", "actor"), "Seconds each CPU-pool actor spent making "
                      "blocks (read + decode + augment); its rate is the actor's utilisation."),
    PREPROCESS_STAGE: ("counter", ("run", "stage"), "Seconds the CPU-pool actors spent in each "
                       "stage of making blocks: stage=read (storage), decode, augment (echo "
                       "included), other (label checks, shuffle buffer) and handoff (suspended "
                       "after yielding a block while Ray Data serialises it into the object "
                       "store, backpressure included; outside busy_seconds)."),
    BAD_RECORDS: ("counter", ("run", "kind"), "Records skipped as undecodable, by kind "
                  "(zero_bytes, not_an_image, truncated, undecodable)."),
    ECHO_FACTOR: ("gauge", ("run",), "Data-echo factor in force: copies per fresh example on "
                  "average (1 = no echo; follows the rule under --echo-factor auto, or the "
                  "pool policy under --pool-policy feedline)."),
    POOL_TARGET_NODES: ("gauge", ("run",), "Preprocessing pool nodes the pool policy asks for "
                        "(--pool-policy feedline)."),
    POOL_NODES: ("gauge", ("run", "state"), "Preprocessing pool nodes, state=ready (alive, "
                 "declaring the pool resource) or pending (asked for, not ready yet)."),
    POOL_DECISIONS: ("counter", ("run", "action"), "Pool policy decisions by action: up, down, "
                     "hold, echo_up, echo_down, wait."),
    POOL_SHARE_NODES: ("gauge", ("run",), "Pool nodes the cluster-wide pool arbiter gives the "
                       "run: its want, or less when the pool's max binds (then it echoes)."),
}

SECONDS_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                   5.0, 10.0, 30.0, 60.0)
STALL_WINDOW_S = 30.0


def exported(name: str, suffix: str = "") -> str:
    """The series name Prometheus stores for metric `name` (`suffix`: ``_bucket``, ``_sum``,
    ``_count`` for histograms; counters get ``_total``)."""
    kind = METRICS[name][0]
    if kind == "counter" and not suffix:
        suffix = "_total"
    return f"ray_{name}{suffix}"


def _make(name: str, **defaults: str):
    from ray.util.metrics import Counter, Gauge, Histogram

    kind, labels, meaning = METRICS[name]
    if kind == "histogram":
        metric = Histogram(name, description=meaning, boundaries=list(SECONDS_BUCKETS),
                           tag_keys=labels)
    elif kind == "gauge":
        metric = Gauge(name, description=meaning, tag_keys=labels)
    else:
        metric = Counter(name, description=meaning, tag_keys=labels)
    metric.set_default_tags(defaults)
    return metric


class StallWindow:
    """Share of step time spent waiting for data over the steps of the last `window_s` seconds."""

    def __init__(self, window_s: float = STALL_WINDOW_S):
        self.window_s = window_s
        self._steps: deque[tuple[float, float, float]] = deque()
        self._wait = self._step = 0.0

    def add(self, wait: float, step: float, now: float) -> float:
        self._steps.append((now, wait, step))
        self._wait += wait
        self._step += step
        while self._steps and self._steps[0][0] < now - self.window_s:
            _, w, s = self._steps.popleft()
            self._wait -= w
            self._step -= s
        return min(1.0, max(0.0, self._wait / self._step)) if self._step > 0 else 0.0


class StepMetrics:
    """Per-rank step recorder: four phase histograms, the stall-fraction gauge over a sliding
    window, and the examples counter. One `observe` per step (a few Ray metric records)."""

    def __init__(self, run: str, rank: int, window_s: float = STALL_WINDOW_S):
        tags = {"run": run, "rank": str(rank)}
        self._phases = [_make(n, **tags) for n in (DATA_WAIT, H2D, COMPUTE, STEP)]
        self._stall = _make(STALL_FRACTION, **tags)
        self._examples = _make(EXAMPLES, **tags)
        self.window = StallWindow(window_s)

    def observe(self, wait: float, h2d: float, compute: float, fresh: int, echoed: int = 0,
                now: float | None = None) -> float:
        """Record one step; returns the stall fraction over the window."""
        step = wait + h2d + compute
        for metric, value in zip(self._phases, (wait, h2d, compute, step), strict=True):
            metric.observe(value)
        if fresh:
            self._examples.inc(fresh, tags={"kind": "fresh"})
        if echoed:
            self._examples.inc(echoed, tags={"kind": "echoed"})
        fraction = self.window.add(wait, step, time.monotonic() if now is None else now)
        self._stall.set(fraction)
        return fraction


class PoolMetrics:
    """Per-actor recorder for the CPU pool: images made, busy seconds, seconds by stage, bad
    records by kind."""

    def __init__(self, run: str, actor: str):
        self._images = _make(PREPROCESS_IMAGES, run=run, actor=actor)
        self._busy = _make(PREPROCESS_BUSY, run=run, actor=actor)
        self._stage = _make(PREPROCESS_STAGE, run=run)
        self._bad = _make(BAD_RECORDS, run=run)

    def observe(self, images: int, seconds: float, bad: dict[str, int],
                stages: dict[str, float] | None = None) -> None:
        if images:
            self._images.inc(images)
        if seconds > 0:
            self._busy.inc(seconds)
        for stage, value in (stages or {}).items():
            if value > 0:  # Ray's counters refuse an increment of 0
                self._stage.inc(value, tags={"stage": stage})
        for kind, count in bad.items():
            self._bad.inc(count, tags={"kind": kind})


class EchoMetrics:
    """The echo factor gauge of one run (set by the run's echo controller)."""

    def __init__(self, run: str):
        self._factor = _make(ECHO_FACTOR, run=run)

    def set(self, factor: float) -> None:
        self._factor.set(factor)


class ScalerMetrics:
    """The pool scaler's gauges and decision counter for one run."""

    def __init__(self, run: str):
        self._target = _make(POOL_TARGET_NODES, run=run)
        self._nodes = _make(POOL_NODES, run=run)
        self._decisions = _make(POOL_DECISIONS, run=run)
        self._share = _make(POOL_SHARE_NODES, run=run)

    def observe(self, target: int, ready: int, pending: int, action: str | None,
                share: int | None = None) -> None:
        self._target.set(target)
        if share is not None:
            self._share.set(share)
        self._nodes.set(ready, tags={"state": "ready"})
        self._nodes.set(pending, tags={"state": "pending"})
        if action is not None:
            self._decisions.inc(1, tags={"action": action})
