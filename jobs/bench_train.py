"""Training-side benchmark: the same model and data trained with feedline's loader (one continuous
stream, epoch cutting, device prefetcher) and with a plain per-epoch `iter_torch_batches` loop over
stock Ray Data; prints images/s and the share of step time spent waiting for data for each.

    python jobs/bench_train.py                               # CPU, embedded store, synthetic JPEGs
    python jobs/bench_train.py --use-gpu --model resnet50 --image-size 224 --amp --channels-last
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import ray  # noqa: E402
import ray.train  # noqa: E402
import ray.train.torch  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from cluster.training.collectives import all_reduce  # noqa: E402
from cluster.training.config import TrainConfig  # noqa: E402
from cluster.training.model import MODELS, build_model, normalize_on_device  # noqa: E402
from cluster.training.stepper import MEAN, STD  # noqa: E402
from cluster.training.trainer import run_training  # noqa: E402
from pipelines import (  # noqa: E402
    PipelineConfig,
    PreprocessConfig,
    SourceConfig,
    StorageConfig,
    plan_source,
)
from pipelines.baselines import plain_dataset  # noqa: E402

LOADERS = ("feedline", "plain")


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
    metrics = {"images": images, "wait_s": wait, "step_s": step, "wall_s": wall}
    # Ray Train v2 keeps only metrics reported with a checkpoint in Result.metrics.
    with tempfile.TemporaryDirectory() as d:
        with open(os.path.join(d, "metrics.json"), "w") as f:
            json.dump(metrics, f)
        is_rank0 = ray.train.get_context().get_world_rank() == 0
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d)
                         if is_rank0 else None)


def run_plain(tc: TrainConfig, train_url: str, storage: StorageConfig, size: int,
              num_classes: int) -> dict:
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
    pre = PreprocessConfig(recipe="imagenet", image_size=size, min_actors=pool, max_actors=pool)
    cfg = PipelineConfig(source=SourceConfig(url=train_url, storage=storage, format="parquet"),
                         preprocess=pre, epochs=tc.epochs)
    s = run_training(tc, cfg, None)
    return {"images_per_s": s.images_per_s, "data_wait_fraction": s.data_wait_fraction,
            "wall_s": s.wall_s}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", default=None,
                   help="root with train/ Parquet shards; default: embedded store + synthetic")
    p.add_argument("--endpoint", default=None, help="S3 endpoint URL")
    p.add_argument("--count", type=int, default=1000, help="synthetic images when generating")
    p.add_argument("--loaders", default=",".join(LOADERS), help="feedline,plain")
    p.add_argument("--model", choices=MODELS, default="resnet18")
    p.add_argument("--image-size", type=int, default=64, help="model input side")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=64, help="per worker")
    p.add_argument("--num-workers", type=int, default=1, help="training workers")
    p.add_argument("--use-gpu", action="store_true")
    p.add_argument("--amp", action="store_true", help="bf16 autocast (feedline loader, GPU)")
    p.add_argument("--channels-last", action="store_true", help="NHWC (feedline loader)")
    p.add_argument("--pool", type=int, default=None,
                   help="preprocessing actors (default: the cores not used by trainers)")
    p.add_argument("--json", default=None, help="write the results here")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    cores = os.cpu_count() or 1
    pool = args.pool or max(1, cores - (0 if args.use_gpu else args.num_workers))
    store = None
    data = args.data
    if data is None:
        from cluster.local.object_store import EmbeddedObjectStore
        from pipelines.datasets import write_synthetic

        store = EmbeddedObjectStore(data_dir=tempfile.mkdtemp(prefix="feedline-bt-")).start()
        os.environ.update(store.env())
        data = write_synthetic(f"s3://{store.bucket}/bt", count=args.count, num_classes=10,
                               val_fraction=0.0).url
    train_url = f"{data.rstrip('/')}/train"
    storage = StorageConfig(endpoint=args.endpoint)
    plan = plan_source(SourceConfig(url=train_url, storage=storage, format="parquet"))
    num_classes = plan.label_range[1] + 1 if plan.label_range else 1000
    tc = TrainConfig(model=args.model, num_classes=num_classes, small_input=False,
                     epochs=args.epochs, batch_size=args.batch_size,
                     num_workers=args.num_workers, use_gpu=args.use_gpu, amp=args.amp,
                     channels_last=args.channels_last,
                     cpus_per_worker=0.5 if args.use_gpu else 1.0)
    results = {}
    try:
        for loader in [x.strip() for x in args.loaders.split(",") if x.strip()]:
            ray.init(address="local", num_cpus=cores, resources={"preprocess_cpu": pool},
                     include_dashboard=False, log_to_driver=False)
            try:
                print(f"training with the {loader} loader ...", flush=True)
                results[loader] = (
                    run_feedline(tc, train_url, storage, args.image_size, pool)
                    if loader == "feedline"
                    else run_plain(tc, train_url, storage, args.image_size, num_classes))
            finally:
                ray.shutdown()
    finally:
        if store is not None:
            store.stop()
    device = torch.cuda.get_device_name(0) if args.use_gpu and torch.cuda.is_available() \
        else f"CPU ({cores} cores)"
    print(f"\n{args.model} {args.image_size}px, {args.num_workers} worker(s) on {device}, "
          f"{plan.num_rows} images x {args.epochs} epochs, {pool} preprocessing actors")
    # images/s: training images over the training loops' time (first-batch wait included);
    # wall s: the whole run as the driver sees it, start-up included.
    print(f"{'loader':<10}{'images/s':>10}{'waiting for data':>18}{'wall s':>9}")
    for name, r in results.items():
        print(f"{name:<10}{r['images_per_s']:>10.1f}{100 * r['data_wait_fraction']:>17.1f}%"
              f"{r['wall_s']:>9.1f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": device, "model": args.model, "results": results}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
