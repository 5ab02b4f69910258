"""The input-pipeline benchmark behind `jobs/bench_pipeline.py`: feedline side by side with what
users would pick instead, in one run, on the same Parquet shards from the same object store, with
the same ImageNet recipe and output (uint8 224x224 batches of 256).

Systems: limit (feedline's own decode + augment in a tight loop on bytes in memory, one process:
the per-core ceiling), torchvision (torchvision v2 on PIL in the same kind of loop: what a
DataLoader worker gets per core), decode_limit (decode at the DCT scale each crop needs +
resize, no jitter: what no faithful pipeline beats per core; cluster.bench.loops), ceiling (the
limit's loop in one plain process per core, each reading its share of the shards from the object
store as the pool does, no Ray, nothing handed on: what any loader that reads this store on
these cores could reach), dataloader (PyTorch DataLoader, one worker per core, written the way
its users write it), raydata (read_parquet -> map_batches -> iter_torch_batches, as the Ray Data
docs write it), feedline (pipelines.build_dataset as the trainer consumes it).

The one-process systems (limit, torchvision, decode_limit) are measured together in one
process, taking turns batch by batch on the same images, and their figure is images per
CPU-second (`measure.measure_turns`): a shared machine's speed drifts from second to second,
and taking turns spreads the drift evenly over them, so their ratios (the per-core targets)
hold. They run first and, when other systems follow, again last; each row is the mean of the
two, and the limit's is the one the other systems' `ratio_to_limit` divides by. Both figures
are in the JSON (`images_per_s_runs`).

Time to first batch runs from building the pipeline to the first batch in hand. For the Ray
systems, `first_batch_s` is measured on a running Ray: each runs in a process of its own with a
fresh local Ray, builds its dataset once and stops it at the first batch (`first_batch_cold_s`:
the first dataset on a new cluster, which also pays for starting Ray Data's own cluster-wide
actors, `_StatsActor`, `AutoscalingCoordinator`, `ActorLocationTracker`, that stay up for the
cluster's life), then is measured on a second dataset (first batch, steady images/s, memory).
feedline's first batch is also split into its parts (`first_batch_parts_s`, the medians of
`cluster.bench.startup`'s build, actors_up, first_block and to_driver).

Where the cores go (`cpu_cores`, `cluster.bench.cores`): over each steady window, by role. Each
Ray is also watched for a few seconds at rest (`ray_at_rest_cores`): what Ray itself takes from
the cores with nothing running.
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import tempfile
import time
import traceback
from collections.abc import Callable, Iterable

import numpy as np
import pyarrow.parquet as pq

from cluster.bench.cores import CpuSplit, PeakMemory, set_store
from cluster.bench.measure import BATCH, POOL, SIZE, mean_runs, measure, measure_turns, run_on_ray
from cluster.bench.startup import PARTS, BuildClock, SpanFile, first_batch_parts
from pipelines import (
    PreprocessConfig,
    SchemaError,
    ShardPlan,
    SourceConfig,
    StorageConfig,
    StorageError,
    plan_source,
)
from pipelines.storage import resolve

__all__ = ["SYSTEMS", "EXTRA", "run_systems", "add_ratios", "print_tables"]

SYSTEMS = ("limit", "torchvision", "decode_limit", "ceiling", "dataloader", "raydata",
           "feedline")
ONE_CORE = ("limit", "torchvision", "decode_limit")
"""Systems that run in one process on one thread: their images/s is their per-core rate."""
EXTRA = ("feedline-deterministic",)
"""Measured only when asked for: feedline with --deterministic (blocks in stream order)."""


def _plan(data: str, storage: StorageConfig) -> tuple[ShardPlan, str]:
    """The plan of the Parquet shards under `data` or `data`/train, and the URL that holds
    them."""
    try:
        url = data
        plan = plan_source(SourceConfig(url=url, storage=storage, format="parquet"))
    except StorageError:
        # Not directly under `data`: the canonical layout's train/. If that fails too, its error
        # (credentials, endpoint, empty prefix) is the one to show.
        url = f"{data.rstrip('/')}/train"
        plan = plan_source(SourceConfig(url=url, storage=storage, format="parquet"))
    return plan, url


def _shards(data: str, storage: StorageConfig) -> tuple[list[str], str]:
    """Parquet shard paths under `data` or `data`/train, and the URL that holds them."""
    plan, url = _plan(data, storage)
    return sorted({u.path for u in plan.units}), url


def _forever(make_epoch: Callable[[], Iterable]):
    while True:
        yield from make_epoch()


def run_loops(names: list[str], url: str, storage: StorageConfig, seconds: float
              ) -> dict[str, dict]:
    """The one-process systems of cluster.bench.loops on every training image, held in
    memory, taking turns batch by batch in this process (`measure_turns`)."""
    from cluster.bench.loops import batches

    loc = resolve(url, storage)
    shards, _ = _shards(url, storage)
    blobs = []
    for path in shards:
        with loc.fs.open_input_file(path) as f:
            blobs.extend(pq.read_table(f, columns=["image"]).column("image").to_pylist())
    return measure_turns({name: (lambda n=name: batches(blobs, n)) for name in names}, seconds)


def _ceiling_worker(url: str, storage: StorageConfig, units: list, made, warm, stop) -> None:
    """One process of `ceiling`: the limit's loop on the units it reads itself from the store,
    over and over, in blocks of the pool's size; `made` counts the images it has finished."""
    from cluster.bench.loops import decode_augment, recipe
    from pipelines.sources import IMAGE, read_unit

    fs = resolve(url, storage).fs
    parts = recipe()
    rng = np.random.default_rng(0)
    rows, footers = PreprocessConfig().output_rows, {}
    while not stop.is_set():
        for unit in units:
            blobs = read_unit(unit, fs, footers=footers)[IMAGE]
            for s in range(0, len(blobs), rows):
                block = blobs[s:s + rows]
                decode_augment(block, parts, rng)
                with made.get_lock():
                    made.value += len(block)
                if made.value >= 3 * rows:
                    warm.set()
                if stop.is_set():
                    return


def run_ceiling(url: str, storage: StorageConfig, seconds: float, cores: int) -> dict:
    """`cores` plain processes (no Ray; fewer when there are fewer work units), each reading
    every `cores`-th work unit from the object store and decoding + augmenting it with
    feedline's functions; nothing is handed on. Steady images/s is the growth of their shared
    count over `seconds` once each has made 3 blocks; first batch is from starting the
    processes to the first BATCH images made between them."""
    plan, train_url = _plan(url, storage)
    units = list(plan.units)
    n = min(cores, len(units))  # a process with no unit of its own would have nothing to do
    ctx = multiprocessing.get_context("spawn")  # no fork of a process that holds S3 clients
    stop = ctx.Event()
    counts = [ctx.Value("q", 0) for _ in range(n)]
    warm = [ctx.Event() for _ in range(n)]

    def wait_for(done: Callable[[], bool], what: str) -> None:
        while not done():
            if not all(p.is_alive() for p in procs):
                raise RuntimeError(f"a ceiling process died before {what}: see its traceback "
                                   "above")
            time.sleep(0.01)

    with PeakMemory() as mem:
        start = time.perf_counter()
        procs = [ctx.Process(target=_ceiling_worker, daemon=True,
                             args=(train_url, storage, units[i::n], counts[i], warm[i], stop))
                 for i in range(n)]
        for p in procs:
            p.start()
        try:
            wait_for(lambda: sum(c.value for c in counts) >= BATCH, "the first batch")
            first = time.perf_counter() - start
            wait_for(lambda: all(w.is_set() for w in warm), "its third block")
            split = CpuSplit().start()
            t0, n0 = time.perf_counter(), sum(c.value for c in counts)
            time.sleep(seconds)
            t1, n1 = time.perf_counter(), sum(c.value for c in counts)
            cpu = split.stop()
        finally:
            stop.set()
            for p in procs:
                p.join(timeout=30)
                if p.is_alive():
                    p.kill()
    return {"images_per_s": (n1 - n0) / (t1 - t0), "first_batch_s": first, "images": n1,
            "peak_rss_mb": mem.peak_rss / 2**20, "object_store_peak_mb": mem.peak_shm / 2**20,
            "cpu_cores": cpu}


def run_dataloader(url: str, storage: StorageConfig, seconds: float, cores: int) -> dict:
    import torch

    from pipelines.baselines import ParquetImages

    shards, _ = _shards(url, storage)
    ds = ParquetImages(shards, url, storage, SIZE)

    def batches():
        loader = torch.utils.data.DataLoader(ds, batch_size=BATCH, num_workers=cores,
                                             persistent_workers=True, prefetch_factor=2)
        return _forever(lambda: loader)

    return measure(batches, seconds)


def raydata_batches(url: str, storage: StorageConfig) -> Callable[[], Iterable]:
    from pipelines.baselines import plain_dataset

    shards, _ = _shards(url, storage)

    def batches():
        ds = plain_dataset(shards, url, storage, SIZE)
        return _forever(lambda: ds.iter_torch_batches(batch_size=BATCH))

    return batches


def feedline_batches(url: str, storage: StorageConfig, cores: int,
                     deterministic: bool = False, clock: BuildClock | None = None
                     ) -> Callable[[], Iterable]:
    """feedline's stream as the trainer reads it; with `clock`, each dataset's build is timed
    and its actors report their blocks' spans (`cluster.bench.startup`)."""
    from cluster.training.config import TrainConfig
    from cluster.training.stream import Collate
    from pipelines import PipelineConfig, build_dataset
    from pipelines.readahead import ReadAhead

    _, train_url = _shards(url, storage)

    def batches():
        cfg = PipelineConfig(
            source=SourceConfig(url=train_url, storage=storage, format="parquet"),
            preprocess=PreprocessConfig(recipe="imagenet", image_size=SIZE, min_actors=cores,
                                        max_actors=cores),
            epochs=100,  # 100 passes: far more than any measurement window needs
            deterministic=deterministic)
        observer = clock.spans if clock is not None else None
        ds = (clock.timed(lambda: build_dataset(cfg, observer=observer)) if clock is not None
              else build_dataset(cfg))
        # As the trainer reads it: no look-ahead in Ray Data, ReadAhead's own thread instead.
        return ReadAhead(ds.iter_torch_batches(
            batch_size=BATCH, collate_fn=Collate(), prefetch_batches=0),
            depth=TrainConfig().prefetch_batches)

    return batches


def _ray_system(name: str, data: str, storage: StorageConfig, seconds: float, cores: int,
                store: frozenset[int], conn) -> None:
    """Child process of `run_ray_system`: a fresh local Ray, one system measured on it, the
    result (or the error) sent back before Ray is shut down."""
    set_store(store)
    import ray

    ray.init(address="local", num_cpus=cores, resources={POOL: cores},
             include_dashboard=False, log_to_driver=False)
    try:
        clock = None if name == "raydata" else BuildClock(SpanFile(os.path.join(
            tempfile.mkdtemp(prefix="feedline-bench-spans-"), "spans")))
        make = (raydata_batches(data, storage) if clock is None else
                feedline_batches(data, storage, cores, deterministic=name in EXTRA,
                                 clock=clock))
        try:
            result = run_on_ray(make, seconds)
            if clock is not None:
                result["first_batch_parts_s"] = first_batch_parts(
                    clock, result["first_batch_runs_s"])
        finally:
            if clock is not None:
                shutil.rmtree(os.path.dirname(clock.spans.path), ignore_errors=True)
        conn.send(("ok", result))
    except BaseException as e:  # noqa: BLE001 - every failure is reported to the parent
        if not isinstance(e, (StorageError, SchemaError)):  # those are one line for the user
            traceback.print_exc()
        try:
            conn.send(("error", e))
        except Exception:  # noqa: BLE001 - an exception that does not pickle
            conn.send(("error", RuntimeError(f"{type(e).__name__}: {e}")))
    finally:
        conn.close()
        ray.shutdown()


def run_ray_system(name: str, data: str, storage: StorageConfig, seconds: float,
                   cores: int) -> dict:
    """Measure a Ray system in a process of its own, with a fresh local Ray: its object store,
    workers and memory are its own, and whatever Ray Data leaves running in a driver after the
    measurement (a thread that touches Ray after ray.shutdown() makes Ray end that process, as
    one full run here did, mid-benchmark and without a word) ends with it."""
    ctx = multiprocessing.get_context("spawn")
    receive, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_ray_system, name=f"bench-{name}",
                       args=(name, data, storage, seconds, cores, CpuSplit.STORE, send))
    proc.start()
    send.close()
    try:
        status, value = receive.recv()
    except EOFError:
        proc.join()
        raise RuntimeError(f"the {name} measurement process exited with code {proc.exitcode} "
                           "before reporting; its output is above") from None
    except BaseException:  # interrupted: the child and its Ray go too
        proc.terminate()
        raise
    finally:
        receive.close()
        proc.join(timeout=120)
        if proc.is_alive():
            proc.kill()
    if status == "error":
        raise value
    return value


def run_systems(systems: list[str], data: str, storage: StorageConfig, seconds: float,
                cores: int) -> dict[str, dict]:
    """Measure each of `systems` on the shards under `data`: the one-process systems first,
    together (taking turns), then the others in order, then, when there were others, the
    one-process systems once more (their rows are the means)."""
    loops = [name for name in systems if name in ONE_CORE]
    runs: dict[str, list[dict]] = {name: [] for name in loops}
    results: dict[str, dict] = {}

    def measure_loops() -> None:
        print(f"measuring {', '.join(loops)}, taking turns ...", flush=True)
        for name, row in run_loops(loops, data, storage, seconds).items():
            runs[name].append(row)

    if loops:
        measure_loops()
    for name in systems:
        if name in ONE_CORE:
            continue
        print(f"measuring {name} ...", flush=True)
        if name == "ceiling":
            results[name] = run_ceiling(data, storage, seconds, cores)
        elif name == "dataloader":
            results[name] = run_dataloader(data, storage, seconds, cores)
        else:
            results[name] = run_ray_system(name, data, storage, seconds, cores)
    if loops and results:
        measure_loops()
    return {name: mean_runs(runs[name]) if name in runs else results[name] for name in systems}


def add_ratios(results: dict[str, dict], cores: int) -> None:
    """Per-core rates and the ratios to the limit (x cores) and to the ceiling, in place."""
    limit = results.get("limit", {}).get("images_per_s")
    for r in results.values():
        r["images_per_s_per_core"] = r["images_per_s"] / cores
        r["ratio_to_limit"] = r["images_per_s"] / (limit * cores) if limit else None
    for name in ONE_CORE:
        if name in results:
            r = results[name]
            r.update(images_per_s_per_core=r["images_per_s"],
                     ratio_to_limit=r["images_per_s"] / limit if limit else None)
    if limit:
        for other in ("torchvision", "decode_limit"):
            if other in results:
                results["limit"][f"ratio_to_{other}"] = limit / results[other]["images_per_s"]
    ceiling = results.get("ceiling", {}).get("images_per_s")
    for r in results.values():
        if ceiling:
            r["ratio_to_ceiling"] = r["images_per_s"] / ceiling


def print_tables(results: dict[str, dict], cores: int) -> None:
    """The figures table, then where the cores went in each steady window."""
    runs = results.get("limit", {}).get("images_per_s_runs", [])
    if len(runs) == 2:
        print(f"\nlimit: {runs[0]:.0f} img/s first, {runs[1]:.0f} img/s last; the ratios use "
              "the mean")
    ceiling = results.get("ceiling", {}).get("images_per_s")
    dl = results.get("dataloader", {}).get("images_per_s")
    print(f"\n{cores} cores, batches of {BATCH} x 3x{SIZE}x{SIZE} uint8, ImageNet recipe")
    print(f"{'system':<11}{'img/s':>9}{'img/s/core':>12}{'x limit':>9}{'x ceiling':>11}"
          f"{'x dataloader':>14}{'first batch':>13}{'cold start':>12}{'peak RSS MB':>13}"
          f"{'obj store MB':>14}")
    for name, r in results.items():
        ratio = "" if r["ratio_to_limit"] is None else f"{r['ratio_to_limit']:.2f}"
        vs_ceiling = f"{r['ratio_to_ceiling']:.2f}" if ceiling else ""
        vs_dl = f"{r['images_per_s'] / dl:.2f}" if dl else ""
        cold = r.get("first_batch_cold_s")
        cold = "" if cold is None else f"{cold:.2f}s"
        print(f"{name:<11}{r['images_per_s']:>9.0f}{r['images_per_s_per_core']:>12.0f}"
              f"{ratio:>9}{vs_ceiling:>11}{vs_dl:>14}{r['first_batch_s']:>12.2f}s{cold:>12}"
              f"{r['peak_rss_mb']:>13.0f}{r['object_store_peak_mb']:>14.0f}")
    print(f"\nwhere the {cores} cores went in each steady window (cores; workers = the system's "
          "pool actors, tasks or worker processes):")
    print(f"{'system':<11}" + "".join(f"{role:>14}" for role in CpuSplit.ROLES))
    for name, r in results.items():
        split = r.get("cpu_cores") or {}
        print(f"{name:<11}" + "".join(f"{split.get(role, 0.0):>14.2f}" for role in CpuSplit.ROLES))
    lim = results.get("limit", {})
    for other in ("torchvision", "decode_limit"):
        if f"ratio_to_{other}" in lim:
            print(f"limit per core: {lim[f'ratio_to_{other}']:.2f}x {other}")
    if "ratio_to_ceiling" in results.get("feedline", {}):
        print(f"feedline: {results['feedline']['ratio_to_ceiling']:.2f}x ceiling")
    for name, r in results.items():
        if "first_batch_runs_s" in r:
            runs = ", ".join(f"{t:.2f}" for t in r["first_batch_runs_s"])
            print(f"{name}: first batch on a running Ray {r['first_batch_s']:.2f} s, the median "
                  f"of {len(r['first_batch_runs_s'])} ({runs} s)")
        if r.get("first_batch_parts_s"):
            parts = ", ".join(f"{p} {r['first_batch_parts_s'][p]:.2f}" for p in PARTS
                              if p in r["first_batch_parts_s"])
            print(f"{name}: its parts, each the median of the runs: {parts} s "
                  "(cluster.bench.startup)")
    for name, r in results.items():
        if "ray_at_rest_cores" in r:
            print(f"{name}: its Ray at rest (nothing running) took {r['ray_at_rest_cores']:.2f} "
                  "cores")
