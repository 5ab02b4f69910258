"""The training-side benchmark behind `jobs/bench_train.py`: the same model and data trained with
feedline's loader (one continuous stream, epoch cutting, device prefetcher) and with a plain
per-epoch `iter_torch_batches` loop over stock Ray Data; images/s and the share of step time
spent waiting for data for each.

images/s: training images over the training loops' time (first-batch wait included); wall s:
the whole run as the driver sees it, start-up included.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import dataclass

import ray
import ray.train
import ray.train.torch
import torch
from torch import nn

from cluster.training.collectives import all_reduce
from cluster.training.config import MODELS, TrainConfig
from cluster.training.model import build_model, normalize_on_device
from cluster.training.stepper import MEAN, STD
from cluster.training.trainer import run_training
from pipelines import PipelineConfig, PreprocessConfig, SourceConfig, StorageConfig, plan_source
from pipelines.baselines import plain_dataset

__all__ = ["LOADERS", "TrainBenchConfig", "plain_loop", "run_plain", "run_feedline", "run_bench",
           "print_results"]

LOADERS = ("feedline", "plain")
"""The loaders compared."""


@dataclass(frozen=True, kw_only=True)
class TrainBenchConfig:
    data: str | None = None
    """Root with train/ Parquet shards; default: embedded store + synthetic."""
    endpoint: str | None = None
    """S3 endpoint URL."""
    count: int = 1000
    """Synthetic images when generating."""
    loaders: str = ",".join(LOADERS)
    """Comma-separated loaders to train with, of feedline,plain."""
    model: str = "resnet18"
    """Model to train."""
    image_size: int = 64
    """Model input side."""
    epochs: int = 2
    """Epochs to train with each loader."""
    batch_size: int = 64
    """Per worker."""
    num_workers: int = 1
    """Training workers."""
    use_gpu: bool = False
    """Train on GPUs."""
    amp: bool = False
    """bf16 autocast (feedline loader, GPU)."""
    channels_last: bool = False
    """NHWC (feedline loader)."""
    pool: int | None = None
    """Preprocessing actors (default: the cores not used by trainers)."""
    json: str | None = None
    """Write the results here."""

    def __post_init__(self) -> None:
        if self.model not in MODELS:
            raise ValueError(f"unknown model {self.model!r}; choose from {', '.join(MODELS)}")
        unknown = sorted(set(self.loader_names) - set(LOADERS))
        if unknown or not self.loader_names:
            raise ValueError(f"unknown loaders {unknown}; choose from {','.join(LOADERS)}")

    @property
    def loader_names(self) -> list[str]:
        """The loaders, in the order given."""
        return [x.strip() for x in self.loaders.split(",") if x.strip()]

    def pool_size(self, cores: int) -> int:
        """Preprocessing actors: --pool, else the cores the trainers leave (at least one)."""
        return self.pool or max(1, cores - (0 if self.use_gpu else self.num_workers))

    def train_config(self, num_classes: int) -> TrainConfig:
        """The training settings both loaders run with."""
        return TrainConfig(model=self.model, num_classes=num_classes, small_input=False,
                           epochs=self.epochs, batch_size=self.batch_size,
                           num_workers=self.num_workers, use_gpu=self.use_gpu, amp=self.amp,
                           channels_last=self.channels_last,
                           cpus_per_worker=0.5 if self.use_gpu else 1.0)


def plain_loop(config: dict) -> None:
    """A per-epoch `for batch in shard.iter_torch_batches()` loop, as Ray Train's docs write it."""
    tc: TrainConfig = config["train"]
    device = ray.train.torch.get_device()
    torch.manual_seed(tc.seed)
    model = ray.train.torch.prepare_model(build_model(tc.model, config["num_classes"]))
    optimizer = torch.optim.SGD(model.parameters(), lr=tc.peak_lr(), momentum=tc.momentum)
    loss_fn = nn.CrossEntropyLoss()
    mean = torch.tensor(MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(STD, device=device).view(1, 3, 1, 1)
    shard = ray.train.get_dataset_shard("train")
    images = wait = step = 0.0
    start = time.perf_counter()
    for _ in range(tc.epochs):
        batches = iter(shard.iter_torch_batches(batch_size=tc.batch_size))
        while True:
            t0 = time.perf_counter()
            batch = next(batches, None)
            t1 = time.perf_counter()
            if batch is None:
                break
            x = normalize_on_device(batch["image"].to(device), mean, std)
            loss = loss_fn(model(x), batch["label"].to(device))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            loss.item()
            images += len(batch["label"])
            wait += t1 - t0
            step += time.perf_counter() - t0
    wall = time.perf_counter() - start
    images, wait, step = all_reduce([images, wait, step], device)
    (wall,) = all_reduce([wall], device, op=torch.distributed.ReduceOp.MAX)
    _report({"images": images, "wait_s": wait, "step_s": step, "wall_s": wall})


def _report(metrics: dict) -> None:
    # Ray Train v2 keeps only metrics reported with a checkpoint in Result.metrics.
    with tempfile.TemporaryDirectory() as d:
        with open(os.path.join(d, "metrics.json"), "w") as f:
            json.dump(metrics, f)
        is_rank0 = ray.train.get_context().get_world_rank() == 0
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d)
                         if is_rank0 else None)


def run_plain(tc: TrainConfig, train_url: str, storage: StorageConfig, size: int,
              num_classes: int) -> dict:
    """Train with the plain loop over stock Ray Data; images/s, waiting share, wall s."""
    start = time.perf_counter()
    plan = plan_source(SourceConfig(url=train_url, storage=storage, format="parquet"))
    shards = sorted({u.path for u in plan.units})
    resources = {"CPU": tc.cpus_per_worker, **({"GPU": 1} if tc.use_gpu else {})}
    trainer = ray.train.torch.TorchTrainer(
        plain_loop, train_loop_config={"train": tc, "num_classes": num_classes},
        scaling_config=ray.train.ScalingConfig(num_workers=tc.num_workers, use_gpu=tc.use_gpu,
                                               resources_per_worker=resources),
        datasets={"train": plain_dataset(shards, train_url, storage, size)})
    result = trainer.fit()
    if result.error is not None:
        raise result.error
    m = result.metrics
    return {"images_per_s": m["images"] / m["wall_s"],
            "data_wait_fraction": m["wait_s"] / max(1e-9, m["step_s"]),
            "wall_s": time.perf_counter() - start}


def run_feedline(tc: TrainConfig, train_url: str, storage: StorageConfig, size: int,
                 pool: int) -> dict:
    """Train with feedline's loader; images/s, waiting share, wall s."""
    pre = PreprocessConfig(recipe="imagenet", image_size=size, min_actors=pool, max_actors=pool)
    cfg = PipelineConfig(source=SourceConfig(url=train_url, storage=storage, format="parquet"),
                         preprocess=pre, epochs=tc.epochs)
    s = run_training(tc, cfg, None)
    return {"images_per_s": s.images_per_s, "data_wait_fraction": s.data_wait_fraction,
            "wall_s": s.wall_s}


def _run_loaders(cfg: TrainBenchConfig, train_url: str, storage: StorageConfig,
                 num_classes: int, cores: int) -> dict[str, dict]:
    """Each loader on a fresh local Ray of its own."""
    pool = cfg.pool_size(cores)
    tc = cfg.train_config(num_classes)
    results = {}
    for loader in cfg.loader_names:
        ray.init(address="local", num_cpus=cores, resources={"preprocess_cpu": pool},
                 include_dashboard=False, log_to_driver=False)
        try:
            print(f"training with the {loader} loader ...", flush=True)
            results[loader] = (
                run_feedline(tc, train_url, storage, cfg.image_size, pool)
                if loader == "feedline"
                else run_plain(tc, train_url, storage, cfg.image_size, num_classes))
        finally:
            ray.shutdown()
    return results


def run_bench(cfg: TrainBenchConfig, cores: int) -> dict:
    """Train with every loader (on the embedded store's synthetic JPEGs unless --data); the
    device, the images per epoch, the pool and each loader's figures."""
    store, data = None, cfg.data
    if data is None:
        from cluster.local.object_store import EmbeddedObjectStore
        from pipelines.datasets import write_synthetic

        store = EmbeddedObjectStore(data_dir=tempfile.mkdtemp(prefix="feedline-bt-")).start()
        os.environ.update(store.env())
        data = write_synthetic(f"s3://{store.bucket}/bt", count=cfg.count, num_classes=10,
                               val_fraction=0.0).url
    try:
        train_url = f"{data.rstrip('/')}/train"
        storage = StorageConfig(endpoint=cfg.endpoint)
        plan = plan_source(SourceConfig(url=train_url, storage=storage, format="parquet"))
        num_classes = plan.label_range[1] + 1 if plan.label_range else 1000
        results = _run_loaders(cfg, train_url, storage, num_classes, cores)
    finally:
        if store is not None:
            store.stop()
    device = torch.cuda.get_device_name(0) if cfg.use_gpu and torch.cuda.is_available() \
        else f"CPU ({cores} cores)"
    return {"device": device, "num_rows": plan.num_rows, "pool": cfg.pool_size(cores),
            "results": results}


def print_results(cfg: TrainBenchConfig, bench: dict) -> None:
    """The setting line and one row per loader."""
    print(f"\n{cfg.model} {cfg.image_size}px, {cfg.num_workers} worker(s) on {bench['device']}, "
          f"{bench['num_rows']} images x {cfg.epochs} epochs, {bench['pool']} preprocessing "
          "actors")
    print(f"{'loader':<10}{'images/s':>10}{'waiting for data':>18}{'wall s':>9}")
    for name, r in bench["results"].items():
        print(f"{name:<10}{r['images_per_s']:>10.1f}{100 * r['data_wait_fraction']:>17.1f}%"
              f"{r['wall_s']:>9.1f}")
