"""Helpers for testing plugins on tiny CPU cells (importable from a plugin's own test suite).

`tiny_context` builds a CellContext over the task's tiny synthetic domains (for classification, separable
classes, so a few optimizer steps visibly change accuracy); `check_plugin` runs a plugin twice and compares.
"""

from __future__ import annotations

import torch

from harness.engine import seeding
from harness.engine.context import CellContext, Recorder
from harness.engine.data import Split, held_out
from harness.engine.models import state_tensors
from harness.registry import DEFAULT_TASKS, PluginSpec


TINY_VALIDATION = 0.1  # the validation slices held out of the tiny training sets, as a scenario's default


def synthetic_split(n: int, *, num_classes: int = 10, channels: int = 1, size: int = 16, seed: int = 0,
                    pattern_seed: int = 0) -> Split:
    """Images = a fixed per-class pattern plus noise; `pattern_seed` picks the domain."""
    patterns = torch.randn(num_classes, channels, size, size, generator=torch.Generator().manual_seed(pattern_seed))
    gen = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % num_classes
    x = patterns[y] + 0.8 * torch.randn(n, channels, size, size, generator=gen)
    return Split(x, y)


def tiny_context(params: dict, *, seed: int = 0, task: str = "classification", task_params: dict | None = None,
                 architecture: str | None = None, arch_params: dict | None = None, with_original_train: bool = True,
                 plugin: PluginSpec | None = None, registry=None, **sizes) -> CellContext:
    """A CellContext on the task's tiny synthetic domains (`sizes` go to `Task.tiny_data`).

    `architecture` defaults to the one the task's tiny data names; `plugin` adds its declared measures to
    the names the recorder accepts, as in a real cell.
    """
    from harness.plugins import registry as default_registry
    from harness.tasks import load_task, metric_names, model_builder

    reg = registry or default_registry()
    the_task = load_task(reg.get("task", task), task_params)
    data = the_task.tiny_data(**sizes)
    arch = reg.get("architecture", architecture or data.architecture)
    arch_params = arch.resolve(arch_params if arch_params is not None else data.arch_params, "architecture")
    make_model = model_builder(the_task, reg, arch.name, arch_params, in_channels=data.channels,
                               image_size=data.size, num_classes=data.num_classes)

    original_fit, original_val = held_out(data.original_train, TINY_VALIDATION, seed=0)
    restricted_fit, restricted_val = held_out(data.restricted_train, TINY_VALIDATION, seed=0)
    if plugin is not None and plugin.kind == "defense":  # as in a run: the defender's share whole, no R_val
        restricted_fit, restricted_val = data.restricted_train, None
    return CellContext(
        params=params, seed=seed, device=torch.device("cpu"), precision="fp32", num_classes=data.num_classes,
        original_train=original_fit if with_original_train else None, original_test=data.original_test,
        original_val=original_val, restricted_train=restricted_fit, restricted_val=restricted_val,
        restricted_test=data.restricted_test, build_model=make_model,
        recorder=Recorder(allowed=metric_names(the_task, plugin)), task=the_task, log=lambda message: None,
    )


def seeded_model(ctx: CellContext, name: str = "init"):
    """A fresh model whose initialisation is drawn from the cell seed."""
    seeding.seed_everything(seeding.derive_seed(ctx.seed, name))
    return ctx.build_model()


def same_weights(a, b) -> bool:
    sa, sb = state_tensors(a), state_tensors(b)
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def check_plugin(kind: str, name: str, params: dict | None = None, *, task: str | None = None,
                 api: str = "logits", registry=None) -> list[str]:
    """Run a defense or attack twice on a tiny CPU cell of `task` (default: the first task it serves); return
    the problems found (empty = fine).

    Checks that it runs, records a curve, and that the same seed gives the same curve and weights; a defense
    must return a model of the architecture it was given; a black-box attack is handed an Oracle answering
    in the form `api` names, never the model (what `untunable plugin-check NAME` reports).
    """
    from harness.engine.oracle import make_oracle
    from harness.plugins import registry as default_registry

    reg = registry or default_registry()
    spec = reg.get(kind, name)
    resolved = spec.resolve(params, name)
    served = spec.extra.get("tasks", DEFAULT_TASKS)
    task = task or ("classification" if served == "any" else served[0])
    runs = []
    for _ in range(2):
        ctx = tiny_context(resolved, task=task, plugin=spec, registry=reg)
        start = seeded_model(ctx)
        if spec.extra.get("access") == "black-box":
            start = make_oracle(start, api=api, budget=resolved["queries"], generator=ctx.generator("oracle"))
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
    elif kind == "defense" and set(state_tensors(model_a)) != set(state_tensors(ctx.build_model())):
        problems.append("the released model does not have the architecture's parameter names")
    return problems
