"""Write the first training samples exactly as the pool makes them, to look at them.

    python jobs/preview.py --data s3://feedline/synthetic/train --count 64 --out preview/
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pipelines import (  # noqa: E402
    PipelineConfig,
    PreprocessConfig,
    SchemaError,
    SourceConfig,
    StorageConfig,
    StorageError,
)
from pipelines.augment import RECIPES  # noqa: E402
from pipelines.preview import write_preview  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", required=True, help="training data URL (s3://... or a local path)")
    p.add_argument("--endpoint", default=None, help="S3 endpoint URL (default: AWS_ENDPOINT_URL)")
    p.add_argument("--recipe", choices=RECIPES, default=PreprocessConfig.recipe)
    p.add_argument("--image-size", type=int, default=PreprocessConfig.image_size)
    p.add_argument("--seed", type=int, default=0, help="the stream's seed")
    p.add_argument("--count", type=int, required=True, help="samples to write")
    p.add_argument("--out", required=True, help="folder for sample-NNNNN.png and grid.png")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    config = PipelineConfig(
        source=SourceConfig(url=args.data, storage=StorageConfig(endpoint=args.endpoint)),
        preprocess=PreprocessConfig(recipe=args.recipe, image_size=args.image_size),
        seed=args.seed)
    try:
        paths = write_preview(config, args.count, args.out)
    except (StorageError, SchemaError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {len(paths) - 1} samples and {paths[-1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
