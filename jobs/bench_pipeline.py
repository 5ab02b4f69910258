"""Input-pipeline benchmark: feedline side by side with what users would pick instead, in one run,
on the same Parquet shards from the same object store, with the same ImageNet recipe and output
(uint8 224x224 batches of 256).

    python jobs/bench_pipeline.py          # embedded SeaweedFS + 2,000 synthetic JPEGs
    python jobs/bench_pipeline.py --data s3://b/prefix --endpoint http://127.0.0.1:8333

Systems: limit (feedline's own decode + augment in a tight loop on bytes in memory, one process:
the per-core ceiling), dataloader (PyTorch DataLoader, one worker per core, written the way its
users write it), raydata (read_parquet -> map_batches -> iter_torch_batches, as the Ray Data docs
write it), feedline (pipelines.build_dataset as the trainer consumes it).

Time to first batch runs from building the pipeline to the first batch in hand. For the Ray
systems, `first_batch_s` is measured on a running Ray: each gets a fresh local Ray, builds its
dataset once and stops it at the first batch (`first_batch_cold_s`: the first dataset on a new
cluster, which also pays for starting Ray Data's own cluster-wide actors, `_StatsActor`,
`AutoscalingCoordinator`, `ActorLocationTracker`, that stay up for the cluster's life), then is
measured on a second dataset (first batch, steady images/s, memory).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import torch  # noqa: E402

from pipelines import (  # noqa: E402
    PreprocessConfig,
    SchemaError,
    SourceConfig,
    StorageConfig,
    StorageError,
    plan_source,
)
from pipelines.storage import resolve  # noqa: E402

SYSTEMS = ("limit", "dataloader", "raydata", "feedline")
EXTRA = ("feedline-deterministic",)
"""Measured only when asked for: feedline with --deterministic (blocks in stream order)."""
BATCH, SIZE = 256, 224
POOL = PreprocessConfig().pool_resource
"""The resource feedline's pool asks for, offered by each benchmark Ray."""


# ---------------------------------------------------------------- memory sampling (/proc only)
def _tree_rss_bytes(root: int, exclude: frozenset[int] = frozenset()) -> int:
    """RSS of `root` and all its descendants (Ray's workers are children of the raylet the driver
    started). Shared pages (the object store's mmap) count once per process that touched them.
    One read of /proc/PID/stat per process (ppid and rss are both there): the sampler shares the
    cores it measures, so it must stay cheap."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    page = os.sysconf("SC_PAGE_SIZE")
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        # After the command name: state, ppid, ... rss is the 24th field of the whole line.
        pid, ppid = int(entry), int(fields[1])
        rss[pid] = int(fields[21]) * page
        children.setdefault(ppid, []).append(pid)
    total, stack = 0, [root]
    while stack:
        pid = stack.pop()
        if pid in exclude:
            continue
        total += rss.get(pid, 0)
        stack.extend(children.get(pid, []))
    return total


def _shm_used_bytes() -> int:
    st = os.statvfs("/dev/shm")
    return (st.f_blocks - st.f_bfree) * st.f_frsize


class PeakMemory:
    """Samples process-tree RSS and /dev/shm use (Ray's object store) every 0.5 s. The process
    trees in EXCLUDE (the embedded object store's server: storage, not loader) do not count."""

    EXCLUDE: frozenset[int] = frozenset()

    def __init__(self) -> None:
        self.peak_rss = 0
        self.shm_base = _shm_used_bytes()
        self.peak_shm = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_rss = max(self.peak_rss, _tree_rss_bytes(os.getpid(), self.EXCLUDE))
            self.peak_shm = max(self.peak_shm, _shm_used_bytes() - self.shm_base)
            self._stop.wait(0.5)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


# ---------------------------------------------------------------- measurement
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
            if warm_at is not None and now - warm_at >= seconds:
                break
        end = time.perf_counter()
        _stop(it)
        del it
    steady = (images - warm_images) / (end - warm_at) if warm_at and end > warm_at else 0.0
    return {"images_per_s": steady, "first_batch_s": first, "images": images,
            "peak_rss_mb": mem.peak_rss / 2**20, "object_store_peak_mb": mem.peak_shm / 2**20}


def _shards(data: str, storage: StorageConfig) -> tuple[list[str], str]:
    """Parquet shard paths under `data` or `data`/train, and the URL that holds them."""
    try:
        url = data
        plan = plan_source(SourceConfig(url=url, storage=storage, format="parquet"))
    except StorageError:
        # Not directly under `data`: the canonical layout's train/. If that fails too, its error
        # (credentials, endpoint, empty prefix) is the one to show.
        url = f"{data.rstrip('/')}/train"
        plan = plan_source(SourceConfig(url=url, storage=storage, format="parquet"))
    return sorted({u.path for u in plan.units}), url


def _forever(make_epoch: Callable[[], Iterable]):
    while True:
        yield from make_epoch()


# ---------------------------------------------------------------- the systems
def run_limit(url: str, storage: StorageConfig, seconds: float) -> dict:
    from pipelines.augment import apply_batch, build_transform, decode_side
    from pipelines.decode import decode_pil

    loc = resolve(url, storage)
    shards, _ = _shards(url, storage)
    blobs = []
    for path in shards:
        with loc.fs.open_input_file(path) as f:
            blobs.extend(pq.read_table(f, columns=["image"]).column("image").to_pylist())
    transform = build_transform("imagenet", SIZE, train=True)
    side = decode_side("imagenet", SIZE, train=True)
    rng = np.random.default_rng(0)

    def batches():
        while True:
            for s in range(0, len(blobs) - BATCH + 1, BATCH):
                # The pool's own path: PIL images from decode straight into the augmentation.
                images = [decode_pil(b, side) for b in blobs[s:s + BATCH]]
                yield {"image": apply_batch(transform, images, SIZE, rng),
                       "label": np.zeros(BATCH, np.int64)}

    return measure(batches, seconds)


def run_dataloader(url: str, storage: StorageConfig, seconds: float, cores: int) -> dict:
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
                     deterministic: bool = False) -> Callable[[], Iterable]:
    from cluster.config import TrainConfig
    from cluster.train_loop import Collate
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
        # As the trainer reads it: no look-ahead in Ray Data, ReadAhead's own thread instead.
        return ReadAhead(build_dataset(cfg).iter_torch_batches(
            batch_size=BATCH, collate_fn=Collate(), prefetch_batches=0),
            depth=TrainConfig().prefetch_batches)

    return batches


def run_on_ray(make_batches: Callable[[], Iterable], seconds: float) -> dict:
    """A Ray system on the fresh Ray the caller started: first its cold start (the first
    dataset on this Ray, which also starts Ray Data's own cluster-wide actors), then the
    measurement proper, of a second dataset on the now running Ray."""
    cold = time_to_first_batch(make_batches)
    wait_until_idle()
    result = measure(make_batches, seconds)
    result["first_batch_cold_s"] = cold
    return result


# ---------------------------------------------------------------- main
def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", default=None,
                   help="prefix holding canonical Parquet shards (directly or under train/); "
                        "default: start the embedded object store and write synthetic JPEGs")
    p.add_argument("--endpoint", default=None, help="S3 endpoint URL (default: AWS_ENDPOINT_URL)")
    p.add_argument("--systems", default=",".join(SYSTEMS),
                   help=f"comma-separated subset of {','.join(SYSTEMS + EXTRA)}")
    p.add_argument("--seconds", type=float, default=20.0,
                   help="steady-state window per system, after the first batches")
    p.add_argument("--count", type=int, default=2000, help="synthetic images when generating")
    p.add_argument("--size", default="320x256", help="synthetic image WIDTHxHEIGHT")
    p.add_argument("--json", default=None, help="write the results here")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    unknown = set(systems) - set(SYSTEMS + EXTRA)
    if unknown:
        print(f"error: unknown systems {sorted(unknown)}; choose from {SYSTEMS + EXTRA}",
              file=sys.stderr)
        return 2
    cores = os.cpu_count() or 1
    store = None
    data = args.data
    if data is None:
        from cluster.object_store import EmbeddedObjectStore

        store = EmbeddedObjectStore(data_dir=tempfile.mkdtemp(prefix="feedline-bench-")).start()
        os.environ.update(store.env())
        PeakMemory.EXCLUDE = frozenset({store.pid()})
        data = f"s3://{store.bucket}/bench"
        # In a child process: the JPEGs it holds while writing must not stay in this process's
        # heap, where they would count as the measured systems' memory.
        subprocess.run([sys.executable, os.path.join(os.path.dirname(__file__), "make_dataset.py"),
                        "--dataset", "synthetic", "--out", data, "--count", str(args.count),
                        "--size", args.size, "--val-fraction", "0"], check=True)
    storage = StorageConfig(endpoint=args.endpoint)
    results: dict[str, dict] = {}
    try:
        for name in systems:
            print(f"measuring {name} ...", flush=True)
            if name == "limit":
                results[name] = run_limit(data, storage, args.seconds)
            elif name == "dataloader":
                results[name] = run_dataloader(data, storage, args.seconds, cores)
            else:
                # A fresh local Ray per system: its object store and processes are its own.
                import ray

                ray.init(address="local", num_cpus=cores, resources={POOL: cores},
                         include_dashboard=False, log_to_driver=False)
                try:
                    make = (raydata_batches(data, storage) if name == "raydata" else
                            feedline_batches(data, storage, cores,
                                             deterministic=name in EXTRA))
                    results[name] = run_on_ray(make, args.seconds)
                finally:
                    ray.shutdown()
    except (StorageError, SchemaError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        if store is not None:
            store.stop()

    limit = results.get("limit", {}).get("images_per_s")
    for r in results.values():
        r["images_per_s_per_core"] = r["images_per_s"] / cores
        r["ratio_to_limit"] = r["images_per_s"] / (limit * cores) if limit else None
    results.get("limit", {}).update(images_per_s_per_core=limit, ratio_to_limit=1.0 / cores
                                    if limit else None)
    dl = results.get("dataloader", {}).get("images_per_s")
    print(f"\n{cores} cores, batches of {BATCH} x 3x{SIZE}x{SIZE} uint8, ImageNet recipe")
    print(f"{'system':<11}{'img/s':>9}{'img/s/core':>12}{'x limit':>9}{'x dataloader':>14}"
          f"{'first batch':>13}{'cold start':>12}{'peak RSS MB':>13}{'obj store MB':>14}")
    for name, r in results.items():
        ratio = "" if r["ratio_to_limit"] is None else f"{r['ratio_to_limit']:.2f}"
        vs_dl = f"{r['images_per_s'] / dl:.2f}" if dl else ""
        cold = r.get("first_batch_cold_s")
        cold = "" if cold is None else f"{cold:.2f}s"
        print(f"{name:<11}{r['images_per_s']:>9.0f}{r['images_per_s_per_core']:>12.0f}"
              f"{ratio:>9}{vs_dl:>14}{r['first_batch_s']:>12.2f}s{cold:>12}"
              f"{r['peak_rss_mb']:>13.0f}{r['object_store_peak_mb']:>14.0f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"cores": cores, "systems": results}, f, indent=2)
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
