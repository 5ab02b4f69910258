"""Writers of the canonical shard formats: the real digits set and synthetic ImageNet-like JPEGs."""

from __future__ import annotations

import io
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from PIL import Image

from pipelines.config import StorageConfig
from pipelines.sources import IMAGE, KEY, LABEL
from pipelines.storage import Location, explain, resolve

__all__ = ["WriteResult", "write_digits", "write_synthetic", "write_photos", "synthetic_jpeg"]

_SCHEMA = pa.schema([(IMAGE, pa.binary()), (LABEL, pa.int64()), (KEY, pa.string())])


@dataclass(frozen=True)
class WriteResult:
    url: str
    rows: dict[str, int]
    """Rows written per split (train, val)."""
    files: int


def _prepare(url: str, storage: StorageConfig | None) -> Location:
    loc = resolve(url, storage)
    try:
        if loc.fs.type_name == "s3":
            if loc.fs.get_file_info(loc.bucket).type == pafs.FileType.NotFound:
                loc.fs.create_dir(loc.bucket)
        else:
            loc.fs.create_dir(loc.path, recursive=True)
    except OSError as e:
        raise explain(e, loc) from None
    return loc


def _write_parquet(loc: Location, split: str, images: list[bytes], labels: np.ndarray,
                   keys: list[str], rows_per_shard: int, row_group_rows: int) -> int:
    shards = 0
    try:
        if loc.fs.type_name != "s3":  # object stores have no directories to make
            loc.fs.create_dir(f"{loc.path}/{split}", recursive=True)
        for start in range(0, len(images), rows_per_shard):
            stop = start + rows_per_shard
            table = pa.table(
                {IMAGE: images[start:stop], LABEL: labels[start:stop].astype(np.int64),
                 KEY: keys[start:stop]},
                schema=_SCHEMA,
            )
            path = f"{loc.path}/{split}/part-{shards:05d}.parquet"
            pq.write_table(table, path, filesystem=loc.fs, row_group_size=row_group_rows,
                           compression="none")  # JPEG/PNG bytes do not compress further
            shards += 1
    except OSError as e:
        raise explain(e, loc) from None
    return shards


def _write_folder(loc: Location, split: str, images: list[bytes], labels: np.ndarray,
                  ext: str) -> int:
    def put(i: int) -> None:
        with loc.fs.open_output_stream(f"{loc.path}/{split}/{labels[i]}/{i:07d}.{ext}") as f:
            f.write(images[i])

    try:
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(put, range(len(images))))
    except OSError as e:
        raise explain(e, loc) from None
    return len(images)


def _png(gray: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(gray, mode="L").save(buf, format="PNG")
    return buf.getvalue()


BAD_RECORDS = (b"", b"not an image at all", None)
"""The bad records `write_digits(bad_val=...)` plants, in turn: zero bytes, bytes that are no
image, and (None) a PNG cut short."""


def write_digits(url: str, storage: StorageConfig | None = None, *, val_fraction: float = 0.2,
                 seed: int = 0, rows_per_shard: int = 512, row_group_rows: int = 128,
                 bad_train: int = 0, bad_val: int = 0) -> WriteResult:
    """scikit-learn's load_digits (1,797 real 8x8 digits) as PNG bytes in Parquet shards, split
    into `train/` and `val/` with a fixed, seeded, stratified split. `bad_train` / `bad_val`
    replace that many images of the split with bad records (cycling through BAD_RECORDS) to
    exercise the skip-and-count path end to end."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    # 0..16 ink levels -> 0..255 gray
    pixels = np.clip(digits.images * (255.0 / 16.0), 0, 255).round().astype(np.uint8)
    idx = np.arange(len(pixels))
    train_idx, val_idx = train_test_split(idx, test_size=val_fraction, random_state=seed,
                                          stratify=digits.target)
    loc = _prepare(url, storage)
    rows, files = {}, 0
    for split, sel in (("train", np.sort(train_idx)), ("val", np.sort(val_idx))):
        images = [_png(pixels[i]) for i in sel]
        for j in range(min(bad_train if split == "train" else bad_val, len(images))):
            bad = BAD_RECORDS[j % len(BAD_RECORDS)]
            images[j] = images[j][: len(images[j]) * 2 // 3] if bad is None else bad
        keys = [f"digits/{i:04d}" for i in sel]
        files += _write_parquet(loc, split, images, digits.target[sel], keys, rows_per_shard,
                                row_group_rows)
        rows[split] = len(sel)
    return WriteResult(loc.url, rows, files)


def synthetic_jpeg(rng: np.random.Generator, width: int, height: int, quality: int = 90) -> bytes:
    """An ImageNet-like RGB JPEG: smooth colour fields with edges and texture, so that decode and
    crop cost what they cost on photos (flat noise or flat colour would not)."""
    coarse = rng.integers(0, 256, size=(6, 8, 3), dtype=np.uint8)
    img = Image.fromarray(coarse, "RGB").resize((width, height), Image.BICUBIC)
    arr = np.asarray(img, dtype=np.int16)
    arr = arr + rng.integers(-24, 25, size=arr.shape, dtype=np.int16)
    buf = io.BytesIO()
    Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB").save(
        buf, format="JPEG", quality=quality)
    return buf.getvalue()


def write_synthetic(url: str, storage: StorageConfig | None = None, *, count: int = 2000,
                    size: tuple[int, int] = (320, 256), fmt: str = "parquet",
                    num_classes: int = 100, val_fraction: float = 0.1, seed: int = 0,
                    rows_per_shard: int = 1024, row_group_rows: int = 256,
                    quality: int = 90) -> WriteResult:
    """`count` synthetic JPEGs of `size` (width, height) at JPEG `quality`, written as Parquet
    shards or as an image folder, split into `train/` and `val/`."""
    if fmt not in ("parquet", "folder"):
        raise ValueError(f"format must be parquet or folder, got {fmt!r}")
    rng = np.random.default_rng(seed)
    width, height = size
    images = [synthetic_jpeg(rng, width, height, quality) for _ in range(count)]
    labels = rng.integers(0, num_classes, size=count).astype(np.int64)
    n_val = int(round(count * val_fraction))
    loc = _prepare(url, storage)
    rows, files = {}, 0
    for split, sl in (("train", slice(n_val, count)), ("val", slice(0, n_val))):
        part, lab = images[sl], labels[sl]
        if not part:
            continue
        if fmt == "parquet":
            keys = [f"synthetic/{i:07d}" for i in range(sl.start, sl.start + len(part))]
            files += _write_parquet(loc, split, part, lab, keys, rows_per_shard, row_group_rows)
        else:
            files += _write_folder(loc, split, part, lab, "jpg")
        rows[split] = len(part)
    return WriteResult(loc.url, rows, files)


def write_photos(url: str, storage: StorageConfig | None = None, *, count: int = 64,
                 rows_per_shard: int = 1024, row_group_rows: int = 256) -> WriteResult:
    """scikit-learn's two bundled sample photos (`china.jpg`, `flower.jpg`: 640x427 camera
    JPEGs, labels 0 and 1), their original bytes repeated to `count` rows of `train/`: real
    photos to look at augmentations on (`jobs/preview.py`), shipped with a dependency, so
    nothing is downloaded."""
    from sklearn.datasets import load_sample_images

    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    files = sorted(load_sample_images().filenames)
    blobs = []
    for path in files:
        with open(path, "rb") as f:
            blobs.append(f.read())
    names = [os.path.splitext(os.path.basename(path))[0] for path in files]
    images = [blobs[i % len(blobs)] for i in range(count)]
    labels = np.arange(count, dtype=np.int64) % len(blobs)
    keys = [f"photos/{names[i % len(names)]}/{i:05d}" for i in range(count)]
    loc = _prepare(url, storage)
    n = _write_parquet(loc, "train", images, labels, keys, rows_per_shard, row_group_rows)
    return WriteResult(loc.url, {"train": count}, n)
