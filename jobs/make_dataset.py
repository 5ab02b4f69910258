"""Write a data set in feedline's canonical shard format to any s3:// URL (or local path).

    python jobs/make_dataset.py --dataset digits --out s3://feedline/digits
    python jobs/make_dataset.py --dataset synthetic --count 2000 --size 320x256 \
        --format parquet --out s3://feedline/synthetic
    python jobs/make_dataset.py --dataset photos --out s3://feedline/photos

digits and synthetic write `train/` and `val/` under --out, photos `train/` only. Credentials
come from the standard AWS environment.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pipelines import StorageConfig, StorageError  # noqa: E402
from pipelines.datasets import write_digits, write_photos, write_synthetic  # noqa: E402


def _size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must look like 320x256, got {text!r}") from None
    if w < 1 or h < 1:
        raise argparse.ArgumentTypeError(f"size must be positive, got {text!r}")
    return w, h


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--dataset", choices=["digits", "synthetic", "photos"], required=True,
                   help="digits: scikit-learn's 1,797 real 8x8 digits as PNG; synthetic: "
                        "ImageNet-like RGB JPEGs for throughput work; photos: scikit-learn's "
                        "two sample photos (640x427 JPEGs) repeated --count times, train/ "
                        "only, to look at augmentations on")
    p.add_argument("--out", required=True, help="s3://bucket/prefix or a local path")
    p.add_argument("--endpoint", default=None, help="S3 endpoint URL (default: AWS_ENDPOINT_URL)")
    p.add_argument("--count", type=int, default=None,
                   help="synthetic (default 2,000), photos (default 64): number of images")
    p.add_argument("--size", type=_size, default=(320, 256), help="synthetic: WIDTHxHEIGHT")
    p.add_argument("--quality", type=int, default=90, help="synthetic: JPEG quality")
    p.add_argument("--format", choices=["parquet", "folder"], default="parquet",
                   help="synthetic: Parquet shards or an image folder (<split>/<label>/<n>.jpg)")
    p.add_argument("--num-classes", type=int, default=100, help="synthetic: label range")
    p.add_argument("--seed", type=int, default=0, help="split (digits) / content (synthetic) seed")
    p.add_argument("--val-fraction", type=float, default=None,
                   help="share of rows written to val/ (default: 0.2 digits, 0.1 synthetic)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    storage = StorageConfig(endpoint=args.endpoint)
    start = time.perf_counter()
    try:
        if args.dataset == "digits":
            result = write_digits(args.out, storage, seed=args.seed,
                                  **({} if args.val_fraction is None
                                     else {"val_fraction": args.val_fraction}))
        elif args.dataset == "photos":
            result = write_photos(args.out, storage,
                                  count=64 if args.count is None else args.count)
        else:
            count = 2000 if args.count is None else args.count
            result = write_synthetic(args.out, storage, count=count, size=args.size,
                                     fmt=args.format, num_classes=args.num_classes,
                                     seed=args.seed, quality=args.quality,
                                     val_fraction=0.1 if args.val_fraction is None
                                     else args.val_fraction)
    except (StorageError, ValueError) as e:  # the store, or a --count or --format it refuses
        print(f"error: {e}", file=sys.stderr)
        return 2
    rows = ", ".join(f"{k} {v}" for k, v in result.rows.items())
    print(f"wrote {args.dataset} to {result.url}: {rows} rows in {result.files} files "
          f"({time.perf_counter() - start:.1f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
