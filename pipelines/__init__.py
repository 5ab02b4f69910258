"""feedline's input pipeline: object storage -> decode -> augment on a dedicated Ray CPU pool.

This package never imports `cluster`: it knows nothing of training.
"""

from pipelines.config import (
    EchoConfig,
    PipelineConfig,
    PreprocessConfig,
    SourceConfig,
    StorageConfig,
)
from pipelines.sources import SchemaError, ShardPlan, plan_source
from pipelines.storage import StorageError

__all__ = [
    "build_dataset",
    "plan_source",
    "EchoConfig",
    "PipelineConfig",
    "PreprocessConfig",
    "SourceConfig",
    "StorageConfig",
    "ShardPlan",
    "SchemaError",
    "StorageError",
]


def __getattr__(name: str):
    # build_dataset is imported on first use: `pipelines.build` pulls in torch and torchvision,
    # which a Ray worker that only unpickles the (torch-free) work-unit index must not pay for.
    if name == "build_dataset":
        from pipelines.build import build_dataset

        return build_dataset
    raise AttributeError(f"module 'pipelines' has no attribute {name!r}")
