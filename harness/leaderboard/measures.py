"""Which way a recorded measure is better and how it is shown, read from the plugins that declare it.

A task declares its measures (the first is its score, which ranks a scenario); a defense or attack declares
the extra ones it records (SOPHON: probe_accuracy). The core keeps no table of measure names.
"""

from __future__ import annotations

import math

from harness.plugins import Registry
from harness.registry import ConfigError, Measure, did_you_mean

DEFAULT_TASK = "classification"  # stores written before tasks were plugins carry no scenario.task


def task_of(config: dict) -> str:
    """The task family a cell's stored config names."""
    task = (config.get("scenario") or {}).get("task") or {}
    return str(task.get("name", DEFAULT_TASK) if isinstance(task, dict) else task)


def score_measure(registry: Registry, task: str, where: str) -> Measure:
    """The task's score: its first declared measure."""
    spec = registry.specs.get("task", {}).get(task)
    if spec is None:
        raise ConfigError(f"task {task!r} is not registered by any installed plugin"
                          f"{did_you_mean(task, list(registry.specs.get('task', {})))}", where=where)
    return spec.measures[0]  # registration guarantees at least one


def declared_measures(registry: Registry) -> dict[str, Measure]:
    """Every measure a task, defense or attack declares, by name (tasks first)."""
    declared: dict[str, Measure] = {}
    for kind in ("task", "defense", "attack"):
        for spec in registry.all(kind):
            for measure in spec.measures:
                declared.setdefault(measure.name, measure)
    return declared


def format_amount(value: float | None, unit: str, percent: bool) -> str:
    """One value as the reports show it. `unit` is a Column unit; `percent` says the score measure is a fraction
    shown in %, so scores are shown ×100 and their differences in points."""
    if value is None or not math.isfinite(value):
        return "n/a"
    value += 0.0  # -0.0 (a sign-flipped zero) shows as 0
    if unit == "steps":
        return f"{value:,.0f}"
    if unit == "ratio":
        return f"{value:.3f}"
    if unit == "percent" or (unit in ("score", "delta") and percent):
        return f"{100 * value:.1f}"
    return f"{value:.4g}"


def format_measure(value: float | None, measure: Measure | None) -> str:
    """A recorded value in its measure's own unit (an undeclared measure is shown raw)."""
    return format_amount(value, "score", measure is not None and measure.display == "percent")
