"""Tier 1: models, and the CLIs' --help."""

import os
import subprocess
import sys

import pytest
import torch

from cluster.training.model import build_model, normalize_on_device

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_small_input_stem_trains_on_8x8_digits():
    model = build_model("resnet18", 10, small_input=True)
    out = model(torch.zeros(4, 3, 8, 8))
    assert out.shape == (4, 10)
    assert model.conv1.stride == (1, 1) and isinstance(model.maxpool, torch.nn.Identity)


def test_imagenet_stem_is_torchvisions():
    model = build_model("resnet50", 100)
    assert model(torch.zeros(1, 3, 224, 224)).shape == (1, 100)
    assert model.conv1.stride == (2, 2)


def test_unknown_model_lists_the_choices():
    with pytest.raises(ValueError, match="resnet18"):
        build_model("vgg16", 10)


def test_normalisation_maps_uint8_to_standardised_floats():
    x = torch.full((1, 3, 2, 2), 255, dtype=torch.uint8)
    mean, std = torch.full((1, 3, 1, 1), 0.5), torch.full((1, 3, 1, 1), 0.25)
    assert torch.allclose(normalize_on_device(x, mean, std), torch.full((1, 3, 2, 2), 2.0))


@pytest.mark.parametrize("script", sorted(
    f for f in os.listdir(os.path.join(ROOT, "jobs")) if f.endswith(".py") and f[0] != "_"))
def test_every_job_has_help(script):
    out = subprocess.run([sys.executable, os.path.join(ROOT, "jobs", script), "--help"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "usage:" in out.stdout
