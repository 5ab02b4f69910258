"""Device prefetching: the next batch's host-to-device copy overlaps the current step.

On CUDA each batch is copied from pinned host memory with `non_blocking=True` on a side stream, one
batch ahead; the compute stream waits for that copy only when it uses the batch, and the tensors are
recorded on the compute stream so the caching allocator does not reuse them early. Elsewhere (CPU
training) batches pass through unchanged: there is no copy to hide.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch

__all__ = ["DevicePrefetcher"]

Batch = dict[str, torch.Tensor | int | float]


class DevicePrefetcher:
    """Iterate `batches` with every tensor already on `device`, copied one batch ahead (values
    that are not tensors, such as per-batch counts, pass through as they are)."""

    def __init__(self, batches: Iterable[Batch], device: torch.device | str):
        self.batches = batches
        self.device = torch.device(device)
        self.overlaps = self.device.type == "cuda"
        self._stream = torch.cuda.Stream(self.device) if self.overlaps else None

    def _copy(self, batch: Batch) -> Batch:
        with torch.cuda.stream(self._stream):
            return {
                k: (v if v.is_pinned() else v.pin_memory()).to(self.device, non_blocking=True)
                if isinstance(v, torch.Tensor) else v
                for k, v in batch.items()
            }

    def __iter__(self) -> Iterator[Batch]:
        if not self.overlaps:
            for batch in self.batches:
                yield {k: v.to(self.device) if isinstance(v, torch.Tensor) else v
                       for k, v in batch.items()}
            return
        source = iter(self.batches)
        first = next(source, None)
        ahead = self._copy(first) if first is not None else None
        while ahead is not None:
            current = torch.cuda.current_stream(self.device)
            current.wait_stream(self._stream)
            for tensor in ahead.values():
                if isinstance(tensor, torch.Tensor):
                    tensor.record_stream(current)
            batch, following = ahead, next(source, None)
            # Start the next copy before handing out this batch: it runs during this step.
            ahead = self._copy(following) if following is not None else None
            yield batch
