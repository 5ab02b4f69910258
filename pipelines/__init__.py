"""feedline's input pipeline: object storage -> decode -> augment on a dedicated Ray CPU pool.

This package never imports `cluster`: it knows nothing of training.
"""

from pipelines.build import build_dataset
from pipelines.config import PipelineConfig, PreprocessConfig, SourceConfig, StorageConfig
from pipelines.sources import SchemaError, ShardPlan, plan_source
from pipelines.storage import StorageError

__all__ = [
    "build_dataset",
    "plan_source",
    "PipelineConfig",
    "PreprocessConfig",
    "SourceConfig",
    "StorageConfig",
    "ShardPlan",
    "SchemaError",
    "StorageError",
]
