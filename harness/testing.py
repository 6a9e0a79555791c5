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


def check_plugin(kind: str, name: str, params: dict | None = None, *, registry=None) -> list[str]:
    """Run a defense or attack twice on a tiny CPU cell; return the problems found (empty = fine).

    Checks that it runs, records a curve, returns a model of the same architecture, and that the same
    seed gives the same curve and weights (what `untunable plugin-check NAME` reports).
    """
    from harness.plugins import registry as default_registry

    reg = registry or default_registry()
    spec = reg.get(kind, name)
    resolved = spec.resolve(params, name)
    runs = []
    for _ in range(2):
        ctx = tiny_context(resolved, registry=reg)
        start = seeded_model(ctx)
        model = spec.load()(ctx, start)
        runs.append((ctx.recorder.points, model))
    problems = []
    (points_a, model_a), (points_b, model_b) = runs
    if not points_a:
        problems.append("recorded no curve point (use ctx.record_restricted / ctx.recorder.point)")
    if points_a != points_b:
        problems.append("the same seed gave a different curve: draw randomness from ctx.generator(...)")
    if model_a is None or not same_weights(model_a, model_b):
        problems.append("the same seed gave different final weights (or no model was returned)")
    elif set(state_tensors(model_a)) != set(state_tensors(ctx.build_model())):
        problems.append("the returned model does not have the architecture's parameter names")
    return problems
