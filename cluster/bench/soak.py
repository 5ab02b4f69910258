"""The endurance check behind `jobs/soak.py`: a training run whose memory must stay flat.

While it trains, a sampler takes, every `interval_s`, the resident memory (RSS) of every busy Ray
worker process on this machine (pool actors, trainers, the Train controller, Ray Data's
coordinators) and the object store's use as Ray's own metrics export reports it
(`ray_object_store_memory`). Each sample is placed in the epoch it was taken in (the run's
per-epoch timestamps), and `verdict` compares the end of epoch `first` with the end of epoch
`last`: every process alive at the end of `first` may hold at most 10% more RSS at the end of
the latest epoch up to `last` that it outlived, and the mean object-store use of `last` may be
at most 10% (or 16 MiB, whichever is larger) above that of `first`.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import re
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass

from cluster.local.procfs import local_processes

__all__ = ["SoakConfig", "Sampler", "ray_processes", "object_store_mb", "epoch_of", "verdict",
           "run_soak", "write_results", "print_report", "TOLERANCE", "STORE_FLOOR_MB"]

TOLERANCE = 0.10
"""Growth of a process's RSS, or of the object store's mean use, that still counts as flat."""
STORE_FLOOR_MB = 16.0
"""Object-store growth in MiB that always counts as flat: a few blocks in flight swing tiny
figures by more than 10%."""
_STORE_METRIC = re.compile(r"^ray_object_store_memory\{[^}]*\}\s+([0-9.eE+-]+)$", re.M)

Sample = tuple[float, int, str, float]
"""(time, pid (0: the object store), process title, MiB)."""


@dataclass(frozen=True, kw_only=True)
class SoakConfig:
    out: str = ""
    """Directory for samples.csv and soak.json."""
    epochs: int = 10
    """Epochs to train."""
    first: int = 2
    """The epoch memory is compared with."""
    last: int | None = None
    """The epoch compared (default: the last one)."""
    synthetic: int = 0
    """Train on this many synthetic 320x256 JPEGs (imagenet recipe) instead of the digits."""
    image_size: int = 64
    """Model input side (synthetic)."""
    read_kb_per_s: float | None = None
    """Cap on the pool's reads from the object store (a local proxy), so that preprocessing
    keeps pace with training and the pool actors live through the last epochs instead of
    running the whole stream ahead within the first ones; 0: no cap (default: 12 on the
    digits, none with --synthetic, whose JPEGs are ~100x the bytes per image)."""
    num_workers: int = 2
    """DDP ranks."""
    interval_s: float = 1.0
    """Seconds between samples."""

    def __post_init__(self) -> None:
        if not 1 <= self.first < self.last_epoch <= self.epochs:
            raise ValueError("need 1 <= --first < --last <= --epochs")

    @property
    def last_epoch(self) -> int:
        """The epoch compared with `first`."""
        return self.last or self.epochs

    @property
    def read_cap_kb_per_s(self) -> float:
        """The read cap in effect: 12 KB/s on the digits, none on synthetic data, unless set."""
        if self.read_kb_per_s is not None:
            return self.read_kb_per_s
        return 0.0 if self.synthetic else 12.0


def ray_processes() -> dict[int, tuple[str, float]]:
    """pid -> (process title, RSS in MiB) of every busy Ray worker process on this machine."""
    return {p.pid: (p.cmdline.split(" ")[0], p.rss_mb) for p in local_processes()
            if p.alive and p.cmdline.startswith("ray::") and "IDLE" not in p.cmdline}


def object_store_mb(targets: list[str]) -> float:
    """The object store's use in MiB, summed over Ray's metrics export targets."""
    total = 0.0
    for target in targets:
        with urllib.request.urlopen(f"http://{target}/metrics", timeout=5) as r:
            total += sum(float(v) for v in _STORE_METRIC.findall(r.read().decode()))
    return total / 2**20


class Sampler(threading.Thread):
    """Samples the Ray processes' RSS and the object store's use every `interval_s`."""

    def __init__(self, interval_s: float, targets: list[str]):
        super().__init__(daemon=True)
        self.interval_s, self.targets = interval_s, targets
        self.samples: list[Sample] = []
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.wait(self.interval_s):
            now = time.time()
            for pid, (title, rss) in ray_processes().items():
                self.samples.append((now, pid, title, rss))
            try:
                self.samples.append((now, 0, "object store", object_store_mb(self.targets)))
            except OSError:
                pass


def epoch_of(t: float, ends: list[float]) -> int:
    """1-based epoch a time falls in, from the epochs' end times (0: after the last)."""
    for i, end in enumerate(ends):
        if t <= end:
            return i + 1
    return 0


def _by_epoch(samples: list[Sample], ends: list[float], first: int, last: int):
    """Per pid, epoch -> (title, MiB) of its last sample in that epoch; the object store's
    samples in `first` and `last`."""
    by_pid: dict[int, dict[int, tuple[str, float]]] = {}
    store: dict[int, list[float]] = {first: [], last: []}
    after_run = len(ends) + 1
    for t, pid, title, value in samples:
        epoch = epoch_of(t, ends) or after_run
        if pid == 0:
            if epoch in store:
                store[epoch].append(value)
        else:  # samples are in time order: the last one in each epoch wins
            by_pid.setdefault(pid, {})[epoch] = (title, value)
    return by_pid, store


def verdict(samples: list[Sample], ends: list[float], first: int, last: int) -> dict:
    """Per process alive at the end of epoch `first`: its RSS then, against its RSS at the end
    of the latest epoch up to `last` that it outlived (the last sample taken in that epoch,
    while it went on working). That is `last` for processes that live through the run; pool
    actors end once the stream is preprocessed, and a process's last samples, taken while it
    shuts down, are not a measure of growth. Also the object store's mean use in `first` and
    `last`, and whether each stayed within the tolerance."""
    by_pid, store = _by_epoch(samples, ends, first, last)
    processes = []
    for pid, at_end in sorted(by_pid.items()):
        latest = max(at_end)
        outlived = [e for e in at_end if first < e <= last and latest > e]
        if first not in at_end or not outlived:
            continue
        at = max(outlived)
        title, before = at_end[first]
        after = at_end[at][1]
        processes.append({"pid": pid, "title": title, "rss_mb_first": round(before, 1),
                          "compared_at_epoch": at, "rss_mb_last": round(after, 1),
                          "growth": round(after / before - 1, 4),
                          "ok": after <= before * (1 + TOLERANCE)})
    mean = {e: sum(v) / len(v) if v else 0.0 for e, v in store.items()}
    store_ok = mean[last] <= max(mean[first] * (1 + TOLERANCE), mean[first] + STORE_FLOOR_MB)
    return {"first_epoch": first, "last_epoch": last, "processes": processes,
            "object_store_mb_first": round(mean[first], 1),
            "object_store_mb_last": round(mean[last], 1), "object_store_ok": store_ok,
            "ok": bool(processes) and store_ok and all(p["ok"] for p in processes)}


def _pipelines(cfg: SoakConfig, store, stack: contextlib.ExitStack):
    """The training and validation pipelines on the store's data (written now), reads capped."""
    from cluster.local.throttle import ThrottledProxy
    from pipelines import PipelineConfig, PreprocessConfig, SourceConfig, StorageConfig
    from pipelines.datasets import write_digits, write_synthetic

    if cfg.synthetic:
        url = write_synthetic(f"s3://{store.bucket}/soak", count=cfg.synthetic,
                              num_classes=10).url
        pre = PreprocessConfig(recipe="imagenet", image_size=cfg.image_size, max_actors=2)
    else:
        url = write_digits(f"s3://{store.bucket}/soak").url
        pre = PreprocessConfig(recipe="small", image_size=8, max_actors=2)
    storage = StorageConfig()
    if cfg.read_cap_kb_per_s > 0:
        proxy = stack.enter_context(ThrottledProxy(
            "127.0.0.1", store.s3_port, bytes_per_s=cfg.read_cap_kb_per_s * 1000))
        storage = StorageConfig(endpoint=proxy.endpoint)
    train = PipelineConfig(source=SourceConfig(url=f"{url}/train", storage=storage),
                           preprocess=pre)
    val = PipelineConfig(source=SourceConfig(url=f"{url}/val", storage=storage),
                         preprocess=pre, train=False, shuffle=False)
    return train, val


def run_soak(cfg: SoakConfig):
    """Start the embedded object store and a local Ray, train while sampling; (samples,
    the run's summary)."""
    import ray

    from cluster.local.object_store import EmbeddedObjectStore
    from cluster.local.prometheus import ray_metrics_targets
    from cluster.training.config import TrainConfig
    from cluster.training.trainer import run_training

    with contextlib.ExitStack() as stack:
        store = stack.enter_context(
            EmbeddedObjectStore(data_dir=tempfile.mkdtemp(prefix="feedline-soak-")))
        os.environ.update(store.env())
        train, val = _pipelines(cfg, store, stack)
        ray.init(address="local", resources={"preprocess_cpu": float(os.cpu_count() or 2)},
                 include_dashboard=False)
        try:
            tc = TrainConfig(epochs=cfg.epochs, batch_size=32, lr=0.05,
                             num_workers=cfg.num_workers, cpus_per_worker=1,
                             storage_path=os.path.abspath(os.path.join(cfg.out, "results")),
                             run_name="soak")
            sampler = Sampler(cfg.interval_s, ray_metrics_targets())
            sampler.start()
            summary = run_training(tc, train, val)
            sampler.halt.set()
            sampler.join()
        finally:
            ray.shutdown()
    return sampler.samples, summary


def write_results(cfg: SoakConfig, samples: list[Sample], summary) -> dict:
    """Write DIR/samples.csv and DIR/soak.json; the verdict with the run's figures."""
    ends = [h["at"] for h in summary.history]
    with open(os.path.join(cfg.out, "samples.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["t", "epoch", "pid", "process", "mib"])
        for t, pid, title, value in samples:
            w.writerow([round(t, 2), epoch_of(t, ends), pid, title, round(value, 2)])
    result = verdict(samples, ends, cfg.first, cfg.last_epoch)
    result.update(epochs=cfg.epochs, val_accuracy=summary.val_accuracy,
                  wall_s=round(summary.wall_s, 1), samples=len(samples))
    with open(os.path.join(cfg.out, "soak.json"), "w") as f:
        json.dump(result, f, indent=2)
    return result


def print_report(cfg: SoakConfig, result: dict) -> None:
    """The table of processes and the object store, and the verdict line."""
    print(f"\n{'process':<48} {'pid':>7} {'epoch ' + str(cfg.first):>9} "
          f"{'epoch N':>9} {'N':>3} {'growth':>7}")
    for p in result["processes"]:
        print(f"{p['title'][:48]:<48} {p['pid']:>7} {p['rss_mb_first']:>8.0f}M "
              f"{p['rss_mb_last']:>8.0f}M {p['compared_at_epoch']:>3} "
              f"{100 * p['growth']:>6.1f}%{'' if p['ok'] else '  !'}")
    print(f"{'object store (mean use)':<48} {'':>7} {result['object_store_mb_first']:>8.1f}M "
          f"{result['object_store_mb_last']:>8.1f}M")
    print(f"\nmemory flat from epoch {cfg.first} to {cfg.last_epoch}: "
          f"{'yes' if result['ok'] else 'NO'} (val accuracy {result['val_accuracy']:.4f}, "
          f"{result['wall_s']:.0f} s); details in {cfg.out}/soak.json")
