"""Data-echoing experiment: input-bound digits training with no echo, e = 2, e = 4 and auto.

    python jobs/echo_experiment.py --out runs/echo --quick     # one run per setting, minutes
    python jobs/echo_experiment.py --out runs/echo             # two runs per setting, medians

Makes the input pipeline the bottleneck by a real mechanism: the training shards are read from
SeaweedFS through a proxy that caps the object store's read bandwidth (cluster.local.throttle;
validation reads go to the store directly), with one preprocessing actor. It measures
R = trainer rate / pipeline rate (the trainers' examples/s over their non-waiting step time,
median of the echoed runs; the fresh examples/s the pipeline delivers without echo), then
trains a ResNet-18 (DDP, 2 workers) on scikit-learn's digits until the validation accuracy
reaches --target, for each setting, with fixed seeds. Wall-clock counts from the first batch in
a trainer's hands to the end of the validation that reached the target (runs.csv also has it
from the pool's first read, and each run's whole wall time). Writes

    DIR/results.csv    mode, factor, reached, wall_s_to_target, fresh_examples_to_target,
                       steps_to_target (medians over the runs of a setting), runs
    DIR/runs.csv       the same for every run, with its repeat and per-epoch history
    DIR/results.png    validation accuracy vs wall-clock and vs fresh examples
    DIR/summary.json   R, the rates, the throttle, and the targets checked

and prints the table and whether auto met the targets (<= 0.5x the no-echo wall-clock,
<= 1.25x its fresh examples).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cluster.local.object_store import EmbeddedObjectStore  # noqa: E402
from cluster.local.throttle import ThrottledProxy  # noqa: E402

SETTINGS = (("none", "1"), ("example", "2"), ("example", "4"), ("example", "auto"))
COLUMNS = ("mode", "factor", "reached", "wall_s_to_target", "fresh_examples_to_target",
           "steps_to_target")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", required=True, help="directory for results.csv, results.png, ...")
    p.add_argument("--quick", action="store_true",
                   help="one run per setting (the full mode runs each --repeats times)")
    p.add_argument("--repeats", type=int, default=2, help="runs per setting in the full mode")
    p.add_argument("--target", type=float, default=0.93, help="validation accuracy to reach")
    p.add_argument("--epochs", type=int, default=10,
                   help="epoch budget (the learning-rate schedule's length; runs stop at target)")
    p.add_argument("--val-every-rows", type=int, default=360,
                   help="validate every this many fresh training rows (a quarter epoch), so "
                        "time to target is measured finer than epochs")
    p.add_argument("--read-kbps", type=float, default=5.0,
                   help="object-store read bandwidth for the training shards, KB/s (digits are "
                        "~154 bytes each: 5 KB/s is ~32 images/s)")
    p.add_argument("--echo-mode", default="example",
                   choices=["example", "example-after-aug", "batch"],
                   help="echo mode of the echoed settings")
    p.add_argument("--seed", type=int, default=0, help="seed of the first repeat (+1 each)")
    return p.parse_args(argv)


def _first_at_target(history: list[dict], target: float) -> dict | None:
    for h in history:
        if h["val_accuracy"] is not None and h["val_accuracy"] >= target:
            return h
    return None


def _run(args, url: str, throttled: str, direct: str, mode: str, factor: str, seed: int,
         plans: tuple, results: str):
    from cluster.training.config import TrainConfig
    from cluster.training.trainer import run_training
    from pipelines import (
        EchoConfig,
        PipelineConfig,
        PreprocessConfig,
        SourceConfig,
        StorageConfig,
    )

    echo = EchoConfig() if mode == "none" else EchoConfig(
        mode=args.echo_mode, auto=factor == "auto",
        factor=1.0 if factor == "auto" else float(factor))
    pre = PreprocessConfig(recipe="small", image_size=8, min_actors=1, max_actors=1)
    train = PipelineConfig(
        source=SourceConfig(url=f"{url}/train", storage=StorageConfig(endpoint=throttled)),
        preprocess=pre, epochs=args.epochs, seed=seed, echo=echo)
    val = PipelineConfig(
        source=SourceConfig(url=f"{url}/val", storage=StorageConfig(endpoint=direct)),
        preprocess=pre, train=False, shuffle=False)
    tc = TrainConfig(epochs=args.epochs, batch_size=32, lr=0.05, num_workers=2, seed=seed,
                     target_accuracy=args.target, val_every_rows=args.val_every_rows,
                     storage_path=results)  # checkpoints: deleted with the work directory
    return run_training(tc, train, val, *plans)


def _row(mode: str, factor: str, summary, target: float) -> dict:
    # Training wall-clock: from the first batch in a trainer's hands (elapsed_s). Also kept:
    # from the pool's first read, which adds the trainers' start-up (it varies from run to run
    # by tens of seconds on 2 cores, and the pool reads ahead meanwhile).
    start = summary.first_read_at
    history = [{**h, "wall_s": h["elapsed_s"],
                "from_first_read_s": h["at"] - start if start is not None else None}
               for h in summary.history]
    hit = _first_at_target(history, target)
    last = history[-1]  # the epoch-end entry: it has the run's totals
    compute_s = summary.h2d_s + summary.compute_s
    return {
        "mode": mode,
        "factor": factor,
        "reached": hit is not None,
        "wall_s_to_target": round(hit["wall_s"], 2) if hit else None,
        "from_first_read_s_to_target": (round(hit["from_first_read_s"], 2)
                                        if hit and hit["from_first_read_s"] is not None
                                        else None),
        "fresh_examples_to_target": int(hit["run_fresh"]) if hit else None,
        "steps_to_target": int(hit["run_steps"]) if hit else None,
        "final_val_accuracy": round(last["val_accuracy"], 4),
        "epochs_run": last["epoch"],
        "echo_factor_over_run": round(summary.echo_factor, 3),
        # Non-waiting speed of the trainers: rows per second of h2d + compute, per rank times
        # ranks. Only an echoed run measures it cleanly: its ranks agree on every step before
        # computing, so no rank's compute time holds a wait for a rank still waiting for data.
        "trainer_rate": (last["run_fresh"] + last["run_echoed"]) * summary.num_workers
        / max(1e-9, compute_s),
        "fresh_rate": last["run_fresh"] / max(1e-9, last["wall_s"]),
        "data_wait_fraction": round(summary.data_wait_fraction, 3),
        "run_wall_s": round(summary.wall_s, 1),
        "history": history,
        "echo_changes": summary.echo_changes,
    }


def _median(values):
    values = [v for v in values if v is not None]
    return round(statistics.median(values), 2) if values else None


def _plot(rows: list[dict], target: float, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.2))
    colors = {"1": "#444444", "2": "#1f77b4", "4": "#2ca02c", "auto": "#d62728"}
    seen = set()
    for r in rows:
        label = "no echo" if r["mode"] == "none" else f"e = {r['factor']}"
        points = [h for h in r["history"] if h["val_accuracy"] is not None]
        xs_wall = [0.0] + [h["wall_s"] for h in points]
        xs_fresh = [0] + [h["run_fresh"] for h in points]
        ys = [0.1] + [h["val_accuracy"] for h in points]
        style = dict(color=colors.get(r["factor"], None), marker="o", markersize=3,
                     alpha=0.9 if label not in seen else 0.45,
                     label=label if label not in seen else None)
        seen.add(label)
        a.plot(xs_wall, ys, **style)
        b.plot(xs_fresh, ys, **style)
    for ax, xlabel in ((a, "training wall-clock: seconds since the first batch"),
                       (b, "fresh examples trained on")):
        ax.axhline(target, color="grey", linestyle=":", linewidth=1)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("validation accuracy")
        ax.set_ylim(0, 1.0)
        ax.grid(alpha=0.3)
    a.legend(loc="lower right")
    fig.suptitle(f"Data echoing, input-bound digits (target {target:.2f})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _stop(signum, _frame):
    raise KeyboardInterrupt(signal.Signals(signum).name)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # SIGTERM unwinds like Ctrl-C, so the object store, the proxy and Ray are stopped.
    signal.signal(signal.SIGTERM, _stop)
    os.makedirs(args.out, exist_ok=True)
    repeats = 1 if args.quick else max(2, args.repeats)
    started = time.perf_counter()
    work = tempfile.mkdtemp(prefix="feedline-echo-")
    try:
        rows = _experiment(args, work, repeats, started)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return _report(args, rows, repeats)


def _experiment(args, work: str, repeats: int, started: float) -> list[dict]:
    with EmbeddedObjectStore(data_dir=os.path.join(work, "seaweedfs")) as store:
        os.environ.update(store.env())  # Ray's workers inherit the credentials
        from pipelines.datasets import write_digits

        # One shard per split: a Parquet reader fetches the last 64 KiB of a file for its footer,
        # which for 200 KB digits shards would be a third of the throttled bytes.
        url = write_digits(f"s3://{store.bucket}/digits", rows_per_shard=4096).url
        with ThrottledProxy("127.0.0.1", store.s3_port, args.read_kbps * 1000) as proxy:
            import ray

            ray.init(address="local", num_cpus=2, resources={"preprocess_cpu": 1},
                     include_dashboard=False,
                     log_to_driver=False, configure_logging=False)
            try:
                from pipelines import SourceConfig, plan_source

                # Plan once, unthrottled: every run reads the same shards (the plan holds paths
                # and row groups, not the endpoint).
                plans = (plan_source(SourceConfig(url=f"{url}/train")),
                         plan_source(SourceConfig(url=f"{url}/val")))
                rows = []
                for repeat in range(repeats):
                    for mode, factor in SETTINGS:
                        t = time.perf_counter()
                        summary = _run(args, url, proxy.endpoint, store.endpoint, mode, factor,
                                       args.seed + repeat, plans,
                                       os.path.join(work, "ray_results"))
                        row = _row(mode, factor, summary, args.target)
                        row["repeat"] = repeat
                        rows.append(row)
                        print(f"[{time.perf_counter() - started:6.0f}s] {mode:8s} e={factor:4s} "
                              f"reached={row['reached']} wall={row['wall_s_to_target']} "
                              f"fresh={row['fresh_examples_to_target']} "
                              f"steps={row['steps_to_target']} "
                              f"(x{row['echo_factor_over_run']}, run "
                              f"{time.perf_counter() - t:.0f} s)", flush=True)
            finally:
                ray.shutdown()
    return rows


def _report(args, rows: list[dict], repeats: int) -> int:
    table = []
    for mode, factor in SETTINGS:
        mine = [r for r in rows if r["mode"] == mode and r["factor"] == factor]
        table.append({
            "mode": mode, "factor": factor,
            "reached": all(r["reached"] for r in mine),
            "wall_s_to_target": _median(r["wall_s_to_target"] for r in mine),
            "fresh_examples_to_target": _median(r["fresh_examples_to_target"] for r in mine),
            "steps_to_target": _median(r["steps_to_target"] for r in mine),
            "runs": len(mine),
        })
    with open(os.path.join(args.out, "results.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=[*COLUMNS, "runs"])
        w.writeheader()
        w.writerows(table)
    with open(os.path.join(args.out, "runs.csv"), "w", newline="") as f:
        fields = ["repeat", *COLUMNS, "from_first_read_s_to_target", "final_val_accuracy",
                  "epochs_run", "echo_factor_over_run", "trainer_rate", "fresh_rate",
                  "data_wait_fraction", "run_wall_s", "history", "echo_changes"]
        w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        w.writerows({**r, "history": json.dumps(r["history"]),
                     "echo_changes": json.dumps(r["echo_changes"])} for r in rows)
    _plot(rows, args.target, os.path.join(args.out, "results.png"))

    none = next(t for t in table if t["mode"] == "none")
    auto = next(t for t in table if t["factor"] == "auto")
    base = [r for r in rows if r["mode"] == "none"]
    trainer_rate = statistics.median(r["trainer_rate"] for r in rows if r["mode"] != "none")
    pipeline_rate = statistics.median(r["fresh_rate"] for r in base)
    ratio = trainer_rate / pipeline_rate
    wall_ratio = (auto["wall_s_to_target"] / none["wall_s_to_target"]
                  if auto["wall_s_to_target"] and none["wall_s_to_target"] else None)
    fresh_ratio = (auto["fresh_examples_to_target"] / none["fresh_examples_to_target"]
                   if auto["fresh_examples_to_target"] and none["fresh_examples_to_target"]
                   else None)
    checks = {
        "input_bound_R_at_least_3": ratio >= 3,
        "auto_wall_at_most_0.5x": wall_ratio is not None and wall_ratio <= 0.5,
        "auto_fresh_at_most_1.25x": fresh_ratio is not None and fresh_ratio <= 1.25,
    }
    summary = {
        "runs_per_setting": repeats, "target_val_accuracy": args.target,
        "throttle": f"training-shard reads capped at {args.read_kbps} KB/s (proxy in front of "
                    "SeaweedFS); 1 preprocessing actor; 2 DDP CPU workers",
        "trainer_rate": round(trainer_rate, 1), "pipeline_rate": round(pipeline_rate, 1),
        "R": round(ratio, 2), "auto_wall_ratio": wall_ratio and round(wall_ratio, 3),
        "auto_fresh_ratio": fresh_ratio and round(fresh_ratio, 3), "checks": checks,
        "table": table,
    }
    with open(os.path.join(args.out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)

    print(f"\nR = trainer rate / pipeline rate = {trainer_rate:.0f} / {pipeline_rate:.1f} "
          f"= {ratio:.1f}  ({summary['throttle']})")
    print(f"{'mode':9s} {'factor':6s} {'reached':7s} {'wall_s':>8s} {'fresh':>7s} {'steps':>6s}")
    for t in table:
        print(f"{t['mode']:9s} {t['factor']:6s} {str(t['reached']):7s} "
              f"{t['wall_s_to_target'] or '-':>8} {t['fresh_examples_to_target'] or '-':>7} "
              f"{t['steps_to_target'] or '-':>6}")
    print(f"auto vs no echo: wall x{wall_ratio:.2f} (target <= 0.5), fresh x{fresh_ratio:.2f} "
          "(target <= 1.25)" if wall_ratio and fresh_ratio else "auto or no echo missed the "
          "accuracy target: raise --epochs")
    for name, ok in checks.items():
        print(f"  {'PASS' if ok else 'FAIL'}  {name}")
    print(f"written: {args.out}/results.csv, runs.csv, results.png, summary.json")
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
