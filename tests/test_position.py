"""Tier 1: stream positions and what a resumed stream makes: done rows dropped before decode,
each row's pixels its own whatever else is in its block, a deterministic stream's blocks all one
size and dealt evenly, the trainers' trained-rows ledger, and the sample trace's lineage."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from cluster.training.epochs import agreed, compact
from cluster.training.progress import TrainedRows
from cluster.training.trace import read_lineage
from pipelines import PipelineConfig, PreprocessConfig, SourceConfig
from pipelines.build import Preprocessor
from pipelines.position import BLOCK, EPOCH, ROW, FixedPosition, StreamPosition
from pipelines.sources import KEY, LABEL, plan_source


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    from pipelines.datasets import write_digits

    url = write_digits(str(tmp_path_factory.mktemp("d") / "digits")).url
    return f"{url}/train"


def _stream(url: str, position=None, deterministic=False, ranks=1, epochs=1):
    cfg = PipelineConfig(source=SourceConfig(url=url), epochs=epochs, seed=5,
                         deterministic=deterministic, split_ranks=ranks,
                         preprocess=PreprocessConfig(recipe="small", image_size=8,
                                                     output_rows=64))
    plan = plan_source(cfg.source)
    pre = Preprocessor(cfg, plan.units, position=FixedPosition(position))
    blocks = list(pre({"seq": np.arange(epochs * len(plan.units))}))
    return plan, pre, blocks


def _by_key(blocks) -> dict[str, np.ndarray]:
    return {k: img for b in blocks for k, img, lab in zip(b[KEY], b["image"], b[LABEL],
                                                         strict=True) if lab >= 0}


def test_position_state_round_trips_and_folds_complete_epochs():
    done = {0: np.ones(10, bool), 1: np.zeros(10, bool)}
    done[1][[2, 7]] = True
    p = StreamPosition.from_bitmaps(10, done, start_block=4)
    assert p.lo == 1 and set(p.done) == {1} and p.remaining(1) == 8 and p.remaining(0) == 0
    q = StreamPosition.from_state(p.to_state())
    assert q.lo == 1 and q.start_block == 4 and q.done[1].tolist() == done[1].tolist()
    assert q.done_rows(0, np.array([3])).all() and not q.done_rows(2, np.array([3])).any()
    assert StreamPosition.from_bitmaps(10, {1: np.ones(10, bool)}, lo=1).lo == 2


def test_a_resumed_stream_decodes_only_the_rows_not_done_and_keeps_their_pixels(digits):
    plan, whole, full = _stream(digits)
    done = np.zeros(plan.num_rows, bool)
    done[::3] = True  # a third of the epoch was trained before the checkpoint
    plan, resumed, rest = _stream(digits, StreamPosition(plan.num_rows, 0, {0: done}))
    rows = np.concatenate([b[ROW] for b in rest])
    assert set(rows.tolist()) == set(np.flatnonzero(~done).tolist())  # exactly the rest
    assert resumed.stats.ok == int((~done).sum()) < whole.stats.ok  # nothing else decoded
    a, b = _by_key(full), _by_key(rest)
    assert all(np.array_equal(a[k], b[k]) for k in b)  # a row's augmentation is its own
    assert all((blk[EPOCH] == 0).all() for blk in rest)


def test_an_epoch_before_the_position_is_not_read_at_all(digits):
    plan, pre, blocks = _stream(digits, StreamPosition(1437, lo=1), epochs=2)
    assert {int(e) for b in blocks for e in b[EPOCH]} == {1}
    assert pre.stats.ok == plan.num_rows


def test_a_deterministic_stream_has_blocks_of_one_size_dealt_evenly_and_resumes_aligned(digits):
    plan, pre, blocks = _stream(digits, deterministic=True, ranks=2)
    assert all(len(b[LABEL]) == 64 for b in blocks)
    assert [int(b[BLOCK][0]) for b in blocks] == list(range(len(blocks)))
    assert len(blocks) % 2 == 0
    per_rank = [sum(int((b[LABEL] >= 0).sum()) for b in blocks[r::2]) for r in (0, 1)]
    assert abs(per_rank[0] - per_rank[1]) <= 1 and sum(per_rank) == plan.num_rows
    # Resumed at block 6: blocks 0-5 are not made, the later ones are the same blocks.
    _, _, later = _stream(digits, StreamPosition(plan.num_rows, start_block=6),
                          deterministic=True, ranks=2)
    assert [int(b[BLOCK][0]) for b in later] == list(range(6, len(blocks)))
    assert all(np.array_equal(x[KEY], y[KEY]) for x, y in zip(later, blocks[6:], strict=True))


def test_trained_rows_mark_fresh_rows_and_gather_into_a_position():
    t = TrainedRows(8)
    t.mark({ROW: np.array([0, 1, -1]), EPOCH: np.array([0, 0, 0]), LABEL: np.array([1, 1, -1])})
    t.mark({ROW: np.array([2, 3]), EPOCH: np.array([0, 0]), "echo": np.array([0, 1])})
    t.add_bad({0: [5]})
    p = t.gather(rank=0, world=1, device=torch.device("cpu"))
    assert np.flatnonzero(p.done[0]).tolist() == [0, 1, 2, 5]  # not 3: an echoed copy
    t.mark({ROW: np.arange(8), EPOCH: np.zeros(8, int)})
    assert t.gather(0, 1, torch.device("cpu")).lo == 1


def test_compact_drops_placeholders_into_exact_batches():
    def batch(labels):
        labels = np.array(labels)
        return {"image": torch.arange(len(labels)), LABEL: labels, KEY: labels.astype(str)}

    out = list(compact([batch([1, -1, 2]), batch([-1, -1]), batch([3, 4, 5])], 2))
    assert [b[KEY].tolist() for b in out] == [["1", "2"], ["3", "4"], ["5"]]


def test_agreed_stops_every_rank_when_one_runs_dry():
    calls = []

    def reduce(values):  # another rank that has only 2 batches
        calls.append(values[0])
        return [values[0] + (len(calls) <= 2)]

    assert list(agreed(iter([1, 2, 3, 4]), world=2, reduce=reduce)) == [1, 2]


def test_lineage_drops_the_steps_a_resumed_attempt_did_again(tmp_path):
    lines = {"attempt-0-rank-0.jsonl": [(0, 0, ["a"]), (1, 0, ["b"]), (2, 0, ["c"])],
             "attempt-1-rank-0.jsonl": [(1, 0, ["b2"]), (2, 1, ["c2"])]}
    for name, rows in lines.items():
        attempt = int(name.split("-")[1])
        (tmp_path / name).write_text("".join(
            json.dumps({"attempt": attempt, "step": s, "epoch": e, "keys": k}) + "\n"
            for s, e, k in rows))
    steps = read_lineage(str(tmp_path))
    assert {s: v[0]["keys"] for s, v in steps.items()} == {0: ["a"], 1: ["b2"], 2: ["c2"]}
    assert steps[2][0]["epochs"] == [1]
