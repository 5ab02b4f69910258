"""The device prefetcher: a pass-through on CPU (always tested), one batch ahead on CUDA."""

import pytest
import torch

from cluster.training.prefetch import DevicePrefetcher


def source(n, log):
    for i in range(n):
        log.append(i)
        yield {"image": torch.full((4, 3, 8, 8), i, dtype=torch.uint8),
               "label": torch.full((4,), i, dtype=torch.int64)}


def test_cpu_path_yields_every_batch_unchanged_and_in_order():
    pulled = []
    out = list(DevicePrefetcher(source(5, pulled), "cpu"))
    assert [int(b["label"][0]) for b in out] == [0, 1, 2, 3, 4]
    assert all(b["image"].dtype == torch.uint8 and b["image"].device.type == "cpu" for b in out)
    assert not DevicePrefetcher([], "cpu").overlaps


def test_empty_stream_yields_nothing():
    assert list(DevicePrefetcher(iter([]), "cpu")) == []


@pytest.mark.gpu
def test_cuda_path_copies_one_batch_ahead_and_keeps_the_data():
    pulled = []
    prefetcher = DevicePrefetcher(source(4, pulled), "cuda")
    assert prefetcher.overlaps
    for i, batch in enumerate(prefetcher):
        # batch i is handed out only after batch i+1 was taken from the source (its copy runs
        # during step i)
        assert pulled[-1] == min(i + 1, 3)
        assert batch["image"].is_cuda and batch["image"].dtype == torch.uint8
        assert int(batch["image"].float().mean().item()) == i
