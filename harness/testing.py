"""Helpers for testing plugins on tiny CPU cells (importable from a plugin's own test suite).

`tiny_context` builds a CellContext over small synthetic domains whose classes are separable, so a few
optimizer steps visibly change accuracy; `check_deterministic` runs a plugin twice and compares curves.
"""

from __future__ import annotations

import torch

from harness.engine import seeding
from harness.engine.context import CellContext, Recorder
from harness.engine.data import Split
from harness.engine.models import build_model, state_tensors


def synthetic_split(n: int, *, num_classes: int = 10, channels: int = 1, size: int = 16, seed: int = 0,
                    pattern_seed: int = 0) -> Split:
    """Images = a fixed per-class pattern plus noise; `pattern_seed` picks the domain."""
    patterns = torch.randn(num_classes, channels, size, size, generator=torch.Generator().manual_seed(pattern_seed))
    gen = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % num_classes
    x = patterns[y] + 0.8 * torch.randn(n, channels, size, size, generator=gen)
    return Split(x, y)


def tiny_context(params: dict, *, seed: int = 0, architecture: str = "cnn-s", arch_params: dict | None = None,
                 num_classes: int = 10, channels: int = 1, size: int = 16, n_train: int = 200, n_test: int = 100,
                 with_original_train: bool = True, registry=None) -> CellContext:
    """A CellContext on synthetic data: original domain = pattern set 0, restricted = pattern set 1."""
    from harness.plugins import registry as default_registry

    arch = (registry or default_registry()).get("architecture", architecture)
    arch_params = arch.resolve(arch_params, "architecture")

    def make_model():
        return build_model(arch, arch_params, in_channels=channels, image_size=size, num_classes=num_classes)

    shape = dict(num_classes=num_classes, channels=channels, size=size)
    return CellContext(
        params=params, seed=seed, device=torch.device("cpu"), precision="fp32", num_classes=num_classes,
        original_train=synthetic_split(n_train, seed=1, pattern_seed=0, **shape) if with_original_train else None,
        original_test=synthetic_split(n_test, seed=2, pattern_seed=0, **shape),
        restricted_train=synthetic_split(n_train, seed=3, pattern_seed=1, **shape),
        restricted_test=synthetic_split(n_test, seed=4, pattern_seed=1, **shape),
        build_model=make_model, recorder=Recorder(), log=lambda message: None,
    )


def seeded_model(ctx: CellContext, name: str = "init"):
    """A fresh model whose initialisation is drawn from the cell seed."""
    seeding.seed_everything(seeding.derive_seed(ctx.seed, name))
    return ctx.build_model()


def same_weights(a, b) -> bool:
    sa, sb = state_tensors(a), state_tensors(b)
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
