"""What users write without feedline, for side-by-side benchmarks: a PyTorch IterableDataset for
DataLoader workers, and a plain Ray Data pipeline as the Ray Data documentation writes it
(read_parquet -> map_batches -> iter_torch_batches, re-executed every epoch). Both decode with
PIL, convert to RGB and apply the same torchvision v2 ImageNet recipe per image."""

from __future__ import annotations

import io

import numpy as np
import pyarrow.parquet as pq
import ray
import torch
from torchvision.transforms import v2

from pipelines.config import StorageConfig
from pipelines.storage import resolve

__all__ = ["plain_recipe", "ParquetImages", "plain_transform", "plain_dataset"]


def plain_recipe(size: int = 224) -> v2.Compose:
    """The ImageNet recipe on a PIL image, the way the torchvision docs compose it."""
    return v2.Compose([
        v2.ToImage(),
        v2.RandomResizedCrop(size, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), antialias=True),
        v2.RandomHorizontalFlip(),
        v2.ColorJitter(0.4, 0.4, 0.4),
    ])


def _decode(data: bytes):
    from PIL import Image

    return Image.open(io.BytesIO(data)).convert("RGB")


class ParquetImages(torch.utils.data.IterableDataset):
    """The IterableDataset a PyTorch user writes: each DataLoader worker reads its share of the
    shards with pyarrow and yields transformed images one by one."""

    def __init__(self, shards: list[str], url: str, storage: StorageConfig, size: int = 224):
        super().__init__()
        self.shards, self.url, self.storage, self.size = shards, url, storage, size

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        wid, nw = (info.id, info.num_workers) if info else (0, 1)
        fs = resolve(self.url, self.storage).fs
        transform = plain_recipe(self.size)
        for path in self.shards[wid::nw]:
            with fs.open_input_file(path) as f:
                table = pq.read_table(f, columns=["image", "label"])
            for data, label in zip(table.column("image").to_pylist(),
                                   table.column("label").to_pylist(), strict=True):
                yield {"image": transform(_decode(data)), "label": label}


def plain_transform(batch: dict[str, np.ndarray], size: int = 224) -> dict[str, np.ndarray]:
    """The map_batches function a Ray Data user writes: the same per-image code."""
    transform = plain_recipe(size)
    images = [transform(_decode(b)) for b in batch["image"]]
    return {"image": torch.stack(images).numpy(), "label": batch["label"]}


def plain_dataset(shards: list[str], url: str, storage: StorageConfig, size: int = 224
                  ) -> ray.data.Dataset:
    """read_parquet -> map_batches(plain_transform), Ray Data's defaults everywhere else."""
    fs = resolve(url, storage).fs
    ds = ray.data.read_parquet(shards, filesystem=fs, columns=["image", "label"])
    return ds.map_batches(plain_transform, fn_kwargs={"size": size})
