"""Configuration of the input pipeline: frozen, keyword-only dataclasses, one per stage."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

__all__ = ["StorageConfig", "SourceConfig", "PreprocessConfig", "EchoConfig", "PipelineConfig",
           "ECHO_MODES"]

Recipe = Literal["imagenet", "small"]
EchoMode = Literal["example", "example-after-aug", "batch"]
ECHO_MODES = ("example", "example-after-aug", "batch")


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
    outage_deadline_s: float = 300.0
    """How long reads of training data keep retrying (with backoff) while the object store is
    unreachable or failing before the run stops with an error naming the endpoint."""

    def __post_init__(self) -> None:
        if self.outage_deadline_s < 0:
            raise ValueError(f"outage_deadline_s must be >= 0, got {self.outage_deadline_s}")


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
    max_bad_fraction: float = 0.001
    """Share of an epoch's rows that may be bad (undecodable image, label not a class, shard
    that cannot be read) and skipped; past it the run stops naming the shard and the count."""
    num_classes: int | None = None
    """Declared number of classes: labels outside [0, num_classes) are bad records. None checks
    only that labels are >= 0."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.max_bad_fraction <= 1.0:
            raise ValueError(f"max_bad_fraction must be in [0, 1], got {self.max_bad_fraction}")


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
    output_rows: int = 128
    """Rows per block the actors emit; the trainer re-batches to its own batch size. Half a
    usual batch: the first batch of 256 is then made by two actors at once (one block each)
    instead of waiting for two full blocks (README, "First batch")."""
    actor_start_timeout_s: int = 600
    """Seconds to wait for the first `min_actors` actors to start (time for an autoscaler to add
    pool nodes) before the run fails; Ray Data's own default waits forever."""


@dataclass(frozen=True, kw_only=True)
class EchoConfig:
    """Data echoing (Choi et al. 2019): reuse each fresh example about `factor` times when the
    input pipeline cannot keep up with the trainers."""

    mode: EchoMode = "example"
    """example: repeat each decoded example before augmentation, so every copy is augmented on
    its own; example-after-aug: repeat augmented examples (saves augmentation too, copies are
    identical); batch: the trainers repeat whole batches (saves the whole input path and the
    host-to-device copy)."""
    factor: float = 1.0
    """Copies per fresh example on average (>= 1; 1.5 = half the examples once more, chosen at
    random, seeded). 1 with auto off is a no-op: the stream is exactly the unechoed one."""
    auto: bool = False
    """Choose the factor while the run goes on: clamp(consume rate / produce rate, 1,
    max_factor), smoothed (cluster.echo.policy). `factor` is then the starting value."""
    max_factor: float = 4.0
    """Upper bound of the automatic factor."""
    shuffle_rows: int = 1024
    """Rows of the shuffle buffer after the echo, which keeps copies of one example apart (for
    batch mode: this many rows' worth of whole batches). 0 leaves copies adjacent."""

    def __post_init__(self) -> None:
        if self.mode not in ECHO_MODES:
            raise ValueError(f"echo mode {self.mode!r}: choose one of {', '.join(ECHO_MODES)}")
        if self.factor < 1.0:
            raise ValueError(f"echo factor must be >= 1 (1 = no echo), got {self.factor}")
        if self.max_factor < 1.0:
            raise ValueError(f"echo max_factor must be >= 1, got {self.max_factor}")
        if self.auto and self.factor > self.max_factor:
            raise ValueError(f"echo starting factor {self.factor} is above max_factor "
                             f"{self.max_factor}")
        if self.shuffle_rows < 0:
            raise ValueError(f"echo shuffle_rows must be >= 0, got {self.shuffle_rows}")

    @property
    def enabled(self) -> bool:
        """Whether the stream is echoed at all (a fixed factor of 1 is not)."""
        return self.auto or self.factor != 1.0

    @property
    def in_pool(self) -> bool:
        """Whether the preprocessing pool echoes (example modes) rather than the trainers."""
        return self.enabled and self.mode != "batch"


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
    echo: EchoConfig = field(default_factory=EchoConfig)
    """Data echoing of the training stream (off by default)."""
    deterministic: bool = False
    """Hand out blocks in stream order (Ray Data's preserve_order) instead of as soon as any
    actor finishes one, so the same seed, data and worker count give the same sample order
    every run (and, each unit's augmentation being seeded, the same pixels). Costs throughput
    when actors finish out of order (see README); needs a fixed echo factor."""

    split_ranks: int = 1
    """Ranks a deterministic stream is dealt to (Ray Train's workers): its blocks are laid out
    so that each rank gets nearly the same rows, and a resumed stream is dealt as the
    uninterrupted one was."""

    def __post_init__(self) -> None:
        if self.split_ranks < 1:
            raise ValueError(f"split_ranks must be >= 1, got {self.split_ranks}")
        if self.deterministic and self.echo.auto:
            raise ValueError("a deterministic stream needs a fixed echo factor: the automatic "
                             "one follows measured rates, which differ from run to run")
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        p = self.preprocess
        if not 1 <= p.min_actors <= p.max_actors:
            raise ValueError(
                f"actor pool bounds must satisfy 1 <= min <= max, got ({p.min_actors}, "
                f"{p.max_actors})"
            )
