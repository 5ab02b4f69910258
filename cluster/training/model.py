"""torchvision ResNets, with a small-input stem for tiny images such as 8x8 digits."""

from __future__ import annotations

import torch
from torch import nn
from torchvision import models

from cluster.training.config import MODELS

__all__ = ["MODELS", "build_model"]


def build_model(name: str, num_classes: int, small_input: bool = False) -> nn.Module:
    """A randomly initialised torchvision ResNet.

    `small_input` swaps the 7x7/stride-2 stem and the max-pool for a 3x3/stride-1 convolution
    (the CIFAR-style stem), so 8x8 or 32x32 inputs are not reduced to nothing before layer1.
    """
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}: choose one of {', '.join(MODELS)}")
    model = getattr(models, name)(weights=None, num_classes=num_classes)
    if small_input:
        model.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        model.maxpool = nn.Identity()
    return model


def normalize_on_device(images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor
                        ) -> torch.Tensor:
    """uint8 (N, 3, H, W) on the device -> float32 normalised; the pipeline ships uint8 (4x fewer
    bytes through the object store and over PCIe) and normalisation runs where the model is."""
    return (images.float().div_(255.0) - mean) / std
