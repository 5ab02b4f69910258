"""Measuring a loader: time to its first batch, steady images/s, memory and where the cores
went, for plain loaders and for Ray systems on a fresh local Ray."""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable, Iterable

from cluster.bench.cores import CpuSplit, PeakMemory
from pipelines import PreprocessConfig

__all__ = ["BATCH", "SIZE", "POOL", "measure", "measure_turns", "time_to_first_batch",
           "wait_until_idle", "run_on_ray", "mean_runs"]

BATCH, SIZE = 256, 224
"""Images per batch, and the side of the output images."""
IDLE_SAMPLE_S = 3.0
"""Seconds each benchmark Ray is left to settle, then watched at rest, between its cold start
and the measurement."""
FIRST_BATCH_RUNS = 5
"""Times a Ray system's first batch is taken on a running Ray; its figure is their median."""
POOL = PreprocessConfig.pool_resource
"""The resource feedline's pool asks for, offered by each benchmark Ray."""


def _stop(it: Iterable) -> None:
    """Stop a pipeline's own threads now: one left running touches Ray after the
    ray.shutdown() that follows, and Ray then exits the whole process."""
    close = getattr(it, "close", None)
    if close is not None:
        close()


def time_to_first_batch(make_batches: Callable[[], Iterable]) -> float:
    """Seconds from `make_batches()` (which builds the pipeline) to its first batch; the
    pipeline is then stopped."""
    start = time.perf_counter()
    it = iter(make_batches())
    try:
        next(it)
        return time.perf_counter() - start
    finally:
        _stop(it)


def wait_until_idle(timeout_s: float = 60.0) -> None:
    """Wait until Ray has all its resources back (a stopped pipeline's actors and tasks gone),
    so that one measurement's teardown does not run into the next."""
    import ray

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        total, free = ray.cluster_resources(), ray.available_resources()
        if all(free.get(k, 0) >= v for k, v in total.items()
               if k in ("CPU", POOL)):
            return
        time.sleep(0.1)
    print(f"warning: Ray still busy {timeout_s:.0f} s after the cold start; measuring anyway",
          file=sys.stderr)


def measure(make_batches: Callable[[], Iterable], seconds: float) -> dict:
    """Time to first batch from `make_batches()` (which builds the pipeline), then steady
    images/s over the following `seconds`, skipping the first two batches as warm-up."""
    with PeakMemory() as mem:
        start = time.perf_counter()
        it = iter(make_batches())
        first = None
        images, warm_images, warm_at = 0, 0, None
        for batch in it:
            now = time.perf_counter()
            n = len(batch["label"])
            images += n
            if first is None:
                first = now - start
            elif warm_at is None and images >= 3 * BATCH:
                warm_at, warm_images = now, images
                split = CpuSplit().start()
            if warm_at is not None and now - warm_at >= seconds:
                break
        end = time.perf_counter()
        cpu = split.stop() if warm_at is not None else {}
        _stop(it)
        del it
    steady = (images - warm_images) / (end - warm_at) if warm_at and end > warm_at else 0.0
    return {"images_per_s": steady, "first_batch_s": first, "images": images,
            "peak_rss_mb": mem.peak_rss / 2**20, "object_store_peak_mb": mem.peak_shm / 2**20,
            "cpu_cores": cpu}


def measure_turns(makers: dict[str, Callable[[], Iterable]], seconds: float) -> dict[str, dict]:
    """One-process systems measured together, in this process: each one's time to its first
    batch from `makers[name]()`, then they take turns, batch by batch, for `seconds` each, and
    each batch's CPU time counts to its system: images per CPU-second. A shared machine's speed
    drifts from second to second; taking turns spreads the drift evenly over the systems, so
    their ratios hold where figures of separate windows would not. Memory and where the cores
    went are the window's, the same for all of them."""
    with PeakMemory() as mem:
        its, first = {}, {}
        for name, make in makers.items():
            start = time.perf_counter()
            its[name] = iter(make())
            next(its[name])
            first[name] = time.perf_counter() - start
        cpu, images = dict.fromkeys(its, 0.0), dict.fromkeys(its, 0)
        split = CpuSplit().start()
        deadline = time.perf_counter() + seconds * len(its)
        while time.perf_counter() < deadline:
            for name, it in its.items():
                start = time.process_time()
                batch = next(it)
                cpu[name] += time.process_time() - start
                images[name] += len(batch["label"])
        cores = split.stop()
        for it in its.values():
            _stop(it)
    return {name: {"images_per_s": images[name] / cpu[name], "first_batch_s": first[name],
                   "images": images[name], "cpu_s": cpu[name],
                   "peak_rss_mb": mem.peak_rss / 2**20,
                   "object_store_peak_mb": mem.peak_shm / 2**20, "cpu_cores": cores}
            for name in its}


def mean_runs(runs: list[dict]) -> dict:
    """One system's row from its runs: the mean images/s (each run's figure kept beside it),
    the first run's first batch, the largest memory figures."""
    row = dict(runs[0])
    row["images_per_s"] = sum(r["images_per_s"] for r in runs) / len(runs)
    row["images_per_s_runs"] = [r["images_per_s"] for r in runs]
    row["peak_rss_mb"] = max(r["peak_rss_mb"] for r in runs)
    row["object_store_peak_mb"] = max(r["object_store_peak_mb"] for r in runs)
    return row


def run_on_ray(make_batches: Callable[[], Iterable], seconds: float) -> dict:
    """A Ray system on the fresh Ray the caller started: first its cold start (the first
    dataset on this Ray, which also starts Ray Data's own cluster-wide actors), then its first
    batch on the now running Ray FIRST_BATCH_RUNS times (a dataset built, its first batch
    taken, the dataset stopped; the last of them is the measurement proper's), then the
    measurement proper. `first_batch_s` is the median of those runs, all of them in
    `first_batch_runs_s`."""
    cold = time_to_first_batch(make_batches)
    wait_until_idle()
    firsts = []
    for _ in range(FIRST_BATCH_RUNS - 1):
        firsts.append(time_to_first_batch(make_batches))
        wait_until_idle()
    # What this Ray costs at rest, with Ray Data's cluster-wide actors up and nothing running:
    # the share of the cores no pipeline on it can have. First a pause for the workers Ray
    # starts in place of the stopped pipeline's actors (each imports Ray: about a CPU-second).
    time.sleep(IDLE_SAMPLE_S)
    split = CpuSplit().start()
    time.sleep(IDLE_SAMPLE_S)
    at_rest = split.stop()["Ray's own"]
    result = measure(make_batches, seconds)
    firsts.append(result["first_batch_s"])
    result.update(first_batch_s=statistics.median(firsts), first_batch_runs_s=firsts,
                  first_batch_cold_s=cold, ray_at_rest_cores=at_rest)
    return result
