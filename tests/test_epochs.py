"""Tier 1: cutting one continuous stream into epochs of exact size with equal step counts."""

import torch

from cluster.training.epochs import EpochSlicer, batch_len
from cluster.training.stepper import lr_at


def stream(total_rows: int, batch_size: int, first_id: int = 0, pixel: int = 0):
    """Like iter_torch_batches: full batches of consecutive ids, a short last one."""
    for start in range(0, total_rows, batch_size):
        ids = torch.arange(start, min(start + batch_size, total_rows)) + first_id
        yield {"id": ids, "image": torch.full((len(ids), 3, 2, 2), pixel, dtype=torch.uint8)}


def test_every_epoch_has_exactly_its_rows_and_no_row_is_lost_or_repeated():
    rows, batch, epochs = 718, 64, 5
    slicer = EpochSlicer(stream(rows * epochs + 3, batch), batch)
    seen = []
    for _ in range(epochs):
        ids = torch.cat([b["id"] for b in slicer.epoch(rows)])
        assert len(ids) == rows
        seen.append(ids)
    assert torch.equal(torch.cat(seen), torch.arange(rows * epochs))
    assert not slicer.exhausted


def test_no_batch_is_smaller_than_half_a_batch():
    # 718 = 11 * 64 + 14: without merging, epochs would end in 14-row and start in 50-row pieces.
    slicer = EpochSlicer(stream(718 * 4, 64), 64)
    for _ in range(4):
        sizes = [batch_len(b) for b in slicer.epoch(718)]
        assert min(sizes) >= 32 and max(sizes) <= 96


def test_ranks_with_equal_shares_take_equal_numbers_of_steps():
    # DDP hangs if one rank does one step more than another. Each rank has a stream of its own
    # (other rows, other pixels, another length past the epochs), the same share per epoch,
    # and the epochs interleave as the ranks run side by side.
    a = EpochSlicer(stream(1000, 64), 64)
    b = EpochSlicer(stream(930, 64, first_id=10_000, pixel=255), 64)
    for epoch in range(2):
        steps_a, steps_b = list(a.epoch(450)), list(b.epoch(450))
        assert len(steps_a) == len(steps_b) == 7  # 450 = 7 x 64 + 2: the 2 rows merged in
        for steps, first_id, pixel in ((steps_a, 0, 0), (steps_b, 10_000, 255)):
            ids = torch.cat([s["id"] for s in steps])
            start = first_id + 450 * epoch
            assert torch.equal(ids, torch.arange(start, start + 450))  # its own rows, in order
            assert all(bool((s["image"] == pixel).all()) for s in steps)


def test_a_stream_that_ends_early_is_reported():
    slicer = EpochSlicer(stream(100, 64), 64)
    assert sum(batch_len(b) for b in slicer.epoch(150)) == 100
    assert slicer.exhausted


def test_learning_rate_warms_up_then_decays_to_zero():
    assert lr_at(0.0, 0.1, 0.1) == 0.0
    assert abs(lr_at(0.05, 0.1, 0.1) - 0.05) < 1e-12
    assert abs(lr_at(0.1, 0.1, 0.1) - 0.1) < 1e-12
    assert lr_at(0.5, 0.1, 0.1) < 0.1
    assert abs(lr_at(1.0, 0.1, 0.1)) < 1e-12
