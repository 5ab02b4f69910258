"""The data-echoing experiment behind `jobs/echo_experiment.py`: input-bound digits training with
no echo, e = 2, e = 4 and auto, each run until the validation accuracy reaches a target.

The input pipeline is made the bottleneck by a real mechanism: the training shards are read
from the embedded object store through a proxy that caps its read bandwidth
(cluster.local.throttle; validation reads go to the store directly), with one preprocessing
actor. R = trainer rate / pipeline rate (the trainers' examples/s over their non-waiting step
time, median of the echoed runs; the fresh examples/s the pipeline delivers without echo).
Wall-clock counts from the first batch in a trainer's hands to the end of the validation that
reached the target (runs.csv also has it from the pool's first read, and each run's whole wall
time). The targets checked: R >= 3, auto <= 0.5x the no-echo wall-clock and <= 1.25x its fresh
examples.
"""

from __future__ import annotations

import csv
import json
import os
import statistics
import time
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["EchoExperimentConfig", "SETTINGS", "COLUMNS", "first_at_target", "result_row",
           "run_experiment", "setting_table", "summarize", "report", "plot"]

SETTINGS = (("none", "1"), ("example", "2"), ("example", "4"), ("example", "auto"))
"""(echo mode, factor) of each setting, in the order they run and are reported."""
COLUMNS = ("mode", "factor", "reached", "wall_s_to_target", "fresh_examples_to_target",
           "steps_to_target")
"""The columns of results.csv (then `runs`) and the first ones of runs.csv (after `repeat`)."""
_RUN_COLUMNS = ("repeat", *COLUMNS, "from_first_read_s_to_target", "final_val_accuracy",
                "epochs_run", "echo_factor_over_run", "trainer_rate", "fresh_rate",
                "data_wait_fraction", "run_wall_s", "history", "echo_changes")


@dataclass(frozen=True, kw_only=True)
class EchoExperimentConfig:
    out: str = ""
    """Directory for results.csv, runs.csv, results.png and summary.json."""
    quick: bool = False
    """One run per setting (the full mode runs each --repeats times)."""
    repeats: int = 2
    """Runs per setting in the full mode (at least 2)."""
    target: float = 0.93
    """Validation accuracy to reach."""
    epochs: int = 10
    """Epoch budget (the learning-rate schedule's length; runs stop at target)."""
    val_every_rows: int = 360
    """Validate every this many fresh training rows (a quarter epoch), so time to target is
    measured finer than epochs."""
    read_kbps: float = 5.0
    """Object-store read bandwidth for the training shards, KB/s (digits are ~154 bytes each:
    5 KB/s is ~32 images/s)."""
    echo_mode: str = "example"
    """Echo mode of the echoed settings."""
    seed: int = 0
    """Seed of the first repeat (+1 each)."""

    @property
    def runs_per_setting(self) -> int:
        """1 in the quick mode, else --repeats (at least 2: a median of one is no median)."""
        return 1 if self.quick else max(2, self.repeats)


def first_at_target(history: list[dict], target: float) -> dict | None:
    """The first history entry whose validation accuracy reached `target` (None: never)."""
    for h in history:
        if h["val_accuracy"] is not None and h["val_accuracy"] >= target:
            return h
    return None


def _train(cfg: EchoExperimentConfig, url: str, throttled: str, direct: str, mode: str,
           factor: str, seed: int, plans: tuple, results: str):
    """One training run of a setting; its summary."""
    from cluster.training.config import TrainConfig
    from cluster.training.trainer import run_training
    from pipelines import EchoConfig, PipelineConfig, PreprocessConfig, SourceConfig, StorageConfig

    echo = EchoConfig() if mode == "none" else EchoConfig(
        mode=cfg.echo_mode, auto=factor == "auto",
        factor=1.0 if factor == "auto" else float(factor))
    pre = PreprocessConfig(recipe="small", image_size=8, min_actors=1, max_actors=1)
    train = PipelineConfig(
        source=SourceConfig(url=f"{url}/train", storage=StorageConfig(endpoint=throttled)),
        preprocess=pre, epochs=cfg.epochs, seed=seed, echo=echo)
    val = PipelineConfig(
        source=SourceConfig(url=f"{url}/val", storage=StorageConfig(endpoint=direct)),
        preprocess=pre, train=False, shuffle=False)
    tc = TrainConfig(epochs=cfg.epochs, batch_size=32, lr=0.05, num_workers=2, seed=seed,
                     target_accuracy=cfg.target, val_every_rows=cfg.val_every_rows,
                     storage_path=results)  # checkpoints: deleted with the work directory
    return run_training(tc, train, val, *plans)


def result_row(mode: str, factor: str, summary, target: float) -> dict:
    """One run's row of runs.csv from its training summary."""
    # Training wall-clock: from the first batch in a trainer's hands (elapsed_s). Also kept:
    # from the pool's first read, which adds the trainers' start-up (it varies from run to run
    # by tens of seconds on 2 cores, and the pool reads ahead meanwhile).
    start = summary.first_read_at
    history = [{**h, "wall_s": h["elapsed_s"],
                "from_first_read_s": h["at"] - start if start is not None else None}
               for h in summary.history]
    hit = first_at_target(history, target)
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


def _runs(cfg: EchoExperimentConfig, url: str, throttled: str, direct: str, plans: tuple,
          results: str, started: float) -> list[dict]:
    """Every setting, --repeats times over; one line printed per run."""
    rows = []
    for repeat in range(cfg.runs_per_setting):
        for mode, factor in SETTINGS:
            t = time.perf_counter()
            summary = _train(cfg, url, throttled, direct, mode, factor, cfg.seed + repeat,
                             plans, results)
            row = result_row(mode, factor, summary, cfg.target)
            row["repeat"] = repeat
            rows.append(row)
            print(f"[{time.perf_counter() - started:6.0f}s] {mode:8s} e={factor:4s} "
                  f"reached={row['reached']} wall={row['wall_s_to_target']} "
                  f"fresh={row['fresh_examples_to_target']} "
                  f"steps={row['steps_to_target']} "
                  f"(x{row['echo_factor_over_run']}, run "
                  f"{time.perf_counter() - t:.0f} s)", flush=True)
    return rows


def run_experiment(cfg: EchoExperimentConfig, work: str, started: float) -> list[dict]:
    """Start the embedded object store (under `work`), the throttling proxy and a local Ray;
    run every setting; the rows of runs.csv."""
    from cluster.local.object_store import EmbeddedObjectStore
    from cluster.local.throttle import ThrottledProxy

    with EmbeddedObjectStore(data_dir=os.path.join(work, "seaweedfs")) as store:
        os.environ.update(store.env())  # Ray's workers inherit the credentials
        from pipelines.datasets import write_digits

        # One shard per split: a Parquet reader fetches the last 64 KiB of a file for its footer,
        # which for 200 KB digits shards would be a third of the throttled bytes.
        url = write_digits(f"s3://{store.bucket}/digits", rows_per_shard=4096).url
        with ThrottledProxy("127.0.0.1", store.s3_port, cfg.read_kbps * 1000) as proxy:
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
                return _runs(cfg, url, proxy.endpoint, store.endpoint, plans,
                             os.path.join(work, "ray_results"), started)
            finally:
                ray.shutdown()


def _median(values: Iterable[float | None]) -> float | None:
    values = [v for v in values if v is not None]
    return round(statistics.median(values), 2) if values else None


def setting_table(rows: list[dict]) -> list[dict]:
    """results.csv: per setting, whether every run reached the target and the medians."""
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
    return table


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a and b else None


def _rates(rows: list[dict], table: list[dict]) -> tuple[float, float, float | None, float | None]:
    """(trainer rate, pipeline rate, auto's wall-clock and fresh examples over no echo's)."""
    none = next(t for t in table if t["mode"] == "none")
    auto = next(t for t in table if t["factor"] == "auto")
    trainer_rate = statistics.median(r["trainer_rate"] for r in rows if r["mode"] != "none")
    pipeline_rate = statistics.median(r["fresh_rate"] for r in rows if r["mode"] == "none")
    return (trainer_rate, pipeline_rate,
            _ratio(auto["wall_s_to_target"], none["wall_s_to_target"]),
            _ratio(auto["fresh_examples_to_target"], none["fresh_examples_to_target"]))


def summarize(cfg: EchoExperimentConfig, rows: list[dict], table: list[dict]) -> dict:
    """summary.json: R, the rates, the throttle, auto against no echo, and the targets checked."""
    trainer_rate, pipeline_rate, wall_ratio, fresh_ratio = _rates(rows, table)
    ratio = trainer_rate / pipeline_rate
    checks = {
        "input_bound_R_at_least_3": ratio >= 3,
        "auto_wall_at_most_0.5x": wall_ratio is not None and wall_ratio <= 0.5,
        "auto_fresh_at_most_1.25x": fresh_ratio is not None and fresh_ratio <= 1.25,
    }
    return {
        "runs_per_setting": cfg.runs_per_setting, "target_val_accuracy": cfg.target,
        "throttle": f"training-shard reads capped at {cfg.read_kbps} KB/s (proxy in front of "
                    "SeaweedFS); 1 preprocessing actor; 2 DDP CPU workers",
        "trainer_rate": round(trainer_rate, 1), "pipeline_rate": round(pipeline_rate, 1),
        "R": round(ratio, 2), "auto_wall_ratio": wall_ratio and round(wall_ratio, 3),
        "auto_fresh_ratio": fresh_ratio and round(fresh_ratio, 3), "checks": checks,
        "table": table,
    }


def _write(cfg: EchoExperimentConfig, rows: list[dict], summary: dict) -> None:
    with open(os.path.join(cfg.out, "results.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=[*COLUMNS, "runs"])
        w.writeheader()
        w.writerows(summary["table"])
    with open(os.path.join(cfg.out, "runs.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=_RUN_COLUMNS, extrasaction="ignore")
        w.writeheader()
        w.writerows({**r, "history": json.dumps(r["history"]),
                     "echo_changes": json.dumps(r["echo_changes"])} for r in rows)
    plot(rows, cfg.target, os.path.join(cfg.out, "results.png"))
    with open(os.path.join(cfg.out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)


def _print(cfg: EchoExperimentConfig, rows: list[dict], summary: dict) -> None:
    trainer_rate, pipeline_rate, wall, fresh = _rates(rows, summary["table"])
    print(f"\nR = trainer rate / pipeline rate = {trainer_rate:.0f} / {pipeline_rate:.1f} "
          f"= {trainer_rate / pipeline_rate:.1f}  ({summary['throttle']})")
    print(f"{'mode':9s} {'factor':6s} {'reached':7s} {'wall_s':>8s} {'fresh':>7s} {'steps':>6s}")
    for t in summary["table"]:
        print(f"{t['mode']:9s} {t['factor']:6s} {str(t['reached']):7s} "
              f"{t['wall_s_to_target'] or '-':>8} {t['fresh_examples_to_target'] or '-':>7} "
              f"{t['steps_to_target'] or '-':>6}")
    print(f"auto vs no echo: wall x{wall:.2f} (target <= 0.5), fresh x{fresh:.2f} "
          "(target <= 1.25)" if wall and fresh else "auto or no echo missed the "
          "accuracy target: raise --epochs")
    for name, ok in summary["checks"].items():
        print(f"  {'PASS' if ok else 'FAIL'}  {name}")
    print(f"written: {cfg.out}/results.csv, runs.csv, results.png, summary.json")


def report(cfg: EchoExperimentConfig, rows: list[dict]) -> int:
    """Write results.csv, runs.csv, results.png and summary.json, print the table and the
    checks; 0 when every target was met, else 1."""
    summary = summarize(cfg, rows, setting_table(rows))
    _write(cfg, rows, summary)
    _print(cfg, rows, summary)
    return 0 if all(summary["checks"].values()) else 1


def plot(rows: list[dict], target: float, path: str) -> None:
    """Validation accuracy against training wall-clock and against fresh examples, per run."""
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
