"""The training command line (`jobs/train_resnet.py`): flags -> configs, and the run summary as
a user reads it. Every flag's default comes from its config dataclass (`cluster.cli.flags`)."""

from __future__ import annotations

import argparse
import os

from cluster.cli.flags import add_flag
from cluster.training.config import MODELS, TrainConfig
from pipelines.config import (
    ECHO_MODES,
    EchoConfig,
    PipelineConfig,
    PreprocessConfig,
    SourceConfig,
    StorageConfig,
)

__all__ = ["parse_args", "configs", "echo_config", "scaling_config", "print_summary"]


def _data_flags(p: argparse.ArgumentParser) -> None:
    d = p.add_argument_group("data")
    d.add_argument("--data", required=True,
                   help="root of the data set: s3://bucket/prefix (or a local path) holding "
                        "train/ and val/")
    add_flag(d, "--endpoint", StorageConfig, "endpoint",
             help="S3 endpoint URL, e.g. http://127.0.0.1:8333 (default: AWS_ENDPOINT_URL, "
                  "else AWS)")
    add_flag(d, "--region", StorageConfig, "region",
             help="S3 region (default: AWS_REGION or us-east-1)")
    add_flag(d, "--format", SourceConfig, "format", choices=["auto", "parquet", "folder"])
    d.add_argument("--no-val", action="store_true", help="skip validation (no val/ split)")
    add_flag(d, "--max-bad-fraction", SourceConfig, "max_bad_fraction")
    add_flag(d, "--storage-deadline-s", StorageConfig, "outage_deadline_s")


def _pool_flags(p: argparse.ArgumentParser) -> None:
    pre = p.add_argument_group("preprocessing (the dedicated CPU pool)")
    add_flag(pre, "--recipe", PreprocessConfig, "recipe", choices=["imagenet", "small"])
    add_flag(pre, "--image-size", PreprocessConfig, "image_size")
    add_flag(pre, "--pool-resource", PreprocessConfig, "pool_resource")
    add_flag(pre, "--pool-min", PreprocessConfig, "min_actors")
    add_flag(pre, "--pool-max", PreprocessConfig, "max_actors")
    add_flag(pre, "--pool-wait-s", PreprocessConfig, "actor_start_timeout_s")
    pre.add_argument("--pool-cpus", type=float, default=None,
                     help="pool resource a locally started Ray declares (default: one per "
                          "core); ignored when joining a cluster")
    e = p.add_argument_group("data echoing (reuse examples when the input pipeline is slower "
                             "than the trainers)")
    add_flag(e, "--echo-mode", EchoConfig, "mode", choices=ECHO_MODES)
    e.add_argument("--echo-factor", type=_echo_factor,
                   default=f"{EchoConfig.factor:g}",
                   help="copies per fresh example on average (1 = off, 1.5 = half of them "
                        "twice), or auto: clamp(consume rate / produce rate, 1, --echo-max), "
                        "measured and smoothed while the run goes on")
    add_flag(e, "--echo-max", EchoConfig, "max_factor")
    add_flag(e, "--echo-shuffle-rows", EchoConfig, "shuffle_rows")


def _scaling_flags(p: argparse.ArgumentParser) -> None:
    from cluster.pool.policy import PolicyConfig
    from cluster.pool.scaler import ScalerConfig

    s = p.add_argument_group("pool scaling (feedline's policy for the dedicated CPU pool)")
    s.add_argument("--pool-policy", choices=["none", "feedline"], default="none",
                   help="feedline: size the pool from measured GPU stall and cost every "
                        "--pool-interval-s, bidding for pool nodes to the cluster's pool "
                        "arbiter (one request_resources for every run), and echo up to "
                        "--echo-max when it is at --pool-max-nodes or its share; "
                        "none: the pool is what the cluster has (and Ray Data's demand)")
    add_flag(s, "--pool-min-nodes", PolicyConfig, "min_nodes")
    add_flag(s, "--pool-max-nodes", PolicyConfig, "max_nodes")
    add_flag(s, "--pool-cpus-per-node", PolicyConfig, "cpus_per_node")
    add_flag(s, "--target-stall", PolicyConfig, "target_stall")
    add_flag(s, "--gpu-cost-per-hour", PolicyConfig, "gpu_cost_per_hour",
             help="price of one training worker's accelerator")
    add_flag(s, "--node-cost-per-hour", PolicyConfig, "cpu_node_cost_per_hour",
             help="price of one pool node")
    add_flag(s, "--pool-interval-s", ScalerConfig, "interval_s")
    add_flag(s, "--pool-arbiter-namespace", ScalerConfig, "arbiter_namespace")
    add_flag(s, "--pool-quota-nodes", ScalerConfig, "pool_quota_nodes", type=int)
    add_flag(s, "--pool-lease-s", ScalerConfig, "lease_s")


def _train_flags(p: argparse.ArgumentParser) -> None:
    t = p.add_argument_group("training")
    add_flag(t, "--model", TrainConfig, "model", choices=MODELS)
    add_flag(t, "--num-classes", TrainConfig, "num_classes", type=int)
    for flag, name in (("--epochs", "epochs"), ("--batch-size", "batch_size"),
                       ("--weight-decay", "weight_decay"), ("--num-workers", "num_workers"),
                       ("--use-gpu", "use_gpu"), ("--amp", "amp"),
                       ("--channels-last", "channels_last"),
                       ("--cpus-per-worker", "cpus_per_worker"),
                       ("--prefetch-batches", "prefetch_batches"),
                       ("--shuffle-buffer", "shuffle_buffer_rows"), ("--seed", "seed"),
                       ("--val-every-rows", "val_every_rows")):
        add_flag(t, flag, TrainConfig, name)
    add_flag(t, "--min-workers", TrainConfig, "min_workers", type=int)
    add_flag(t, "--lr", TrainConfig, "lr", type=float)
    add_flag(t, "--deterministic", PipelineConfig, "deterministic")
    add_flag(t, "--target-accuracy", TrainConfig, "target_accuracy", type=float)
    o = p.add_argument_group("output")
    add_flag(o, "--storage-path", TrainConfig, "storage_path",
             help="results and checkpoints: local path or s3://bucket/prefix (default: "
                  "~/ray_results)")
    add_flag(o, "--run-name", TrainConfig, "run_name")
    add_flag(o, "--checkpoint-every", TrainConfig, "checkpoint_every")
    add_flag(o, "--checkpoint-every-steps", TrainConfig, "checkpoint_every_steps")
    add_flag(o, "--preemption-check-steps", TrainConfig, "preemption_check_steps")
    add_flag(o, "--trace-samples", TrainConfig, "trace_samples", metavar="DIR")
    add_flag(o, "--max-failures", TrainConfig, "max_failures")
    add_flag(o, "--train-log-level", TrainConfig, "train_log_level",
             choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    add_flag(o, "--report", TrainConfig, "report_dir", metavar="DIR")
    o.add_argument("--summary-json", default=None, help="write the run summary here as JSON")
    o.add_argument("--timeline", default=None, metavar="DIR",
                   help="write DIR/timeline.json (Chrome trace: Perfetto, chrome://tracing) and "
                        "DIR/timeline.png: every step's wait/h2d/compute and every pool block")


def parse_args(argv: list[str] | None = None, description: str = "") -> argparse.Namespace:
    p = argparse.ArgumentParser(description=description,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    for add in (_data_flags, _pool_flags, _scaling_flags, _train_flags):
        add(p)
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
        if args.max_factor <= 1:
            return EchoConfig()
        return EchoConfig(mode=args.mode, auto=True, max_factor=args.max_factor,
                          shuffle_rows=args.shuffle_rows)
    auto = args.echo_factor == "auto"
    return EchoConfig(mode=args.mode, factor=1.0 if auto else float(args.echo_factor),
                      auto=auto, max_factor=args.max_factor, shuffle_rows=args.shuffle_rows)


def scaling_config(args: argparse.Namespace):
    """The pool scaler's configuration, or None without --pool-policy feedline."""
    if args.pool_policy != "feedline":
        return None
    from cluster.pool.policy import PolicyConfig
    from cluster.pool.scaler import ScalerConfig

    return ScalerConfig(
        policy=PolicyConfig(
            min_nodes=args.min_nodes, max_nodes=args.max_nodes,
            cpus_per_node=args.cpus_per_node, gpus=args.num_workers,
            cpu_node_cost_per_hour=args.cpu_node_cost_per_hour,
            gpu_cost_per_hour=args.gpu_cost_per_hour, target_stall=args.target_stall,
            echo_max=args.max_factor),
        pool_resource=args.pool_resource, interval_s=args.interval_s,
        arbiter_namespace=args.arbiter_namespace, lease_s=args.lease_s,
        pool_quota_nodes=args.pool_quota_nodes)


def configs(args: argparse.Namespace) -> tuple[TrainConfig, PipelineConfig, PipelineConfig | None]:
    """The training config, the training stream and the validation stream (None: --no-val)."""
    storage = StorageConfig(endpoint=args.endpoint, region=args.region,
                            outage_deadline_s=args.outage_deadline_s)
    root = args.data.rstrip("/")
    pre = PreprocessConfig(recipe=args.recipe, image_size=args.image_size,
                           pool_resource=args.pool_resource, min_actors=args.min_actors,
                           max_actors=args.max_actors,
                           actor_start_timeout_s=args.actor_start_timeout_s)

    def source(split: str) -> SourceConfig:
        return SourceConfig(url=f"{root}/{split}", storage=storage, format=args.format,
                            max_bad_fraction=args.max_bad_fraction, num_classes=args.num_classes)

    train = PipelineConfig(source=source("train"), preprocess=pre, epochs=args.epochs,
                           seed=args.seed, echo=echo_config(args),
                           deterministic=args.deterministic)
    val = None if args.no_val else PipelineConfig(source=source("val"), preprocess=pre,
                                                  train=False, shuffle=False)
    names = ("model", "num_classes", "epochs", "batch_size", "lr", "weight_decay", "num_workers",
             "use_gpu", "amp", "channels_last", "cpus_per_worker", "prefetch_batches",
             "shuffle_buffer_rows", "storage_path", "run_name", "checkpoint_every",
             "max_failures", "seed", "target_accuracy", "val_every_rows", "train_log_level",
             "checkpoint_every_steps", "preemption_check_steps", "trace_samples",
             "min_workers", "report_dir")
    values = {name: getattr(args, name) for name in names}
    for name in ("trace_samples", "storage_path", "report_dir"):  # workers' cwd is not ours
        if values[name] and "://" not in values[name]:
            values[name] = os.path.abspath(os.path.expanduser(values[name]))
    tc = TrainConfig(**values)
    return tc, train, val


def print_summary(s) -> None:
    """The run summary (a RunSummary) as the job log's last lines."""
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
          f"{s.bad_records} bad records skipped"
          + (f" ({', '.join(f'{k} {v}' for k, v in sorted(s.bad_by_kind.items()))}; "
             f"met {s.bad_skips} times)" if s.bad_records else ""))
    if s.bad_records:
        worst = ", ".join(f"{k} ({v})" for k, v in list(s.bad_shards.items())[:3])
        print(f"  bad records in       {worst}; sample keys: {', '.join(s.bad_sample_keys)}")
        print(f"  bad records listed   {s.bad_records_file}")
    if s.attempt:
        print(f"  resumed              {s.attempt} time(s) from a checkpoint, the last in epoch "
              f"{s.resumed_at_epoch + 1}")
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
    if s.checkpoints:
        secs = sorted(c["checkpoint_s"] for c in s.checkpoints)
        size = max(c["checkpoint_bytes"] for c in s.checkpoints)
        print(f"  checkpoints          {len(secs)} taken, median {secs[len(secs) // 2]:.2f} s, "
              f"{size / 1e6:.1f} MB each")
    if s.checkpoint:
        print(f"  checkpoint           {s.checkpoint}")
    if s.timeline:
        print(f"  timeline             {s.timeline}/timeline.json, {s.timeline}/timeline.png")
    if s.report:
        print(f"  report               {s.report}")
