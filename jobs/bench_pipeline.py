"""Input-pipeline benchmark: feedline side by side with what users would pick instead, in one run,
on the same Parquet shards from the same object store, with the same ImageNet recipe and output
(uint8 224x224 batches of 256).

    python jobs/bench_pipeline.py          # embedded SeaweedFS + 2,000 synthetic JPEGs
    python jobs/bench_pipeline.py --data s3://b/prefix --endpoint http://127.0.0.1:8333

Systems: limit (feedline's own decode + augment in a tight loop on bytes in memory, one process:
the per-core ceiling), ceiling (the same loop in one plain process per core, each reading its
share of the shards from the object store as the pool does, no Ray, nothing handed on: what any
loader that reads this store on these cores could reach), dataloader (PyTorch DataLoader, one
worker per core, written the way its users write it), raydata (read_parquet -> map_batches ->
iter_torch_batches, as the Ray Data docs write it), feedline (pipelines.build_dataset as the
trainer consumes it).

The limit is measured first and again last, and the mean of the two is the one every ratio
uses: the machine's speed drifts during a run (shared cores), and a limit taken only at the
start would credit or blame the later systems for it. Both figures are in the JSON.

Time to first batch runs from building the pipeline to the first batch in hand. For the Ray
systems, `first_batch_s` is measured on a running Ray: each runs in a process of its own with a
fresh local Ray, builds its dataset once and stops it at the first batch (`first_batch_cold_s`:
the first dataset on a new cluster, which also pays for starting Ray Data's own cluster-wide
actors, `_StatsActor`, `AutoscalingCoordinator`, `ActorLocationTracker`, that stay up for the
cluster's life), then is measured on a second dataset (first batch, steady images/s, memory).

Where the cores go: over each steady window the benchmark reads every process's CPU time from
/proc and sums it by role (`cpu_cores` in the JSON): the system's workers (pool actors, tasks,
worker processes), the driver (this process), Ray's own processes (raylet, GCS, agents, Ray
Data's cluster-wide actors), the object-store server, the rest of the machine, and idle. Each
Ray is also watched for a few seconds at rest (`ray_at_rest_cores`): what Ray itself takes
from the cores with nothing running.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterable

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from pipelines import (  # noqa: E402
    PreprocessConfig,
    SchemaError,
    ShardPlan,
    SourceConfig,
    StorageConfig,
    StorageError,
    plan_source,
)
from pipelines.storage import resolve  # noqa: E402

SYSTEMS = ("limit", "ceiling", "dataloader", "raydata", "feedline")
EXTRA = ("feedline-deterministic",)
"""Measured only when asked for: feedline with --deterministic (blocks in stream order)."""
BATCH, SIZE = 256, 224
IDLE_SAMPLE_S = 3.0
"""Seconds each benchmark Ray is left to settle, then watched at rest, between its cold start
and the measurement."""
POOL = PreprocessConfig().pool_resource
"""The resource feedline's pool asks for, offered by each benchmark Ray."""


# ---------------------------------------------------------------- memory and CPU (/proc only)
def _processes() -> dict[int, tuple[int, int, int]]:
    """pid -> (ppid, RSS bytes, CPU ticks used) of every process. One read of /proc/PID/stat
    each (ppid, utime, stime and rss are all there): the samplers share the cores they measure,
    so they must stay cheap."""
    page = os.sysconf("SC_PAGE_SIZE")
    out = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        # After the command name: field N of the whole line is fields[N - 3] (state is 3rd).
        out[int(entry)] = (int(fields[1]), int(fields[21]) * page,
                           int(fields[11]) + int(fields[12]))
    return out


def _tree(root: int, procs: dict[int, tuple[int, int, int]],
          exclude: frozenset[int] = frozenset()) -> set[int]:
    """`root` and all its descendants (Ray's workers are children of the raylet the driver
    started), without the trees rooted at `exclude`."""
    children: dict[int, list[int]] = {}
    for pid, (ppid, _, _) in procs.items():
        children.setdefault(ppid, []).append(pid)
    found, stack = set(), [root]
    while stack:
        pid = stack.pop()
        if pid not in exclude and pid not in found:
            found.add(pid)
            stack.extend(children.get(pid, []))
    return found


def _tree_rss_bytes(root: int, exclude: frozenset[int] = frozenset()) -> int:
    """RSS of `root` and all its descendants. Shared pages (the object store's mmap) count once
    per process that touched them."""
    procs = _processes()
    return sum(procs[pid][1] for pid in _tree(root, procs, exclude) if pid in procs)


RAY_OWN = ("raylet", "gcs_server", "dashboard/agent.py", "runtime_env/agent", "log_monitor.py",
           "ray::DashboardAgent", "ray::_StatsActor", "ray::_AutoscalingCoordinatorActor",
           "ray::ActorLocationTracker")
"""Processes that are Ray's own (daemons, agents, Ray Data's cluster-wide actors), not the
pipeline's work: matched in the command line, as Ray titles its workers. A worker titled
ray::IDLE counts as the pipeline's: it is between two of its tasks (what an idle worker uses
itself is next to nothing)."""


def _role(pid: int, driver: int, store: set[int], tree: set[int]) -> str:
    if pid == driver:
        return "driver"
    if pid in store:
        return "object store"
    if pid not in tree:
        return "other"
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return "other"
    return "Ray's own" if any(k in cmd for k in RAY_OWN) else "workers"


def _busy_ticks() -> tuple[int, int]:
    """(busy, all) CPU ticks of the whole machine since boot, from /proc/stat."""
    with open("/proc/stat") as f:
        ticks = [int(x) for x in f.readline().split()[1:]]
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)  # idle + iowait
    return sum(ticks[:8]) - idle, sum(ticks[:8])


class CpuSplit:
    """Where the machine's cores go between `start()` and `stop()`, in cores: the driver (this
    process), the pipeline's workers (its pool actors, tasks or worker processes), Ray's own
    processes, the object-store server, everything else, and idle."""

    STORE: frozenset[int] = frozenset()
    ROLES = ("workers", "driver", "Ray's own", "object store", "other", "idle")

    def start(self) -> CpuSplit:
        self._t0, self._p0, self._m0 = time.perf_counter(), _processes(), _busy_ticks()
        return self

    def stop(self) -> dict[str, float]:
        t1, p1, m1 = time.perf_counter(), _processes(), _busy_ticks()
        hz, me = os.sysconf("SC_CLK_TCK"), os.getpid()
        store = _tree(next(iter(self.STORE)), p1) if self.STORE else set()
        tree = _tree(me, p1, self.STORE)
        cores = {role: 0.0 for role in self.ROLES}
        seconds = t1 - self._t0
        for pid, (_, _, ticks) in p1.items():
            used = ticks - self._p0[pid][2] if pid in self._p0 else ticks
            if used > 0:
                cores[_role(pid, me, store, tree)] += used / hz / seconds
        # "other" is what the machine was busy with beyond the processes named (kernel threads,
        # processes that ended in the window): the machine's busy time less theirs.
        busy = (m1[0] - self._m0[0]) / hz / seconds
        total = (m1[1] - self._m0[1]) / hz / seconds
        named = sum(v for k, v in cores.items() if k != "other")
        cores["other"] = max(0.0, busy - named)
        cores["idle"] = max(0.0, total - busy)
        return cores


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


def _recipe():
    """The benchmark's recipe as feedline's pool runs it: (transform, decode side)."""
    from pipelines.augment import build_transform, decode_side

    return (build_transform("imagenet", SIZE, train=True),
            decode_side("imagenet", SIZE, train=True))


def _decode_augment(blobs, transform, side: int | None, rng: np.random.Generator) -> np.ndarray:
    """The pool's own path on encoded images: PIL images from decode straight into the
    augmentation; one (N, 3, SIZE, SIZE) uint8 array."""
    from pipelines.augment import apply_batch
    from pipelines.decode import decode_pil

    return apply_batch(transform, [decode_pil(b, side) for b in blobs], SIZE, rng)


def _forever(make_epoch: Callable[[], Iterable]):
    while True:
        yield from make_epoch()


# ---------------------------------------------------------------- the systems
def run_limit(url: str, storage: StorageConfig, seconds: float) -> dict:
    loc = resolve(url, storage)
    shards, _ = _shards(url, storage)
    blobs = []
    for path in shards:
        with loc.fs.open_input_file(path) as f:
            blobs.extend(pq.read_table(f, columns=["image"]).column("image").to_pylist())
    transform, side = _recipe()
    rng = np.random.default_rng(0)

    def batches():
        while True:
            for s in range(0, len(blobs) - BATCH + 1, BATCH):
                yield {"image": _decode_augment(blobs[s:s + BATCH], transform, side, rng),
                       "label": np.zeros(BATCH, np.int64)}

    return measure(batches, seconds)


def _ceiling_worker(url: str, storage: StorageConfig, units: list, made, warm, stop) -> None:
    """One process of `ceiling`: the limit's loop on the units it reads itself from the store,
    over and over, in blocks of the pool's size; `made` counts the images it has finished."""
    from pipelines.sources import IMAGE, read_unit

    fs = resolve(url, storage).fs
    transform, side = _recipe()
    rng = np.random.default_rng(0)
    rows, footers = PreprocessConfig().output_rows, {}
    while not stop.is_set():
        for unit in units:
            blobs = read_unit(unit, fs, footers=footers)[IMAGE]
            for s in range(0, len(blobs), rows):
                block = blobs[s:s + rows]
                _decode_augment(block, transform, side, rng)
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
                     deterministic: bool = False) -> Callable[[], Iterable]:
    from cluster.training.config import TrainConfig
    from cluster.training.loop import Collate
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


def _mean_limit(runs: list[dict]) -> dict:
    """The limit's row from its runs: the mean images/s (each run's figure kept beside it), the
    first run's first batch, the largest memory figures."""
    row = dict(runs[0])
    row["images_per_s"] = sum(r["images_per_s"] for r in runs) / len(runs)
    row["images_per_s_runs"] = [r["images_per_s"] for r in runs]
    row["peak_rss_mb"] = max(r["peak_rss_mb"] for r in runs)
    row["object_store_peak_mb"] = max(r["object_store_peak_mb"] for r in runs)
    return row


def run_on_ray(make_batches: Callable[[], Iterable], seconds: float) -> dict:
    """A Ray system on the fresh Ray the caller started: first its cold start (the first
    dataset on this Ray, which also starts Ray Data's own cluster-wide actors), then the
    measurement proper, of a second dataset on the now running Ray."""
    cold = time_to_first_batch(make_batches)
    wait_until_idle()
    # What this Ray costs at rest, with Ray Data's cluster-wide actors up and nothing running:
    # the share of the cores no pipeline on it can have. First a pause for the workers Ray
    # starts in place of the stopped pipeline's actors (each imports Ray: about a CPU-second).
    time.sleep(IDLE_SAMPLE_S)
    split = CpuSplit().start()
    time.sleep(IDLE_SAMPLE_S)
    at_rest = split.stop()["Ray's own"]
    result = measure(make_batches, seconds)
    result["first_batch_cold_s"] = cold
    result["ray_at_rest_cores"] = at_rest
    return result


def _ray_system(name: str, data: str, storage: StorageConfig, seconds: float, cores: int,
                store: frozenset[int], conn) -> None:
    """Child process of `run_ray_system`: a fresh local Ray, one system measured on it, the
    result (or the error) sent back before Ray is shut down."""
    PeakMemory.EXCLUDE = CpuSplit.STORE = store
    import ray

    ray.init(address="local", num_cpus=cores, resources={POOL: cores},
             include_dashboard=False, log_to_driver=False)
    try:
        make = (raydata_batches(data, storage) if name == "raydata" else
                feedline_batches(data, storage, cores, deterministic=name in EXTRA))
        conn.send(("ok", run_on_ray(make, seconds)))
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


def _exit_on_sigterm(signum, frame) -> None:
    raise SystemExit(128 + signum)  # so that the object store and the children are stopped


def main(argv=None) -> int:
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
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
        from cluster.local.object_store import EmbeddedObjectStore

        store = EmbeddedObjectStore(data_dir=tempfile.mkdtemp(prefix="feedline-bench-")).start()
        os.environ.update(store.env())
        PeakMemory.EXCLUDE = CpuSplit.STORE = frozenset({store.pid()})
        data = f"s3://{store.bucket}/bench"
        # In a child process: the JPEGs it holds while writing must not stay in this process's
        # heap, where they would count as the measured systems' memory.
        subprocess.run([sys.executable, os.path.join(os.path.dirname(__file__), "make_dataset.py"),
                        "--dataset", "synthetic", "--out", data, "--count", str(args.count),
                        "--size", args.size, "--val-fraction", "0"], check=True)
    storage = StorageConfig(endpoint=args.endpoint)
    results: dict[str, dict] = {}
    # The limit first and, when other systems ran in between, once more at the end (see above).
    order = systems + (["limit"] if "limit" in systems and len(systems) > 1 else [])
    limits: list[dict] = []
    try:
        for name in order:
            print(f"measuring {name} ...", flush=True)
            if name == "limit":
                limits.append(run_limit(data, storage, args.seconds))
                results[name] = _mean_limit(limits)
            elif name == "ceiling":
                results[name] = run_ceiling(data, storage, args.seconds, cores)
            elif name == "dataloader":
                results[name] = run_dataloader(data, storage, args.seconds, cores)
            else:
                results[name] = run_ray_system(name, data, storage, args.seconds, cores)
    except (StorageError, SchemaError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        if store is not None:
            store.stop()

    if len(limits) == 2:
        print(f"\nlimit: {limits[0]['images_per_s']:.0f} img/s first, "
              f"{limits[1]['images_per_s']:.0f} img/s last; the ratios use the mean")
    limit = results.get("limit", {}).get("images_per_s")
    for r in results.values():
        r["images_per_s_per_core"] = r["images_per_s"] / cores
        r["ratio_to_limit"] = r["images_per_s"] / (limit * cores) if limit else None
    results.get("limit", {}).update(images_per_s_per_core=limit, ratio_to_limit=1.0 / cores
                                    if limit else None)
    ceiling = results.get("ceiling", {}).get("images_per_s")
    for r in results.values():
        if ceiling:
            r["ratio_to_ceiling"] = r["images_per_s"] / ceiling
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
    for name, r in results.items():
        if "ray_at_rest_cores" in r:
            print(f"{name}: its Ray at rest (nothing running) took {r['ray_at_rest_cores']:.2f} "
                  "cores")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"cores": cores, "systems": results}, f, indent=2)
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
