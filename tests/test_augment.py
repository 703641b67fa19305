"""common/augment.py: one device-side path for images and clips, configured as a mapping."""
import pytest
import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from common.augment import DEFAULT_AUGMENTATION, Normalize, build_augmentation, to_float

STRONG = {"resized_crop": {"scale": [0.5, 0.9]}, "hflip": {}, "color_jitter": {"brightness": 0.5, "p": 1.0},
          "grayscale": {"p": 0.5}, "erasing": {"p": 0.5}}


def test_a_clip_gets_one_parameter_set_for_all_its_frames():
    torch.manual_seed(0)
    frame = torch.randint(0, 256, (4, 1, 3, 24, 24), dtype=torch.uint8)
    clips = to_float(frame.repeat(1, 5, 1, 1, 1))  # four clips of a still frame each
    out = build_augmentation(20, STRONG)(clips)
    assert out.shape == (4, 5, 3, 20, 20)
    assert torch.equal(out, out[:, :1].expand_as(out)), "a still clip must stay still"
    assert not torch.allclose(out[0], out[1]), "clips must get parameters of their own"


def test_images_share_the_same_operations():
    torch.manual_seed(0)
    images = to_float(torch.randint(0, 256, (6, 3, 24, 24), dtype=torch.uint8))
    out = build_augmentation(16, STRONG)(images)
    assert out.shape == (6, 3, 16, 16)
    assert not torch.allclose(out[0], out[1])


def test_spec_forms_and_unknown_operations():
    assert build_augmentation(16, False) is None and build_augmentation(16, {}) is None
    default = build_augmentation(16, True)
    assert [type(op).__name__ for op in default.images] == ["RandomResizedCrop", "RandomHorizontalFlip",
                                                             "ColorJitter", "RandomErasing"]
    assert len(default.images) == len(DEFAULT_AUGMENTATION)
    with pytest.raises(ValueError, match="sharpen"):
        build_augmentation(16, {"sharpen": {}})


def test_to_float_is_channels_first_in_zero_one_and_normalize_uses_timm_constants():
    batch = torch.full((2, 3, 4, 4), 255, dtype=torch.uint8)
    x = to_float(batch)
    assert x.shape == (2, 3, 4, 4) and x.dtype == torch.float32 and float(x.max()) == 1.0
    normalised = Normalize()(torch.ones(1, 2, 3, 2, 2))  # a clip [B, T, C, H, W]
    expected = [(1 - m) / s for m, s in zip(IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD)]
    assert torch.allclose(normalised[0, 1, :, 0, 0], torch.tensor(expected))
    with pytest.raises(ValueError, match="shape"):
        to_float(torch.zeros(3, 4, 4, dtype=torch.uint8))
