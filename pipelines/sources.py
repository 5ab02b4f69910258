"""Shard discovery and reading.

Two canonical shard kinds:

* Parquet shards with columns ``image`` (binary: encoded JPEG/PNG), ``label`` (int64) and an
  optional ``key`` (string);
* an image folder, ``<prefix>/<label>/<name>.jpg``, labelled by the parent folder as
  torchvision's ImageFolder does (integer folder names are used as labels directly).

Planning runs once in the driver: it lists the prefix, reads every Parquet footer in parallel
(one small ranged GET each), validates the schema, and cuts the data into work units of about
``rows_per_unit`` rows. The plan gives the exact row count per epoch before any data moves, and
every problem (missing bucket, empty prefix, wrong columns, bad credentials) surfaces here, in
seconds, as one clear line, instead of deep inside a Ray task.
"""

from __future__ import annotations

import posixpath
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from pipelines.config import SourceConfig
from pipelines.storage import Location, StorageError, explain, resolve

__all__ = [
    "IMAGE",
    "LABEL",
    "KEY",
    "IMAGE_EXTENSIONS",
    "SchemaError",
    "WorkUnit",
    "ShardPlan",
    "plan_source",
    "read_unit",
]

IMAGE, LABEL, KEY = "image", "label", "key"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff")
_LISTING_THREADS = 16


class SchemaError(ValueError):
    """A shard does not have the canonical columns."""


@dataclass(frozen=True)
class WorkUnit:
    """A slice of the data set handed to one preprocessing call."""

    path: str = ""
    """Parquet shard (filesystem path), empty for image-folder units."""
    row_groups: tuple[int, ...] = ()
    """Row groups of `path` in this unit."""
    files: tuple[str, ...] = ()
    """Image files (filesystem paths) for image-folder units."""
    labels: tuple[int, ...] = ()
    """Label of each entry of `files`."""
    num_rows: int = 0


@dataclass(frozen=True)
class ShardPlan:
    """Everything known about a data set before reading it."""

    url: str
    format: str
    """parquet or folder."""
    units: tuple[WorkUnit, ...]
    num_rows: int
    num_shards: int
    """Parquet files, or image files."""
    classes: tuple[str, ...] = ()
    """Folder names in label order (image folders only)."""
    label_range: tuple[int, int] | None = None
    """Smallest and largest label, from Parquet statistics or folder names; None if unknown."""


def _list(loc: Location) -> list[pafs.FileInfo]:
    try:
        if loc.fs.type_name == "s3":
            bucket = loc.fs.get_file_info(loc.bucket)
            if bucket.type == pafs.FileType.NotFound:
                raise StorageError(
                    f"bucket {loc.bucket!r} not found at {loc.endpoint}: create it or fix --data"
                )
        top = loc.fs.get_file_info(loc.path)
        if top.type == pafs.FileType.File:
            return [top]
        sel = pafs.FileSelector(loc.path, recursive=True, allow_not_found=True)
        return [i for i in loc.fs.get_file_info(sel) if i.type == pafs.FileType.File]
    except (OSError, StorageError) as e:
        raise explain(e, loc) from None


def _check_schema(url: str, schema: pa.Schema) -> None:
    names = schema.names
    ok = (
        IMAGE in names
        and LABEL in names
        and (pa.types.is_binary(schema.field(IMAGE).type)
             or pa.types.is_large_binary(schema.field(IMAGE).type))
        and pa.types.is_integer(schema.field(LABEL).type)
    )
    if not ok:
        found = ", ".join(f"{f.name}: {f.type}" for f in schema)
        raise SchemaError(
            f"shard {url} has columns [{found}]; expected image: binary (encoded JPEG/PNG), "
            "label: int64 and optionally key: string"
        )


def _parquet_units(loc: Location, files: list[pafs.FileInfo], rows_per_unit: int):
    def footer(info: pafs.FileInfo):
        shown = f"{loc.url}/{posixpath.relpath(info.path, loc.path)}" if info.path != loc.path \
            else loc.url
        try:
            with loc.fs.open_input_file(info.path) as f:
                meta = pq.ParquetFile(f).metadata
        except (OSError, StorageError) as e:
            raise explain(e, loc) from None
        except pa.ArrowInvalid as e:
            raise SchemaError(f"shard {shown} is not a readable Parquet file: {e}") from None
        schema = meta.schema.to_arrow_schema()
        _check_schema(shown, schema)
        groups = [meta.row_group(i) for i in range(meta.num_row_groups)]
        col = schema.get_field_index(LABEL)
        stats = [g.column(col).statistics for g in groups if g.num_rows]
        bounds = None
        if stats and all(st is not None and st.has_min_max for st in stats):
            bounds = (min(st.min for st in stats), max(st.max for st in stats))
        return info.path, [g.num_rows for g in groups], bounds

    with ThreadPoolExecutor(_LISTING_THREADS) as pool:
        footers = list(pool.map(footer, files))
    units: list[WorkUnit] = []
    ranges = [b for _, _, b in footers]
    label_range = None
    if ranges and all(b is not None for b in ranges):
        label_range = (min(b[0] for b in ranges), max(b[1] for b in ranges))
    for path, groups, _ in footers:
        start, rows = 0, 0
        for i, n in enumerate(groups):
            rows += n
            if rows >= rows_per_unit or i == len(groups) - 1:
                if rows:
                    units.append(WorkUnit(path=path, row_groups=tuple(range(start, i + 1)),
                                          num_rows=rows))
                start, rows = i + 1, 0
    return units, label_range


def _folder_units(loc: Location, files: list[pafs.FileInfo], rows_per_unit: int):
    images = [f.path for f in files if f.path.lower().endswith(IMAGE_EXTENSIONS)]
    class_names = sorted({posixpath.basename(posixpath.dirname(p)) for p in images})
    if all(c.isdigit() for c in class_names):
        index = {c: int(c) for c in class_names}
    else:
        index = {c: i for i, c in enumerate(class_names)}
    units = [
        WorkUnit(
            files=tuple(chunk),
            labels=tuple(index[posixpath.basename(posixpath.dirname(p))] for p in chunk),
            num_rows=len(chunk),
        )
        for chunk in (images[i : i + rows_per_unit] for i in range(0, len(images), rows_per_unit))
    ]
    label_range = (min(index.values()), max(index.values())) if index else None
    return units, tuple(class_names), label_range


def plan_source(cfg: SourceConfig) -> ShardPlan:
    """List and validate the shards under `cfg.url` and cut them into work units."""
    loc = resolve(cfg.url, cfg.storage)
    files = sorted(_list(loc), key=lambda i: i.path)
    parquet = [f for f in files if f.path.endswith(".parquet")]
    fmt = cfg.format if cfg.format != "auto" else ("parquet" if parquet else "folder")
    classes: tuple[str, ...] = ()
    if fmt == "parquet":
        units, label_range = _parquet_units(loc, parquet, cfg.rows_per_unit)
        shards = len(parquet)
    else:
        units, classes, label_range = _folder_units(loc, files, cfg.rows_per_unit)
        shards = sum(u.num_rows for u in units)  # every image file is a shard of one
    num_rows = sum(u.num_rows for u in units)
    if not files or num_rows == 0:
        what = "Parquet shards" if fmt == "parquet" else "Parquet shards or image files"
        raise StorageError(
            f"no {what} with data under {loc.url} at {loc.endpoint}: check --data (expected "
            f"{loc.url}/*.parquet or {loc.url}/<label>/<name>.jpg)"
        )
    return ShardPlan(loc.url, fmt, tuple(units), num_rows, shards, classes, label_range)


def read_unit(
    unit: WorkUnit, fs: pafs.FileSystem, io_threads: int = 8,
    footers: dict[str, pq.FileMetaData] | None = None,
) -> dict[str, np.ndarray]:
    """Read one work unit: ``image`` (object array of bytes), ``label`` (int64), ``key`` (str).

    `footers` caches each Parquet file's metadata by path: a reader that sees the same shard
    again (the next unit of it, the next epoch) then reads only its row groups' column chunks,
    not the footer again (one request and up to 64 KiB less per unit)."""
    if unit.path:
        with fs.open_input_file(unit.path) as f:
            cached = footers.get(unit.path) if footers is not None else None
            pf = pq.ParquetFile(f, metadata=cached)
            if footers is not None and cached is None:
                footers[unit.path] = pf.metadata
            cols = [IMAGE, LABEL] + ([KEY] if KEY in pf.schema_arrow.names else [])
            table = pf.read_row_groups(list(unit.row_groups), columns=cols)
        images = np.asarray(table.column(IMAGE).to_pylist(), dtype=object)
        labels = table.column(LABEL).to_numpy(zero_copy_only=False).astype(np.int64)
        if KEY in table.column_names:
            keys = np.asarray(table.column(KEY).to_pylist(), dtype=object)
        else:
            first = unit.row_groups[0]
            keys = np.asarray(
                [f"{posixpath.basename(unit.path)}#{first}:{i}" for i in range(len(labels))],
                dtype=object,
            )
        return {IMAGE: images, LABEL: labels, KEY: keys}

    def fetch(path: str) -> bytes:
        with fs.open_input_stream(path) as f:
            return f.read()

    with ThreadPoolExecutor(min(io_threads, len(unit.files))) as pool:
        blobs = list(pool.map(fetch, unit.files))
    return {
        IMAGE: np.asarray(blobs, dtype=object),
        LABEL: np.asarray(unit.labels, dtype=np.int64),
        KEY: np.asarray(unit.files, dtype=object),
    }
