"""Tier 1: the augmentation recipes are torchvision's, pixel for pixel, without importing torch.

Each step is checked against torchvision.transforms.v2.functional on the same PIL image with the
same parameters, and each step's parameter sampler against torchvision's own `make_params` over
many draws."""

import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from pipelines.augment import (
    CenterCrop,
    ColorJitter,
    HorizontalFlip,
    RandomAffine,
    RandomResizedCrop,
    Resize,
    apply_batch,
    build_transform,
    decode_side,
)


def images(rng, sizes):
    return [rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8) for w, h in sizes]


def photo(w=320, h=256, seed=0):
    """A smooth image with edges (random noise would hide interpolation differences less well
    than structure does, and contrast/saturation need colour variety)."""
    y, x = np.mgrid[0:h, 0:w]
    rng = np.random.default_rng(seed)
    arr = np.stack([(x * 255 // w), (y * 255 // h), ((x + y) % 64) * 4], axis=2)
    arr = (arr + rng.integers(0, 20, arr.shape)).clip(0, 255).astype(np.uint8)
    arr[h // 3: h // 2, w // 4: w // 2] = (250, 20, 30)
    return Image.fromarray(arr, "RGB")


def same(ours: Image.Image, theirs: Image.Image) -> bool:
    return ours.size == theirs.size and np.array_equal(np.asarray(ours), np.asarray(theirs))


# ------------------------------------------------------------ pixels: same as torchvision's


@pytest.mark.parametrize("box", [(10, 20, 100, 150), (0, 0, 256, 320), (200, 300, 56, 20)])
def test_resized_crop_is_torchvisions(box):
    img = photo()
    ours = RandomResizedCrop.apply(img, *box, (224, 224))
    assert same(ours, F.resized_crop(img, *box, size=[224, 224], antialias=True))


def test_flip_is_torchvisions_and_happens_half_the_time():
    img = photo()
    flipped = [not same(HorizontalFlip()(img, np.random.default_rng(s)), img) for s in range(400)]
    assert 0.4 < np.mean(flipped) < 0.6
    flip = next(s for s in range(400) if flipped[s])
    assert same(HorizontalFlip()(img, np.random.default_rng(flip)), F.horizontal_flip(img))


@pytest.mark.parametrize("order", [(0, 1, 2, 3), (2, 3, 1, 0), (3, 1, 0, 2)])
def test_color_jitter_is_torchvisions_in_every_order(order):
    img = photo()
    b, c, s = 1.3, 0.7, 1.25
    theirs = img
    for i in order:
        if i == 0:
            theirs = F.adjust_brightness(theirs, b)
        elif i == 1:
            theirs = F.adjust_contrast(theirs, c)
        elif i == 2:
            theirs = F.adjust_saturation(theirs, s)
    ours = ColorJitter.apply(img, order, [b, c, s])
    assert same(ours, theirs)
    assert not same(ours, img)


@pytest.mark.parametrize("size,wh", [(256, (320, 256)), (256, (200, 500)), ((8, 8), (8, 8)),
                                     ((32, 32), (8, 8)), (73, (300, 299))])
def test_resize_is_torchvisions(size, wh):
    img = photo(*wh)
    ours = Resize(size)(img, np.random.default_rng(0))
    assert same(ours, v2.Resize(size, antialias=True)(img))


@pytest.mark.parametrize("wh", [(292, 256), (256, 256), (257, 300)])
def test_center_crop_is_torchvisions(wh):
    img = photo(*wh)
    assert same(CenterCrop(224)(img, np.random.default_rng(0)), F.center_crop(img, [224, 224]))


def test_center_crop_of_a_smaller_image_says_to_resize_first():
    with pytest.raises(ValueError, match="resize it first"):
        CenterCrop(224)(photo(100, 300), np.random.default_rng(0))


@pytest.mark.parametrize("angle,translate,scale", [(7.5, (2, -3), 1.05), (-10.0, (0, 0), 0.9),
                                                   (0.0, (3, 1), 1.0)])
def test_affine_is_torchvisions(angle, translate, scale):
    img = photo(32, 32)
    ours = RandomAffine.apply(img, angle, translate, scale)
    theirs = F.affine(img, angle=angle, translate=list(translate), scale=scale, shear=[0.0, 0.0],
                      interpolation=v2.InterpolationMode.NEAREST, fill=0)
    assert same(ours, theirs)


# ------------------------------------------------------------ parameters: torchvision's rules


def test_crop_parameters_follow_torchvisions_distribution():
    ours_t = RandomResizedCrop(224)
    theirs_t = v2.RandomResizedCrop(224, antialias=True)
    img = photo()
    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    ours = np.array([ours_t.params(320, 256, rng) for _ in range(4000)], dtype=float)
    theirs = np.array([[p["top"], p["left"], p["height"], p["width"]]
                       for p in (theirs_t.make_params([img]) for _ in range(4000))], dtype=float)
    for name, col in (("area", lambda a: a[:, 2] * a[:, 3] / (320 * 256)),
                      ("log aspect", lambda a: np.log(a[:, 3] / a[:, 2])),
                      ("top", lambda a: a[:, 0]), ("left", lambda a: a[:, 1])):
        qs = (0.1, 0.5, 0.9)
        mine, tv = np.quantile(col(ours), qs), np.quantile(col(theirs), qs)
        spread = np.quantile(col(theirs), 0.95) - np.quantile(col(theirs), 0.05)
        assert np.all(np.abs(mine - tv) < 0.06 * spread), (name, mine, tv)
    # Every crop lies inside the image.
    assert np.all(ours[:, 0] + ours[:, 2] <= 256) and np.all(ours[:, 1] + ours[:, 3] <= 320)


def test_crop_of_a_strip_falls_back_to_torchvisions_central_crop():
    torch.manual_seed(0)
    theirs = v2.RandomResizedCrop(224).make_params([photo(1000, 10)])
    ours = RandomResizedCrop(224).params(1000, 10, np.random.default_rng(0))
    theirs = (theirs["top"], theirs["left"], theirs["height"], theirs["width"])
    assert ours == theirs == (0, 493, 10, 13)


def test_jitter_factors_and_order_follow_torchvision():
    rng = np.random.default_rng(0)
    draws = [ColorJitter(0.4, 0.4, 0.4).params(rng) for _ in range(2000)]
    factors = np.array([f for _, f in draws])
    assert factors.min() >= 0.6 and factors.max() <= 1.4
    assert np.allclose(factors.mean(axis=0), 1.0, atol=0.02)
    assert len({o for o, _ in draws}) == 24  # every order of the four ops occurs
    assert ColorJitter(0.0, 0.4, 0.0).params(rng)[1][0] is None


def test_affine_parameters_stay_in_range():
    rng = np.random.default_rng(0)
    t = RandomAffine(10, (0.1, 0.1), (0.9, 1.1))
    draws = [t.params(32, 32, rng) for _ in range(1000)]
    assert all(-10 <= a <= 10 and abs(tx) <= 3 and abs(ty) <= 3 and 0.9 <= s <= 1.1
               for a, (tx, ty), s in draws)


# ------------------------------------------------------------ recipes


def test_imagenet_train_recipe_outputs_224_uint8_for_any_input_size():
    rng = np.random.default_rng(0)
    t = build_transform("imagenet", 224, train=True)
    out = apply_batch(t, images(rng, [(320, 256), (500, 375), (120, 90)]), 224, rng)
    assert out.shape == (3, 3, 224, 224) and out.dtype == np.uint8


def test_train_recipe_is_random_and_seedable():
    rng = np.random.default_rng(1)
    batch = images(rng, [(320, 256)] * 4)
    t = build_transform("imagenet", 64, train=True)
    a = apply_batch(t, batch, 64, np.random.default_rng(3))
    b = apply_batch(t, batch, 64, np.random.default_rng(3))
    c = apply_batch(t, batch, 64, np.random.default_rng(4))
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_recipe_output_is_the_steps_output_in_chw():
    img = photo()
    t = build_transform("imagenet", 64, train=True)
    out = apply_batch(t, [img], 64, np.random.default_rng(5))[0]
    assert np.array_equal(out.transpose(1, 2, 0), np.asarray(t(img, np.random.default_rng(5))))
    assert [type(s).__name__ for s in t.steps] == ["RandomResizedCrop", "HorizontalFlip",
                                                   "ColorJitter"]


@pytest.mark.parametrize("recipe,size", [("imagenet", 224), ("small", 8)])
def test_validation_transform_is_deterministic(recipe, size):
    rng = np.random.default_rng(2)
    batch = images(rng, [(300, 200), (8, 8)])
    t = build_transform(recipe, size, train=False)
    assert np.array_equal(apply_batch(t, batch, size, np.random.default_rng(0)),
                          apply_batch(t, batch, size, np.random.default_rng(1)))


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


def test_pool_actors_do_not_import_torch():
    """What a pool actor unpickles (the Preprocessor, its config and units, the observer and the
    echo factor source) must not import torch: that import cost ~6 s per cold actor."""
    code = ("import sys; import pipelines.build, pipelines.config, pipelines.sources, "
            "cluster.observability.monitor, cluster.echo.controller; "
            "print(sorted(m for m in ('torch', 'torchvision', 'pandas') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "torch" not in out.stdout, out.stdout
