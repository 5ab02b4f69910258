"""Endurance: a 10-epoch training run whose memory must stay flat.

    python jobs/soak.py --out runs/soak                # digits, 10 epochs, 2 DDP workers
    python jobs/soak.py --out runs/soak --synthetic 2000 --image-size 64

Starts the embedded object store and a local Ray, trains, and samples every second: the
resident memory (RSS) of every Ray worker process of the run (pool actors, trainers, the Train
controller, Ray Data's coordinators) and the object store's use as Ray's own metrics export
reports it (`ray_object_store_memory`). Each sample is placed in the epoch it was taken in (the
run's per-epoch timestamps). The check: at the end of epoch `--last` (10) every process alive at
the end of epoch `--first` (2) holds no more than 10% more RSS than then (a process that ended
earlier, as pool actors do once the stream is preprocessed: at the end of the last epoch it
outlived), and the mean object-store use of the last epoch is within 10% of the first one (or
16 MiB, whichever is larger: a few blocks in flight swing tiny figures by more
than 10%). Writes DIR/samples.csv and DIR/soak.json, prints a table, exits 1 when memory grew.

On the digits the pool's reads go through a local proxy capped at --read-kb-per-s (12 KB/s):
uncapped, the pool preprocesses the small data set's whole 10-epoch stream within the first
epochs (Ray Data runs ahead until its object-store budget is full), and its actors would not be
alive to be measured in the late epochs. Capped, preprocessing sets the pace and the actors work
until the stream is preprocessed, near the end. With --synthetic no cap is set unless given.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import re
import sys
import tempfile
import threading
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cluster.local.object_store import EmbeddedObjectStore  # noqa: E402
from cluster.local.procfs import local_processes  # noqa: E402

TOLERANCE = 0.10
STORE_FLOOR_MB = 16.0
_STORE_METRIC = re.compile(r"^ray_object_store_memory\{[^}]*\}\s+([0-9.eE+-]+)$", re.M)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", required=True, help="directory for samples.csv and soak.json")
    p.add_argument("--epochs", type=int, default=10, help="epochs to train")
    p.add_argument("--first", type=int, default=2, help="the epoch memory is compared with")
    p.add_argument("--last", type=int, default=None, help="the epoch compared (default: last)")
    p.add_argument("--synthetic", type=int, default=0,
                   help="train on this many synthetic 320x256 JPEGs (imagenet recipe) instead "
                        "of the digits")
    p.add_argument("--image-size", type=int, default=64, help="model input side (synthetic)")
    p.add_argument("--read-kb-per-s", type=float, default=None,
                   help="cap on the pool's reads from the object store (a local proxy), so "
                        "that preprocessing keeps pace with training and the pool actors live "
                        "through the last epochs instead of running the whole stream ahead "
                        "within the first ones; 0: no cap (default: 12 on the digits, none "
                        "with --synthetic, whose JPEGs are ~100x the bytes per image)")
    p.add_argument("--num-workers", type=int, default=2, help="DDP ranks")
    p.add_argument("--interval-s", type=float, default=1.0, help="seconds between samples")
    return p.parse_args(argv)


def ray_processes() -> dict[int, tuple[str, float]]:
    """pid -> (process title, RSS in MiB) of every busy Ray worker process on this machine."""
    return {p.pid: (p.cmdline.split(" ")[0], p.rss_mb) for p in local_processes()
            if p.alive and p.cmdline.startswith("ray::") and "IDLE" not in p.cmdline}


def object_store_mb(targets: list[str]) -> float:
    total = 0.0
    for target in targets:
        with urllib.request.urlopen(f"http://{target}/metrics", timeout=5) as r:
            total += sum(float(v) for v in _STORE_METRIC.findall(r.read().decode()))
    return total / 2**20


class Sampler(threading.Thread):
    def __init__(self, interval_s: float, targets: list[str]):
        super().__init__(daemon=True)
        self.interval_s, self.targets = interval_s, targets
        self.samples: list[tuple[float, int, str, float]] = []  # t, pid (0: store), title, MiB
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


def verdict(samples, ends: list[float], first: int, last: int) -> dict:
    """Per process alive at the end of epoch `first`: its RSS then, against its RSS at the end
    of the latest epoch up to `last` that it outlived (the last sample taken in that epoch,
    while it went on working). That is `last` for processes that live through the run; pool
    actors end once the stream is preprocessed, and a process's last samples, taken while it
    shuts down, are not a measure of growth. Also the object store's mean use in `first` and
    `last`, and whether each stayed within the tolerance."""
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


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    last = args.last or args.epochs
    if not 1 <= args.first < last <= args.epochs:
        print("error: need 1 <= --first < --last <= --epochs", file=sys.stderr)
        return 2
    os.makedirs(args.out, exist_ok=True)
    import ray

    from cluster.local.prometheus import ray_metrics_targets
    from cluster.local.throttle import ThrottledProxy
    from cluster.training.config import TrainConfig
    from cluster.training.trainer import run_training
    from pipelines import PipelineConfig, PreprocessConfig, SourceConfig, StorageConfig
    from pipelines.datasets import write_digits, write_synthetic

    with contextlib.ExitStack() as stack:
        store = stack.enter_context(
            EmbeddedObjectStore(data_dir=tempfile.mkdtemp(prefix="feedline-soak-")))
        os.environ.update(store.env())
        if args.synthetic:
            url = write_synthetic(f"s3://{store.bucket}/soak", count=args.synthetic,
                                  num_classes=10).url
            pre = PreprocessConfig(recipe="imagenet", image_size=args.image_size, max_actors=2)
        else:
            url = write_digits(f"s3://{store.bucket}/soak").url
            pre = PreprocessConfig(recipe="small", image_size=8, max_actors=2)
        storage = StorageConfig()
        cap = args.read_kb_per_s if args.read_kb_per_s is not None else (
            0.0 if args.synthetic else 12.0)
        if cap > 0:
            proxy = stack.enter_context(ThrottledProxy(
                "127.0.0.1", store.s3_port, bytes_per_s=cap * 1000))
            storage = StorageConfig(endpoint=proxy.endpoint)
        ray.init(address="local", resources={"preprocess_cpu": float(os.cpu_count() or 2)},
                 include_dashboard=False)
        try:
            train = PipelineConfig(source=SourceConfig(url=f"{url}/train", storage=storage),
                                   preprocess=pre)
            val = PipelineConfig(source=SourceConfig(url=f"{url}/val", storage=storage),
                                 preprocess=pre, train=False, shuffle=False)
            tc = TrainConfig(epochs=args.epochs, batch_size=32, lr=0.05,
                             num_workers=args.num_workers, cpus_per_worker=1,
                             storage_path=os.path.abspath(os.path.join(args.out, "results")),
                             run_name="soak")
            sampler = Sampler(args.interval_s, ray_metrics_targets())
            sampler.start()
            summary = run_training(tc, train, val)
            sampler.halt.set()
            sampler.join()
        finally:
            ray.shutdown()
    ends = [h["at"] for h in summary.history]
    with open(os.path.join(args.out, "samples.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["t", "epoch", "pid", "process", "mib"])
        for t, pid, title, value in sampler.samples:
            w.writerow([round(t, 2), epoch_of(t, ends), pid, title, round(value, 2)])
    result = verdict(sampler.samples, ends, args.first, last)
    result.update(epochs=args.epochs, val_accuracy=summary.val_accuracy,
                  wall_s=round(summary.wall_s, 1), samples=len(sampler.samples))
    with open(os.path.join(args.out, "soak.json"), "w") as f:
        json.dump(result, f, indent=2)
    print(f"\n{'process':<48} {'pid':>7} {'epoch ' + str(args.first):>9} "
          f"{'epoch N':>9} {'N':>3} {'growth':>7}")
    for p in result["processes"]:
        print(f"{p['title'][:48]:<48} {p['pid']:>7} {p['rss_mb_first']:>8.0f}M "
              f"{p['rss_mb_last']:>8.0f}M {p['compared_at_epoch']:>3} "
              f"{100 * p['growth']:>6.1f}%{'' if p['ok'] else '  !'}")
    print(f"{'object store (mean use)':<48} {'':>7} {result['object_store_mb_first']:>8.1f}M "
          f"{result['object_store_mb_last']:>8.1f}M")
    print(f"\nmemory flat from epoch {args.first} to {last}: "
          f"{'yes' if result['ok'] else 'NO'} (val accuracy {summary.val_accuracy:.4f}, "
          f"{summary.wall_s:.0f} s); details in {args.out}/soak.json")
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
