"""Trials: attack configurations that a running attack cell runs as cells of their own (a searched attack's).

A trial is a content-keyed cell of kind `trial`: its parent's scenario, start and seed with another attack
config. It runs through the normal cell machinery (`execute`: claimed, committed in one transaction, its
attacked model stored as safetensors), so a trial already finished in the store is read, not run again, and
a search killed mid-way resumes with the trials it had. It trains with the seeds an attack cell of the same
config would use, so its curve is that cell's. Trials are not plan cells: the leaderboard reads only
`attack` cells (docs/search.md).
"""

from __future__ import annotations

import json
from contextlib import closing
from dataclasses import dataclass
from functools import partial
from typing import Callable

from harness.plan import Cell, attack_key
from harness.registry import PluginSpec
from harness.store import FINISHED, Store


@dataclass
class Trial:
    """What one trial gave: its stored curve and notes, and its attacked model (None when it diverged)."""

    key: str
    status: str  # done | diverged
    points: list[tuple[float, str, str, float]]  # (x, x_unit, metric, value), as the recorder holds them
    notes: dict
    load_model: Callable[[], object]

    def last(self, metric: str, x_unit: str = "epoch") -> float | None:
        """`metric`'s value at its last recorded `x_unit` point, or None when it recorded none."""
        values = [(x, value) for x, unit, name, value in self.points if unit == x_unit and name == metric]
        return max(values)[1] if values else None


def trial_label(spec: PluginSpec, params: dict) -> str:
    """The plugin and the parameters that differ from its defaults: what `untunable list` shows for a trial."""
    defaults = {p.name: p.default for p in spec.params}
    changed = [f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items() if v != defaults.get(k)]
    return " ".join(["trial", spec.name, *changed])


def trial_cell(parent: Cell, spec: PluginSpec, params: dict) -> Cell:
    """The trial cell of `parent` (an attack cell) running attack `spec` with resolved `params`."""
    versions = {k: v for k, v in parent.versions.items() if not k.startswith("attack:")}
    versions[f"attack:{spec.name}"] = spec.cache_version
    label = trial_label(spec, params)
    config = {**parent.config, "attack": {"plugin": spec.name, "params": params, "label": label},
              "scale": {**parent.config.get("scale", {}), "attack_epochs": params.get("epochs")}}
    return Cell(attack_key("trial", config, parent.seed, versions), "trial", parent.scenario, parent.start, label,
                parent.seed, config, versions, list(parent.deps))


def cell_trials(parent: Cell, runtime) -> Callable:
    """`ctx.trials` of an attack cell: `run(ctx, plugin, params) -> Trial`, each trial a cell in `runtime`'s store."""
    return partial(_run_trial, parent, runtime)


def _run_trial(parent: Cell, runtime, ctx, plugin: str, params: dict) -> Trial:
    from harness.cells import execute
    from harness.plugins import registry

    spec = registry().get("attack", plugin, where=f"trial of {parent.attack!r}")
    cell = trial_cell(parent, spec, spec.resolve(params, f"trial of {parent.attack!r}"))
    with closing(Store(runtime.root)) as store:
        finished = store.status(cell.key) in FINISHED
    if not finished:
        execute(cell, runtime)
    with closing(Store(runtime.root)) as store:
        row = store.cell(cell.key)
        if row["status"] not in FINISHED:
            last = (row["error"] or "").strip().splitlines()[-1:] or ["no error stored"]
            raise RuntimeError(f"{cell.attack} (cell {cell.key[:12]}) {row['status']}: {last[0]}")
        points = [(p["x"], p["x_unit"], p["metric"], p["value"]) for p in store.points(cell.key)]
        notes = store.notes(cell.key)
    return Trial(cell.key, row["status"], points, notes,
                 partial(_stored_model, runtime.root, cell.key, ctx.build_model))


def _stored_model(root: str, key: str, build: Callable):
    """A trial's attacked model from its hash-checked checkpoint (None when it diverged and stored none)."""
    from harness.engine.models import load_model

    with closing(Store(root)) as store:
        path = store.artifact(key)
    return None if path is None else load_model(build(), path)


def identity(plugin: str, params: dict) -> str:
    """What an attack config computes, as its cell's seed derivation reads it (harness/cells.py `_cell_seed`)."""
    return json.dumps({"plugin": plugin, "params": params}, sort_keys=True)
