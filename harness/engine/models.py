"""Models: building from an architecture plugin, addressing the head, and safetensors checkpoints.

Architecture factories return an nn.Module carrying `head_path` (the classification Linear),
`block_paths` (main blocks in forward order) and `feature_path` (an intermediate feature module), so
strategies such as initFC address the head without knowing the class.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch
from torch import nn

REQUIRED_ATTRIBUTES = ("head_path", "block_paths", "feature_path")


def build_model(spec, params: dict, *, in_channels: int, image_size: int, num_classes: int) -> nn.Module:
    """Build a classifier from an architecture plugin and check it honours the contract above."""
    model = spec.load()(params, in_channels=in_channels, image_size=image_size, num_classes=num_classes)
    check_classifier(model, spec.name)
    return model


def check_classifier(model: nn.Module, architecture: str) -> None:
    """The classification task's model contract: the attributes above, and a head that is an nn.Linear."""
    missing = [a for a in REQUIRED_ATTRIBUTES if not hasattr(model, a)]
    if missing:
        raise TypeError(f"architecture {architecture!r} returned a model without {', '.join(missing)}")
    if not isinstance(model.get_submodule(model.head_path), nn.Linear):
        raise TypeError(f"architecture {architecture!r}: head_path {model.head_path!r} is not an nn.Linear")


def head(model: nn.Module) -> nn.Linear:
    """The classification head of a model built from an architecture plugin (its `head_path`)."""
    return model.get_submodule(model.head_path)


def head_parameter_names(model: nn.Module) -> set[str]:
    """The head's parameter names as `model.named_parameters()` spells them (e.g. to freeze everything else)."""
    return {f"{model.head_path}.{name}" for name, _ in head(model).named_parameters()}


def xavier_reinit_(linear: nn.Linear, generator: torch.Generator | None = None) -> None:
    """SOPHON's initFC: Xavier-uniform weight, zero bias (drawn from `generator` when given)."""
    fan_out, fan_in = linear.weight.shape
    bound = math.sqrt(6.0 / (fan_in + fan_out))
    with torch.no_grad():
        noise = torch.rand(linear.weight.shape, generator=generator, device="cpu")
        linear.weight.copy_((noise * 2 - 1) * bound)
        if linear.bias is not None:
            linear.bias.zero_()


def normal_reinit_(linear: nn.Linear, generator: torch.Generator | None = None, std: float = 0.01) -> None:
    """NTLBench's head init: N(0, std²) weight, zero bias."""
    with torch.no_grad():
        linear.weight.copy_(torch.randn(linear.weight.shape, generator=generator, device="cpu") * std)
        if linear.bias is not None:
            linear.bias.zero_()


def state_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """Parameters and buffers as independent CPU tensors (safetensors refuses shared storage)."""
    return {name: tensor.detach().to("cpu").contiguous().clone() for name, tensor in model.state_dict().items()}


def save_model(model: nn.Module, path: Path, metadata: dict[str, str] | None = None) -> Path:
    """Write a safetensors checkpoint atomically: a temporary name, then a rename."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    save_file(state_tensors(model), str(tmp), metadata=metadata)
    os.replace(tmp, path)
    return path


def load_model(model: nn.Module, path: Path) -> nn.Module:
    """Load a safetensors checkpoint into `model` (never unpickles anything)."""
    from safetensors.torch import load_file

    state = load_file(str(path))
    model.load_state_dict(state, strict=True)
    return model


def count_parameters(model: nn.Module) -> int:
    """How many parameters the model has (trainable or not)."""
    return sum(p.numel() for p in model.parameters())
