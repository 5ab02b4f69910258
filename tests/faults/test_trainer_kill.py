"""A trainer fault, in tier 2+3's end-to-end slice: digits from SeaweedFS, through the
preprocessing actor pool, into 2 Ray Train DDP workers on CPU; checkpoints written to s3://.
One training worker is killed (SIGKILL) once the first checkpoint is registered: the run
restarts from it and still reaches the accuracy target."""

import json
import os
import signal
import threading
import time

import pyarrow.fs as pafs
import pytest

from cluster.local.procfs import local_processes
from cluster.training.config import TrainConfig
from cluster.training.trainer import run_training
from pipelines import PipelineConfig, PreprocessConfig, SourceConfig
from pipelines.storage import resolve

pytestmark = [pytest.mark.ray, pytest.mark.services]


def test_digits_reach_093_with_two_ddp_workers(ray_cluster, digits_url, object_store):
    pre = PreprocessConfig(recipe="small", image_size=8, min_actors=1, max_actors=2)
    train = PipelineConfig(source=SourceConfig(url=f"{digits_url}/train"), preprocess=pre)
    val = PipelineConfig(source=SourceConfig(url=f"{digits_url}/val"), preprocess=pre,
                         train=False, shuffle=False)
    results = f"s3://{object_store.bucket}/results"
    tc = TrainConfig(epochs=5, batch_size=32, lr=0.05, num_workers=2, cpus_per_worker=1,
                     storage_path=results, run_name="e2e", max_failures=1)
    killer = WorkerKiller(results, "e2e")
    killer.start()
    summary = run_training(tc, train, val)
    killer.join(timeout=10)

    assert killer.killed, f"no training worker of this run was killed ({killer.before} before)"
    # The run survived the kill and went on from the registered checkpoint, not from scratch.
    assert summary.resumed_at_epoch >= 1, summary
    assert summary.val_accuracy >= 0.93, summary
    assert summary.epochs == 5 and summary.train_rows == 1437 and summary.val_rows == 360
    assert summary.images_per_s > 0 and 0.0 <= summary.data_wait_fraction < 1.0
    # The final checkpoint is in the object store, under the run's name.
    loc = resolve(results)
    files = loc.fs.get_file_info(pafs.FileSelector(f"{loc.path}/e2e", recursive=True))
    assert any(f.path.endswith("state.pt") for f in files), [f.path for f in files]
    assert summary.checkpoint and "e2e" in summary.checkpoint


class WorkerKiller(threading.Thread):
    """Waits for the run's first checkpoint to be registered, then SIGKILLs one Ray Train worker
    process (Ray titles them after the actor class).

    A checkpoint's files reach the object store before Ray Train's controller registers it;
    a restart only sees checkpoints in the controller's snapshot
    (`checkpoint_manager_snapshot.json`), so killing on the first `state.pt` alone can restart
    the run from scratch."""

    def __init__(self, results: str, run: str):
        super().__init__(daemon=True)
        self.loc, self.run_name = resolve(results), run
        self.killed: int | None = None
        self.before = set(self._trainers())  # other runs' workers (or reused processes) stay

    @staticmethod
    def _trainers() -> list[int]:
        return [p.pid for p in local_processes()
                if p.alive and p.cmdline.startswith("ray::RayTrainWorker")]

    def _checkpointed(self) -> bool:
        try:
            with self.loc.fs.open_input_stream(
                    f"{self.loc.path}/{self.run_name}/checkpoint_manager_snapshot.json") as f:
                snapshot = json.loads(f.read())
        except (OSError, ValueError):
            return False
        return snapshot.get("latest_checkpoint_result") is not None

    def run(self) -> None:
        deadline = time.time() + 300
        while time.time() < deadline and not self._checkpointed():
            time.sleep(0.5)
        ours = [pid for pid in self._trainers() if pid not in self.before]
        if ours:
            os.kill(ours[0], signal.SIGKILL)
            self.killed = ours[0]
