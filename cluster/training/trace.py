"""The sample trace (`--trace-samples DIR`): which samples every optimizer step trained.

Each rank appends one JSON line per step to `DIR/attempt-A-rank-R.jsonl`:

    {"attempt": A, "step": S, "epoch": E, "keys": [...]}

`attempt` counts the resumes from a checkpoint before this one (0 for the first start; kept in
the checkpoint, also across a driver restart); `step` is the global optimizer-step index, the
same on every rank, continued from the checkpoint on resume; `epoch` the trainers' epoch (from
0). With echo the line also has `"echo"`: each row's copy index (0 = fresh). A batch can hold
rows of the stream's next epoch (the pool's blocks arrive as they are made): then `"epochs"`
gives each row's own epoch. Lines are flushed as written, so a killed rank's file ends at its
last step.
"""

from __future__ import annotations

import json
import os

import numpy as np

from pipelines.echo import ECHO
from pipelines.position import EPOCH
from pipelines.sources import KEY

__all__ = ["SampleTrace", "read_lineage"]


class SampleTrace:
    def __init__(self, directory: str, attempt: int, rank: int):
        os.makedirs(directory, exist_ok=True)
        self.attempt = attempt
        self.path = os.path.join(directory, f"attempt-{attempt}-rank-{rank}.jsonl")
        self._file = open(self.path, "a", buffering=1)  # noqa: SIM115 - lives with the rank

    def step(self, step: int, epoch: int, batch: dict) -> None:
        line = {"attempt": self.attempt, "step": step, "epoch": epoch,
                "keys": [str(k) for k in batch.get(KEY, ())]}
        if ECHO in batch:
            line["echo"] = np.asarray(batch[ECHO]).astype(int).tolist()
        if EPOCH in batch:
            epochs = np.asarray(batch[EPOCH])
            if (epochs != epoch).any():
                line["epochs"] = epochs.astype(int).tolist()
        self._file.write(json.dumps(line) + "\n")

    def close(self) -> None:
        self._file.close()


def read_lineage(directory: str) -> dict[int, dict[int, dict]]:
    """The steps that count, from every attempt's files: an attempt's steps up to the first
    step of the attempt after it (a resume goes on from its checkpoint: the steps the killed
    attempt took after that checkpoint were done again). Returns step -> rank -> line, each
    line with "epochs" filled in for every key."""
    lines: dict[int, list[tuple[int, dict]]] = {}
    for name in sorted(os.listdir(directory)):
        if not (name.startswith("attempt-") and name.endswith(".jsonl")):
            continue
        rank = int(name[:-len(".jsonl")].rsplit("-", 1)[1])
        with open(os.path.join(directory, name)) as f:
            for text in f:
                if text.strip():
                    line = json.loads(text)
                    lines.setdefault(line["attempt"], []).append((rank, line))
    attempts = sorted(lines)
    firsts = {a: min(line["step"] for _, line in lines[a]) for a in attempts}
    steps: dict[int, dict[int, dict]] = {}
    for i, attempt in enumerate(attempts):
        until = firsts[attempts[i + 1]] if i + 1 < len(attempts) else float("inf")
        for rank, line in lines[attempt]:
            if line["step"] < until:
                line.setdefault("epochs", [line["epoch"]] * len(line["keys"]))
                steps.setdefault(line["step"], {})[rank] = line
    return steps
