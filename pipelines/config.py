"""Configuration of the input pipeline: frozen, keyword-only dataclasses, one per stage."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

__all__ = ["StorageConfig", "SourceConfig", "PreprocessConfig", "PipelineConfig"]

Recipe = Literal["imagenet", "small"]


@dataclass(frozen=True, kw_only=True)
class StorageConfig:
    """Where the object store is. Credentials are never stored here: they come from the
    standard AWS chain (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN,
    AWS_PROFILE and ~/.aws/credentials) of the process that reads."""

    endpoint: str | None = None
    """S3 endpoint URL such as http://127.0.0.1:8333; None uses AWS_ENDPOINT_URL_S3 /
    AWS_ENDPOINT_URL, else AWS itself."""
    region: str | None = None
    """Region; None uses AWS_REGION / AWS_DEFAULT_REGION, else us-east-1."""
    connect_timeout_s: float = 3.0
    """Seconds to wait for a TCP connection before the attempt counts as failed."""
    request_timeout_s: float = 60.0
    """Seconds one request may take."""
    max_attempts: int = 3
    """Attempts per request (pyarrow's AWS standard retry strategy, with backoff)."""


@dataclass(frozen=True, kw_only=True)
class SourceConfig:
    """Which shards to read."""

    url: str
    """s3://bucket/prefix (or a local path) holding Parquet shards or an image folder."""
    storage: StorageConfig = field(default_factory=StorageConfig)
    """Object-store connection settings."""
    format: Literal["auto", "parquet", "folder"] = "auto"
    """Shard kind; auto picks parquet when .parquet files exist under the prefix."""
    rows_per_unit: int = 256
    """Target rows per work unit handed to one preprocessing call (row groups are grouped up
    to this size; image files are grouped in this many)."""


@dataclass(frozen=True, kw_only=True)
class PreprocessConfig:
    """Decode and augmentation, and the dedicated CPU pool that runs them."""

    recipe: Recipe = "imagenet"
    """imagenet: RandomResizedCrop + flip + ColorJitter; small: mild affine for tiny images.
    Validation data of either recipe gets a deterministic resize (+ center crop)."""
    image_size: int = 224
    """Side of the square output image."""
    pool_resource: str = "preprocess_cpu"
    """Custom Ray resource that names the dedicated CPU pool; each actor asks for
    `resource_per_actor` of it and no plain CPU, so trainers never compete with it."""
    resource_per_actor: float = 1.0
    """Units of `pool_resource` one preprocessing actor holds (one unit = one pool core)."""
    min_actors: int = 1
    """Lower bound of the actor pool."""
    max_actors: int = 2
    """Upper bound of the actor pool (Ray Data scales between the bounds on queue depth)."""
    output_rows: int = 256
    """Rows per block the actors emit; the trainer re-batches to its own batch size."""
    actor_start_timeout_s: int = 600
    """Seconds to wait for the first `min_actors` actors to start (time for an autoscaler to add
    pool nodes) before the run fails; Ray Data's own default waits forever."""


@dataclass(frozen=True, kw_only=True)
class PipelineConfig:
    """The whole training stream: source, preprocessing, passes."""

    source: SourceConfig
    """What to read."""
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    """How to decode and augment, and where."""
    epochs: int = 1
    """Passes over the data in ONE Ray Data execution, so the actor pool and its warm
    processes live for the whole run instead of being rebuilt every epoch."""
    train: bool = True
    """Random augmentation (train) or the recipe's deterministic validation transform."""
    shuffle: bool = True
    """Shuffle work units and rows within them, with a new permutation each epoch."""
    seed: int = 0
    """Seed of every permutation; the same seed gives the same unit order."""

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        p = self.preprocess
        if not 1 <= p.min_actors <= p.max_actors:
            raise ValueError(
                f"actor pool bounds must satisfy 1 <= min <= max, got ({p.min_actors}, "
                f"{p.max_actors})"
            )
