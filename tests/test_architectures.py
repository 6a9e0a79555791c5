"""Every built-in architecture builds small, runs forward, and exposes a valid head, blocks and feature module."""

import pytest
import torch
from torch import nn

from harness.plugins import Registry
from plugins import architectures

REGISTRY = Registry(strict=True)
REGISTRY.add(architectures, name="architectures")

CASES = [  # (name, overrides, in_channels, image_size)
    ("cnn-s", {}, 1, 28),
    ("cnn-s", {}, 3, 32),
    ("cnn-m", {}, 1, 28),
    ("cnn-gap", {}, 1, 28),
    ("cnn-gap", {}, 3, 32),
    ("vgg", {"width": 0.125}, 3, 32),
    ("resnet18", {}, 3, 32),
    ("resnet34", {}, 3, 32),
    ("resnet50", {}, 3, 32),
    ("caformer_s18", {}, 3, 32),
    ("caformer_m36", {}, 3, 32),
]


def build(name: str, in_channels: int = 3, image_size: int = 32, num_classes: int = 7, **given) -> nn.Module:
    spec = REGISTRY.get("architecture", name)
    factory = getattr(architectures, spec.factory.partition(":")[2])
    return factory(spec.resolve(given, name), in_channels=in_channels, image_size=image_size, num_classes=num_classes)


def test_cases_cover_every_registered_architecture():
    assert {spec.name for spec in REGISTRY.all("architecture")} == {name for name, *_ in CASES}


@pytest.mark.parametrize("name, given, in_channels, image_size", CASES)
def test_builds_runs_and_exposes_its_parts(name, given, in_channels, image_size):
    torch.manual_seed(0)
    model = build(name, in_channels, image_size, num_classes=7, **given).eval()
    with torch.no_grad():
        assert model(torch.randn(2, in_channels, image_size, image_size)).shape == (2, 7)
    head = model.get_submodule(model.head_path)
    assert isinstance(head, nn.Linear) and head.out_features == 7
    assert model.block_paths and all(model.get_submodule(path) is not None for path in model.block_paths)
    assert model.get_submodule(model.feature_path) is not None
    assert len(set(model.block_paths)) == len(model.block_paths)


@pytest.mark.parametrize("name, low, high", [("cnn-s", 20_000, 40_000), ("cnn-m", 100_000, 220_000),
                                             ("cnn-gap", 20_000, 30_000)])
def test_small_cnn_sizes(name, low, high):
    count = sum(p.numel() for p in build(name, 1, 28, num_classes=10).parameters())
    assert low <= count <= high


def test_cnn_gap_head_reads_the_pooled_channels_directly():
    model = build("cnn-gap", 1, 28, num_classes=10)
    assert model.get_submodule(model.head_path).in_features == 64
    assert [type(m) for m in list(model.children())[-3:]] == [nn.AdaptiveAvgPool2d, nn.Flatten, nn.Linear]


def test_small_cnn_has_batchnorm_and_width_scales():
    model = build("cnn-s", 1, 28, num_classes=10)
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    wide = build("cnn-s", 1, 28, num_classes=10, width=2.0)
    assert sum(p.numel() for p in wide.parameters()) > 2 * sum(p.numel() for p in model.parameters())


def test_vgg_head_width_follows_image_size():
    """The reference head takes 512 x 2 x 2 = 2048 inputs at 64x64; other sizes derive theirs."""
    assert build("vgg", 3, 64, num_classes=10).get_submodule("classifier.fc1").in_features == 2048
    for image_size, features in [(32, 64), (96, 64 * 3 * 3)]:
        model = build("vgg", 3, image_size, num_classes=10, width=0.125)
        assert model.get_submodule("classifier.fc1").in_features == features
    tiny = build("vgg", 3, 64, num_classes=10, width=0.125)
    assert tiny.get_submodule(tiny.feature_path)(torch.zeros(1, 8, 32, 32)).shape == (1, 16, 16, 16)
    with pytest.raises(ValueError, match="at least 32x32"):
        build("vgg", 3, 28)


def test_timm_weights_from_local_safetensors(tmp_path):
    """A checkpoint for another class count loads everything but the head."""
    from safetensors.torch import save_file

    source = build("resnet18", num_classes=10)
    path = tmp_path / "resnet18.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    model = build("resnet18", num_classes=7, weights=str(path))
    assert torch.equal(model.conv1.weight, source.conv1.weight)
    assert model.fc.out_features == 7
    with pytest.raises(ValueError, match="weights do not fit"):
        build("resnet34", num_classes=7, weights=str(path))
