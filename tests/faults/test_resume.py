"""Tier 2+3: exactly-once, resumable streams. Digits from SeaweedFS through the pool into Ray Train
DDP workers on CPU, step checkpoints written to s3://, every step's keys traced
(--trace-samples). A trainer is SIGKILLed right after a mid-epoch step checkpoint registered:
the run resumes from it, and its lineage (each attempt's steps below the next attempt's first)
trains every key exactly once per epoch and, deterministic, the same keys at every step as an
uninterrupted run. Then a whole driver is killed mid-epoch and started again with one worker
fewer on the same run: exactly once again, and the resumed stream makes only the rows left."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections import Counter

import pytest

from cluster.local.procfs import local_processes
from cluster.training.config import TrainConfig
from cluster.training.trace import read_lineage
from cluster.training.trainer import run_training
from pipelines import PipelineConfig, PreprocessConfig, SourceConfig, plan_source
from pipelines.sources import KEY, read_unit
from pipelines.storage import resolve
from tests.helpers import wait_for

pytestmark = [pytest.mark.ray, pytest.mark.services]
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EPOCHS, BATCH, EVERY = 3, 32, 10
"""1437 rows / 2 ranks / 32 = 22 steps an epoch; a step checkpoint (~90 MB of ResNet-18 and
its momentum) every 10 steps."""
DRIVER_EPOCHS = 2
"""The killed-driver run's epochs: its kill after step 30 falls in the second, the last, so the
restarted driver's one worker trains the rest of it (a third epoch would only add time)."""


def _snapshot(results: str, run: str) -> dict | None:
    """Ray Train's record of the run's registered checkpoints (None before the first)."""
    loc = resolve(str(results))
    try:
        with loc.fs.open_input_stream(f"{loc.path}/{run}/checkpoint_manager_snapshot.json") as f:
            return json.loads(f.read()).get("latest_checkpoint_result")
    except (OSError, ValueError):
        return None


def _mid_epoch_checkpoint(results: str, run: str, after_step: int) -> bool:
    latest = _snapshot(results, run)
    metrics = (latest or {}).get("metrics", {})
    return metrics.get("checkpoint") == "step" and metrics.get("step", 0) >= after_step


def _keys(url: str) -> list[str]:
    """Every key of the training split, read straight from the store."""
    plan = plan_source(SourceConfig(url=url))
    fs = resolve(url).fs
    return [str(k) for u in plan.units for k in read_unit(u, fs)[KEY]]


def assert_exactly_once(steps: dict[int, dict[int, dict]], keys: list[str], world_max: int,
                        epochs: int = EPOCHS) -> None:
    """Every key at most once in each of `epochs` epochs over the lineage, and all but the few
    the equal split leaves out (fewer than the ranks, per epoch) at least once."""
    per_epoch: dict[int, Counter] = {}
    for ranks in steps.values():
        for line in ranks.values():
            for key, epoch in zip(line["keys"], line["epochs"], strict=True):
                per_epoch.setdefault(epoch, Counter())[key] += 1
    assert sorted(per_epoch) == list(range(epochs))
    for epoch, seen in per_epoch.items():
        twice = [k for k, n in seen.items() if n > 1]
        assert not twice, f"epoch {epoch}: trained more than once: {twice[:5]}"
        missing = set(keys) - set(seen)
        assert len(missing) < 2 * world_max, f"epoch {epoch}: never trained: {len(missing)}"


def _config(digits_url: str, results: str, run: str, trace: str, deterministic: bool,
            max_failures: int):
    pre = PreprocessConfig(recipe="small", image_size=8, min_actors=1, max_actors=2)
    train = PipelineConfig(source=SourceConfig(url=f"{digits_url}/train"), preprocess=pre,
                           deterministic=deterministic, seed=3)
    tc = TrainConfig(epochs=EPOCHS, batch_size=BATCH, lr=0.05, num_workers=2,
                     cpus_per_worker=1, storage_path=results, run_name=run,
                     max_failures=max_failures, checkpoint_every_steps=EVERY,
                     trace_samples=trace, seed=3)
    return tc, train


class KillTrainerAfter(threading.Thread):
    """SIGKILLs one Ray Train worker of this run once a mid-epoch step checkpoint registered
    (a restart only sees checkpoints in the controller's snapshot)."""

    def __init__(self, results: str, run: str, after_step: int):
        super().__init__(daemon=True)
        self.results, self.run_name, self.after_step = results, run, after_step
        self.before = set(self._trainers())
        self.killed: int | None = None

    @staticmethod
    def _trainers() -> list[int]:
        return [p.pid for p in local_processes()
                if p.alive and p.cmdline.startswith("ray::RayTrainWorker")]

    def run(self) -> None:
        wait_for(lambda: _mid_epoch_checkpoint(self.results, self.run_name, self.after_step),
                 300, "a mid-epoch step checkpoint", interval=0.2)
        ours = [pid for pid in self._trainers() if pid not in self.before]
        if ours:
            os.kill(ours[0], signal.SIGKILL)
            self.killed = ours[0]


def test_killed_trainer_resumes_mid_epoch_exactly_once_and_as_an_uninterrupted_run(
        ray_cluster, digits_url, tmp_path):
    # Checkpoints on local disk here (the next test writes them to s3://): two runs' worth
    # would fill the session object store's volumes.
    results = str(tmp_path / "results")
    # the second epoch's middle
    killer = KillTrainerAfter(results, "killed", after_step=30)
    killer.start()
    tc, train = _config(digits_url, results, "killed", str(tmp_path / "killed"),
                        deterministic=True, max_failures=1)
    killed = run_training(tc, train, None)
    killer.join(timeout=10)
    assert killer.killed, "no training worker of this run was killed"
    assert killed.attempt == 1 and killed.resumed_at_epoch == 1, killed
    lineage = read_lineage(str(tmp_path / "killed"))
    files = sorted(os.listdir(tmp_path / "killed"))
    assert files == [f"attempt-{a}-rank-{r}.jsonl" for a in (0, 1) for r in (0, 1)]

    tc, train = _config(digits_url, results, "whole", str(tmp_path / "whole"),
                        deterministic=True, max_failures=0)
    whole = run_training(tc, train, None)
    uninterrupted = read_lineage(str(tmp_path / "whole"))

    keys = _keys(f"{digits_url}/train")
    assert_exactly_once(lineage, keys, world_max=2)
    assert_exactly_once(uninterrupted, keys, world_max=2)
    # Deterministic: every step trained the same keys on every rank as the run never killed.
    assert sorted(lineage) == sorted(uninterrupted) == list(range(len(uninterrupted)))
    differ = [s for s in uninterrupted
              if {r: v["keys"] for r, v in lineage[s].items()}
              != {r: v["keys"] for r, v in uninterrupted[s].items()}]
    assert not differ, f"steps that trained other keys after the resume: {differ[:5]}"
    assert killed.final_train_loss == pytest.approx(whole.final_train_loss, rel=1e-4)
    # The step checkpoints were taken, and their cost is in the summary.
    step_ckpts = [c for c in whole.checkpoints if c["kind"] == "step"]
    assert step_ckpts and all(c["checkpoint_bytes"] > 0 for c in step_ckpts)


def test_killed_driver_restarts_with_a_worker_fewer_and_trains_each_row_once(
        ray_cluster, digits_url, object_store, tmp_path):
    results = f"s3://{object_store.bucket}/resume"
    trace = tmp_path / "trace"

    def train(workers: int, summary: str) -> subprocess.Popen:
        env = {**os.environ, "RAY_ADDRESS": ray_cluster.get_runtime_context().gcs_address}
        return subprocess.Popen(
            [sys.executable, os.path.join(ROOT, "jobs", "train_resnet.py"),
             "--data", digits_url, "--no-val", "--recipe", "small", "--image-size", "8",
             "--epochs", str(DRIVER_EPOCHS), "--batch-size", str(BATCH), "--lr", "0.05",
             "--num-workers", str(workers), "--checkpoint-every-steps", str(EVERY),
             "--storage-path", results, "--run-name", "driver", "--seed", "3",
             "--trace-samples", str(trace), "--summary-json", str(tmp_path / summary)],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    first = train(2, "first.json")
    wait_for(lambda: _mid_epoch_checkpoint(results, "driver", after_step=30), 300,
             "a mid-epoch step checkpoint", alive=lambda: first.poll() is None, interval=0.2)
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=30)
    second = train(1, "second.json")
    out, _ = second.communicate(timeout=400)
    assert second.returncode == 0, out[-4000:]
    assert "resumed from the checkpoint of step" in out
    s = json.loads((tmp_path / "second.json").read_text())
    assert s["attempt"] == 1 and s["num_workers"] == 1

    lineage = read_lineage(str(trace))
    assert_exactly_once(lineage, _keys(f"{digits_url}/train"), world_max=2, epochs=DRIVER_EPOCHS)
    # The resumed stream made the rows not yet trained, and nothing past the last epoch.
    resumed_first = min(line["step"] for line in (
        json.loads(x) for x in (trace / "attempt-1-rank-0.jsonl").read_text().splitlines()))
    trained_after = sum(len(v["keys"]) for step, ranks in lineage.items()
                        if step >= resumed_first for v in ranks.values())
    assert trained_after <= s["produced_rows"] <= trained_after + 2 * BATCH, (
        trained_after, s["produced_rows"])
