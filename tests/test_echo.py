"""Data echoing, tier 1 (pure): copy accounting, the shuffle after the echo, batch echoing, the
fresh-count epoch cutter, the automatic-factor rule with fake clocks, and the Preprocessor's
echo stages run in-process on a local Parquet shard (no Ray)."""

from __future__ import annotations

import collections
import threading

import numpy as np
import pytest
import torch

from cluster.echo.policy import EchoRuleConfig, EchoState, next_factor, target_factor
from cluster.training.epochs import ECHOED, FRESH, PROGRESS, FreshEpochs
from pipelines.config import EchoConfig, PipelineConfig, PreprocessConfig, SourceConfig
from pipelines.echo import ECHO, ShuffleBuffer, copy_counts, echo_batches, repeat_rows


@pytest.mark.parametrize("factor", [1.0, 1.5, 2.0, 2.25, 3.7, 4.0])
def test_copy_counts_average_exactly_the_factor(factor):
    rng = np.random.default_rng(0)
    counts = np.concatenate([copy_counts(100, factor, rng) for _ in range(200)])
    assert set(np.unique(counts)) <= {int(factor), int(factor) + 1}
    assert counts.mean() == pytest.approx(factor, abs=0.005)


def test_fractional_copies_are_random_but_seeded():
    a = copy_counts(1000, 1.5, np.random.default_rng(7))
    b = copy_counts(1000, 1.5, np.random.default_rng(7))
    c = copy_counts(1000, 1.5, np.random.default_rng(8))
    assert (a == b).all() and not (a == c).all()
    assert abs(int((a == 2).sum()) - 500) <= 1  # half of them once more, not a coin per row


def test_factor_one_copies_nothing_and_bad_factor_is_refused():
    assert (copy_counts(50, 1.0, np.random.default_rng(0)) == 1).all()
    with pytest.raises(ValueError, match="echo factor"):
        copy_counts(5, 0.5, np.random.default_rng(0))
    with pytest.raises(ValueError, match="echo factor"):
        EchoConfig(factor=0.9)
    with pytest.raises(ValueError, match="echo mode"):
        EchoConfig(mode="sideways")
    assert not EchoConfig().enabled and EchoConfig(auto=True).enabled


def test_repeat_rows_marks_the_first_copy_fresh():
    out = repeat_rows({"key": np.array(["a", "b", "c"])}, np.array([2, 1, 3]))
    assert out["key"].tolist() == ["a", "a", "b", "c", "c", "c"]
    assert out[ECHO].tolist() == [0, 1, 0, 0, 1, 2]


def _through(buffer: ShuffleBuffer, blocks) -> list[dict]:
    out = [b for block in blocks for b in buffer.add(block)]
    return out + list(buffer.flush())


def test_shuffle_buffer_keeps_every_row_and_separates_copies():
    rng = np.random.default_rng(0)
    keys = np.array([f"k{i}" for i in range(2000)], dtype=object)
    blocks = [repeat_rows({"key": keys[i:i + 250], "x": np.arange(i, i + 250)},
                          np.full(250, 3)) for i in range(0, 2000, 250)]
    out = _through(ShuffleBuffer(1024, 256, rng), blocks)
    stream = np.concatenate([b["key"] for b in out])
    assert sorted(stream.tolist()) == sorted(np.repeat(keys, 3).tolist())  # nothing lost
    assert all(len(b["key"]) == 256 for b in out[:-1])
    # Copies of one example: adjacent without the buffer, far apart with it.
    where: dict[str, list[int]] = {}
    for i, k in enumerate(stream):
        where.setdefault(k, []).append(i)
    gaps = np.array([b - a for pos in where.values() for a, b in zip(pos, pos[1:], strict=False)])
    unbuffered = np.concatenate([b["key"] for b in blocks])
    assert (unbuffered[1:] == unbuffered[:-1]).mean() > 0.6
    assert (gaps == 1).mean() < 0.01
    assert np.median(gaps) > 200  # a quarter of the buffer, or more


def test_shuffle_buffer_of_zero_passes_rows_through_in_order():
    blocks = [{"x": np.arange(i, i + 100)} for i in range(0, 300, 100)]
    out = _through(ShuffleBuffer(0, 128, np.random.default_rng(0)), blocks)
    assert np.concatenate([b["x"] for b in out]).tolist() == list(range(300))


def test_echo_batches_repeats_every_batch_and_marks_one_copy_fresh():
    batches = [f"b{i}" for i in range(300)]
    out = list(echo_batches(batches, lambda: 2.5, np.random.default_rng(0), buffer_batches=8))
    names = [b for b, _ in out]
    assert set(names) == set(batches)
    assert len(out) == pytest.approx(750, abs=25)
    fresh = [b for b, first in out if first]
    assert sorted(fresh) == sorted(batches)  # exactly one fresh copy each
    again = list(echo_batches(batches, lambda: 2.5, np.random.default_rng(0), 8))
    assert again == out  # same seed and factors: same steps on every DDP rank
    adjacent = sum(a == b for a, b in zip(names, names[1:], strict=False))
    assert adjacent < 0.2 * len(out)


class _ThreadAllReduce:
    """A sum over ranks that run in threads: blocks until every rank has called, like the
    collective it stands in for."""

    def __init__(self, world: int):
        self.barrier = threading.Barrier(world, timeout=10)
        self.values: list = [None] * world

    def for_rank(self, rank: int):
        def reduce(values):
            self.values[rank] = values
            self.barrier.wait()
            total = list(np.sum(self.values, axis=0))
            self.barrier.wait()
            return total
        return reduce


def _run_ranks(per_rank_batches: list[list[list[int]]], fresh_per_epoch: int, epochs: int):
    """Each rank (a thread) cuts its own stream of batches (given as echo copy indices)."""
    world = len(per_rank_batches)
    net = _ThreadAllReduce(world)
    results: dict[int, list] = {}

    def rank_main(rank: int) -> None:
        stream = [{"image": torch.zeros(len(b)), ECHO: torch.tensor(b, dtype=torch.uint8)}
                  for b in per_rank_batches[rank]]
        slicer = FreshEpochs(stream, fresh_per_epoch, world, reduce=net.for_rank(rank))
        results[rank] = [[(b[FRESH], b[ECHOED], b[PROGRESS]) for b in slicer.epoch()]
                         for _ in range(epochs)] + [slicer.exhausted]

    threads = [threading.Thread(target=rank_main, args=(r,)) for r in range(world)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=20)
    return results


def test_fresh_epochs_end_on_the_same_step_on_every_rank():
    # Rank 0 gets 2 fresh rows per batch of 4, rank 1 gets 3: 5 fresh per global step.
    r0, r1 = [[0, 1, 0, 1]] * 12, [[0, 0, 1, 0]] * 12
    out = _run_ranks([r0, r1], fresh_per_epoch=10, epochs=3)
    for rank in (0, 1):
        assert [len(e) for e in out[rank][:3]] == [2, 2, 2]  # 10 fresh per epoch = 2 steps
    assert out[0][0][0] == (2, 2, 2.5) and out[1][0][0] == (3, 1, 2.5)
    assert out[0][3] is False  # 6 of 12 batches used, stream not over


def test_fresh_epochs_overshoot_counts_towards_the_next_epoch_and_ranks_stop_together():
    # 7 fresh per step against 10 per epoch: epoch 1 takes 2 steps (14), epoch 2 one (21 > 20).
    r0 = [[0, 0, 0, 1]] * 5
    r1 = [[0, 0, 0, 0]] * 4 + [[0]]  # rank 1's last batch has 1 row: dropped, both stop
    out = _run_ranks([r0, r1], fresh_per_epoch=10, epochs=3)
    assert [len(e) for e in out[0][:3]] == [len(e) for e in out[1][:3]] == [2, 1, 1]
    assert out[0][3] is True and out[1][3] is True


def test_target_factor_is_the_clamped_rate_ratio():
    assert target_factor(100, 100, 4) == 1.0
    assert target_factor(100, 400, 4) == 1.0  # pool faster: never below 1
    assert target_factor(300, 100, 4) == 3.0
    assert target_factor(1000, 100, 4) == 4.0
    assert target_factor(100, 0, 4) == 4.0


def _drive(rates, dt=1.0, cfg=None):
    """Feed (consume, produce) pairs at a fake clock ticking `dt`; returns the factors."""
    cfg = cfg or EchoRuleConfig()
    state, out = EchoState(), []
    for i, (consume, produce) in enumerate(rates):
        state = next_factor(state, i * dt, consume, produce, cfg)
        out.append(state.factor)
    return out, state


def test_auto_stays_at_one_when_the_pipeline_keeps_up():
    rng = np.random.default_rng(0)
    # Pool 10-30% faster than the trainers, with noise: not input-bound, so e stays exactly 1.
    rates = [(100 * rng.uniform(0.9, 1.1), 100 * rng.uniform(1.1, 1.3)) for _ in range(300)]
    factors, _ = _drive(rates)
    assert set(factors) == {1.0}
    # Slightly input-bound noise around 1.05 stays inside the dead band too.
    factors, _ = _drive([(105 + rng.normal(0, 2), 100) for _ in range(300)])
    assert set(factors) == {1.0}


def test_auto_converges_to_the_ratio_without_jitter():
    rng = np.random.default_rng(1)
    rates = [(300 * rng.uniform(0.9, 1.1), 100 * rng.uniform(0.9, 1.1)) for _ in range(120)]
    factors, state = _drive(rates)
    assert factors[-1] == pytest.approx(3.0, rel=0.12)
    changes = sum(a != b for a, b in zip(factors, factors[1:], strict=False))
    assert changes <= 5  # +-10% noise every second, yet the factor moves only a few times
    assert state.reason.startswith("consume")


def test_auto_is_capped_and_comes_back_to_one_when_the_pool_catches_up():
    slow = [(1000, 100)] * 30
    fast = [(100, 200)] * 60
    factors, _ = _drive(slow + fast)
    assert factors[29] == 4.0  # clamped at echo_max
    assert factors[-1] == 1.0  # settles exactly on 1 again, not asymptotically near it
    # ... and monotone on the way down
    assert all(b <= a for a, b in zip(factors[30:], factors[31:], strict=False))


def test_auto_smoothing_follows_the_clock_not_the_call_count():
    cfg = EchoRuleConfig(time_constant_s=10.0, dead_band=0.0)
    state = next_factor(EchoState(), 0.0, 100, 100, cfg)
    quick = next_factor(state, 0.1, 400, 100, cfg)   # 0.1 s later: barely moves
    slow = next_factor(state, 30.0, 400, 100, cfg)   # 30 s later: most of the way
    assert quick.factor < 1.05 and slow.factor > 3.8
    assert next_factor(state, 5.0, None, 100, cfg) == state  # nothing measured: no change


def _write_shard(tmp_path):
    """scikit-learn's digits as local Parquet shards in the canonical format."""
    from pipelines.datasets import write_digits

    return write_digits(str(tmp_path / "digits")).url


@pytest.mark.parametrize("mode", ["example", "example-after-aug"])
def test_preprocessor_echoes_in_the_pool(tmp_path, mode):
    from pipelines.build import Preprocessor
    from pipelines.sources import KEY, plan_source

    url = _write_shard(tmp_path)
    base = dict(source=SourceConfig(url=f"{url}/val"), preprocess=PreprocessConfig(
        recipe="small", image_size=16, output_rows=64))
    plain_cfg = PipelineConfig(**base)
    plan = plan_source(plain_cfg.source)
    plain = list(Preprocessor(plain_cfg, plan.units)({"seq": np.arange(len(plan.units))}))
    assert all(ECHO not in b for b in plain)  # e = 1: the unechoed stream, no extra column
    echoed_cfg = PipelineConfig(**base, echo=EchoConfig(mode=mode, factor=2.5, shuffle_rows=128))
    out = list(Preprocessor(echoed_cfg, plan.units)({"seq": np.arange(len(plan.units))}))
    rows = sum(len(b[KEY]) for b in out)
    fresh = sum(int((b[ECHO] == 0).sum()) for b in out)
    assert fresh == plan.num_rows
    assert rows == pytest.approx(2.5 * plan.num_rows, abs=len(plan.units))
    keys = np.concatenate([b[KEY] for b in out])
    images = np.concatenate([b["image"] for b in out])
    # every example is there, in 2 or 3 copies (e = 2.5), 2.5 on average
    copies = collections.Counter(keys.tolist())
    assert len(copies) == plan.num_rows and set(copies.values()) == {2, 3}
    assert len(keys) / len(copies) == pytest.approx(2.5, abs=len(plan.units) / plan.num_rows)
    first = {}
    same = differ = 0
    for k, img in zip(keys, images, strict=True):
        if k in first:
            if np.array_equal(first[k], img):
                same += 1
            else:
                differ += 1
        else:
            first[k] = img
    assert same + differ == len(keys) - len(copies) > plan.num_rows  # each echoed copy compared
    if mode == "example":
        assert differ > 0.9 * (same + differ)  # each copy augmented on its own
    else:
        assert differ == 0  # copies of augmented examples are identical
