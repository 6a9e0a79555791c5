"""Helpers for testing plugins on tiny CPU cells (importable from a plugin's own test suite).

`tiny_context` builds a CellContext over the task's tiny synthetic domains (for classification, separable
classes, so a few optimizer steps visibly change accuracy); `check_plugin` holds a plugin to the contract of
its kind, one check function per kind below: what `untunable plugin-check` and the built-ins' conformance
test run.
"""

from __future__ import annotations

import dataclasses
import math
from functools import partial

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
        stage_seed=seed,
        trials=partial(inline_trial, registry=reg),
    )


def inline_trial(ctx: CellContext, plugin: str, params: dict, *, registry=None):
    """`ctx.trials` of a tiny context: the trial runs here, with no store, from a fresh model drawn from the seed an
    attack cell of its config would derive (harness/trials.py runs real trials as cells)."""
    from harness.engine.train import Diverged
    from harness.plugins import registry as default_registry
    from harness.trials import Trial, identity

    spec = (registry or default_registry()).get("attack", plugin)
    resolved = spec.resolve(params, f"trial {plugin}")
    seed = seeding.derive_seed("attack", identity(plugin, resolved), ctx.seed)
    child = dataclasses.replace(ctx, params=resolved, seed=seed, recorder=Recorder(allowed=ctx.recorder.allowed),
                                trials=None)
    try:
        model, status = spec.load()(child, seeded_model(child)), "done"
    except Diverged:
        model, status = None, "diverged"
    return Trial(f"inline-{seed:x}", status, child.recorder.points, child.recorder.notes, lambda: model)


def seeded_model(ctx: CellContext, name: str = "init"):
    """A fresh model whose initialisation is drawn from the cell seed."""
    seeding.seed_everything(seeding.derive_seed(ctx.seed, name))
    return ctx.build_model()


def same_weights(a, b) -> bool:
    """Whether two models hold identical parameters and buffers under the same names."""
    sa, sb = state_tensors(a), state_tensors(b)
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


CHECKED_KINDS = ("defense", "attack", "task", "architecture", "dataset", "metric")


def check_plugin(kind: str, name: str, params: dict | None = None, *, task: str | None = None,
                 api: str = "logits", registry=None, data_root=None, results=None) -> list[str]:
    """Check one plugin against the contract of its kind; return the problems found (empty = fine).

    The plugin runs with its registered `tiny_params` (small settings for this check), then `params`.
    Defenses, attacks and architectures run on the tiny data of `task` (default: the first task they
    serve); a black-box attack is handed an Oracle answering in the form `api` names; a dataset is read from `data_root` (its files in their real format); a metric runs on the
    results directory `results`.
    """
    from harness.plugins import registry as default_registry

    reg = registry or default_registry()
    spec = reg.get(kind, name)
    resolved = spec.resolve({**spec.extra.get("tiny_params", {}), **(params or {})}, name)
    served = spec.extra.get("tasks", DEFAULT_TASKS)
    task = task or ("classification" if served == "any" else served[0])
    if kind in ("defense", "attack"):
        return _check_cell_plugin(spec, resolved, task, api, reg)
    if kind == "task":
        return _check_task(spec, resolved, reg)
    if kind == "architecture":
        return _check_architecture(spec, resolved, task, reg)
    if kind == "dataset":
        return _check_dataset(spec, resolved, data_root)
    if kind == "metric":
        if results is None:
            raise ValueError("checking a metric needs a results directory (results=...)")
        return _check_metric(spec, results)
    raise ValueError(f"no conformance check for {kind} plugins; checked kinds: {', '.join(CHECKED_KINDS)}")


def _check_cell_plugin(spec: PluginSpec, params: dict, task: str, api: str, reg) -> list[str]:
    """A defense or attack, run twice on a tiny CPU cell: it runs, records a curve, the same seed gives the same
    curve and weights, and a defense releases a model of the architecture it was given."""
    from harness.engine.oracle import make_oracle

    runs = []
    for _ in range(2):
        ctx = tiny_context(params, task=task, plugin=spec, registry=reg)
        start = seeded_model(ctx)
        if spec.extra.get("access") == "black-box":
            start = make_oracle(start, api=api, budget=params["queries"], generator=ctx.generator("oracle"))
        model = spec.load()(ctx, start)
        runs.append((ctx.recorder.points, model))
    problems = []
    (points_a, model_a), (points_b, model_b) = runs
    if not points_a:
        problems.append("recorded no curve point (use ctx.record(model, on=..., epoch=..., step=...))")
    if points_a != points_b:
        problems.append("the same seed gave a different curve: draw randomness from ctx.generator(...)")
    if model_a is None or not same_weights(model_a, model_b):
        problems.append("the same seed gave different final weights (or no model was returned)")
    elif spec.kind == "defense" and set(state_tensors(model_a)) != set(state_tensors(ctx.build_model())):
        problems.append("the released model does not have the architecture's parameter names")
    return problems


def _finite_measures(values: dict, task) -> list[str]:
    names = [m.name for m in task.measures]
    problems = [f"evaluate gave no {name!r} (every declared measure is expected)" for name in names
                if name not in values]
    return problems + [f"evaluate gave a non-finite {name!r}: {value}" for name, value in values.items()
                       if not math.isfinite(value)]


def _check_task(spec: PluginSpec, params: dict, reg) -> list[str]:
    """A task family: its tiny data, objective and evaluation are deterministic and finite, evaluation gives
    every declared measure and leaves the model's train/eval modes as it found them, and a model of the
    architecture its tiny data names passes its model contract."""
    from harness.tasks import load_task

    task = load_task(spec, params)  # raises TypeError when the factory does not return a Task
    data, again = task.tiny_data(), task.tiny_data()
    splits = ("original_train", "original_test", "restricted_train", "restricted_test")
    problems = [f"tiny_data gave a different {name} the second time (use seeded generators)" for name in splits
                if not _same_split(getattr(data, name), getattr(again, name))]
    if task.labelled and any(getattr(data, name).y is None for name in splits):
        problems.append("a labelled task's tiny data has a split without labels")
    ctx = tiny_context({}, task=spec.name, task_params=params, registry=reg)
    model = seeded_model(ctx)
    batch = data.restricted_train.subset(torch.arange(min(8, len(data.restricted_train))))
    losses = [task.objective(seeding.generator(0, "check"))(model, batch.x, batch.y) for _ in range(2)]
    if not all(loss.dim() == 0 and torch.isfinite(loss) for loss in losses):
        problems.append(f"the objective did not give a finite scalar loss: {losses[0]}")
    elif not torch.equal(losses[0], losses[1]):
        problems.append("the objective gave different losses for the same generator seed")
    model.train()
    first = task.evaluate(model, data.restricted_test)
    if not model.training:
        problems.append("evaluate left the model in eval mode (restore each module's mode)")
    problems += _finite_measures(first, task)
    if first != task.evaluate(model, data.restricted_test):
        problems.append("evaluate gave different values twice on the same model (seed its noise)")
    return problems


def _same_split(a: Split, b: Split) -> bool:
    return torch.equal(a.x, b.x) and (a.y is None) == (b.y is None) and (a.y is None or torch.equal(a.y, b.y))


def _check_architecture(spec: PluginSpec, params: dict, task: str, reg) -> list[str]:
    """An architecture, on the tiny data of a task it serves: it builds under the task's model contract, the
    task evaluates it to finite values for every measure, and the same seed builds the same weights."""
    ctx = tiny_context({}, task=task, architecture=spec.name, arch_params=params, registry=reg, **_sizes(spec))
    try:
        model = seeded_model(ctx)
    except (TypeError, AttributeError) as exc:
        return [f"breaks the {task} model contract: {exc}"]
    problems = _finite_measures(ctx.measure(model, ctx.restricted_test), ctx.task)
    if not same_weights(model, seeded_model(ctx)):
        problems.append("the same seed built different weights: initialise from torch's global generator")
    return problems


def _sizes(spec: PluginSpec) -> dict:
    """Tiny-data sizes an architecture asks for (`tiny_sizes=` at registration; e.g. a minimum image size)."""
    return dict(spec.extra.get("tiny_sizes", {}))


def _check_dataset(spec: PluginSpec, params: dict, data_root) -> list[str]:
    """A dataset reader, run twice on the files under `data_root`: it returns a valid RawDataset (the class
    checks dtypes, shapes and label range), both splits are non-empty, the same files give the same arrays,
    and the engine materialises it to finite tensors."""
    from pathlib import Path

    import numpy as np

    from harness.data import RawDataset
    from harness.engine.data import materialise

    root = Path(data_root) if data_root is not None else None
    first, second = (spec.load()(params, data_root=root, image_size=16) for _ in range(2))
    if not isinstance(first, RawDataset):
        return [f"returned {type(first).__name__}, not harness.data.RawDataset"]
    problems = [f"the {split} split is empty" for split in ("train", "test") if not len(getattr(first, f"{split}_x"))]
    fields = ("train_x", "train_y", "test_x", "test_y")
    if any(not np.array_equal(getattr(first, f), getattr(second, f)) for f in fields):
        problems.append("reading the same files twice gave different arrays (sample with a fixed seed)")
    domain = materialise(spec, params, image_size=16, channels=1, normalisation="per_domain", data_root=root,
                         cache_dir=None)
    if not (torch.isfinite(domain.train.x).all() and torch.isfinite(domain.test.x).all()):
        problems.append("materialised images are not finite (a constant image gives a zero std?)")
    return problems


def _check_metric(spec: PluginSpec, results) -> list[str]:
    """A leaderboard metric, run twice on a results directory as the leaderboard runs it: it returns per-seed rows
    with the columns reporters need, only the columns it declared, and the same values both times."""
    from harness.leaderboard import load_curves
    from harness.leaderboard.metrics import compute_metrics

    from dataclasses import replace

    tiny = spec.extra.get("tiny_params", {})
    spec = replace(spec, params=tuple(replace(p, default=tiny[p.name]) if p.name in tiny else p for p in spec.params))
    curves = load_curves(results)
    try:
        first, second = (compute_metrics(curves, [spec]) for _ in range(2))
    except (ValueError, KeyError) as exc:
        return [f"does not meet the metric contract: {exc}"]
    problems = ["returned no row for a store with finished attack cells"] if first.empty else []
    if not first.equals(second):
        problems.append("the same store gave different rows")
    return problems
