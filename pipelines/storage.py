"""Object-store access: a pyarrow filesystem from a URL and StorageConfig, with errors that say
what is wrong and what to do. Credentials come only from the process environment (the AWS chain);
they are never part of a config, a URL we print, or a pickled object."""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import pyarrow.fs as pafs

from pipelines.config import StorageConfig
from pipelines.errors import FeedlineError

__all__ = [
    "StorageError", "Location", "resolve", "filesystem", "has_credentials", "explain",
    "redact_url", "is_denied", "is_transient", "retry_transient",
]

log = logging.getLogger(__name__)


class StorageError(FeedlineError, RuntimeError):
    """A problem with the object store or a path in it, phrased for the user."""


@dataclass(frozen=True)
class Location:
    """A parsed data URL: the filesystem to use and the path inside it."""

    fs: pafs.FileSystem
    path: str
    """bucket/prefix for S3, an absolute path for local files; no trailing slash."""
    url: str
    """The URL as the user would recognise it (s3://bucket/prefix)."""
    endpoint: str
    """Human-readable endpoint, for messages (never with user info)."""

    @property
    def bucket(self) -> str:
        return self.path.split("/", 1)[0]

    def child(self, name: str) -> Location:
        return Location(self.fs, f"{self.path}/{name}", f"{self.url}/{name}", self.endpoint)


def redact_url(url: str) -> str:
    """Drop user info (user:password@) from a URL so it can be logged."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))


def _endpoint(cfg: StorageConfig) -> str | None:
    return cfg.endpoint or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get(
        "AWS_ENDPOINT_URL"
    )


def has_credentials() -> bool:
    """Whether this process has a credential source the AWS SDK will find."""
    env = os.environ
    return bool(
        (env.get("AWS_ACCESS_KEY_ID") and env.get("AWS_SECRET_ACCESS_KEY"))
        or env.get("AWS_PROFILE")
        or env.get("AWS_WEB_IDENTITY_TOKEN_FILE")
        or os.path.exists(env.get("AWS_SHARED_CREDENTIALS_FILE",
                                  os.path.expanduser("~/.aws/credentials")))
    )


def filesystem(cfg: StorageConfig) -> tuple[pafs.S3FileSystem, str]:
    """An S3 filesystem for `cfg` and the endpoint's printable form."""
    endpoint = _endpoint(cfg)
    kwargs: dict = {
        "region": cfg.region
        or os.environ.get("AWS_REGION")
        or os.environ.get("AWS_DEFAULT_REGION")
        or "us-east-1",
        "connect_timeout": cfg.connect_timeout_s,
        "request_timeout": cfg.request_timeout_s,
        "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=cfg.max_attempts),
        "allow_bucket_creation": True,
    }
    shown = "AWS S3"
    if endpoint:
        parts = urlsplit(endpoint if "://" in endpoint else f"http://{endpoint}")
        if parts.username or parts.password:
            # Credentials in the URL would end up in logs; refuse rather than leak them.
            raise StorageError(
                f"endpoint {redact_url(endpoint)} carries user info; pass credentials through "
                "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY instead"
            )
        kwargs["endpoint_override"] = parts.netloc
        kwargs["scheme"] = parts.scheme or "http"
        shown = f"{kwargs['scheme']}://{parts.netloc}"
    # Keys are left to the AWS SDK's own chain in each process (env, AWS_PROFILE, credentials
    # file, web identity), so a pickled filesystem carries none. Without any credential source we
    # go anonymous rather than let the SDK probe the EC2 metadata address.
    if not has_credentials():
        kwargs["anonymous"] = True
    return pafs.S3FileSystem(**kwargs), shown


def resolve(url: str, cfg: StorageConfig | None = None) -> Location:
    """Parse `url` (s3://bucket/prefix, file:///path or a plain local path) into a Location."""
    cfg = cfg or StorageConfig()
    parts = urlsplit(url)
    if parts.scheme in ("s3", "s3a"):
        if not parts.netloc:
            raise StorageError(f"{url!r} names no bucket: use s3://bucket/prefix")
        fs, shown = filesystem(cfg)
        path = f"{parts.netloc}/{parts.path.strip('/')}".rstrip("/")
        return Location(fs, path, f"s3://{path}", shown)
    if parts.scheme in ("", "file"):
        path = os.path.abspath(parts.path if parts.scheme else url).rstrip("/")
        return Location(pafs.LocalFileSystem(), path, path, "local disk")
    raise StorageError(f"unsupported URL scheme in {url!r}: use s3://bucket/prefix or a path")


_DENIED = re.compile(r"ACCESS_DENIED|SIGNATURE_DOES_NOT_MATCH|INVALID_ACCESS_KEY|403", re.I)
_NETWORK = re.compile(r"NETWORK_CONNECTION|Could not connect|curlCode|timed out|timeout", re.I)
_NO_BUCKET = re.compile(r"NO_SUCH_BUCKET|Bucket '.*' not found", re.I)
# Server-side failures a retry can cure (S3 says so of 500 and 503: InternalError, SlowDown,
# ServiceUnavailable), besides the network ones.
_SERVER = re.compile(r"INTERNAL_FAILURE|SERVICE_UNAVAILABLE|SLOW_DOWN|THROTTLING|"
                     r"InternalError|ServiceUnavailable|SlowDown|HTTP response code: 5\d\d", re.I)


def is_denied(err: BaseException) -> bool:
    """Whether `err` is the store refusing our credentials."""
    return bool(_DENIED.search(str(err)))


def is_transient(err: BaseException) -> bool:
    """Whether `err` (from pyarrow's S3 filesystem) is the store being down or overloaded,
    which waiting can cure, rather than a wrong path, bad credentials or bad data."""
    if not isinstance(err, OSError | StorageError):
        return False
    text = str(err)
    return bool(_NETWORK.search(text) or _SERVER.search(text)) and not _DENIED.search(text)


def retry_transient(fn: Callable[[], object], what: str, loc: Location, deadline_s: float, *,
                    first_wait_s: float = 0.5, max_wait_s: float = 10.0,
                    sleep: Callable[[float], None] = time.sleep,
                    clock: Callable[[], float] = time.monotonic):
    """`fn()`, retried with exponential backoff while it fails with a transient storage error,
    for up to `deadline_s` after the first failure; then a StorageError naming the endpoint,
    `what` was being read and for how long. Other errors pass through at once."""
    wait, failed_at = first_wait_s, None
    while True:
        try:
            return fn()
        except Exception as e:  # noqa: BLE001 - classified below, re-raised when not ours
            if not is_transient(e):
                raise
            now = clock()
            failed_at = now if failed_at is None else failed_at
            down = now - failed_at
            if down >= deadline_s:
                raise StorageError(
                    f"the object store at {loc.endpoint} has been unreachable or failing for "
                    f"{down:.0f} s (deadline {deadline_s:g} s) while reading {what}: "
                    f"{_first_line(e)}. Is it running? Raise --storage-deadline-s to wait "
                    "longer") from None
            pause = min(wait, max_wait_s, deadline_s - down)
            log.warning("object store at %s unreachable or failing while reading %s (%s); "
                        "retrying in %.1f s, for up to %.0f s more", loc.endpoint, what,
                        _first_line(e), pause, deadline_s - down)
            sleep(pause)
            wait *= 2


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def explain(err: BaseException, loc: Location) -> StorageError:
    """Turn a pyarrow/AWS error about `loc` into one line that says what to do."""
    text = str(err)
    if isinstance(err, StorageError):
        return err
    if _NETWORK.search(text):
        return StorageError(
            f"cannot reach the object store at {loc.endpoint} (reading {loc.url}): is it "
            "running? check --endpoint / AWS_ENDPOINT_URL"
        )
    if _DENIED.search(text):
        return StorageError(
            f"the object store at {loc.endpoint} rejected the credentials for {loc.url}: check "
            "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE)"
        )
    if _NO_BUCKET.search(text):
        return StorageError(
            f"bucket {loc.bucket!r} not found at {loc.endpoint}: create it or fix --data"
        )
    return StorageError(f"reading {loc.url} at {loc.endpoint} failed: {_first_line(err)}")
