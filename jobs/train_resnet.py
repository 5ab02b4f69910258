"""Train a ResNet with DDP on Ray Train, fed by feedline's stream from object storage.

    ray job submit --working-dir . -- python jobs/train_resnet.py --data s3://bucket/digits ...
    python jobs/train_resnet.py --data s3://bucket/digits ...   # joins a running Ray or starts one

--data is the root of a data set with train/ and val/ beneath it (Parquet shards or image
folders). Credentials come from the standard AWS environment of every Ray node.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time

# `python jobs/x.py` puts jobs/ first on sys.path; make the project importable from a plain
# checkout or a `ray job submit --working-dir .` copy without an install.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cluster.training.config import MODELS, TrainConfig  # noqa: E402
from pipelines import (  # noqa: E402
    EchoConfig,
    PipelineConfig,
    PreprocessConfig,
    SchemaError,
    SourceConfig,
    StorageConfig,
    StorageError,
    plan_source,
)
from pipelines.badrecords import BadDataError  # noqa: E402
from pipelines.config import ECHO_MODES  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    d = p.add_argument_group("data")
    d.add_argument("--data", required=True,
                   help="root of the data set: s3://bucket/prefix (or a local path) holding "
                        "train/ and val/")
    d.add_argument("--endpoint", default=None,
                   help="S3 endpoint URL, e.g. http://127.0.0.1:8333 (default: "
                        "AWS_ENDPOINT_URL, else AWS)")
    d.add_argument("--region", default=None, help="S3 region (default: AWS_REGION or us-east-1)")
    d.add_argument("--format", choices=["auto", "parquet", "folder"], default="auto",
                   help="shard kind")
    d.add_argument("--no-val", action="store_true", help="skip validation (no val/ split)")
    d.add_argument("--max-bad-fraction", type=float, default=0.001,
                   help="share of an epoch's records that may be bad (undecodable image, "
                        "label not a class, unreadable shard) and skipped; above it the run "
                        "stops naming the shard and the count")
    d.add_argument("--storage-deadline-s", type=float, default=300.0,
                   help="seconds reads keep retrying (with backoff) while the object store is "
                        "down before the run stops")
    pre = p.add_argument_group("preprocessing (the dedicated CPU pool)")
    pre.add_argument("--recipe", choices=["imagenet", "small"], default="imagenet",
                     help="augmentation recipe: imagenet, or small for tiny images like digits")
    pre.add_argument("--image-size", type=int, default=224, help="side of the model input")
    pre.add_argument("--pool-resource", default="preprocess_cpu",
                     help="custom Ray resource naming the dedicated CPU pool")
    pre.add_argument("--pool-min", type=int, default=1, help="fewest preprocessing actors")
    pre.add_argument("--pool-max", type=int, default=2, help="most preprocessing actors")
    pre.add_argument("--pool-wait-s", type=int, default=600,
                     help="seconds to wait for the first preprocessing actors (e.g. while an "
                          "autoscaler adds pool nodes) before failing")
    pre.add_argument("--pool-cpus", type=float, default=None,
                     help="pool resource a locally started Ray declares (default: one per "
                          "core); ignored when joining a cluster")
    e = p.add_argument_group("data echoing (reuse examples when the input pipeline is slower "
                             "than the trainers)")
    e.add_argument("--echo-mode", choices=ECHO_MODES, default="example",
                   help="example: repeat decoded examples before augmentation; "
                        "example-after-aug: repeat augmented examples; batch: the trainers "
                        "repeat whole batches")
    e.add_argument("--echo-factor", type=_echo_factor, default="1",
                   help="copies per fresh example on average (1 = off, 1.5 = half of them "
                        "twice), or auto: clamp(consume rate / produce rate, 1, --echo-max), "
                        "measured and smoothed while the run goes on")
    e.add_argument("--echo-max", type=float, default=4.0, help="upper bound of the auto factor")
    e.add_argument("--echo-shuffle-rows", type=int, default=1024,
                   help="rows of the shuffle buffer after the echo, which keeps copies of one "
                        "example apart (batch mode: this many rows' worth of whole batches)")
    s = p.add_argument_group("pool scaling (feedline's policy for the dedicated CPU pool)")
    s.add_argument("--pool-policy", choices=["none", "feedline"], default="none",
                   help="feedline: size the pool from measured GPU stall and cost every "
                        "--pool-interval-s (ray.autoscaler.sdk.request_resources for pool "
                        "nodes), and echo up to --echo-max when it is at --pool-max-nodes; "
                        "none: the pool is what the cluster has (and Ray Data's demand)")
    s.add_argument("--pool-min-nodes", type=int, default=0, help="fewest pool nodes")
    s.add_argument("--pool-max-nodes", type=int, default=8, help="most pool nodes (quota)")
    s.add_argument("--pool-cpus-per-node", type=int, default=16,
                   help="units of --pool-resource one pool node declares")
    s.add_argument("--target-stall", type=float, default=0.05,
                   help="share of step time waiting for data above which the pool grows")
    s.add_argument("--gpu-cost-per-hour", type=float, default=4.0,
                   help="price of one training worker's accelerator")
    s.add_argument("--node-cost-per-hour", type=float, default=0.8,
                   help="price of one pool node")
    s.add_argument("--pool-interval-s", type=float, default=30.0,
                   help="seconds between two decisions of the pool policy")
    t = p.add_argument_group("training")
    t.add_argument("--model", choices=MODELS, default="resnet18", help="torchvision ResNet")
    t.add_argument("--num-classes", type=int, default=None,
                   help="output classes (default: from the data's label range)")
    t.add_argument("--epochs", type=int, default=10, help="passes over the training data")
    t.add_argument("--batch-size", type=int, default=64, help="examples per step per worker")
    t.add_argument("--lr", type=float, default=None,
                   help="peak learning rate (default: 0.1 x global batch / 256)")
    t.add_argument("--weight-decay", type=float, default=5e-4, help="SGD weight decay")
    t.add_argument("--num-workers", type=int, default=2, help="Ray Train workers (DDP ranks)")
    t.add_argument("--use-gpu", action="store_true", help="one GPU per worker")
    t.add_argument("--amp", action="store_true", help="bf16 autocast on GPU")
    t.add_argument("--channels-last", action="store_true",
                   help="NHWC memory format for model and inputs")
    t.add_argument("--cpus-per-worker", type=float, default=1.0,
                   help="Ray CPUs each training worker holds")
    t.add_argument("--prefetch-batches", type=int, default=2,
                   help="batches read ahead of each worker's current step (0 = none)")
    t.add_argument("--shuffle-buffer", type=int, default=0,
                   help="rows in each worker's local shuffle buffer (0 = off)")
    t.add_argument("--seed", type=int, default=0, help="seed of data order and model init")
    t.add_argument("--deterministic", action="store_true",
                   help="the same sample order on every rank in every run with the same "
                        "--seed, data and worker count (blocks in stream order; costs "
                        "throughput, see README); needs a fixed --echo-factor")
    t.add_argument("--target-accuracy", type=float, default=None,
                   help="stop at the first validation whose accuracy reaches this")
    t.add_argument("--val-every-rows", type=int, default=0,
                   help="also validate inside epochs, every this many fresh training rows "
                        "(0: at epoch ends only)")
    o = p.add_argument_group("output")
    o.add_argument("--storage-path", default=None,
                   help="results and checkpoints: local path or s3://bucket/prefix (default: "
                        "~/ray_results)")
    o.add_argument("--run-name", default=None, help="run folder under --storage-path")
    o.add_argument("--checkpoint-every", type=int, default=1, help="epochs between checkpoints")
    o.add_argument("--max-failures", type=int, default=0,
                   help="worker-group restarts from the latest checkpoint")
    o.add_argument("--summary-json", default=None, help="write the run summary here as JSON")
    o.add_argument("--timeline", default=None, metavar="DIR",
                   help="write DIR/timeline.json (Chrome trace: Perfetto, chrome://tracing) and "
                        "DIR/timeline.png: every step's wait/h2d/compute and every pool block")
    return p.parse_args(argv)


def _echo_factor(text: str) -> str:
    if text == "auto":
        return text
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if value < 1.0:
        raise argparse.ArgumentTypeError(f"{text!r}: give a number >= 1 (1 = no echo) or auto")
    return text


def echo_config(args: argparse.Namespace) -> EchoConfig:
    if args.pool_policy == "feedline":
        if args.echo_factor not in ("1", "auto"):
            raise ValueError("--pool-policy feedline sets the echo factor itself (echo is its "
                             "fallback at --pool-max-nodes, up to --echo-max): drop "
                             "--echo-factor, or give --echo-max 1 to keep echo off")
        if args.echo_max <= 1:
            return EchoConfig()
        return EchoConfig(mode=args.echo_mode, auto=True, max_factor=args.echo_max,
                          shuffle_rows=args.echo_shuffle_rows)
    auto = args.echo_factor == "auto"
    return EchoConfig(mode=args.echo_mode, factor=1.0 if auto else float(args.echo_factor),
                      auto=auto, max_factor=args.echo_max, shuffle_rows=args.echo_shuffle_rows)


def scaling_config(args: argparse.Namespace):
    """The pool scaler's configuration, or None without --pool-policy feedline."""
    if args.pool_policy != "feedline":
        return None
    from cluster.pool.policy import PolicyConfig
    from cluster.pool.scaler import ScalerConfig

    return ScalerConfig(
        policy=PolicyConfig(
            min_nodes=args.pool_min_nodes, max_nodes=args.pool_max_nodes,
            cpus_per_node=args.pool_cpus_per_node, gpus=args.num_workers,
            cpu_node_cost_per_hour=args.node_cost_per_hour,
            gpu_cost_per_hour=args.gpu_cost_per_hour, target_stall=args.target_stall,
            echo_max=args.echo_max),
        pool_resource=args.pool_resource, interval_s=args.pool_interval_s)


def configs(args: argparse.Namespace) -> tuple[TrainConfig, PipelineConfig, PipelineConfig | None]:
    storage = StorageConfig(endpoint=args.endpoint, region=args.region,
                            outage_deadline_s=args.storage_deadline_s)
    root = args.data.rstrip("/")
    pre = PreprocessConfig(recipe=args.recipe, image_size=args.image_size,
                           pool_resource=args.pool_resource, min_actors=args.pool_min,
                           max_actors=args.pool_max, actor_start_timeout_s=args.pool_wait_s)
    train = PipelineConfig(
        source=SourceConfig(url=f"{root}/train", storage=storage, format=args.format,
                            max_bad_fraction=args.max_bad_fraction,
                            num_classes=args.num_classes),
        preprocess=pre, epochs=args.epochs, seed=args.seed, echo=echo_config(args),
        deterministic=args.deterministic)
    val = None if args.no_val else PipelineConfig(
        source=SourceConfig(url=f"{root}/val", storage=storage, format=args.format,
                            max_bad_fraction=args.max_bad_fraction,
                            num_classes=args.num_classes),
        preprocess=pre, train=False, shuffle=False)
    tc = TrainConfig(
        model=args.model, num_classes=args.num_classes, epochs=args.epochs,
        batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
        num_workers=args.num_workers, use_gpu=args.use_gpu, amp=args.amp,
        channels_last=args.channels_last, cpus_per_worker=args.cpus_per_worker,
        prefetch_batches=args.prefetch_batches, shuffle_buffer_rows=args.shuffle_buffer,
        storage_path=args.storage_path, run_name=args.run_name,
        checkpoint_every=args.checkpoint_every, max_failures=args.max_failures, seed=args.seed,
        target_accuracy=args.target_accuracy, val_every_rows=args.val_every_rows)
    return tc, train, val


def print_summary(s) -> None:
    acc = "n/a" if s.val_accuracy is None else f"{s.val_accuracy:.4f}"
    print("\nfeedline run summary", flush=True)
    print(f"  validation accuracy  {acc}")
    print(f"  images/s (training)  {s.images_per_s:.0f}  "
          f"({s.num_workers} {'GPU' if s.use_gpu else 'CPU'} workers)")
    print(f"  waiting for data     {100 * s.data_wait_fraction:.1f}% of step time "
          f"(h2d {100 * s.h2d_fraction:.1f}%, compute {100 * s.compute_fraction:.1f}%)")
    print(f"  step time, all ranks data wait {s.data_wait_s:.1f} s, h2d {s.h2d_s:.1f} s, "
          f"compute {s.compute_s:.1f} s")
    print(f"  examples             {s.fresh_examples} fresh, {s.echoed_examples} echoed, "
          f"{s.bad_examples} bad records skipped"
          + (f" ({', '.join(f'{k} {v}' for k, v in sorted(s.bad_by_kind.items()))})"
             if s.bad_examples else ""))
    if s.bad_examples:
        worst = ", ".join(f"{k} ({v})" for k, v in list(s.bad_shards.items())[:3])
        print(f"  bad records in       {worst}; sample keys: {', '.join(s.bad_sample_keys)}")
    for _shard, why in s.unreadable_shards:
        print(f"  unreadable shard     {why}")
    if s.echo_mode:
        print(f"  data echoing         {s.echo_mode}, x{s.echo_factor:.2f} over the run"
              + (f" (auto: {len(s.echo_changes) - 1} changes, last "
                 f"x{s.echo_changes[-1][1]:.2f})" if s.echo_auto else ""))
    if s.pool_decisions:
        moves = [d for d in s.pool_decisions if d["action"] not in ("hold", "wait")]
        last = s.pool_decisions[-1]
        print(f"  pool policy          {len(s.pool_decisions)} decisions, {len(moves)} changes; "
              f"last: {last['target_nodes']} nodes ({last['ready']} ready), echo "
              f"x{last['echo']:.2f}")
    if s.reached_target is not None:
        print(f"  accuracy target      {'reached' if s.reached_target else 'NOT reached'}")
    print(f"  epochs / wall time   {s.epochs} / {s.wall_s:.1f} s  "
          f"({s.train_rows} train, {s.val_rows} val rows)")
    print(f"  metrics run label    {s.run}")
    if s.checkpoint:
        print(f"  checkpoint           {s.checkpoint}")
    if s.timeline:
        print(f"  timeline             {s.timeline}/timeline.json, {s.timeline}/timeline.png")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    started = time.perf_counter()
    try:
        tc, train, val = configs(args)
        # Plan before touching Ray: a wrong bucket, prefix, credential or schema fails in seconds.
        plan = plan_source(train.source)
        val_plan = plan_source(val.source) if val else None
    except (StorageError, SchemaError, BadDataError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"data: {plan.num_rows} train rows in {plan.num_shards} {plan.format} shards"
          + (f", {val_plan.num_rows} val rows" if val_plan else ""), flush=True)

    from cluster.training.connect import connect_or_start
    from cluster.training.trainer import run_training

    mode = connect_or_start(args.pool_resource, args.pool_cpus)
    print(f"ray: {mode} a cluster", flush=True)
    try:
        summary = run_training(tc, train, val, plan, val_plan, started=started,
                               timeline_dir=args.timeline, scaling=scaling_config(args))
    except (StorageError, SchemaError, BadDataError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print_summary(summary)
    if args.summary_json:
        with open(args.summary_json, "w") as f:
            json.dump(summary.as_dict(), f, indent=2)
        print(f"  summary written to   {args.summary_json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
