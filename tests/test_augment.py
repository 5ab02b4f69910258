"""Tier 1: augmentation recipes produce fixed-size uint8 CHW output; validation is deterministic."""

import numpy as np
import pytest
import torch

from pipelines.augment import apply_batch, build_transform, decode_side


def images(rng, sizes):
    return [rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8) for w, h in sizes]


def test_imagenet_train_recipe_outputs_224_uint8_for_any_input_size():
    rng = np.random.default_rng(0)
    t = build_transform("imagenet", 224, train=True)
    out = apply_batch(t, images(rng, [(320, 256), (500, 375), (120, 90)]), 224)
    assert out.shape == (3, 3, 224, 224) and out.dtype == np.uint8


def test_train_recipe_is_random_and_seedable():
    rng = np.random.default_rng(1)
    batch = images(rng, [(320, 256)] * 4)
    t = build_transform("imagenet", 64, train=True)
    torch.manual_seed(3)
    a = apply_batch(t, batch, 64)
    torch.manual_seed(3)
    b = apply_batch(t, batch, 64)
    c = apply_batch(t, batch, 64)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


@pytest.mark.parametrize("recipe,size", [("imagenet", 224), ("small", 8)])
def test_validation_transform_is_deterministic(recipe, size):
    rng = np.random.default_rng(2)
    batch = images(rng, [(300, 200), (8, 8)])
    t = build_transform(recipe, size, train=False)
    assert np.array_equal(apply_batch(t, batch, size), apply_batch(t, batch, size))


def test_small_recipe_keeps_tiny_images_at_their_size():
    digit = np.zeros((8, 8, 3), dtype=np.uint8)
    digit[2:6, 3:5] = 255
    out = apply_batch(build_transform("small", 8, train=False), [digit], 8)
    assert out.shape == (1, 3, 8, 8)
    assert np.array_equal(out[0].transpose(1, 2, 0), digit)


def test_decode_side_keeps_enough_resolution_for_the_crop():
    assert decode_side("imagenet", 224, train=True) == 224
    assert decode_side("imagenet", 224, train=False) == 256


def test_unknown_recipe_is_rejected_with_the_choices():
    with pytest.raises(ValueError, match="imagenet, small"):
        build_transform("cifar", 32, train=True)
