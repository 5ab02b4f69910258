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

import logging
import posixpath
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from pipelines.badrecords import BadRecordLimit
from pipelines.config import SourceConfig
from pipelines.errors import FeedlineError
from pipelines.storage import Location, StorageError, explain, is_denied, is_transient, resolve

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
    "is_unreadable",
]

log = logging.getLogger(__name__)

IMAGE, LABEL, KEY = "image", "label", "key"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff")
_LISTING_THREADS = 16


class SchemaError(FeedlineError, ValueError):
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
    unreadable: tuple[tuple[str, str], ...] = ()
    """Shards skipped at planning because they cannot be read, with the reason (their rows are
    unknown: they are not in `num_rows`)."""


def is_unreadable(err: BaseException) -> bool:
    """Whether `err`, raised reading a shard, means that shard cannot be read (not Parquet,
    corrupt, gone), as opposed to the store being down or refusing us."""
    if isinstance(err, pa.ArrowInvalid | pa.ArrowNotImplementedError):
        return True
    return isinstance(err, OSError) and not is_transient(err) and not is_denied(err)


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
        except (OSError, pa.ArrowException) as e:
            if is_unreadable(e):  # skipped and counted; the limit is checked on the whole plan
                return info.path, None, f"{shown}: {str(e).strip().splitlines()[0]}"
            raise explain(e, loc) from None
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
    unreadable = tuple((f"{loc.url}/{posixpath.relpath(path, loc.path)}", why)
                       for path, groups, why in footers if groups is None)
    footers = [f for f in footers if f[1] is not None]
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
    return units, label_range, unreadable


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
    unreadable: tuple[tuple[str, str], ...] = ()
    if fmt == "parquet":
        units, label_range, unreadable = _parquet_units(loc, parquet, cfg.rows_per_unit)
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
    if unreadable:
        _check_unreadable(loc.url, unreadable, num_rows, shards - len(unreadable),
                          cfg.max_bad_fraction)
    return ShardPlan(loc.url, fmt, tuple(units), num_rows, shards, classes, label_range,
                     unreadable)


def _check_unreadable(url: str, unreadable: tuple[tuple[str, str], ...], num_rows: int,
                      readable: int, max_fraction: float) -> None:
    """Shards that cannot be read are skipped; their rows, estimated from the readable shards'
    average, count against the bad-record limit like any bad record."""
    lost = round(len(unreadable) * num_rows / max(1, readable))
    for _shard, why in unreadable:
        log.warning("skipping unreadable shard %s (about %d rows)", why, lost // len(unreadable))
    limit = BadRecordLimit(url, num_rows + lost, max_fraction)
    limit.check(0, lost, {"unreadable_shard": lost},
                {shard: lost // len(unreadable) for shard, _ in unreadable},
                [shard for shard, _ in unreadable][:5])


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
        # A missing label reads as -1: not a class, so it is counted as a bad label.
        labels = table.column(LABEL).fill_null(-1).to_numpy(zero_copy_only=False)
        labels = labels.astype(np.int64)
        if KEY in table.column_names:
            keys = np.asarray(table.column(KEY).to_pylist(), dtype=object)
        else:
            first = unit.row_groups[0]
            keys = np.asarray(
                [f"{posixpath.basename(unit.path)}#{first}:{i}" for i in range(len(labels))],
                dtype=object,
            )
        return {IMAGE: images, LABEL: labels, KEY: keys}

    def fetch(path: str) -> bytes | None:
        try:
            with fs.open_input_stream(path) as f:
                return f.read()
        except OSError as e:
            if is_unreadable(e):  # this one file: None, counted as unreadable by the decoder
                return None
            raise  # the store being down: the whole unit is retried

    with ThreadPoolExecutor(min(io_threads, len(unit.files))) as pool:
        blobs = list(pool.map(fetch, unit.files))
    return {
        IMAGE: np.asarray(blobs, dtype=object),
        LABEL: np.asarray(unit.labels, dtype=np.int64),
        KEY: np.asarray(unit.files, dtype=object),
    }
