"""The leaderboard, computed from the stored curves alone so every number can be re-derived from `points`.

One job per module: `curves` loads the attack curves, `metrics` runs the metric plugins (the built-ins are in
plugins/metrics/), `aggregate` turns per-seed values into mean ± std and a 95 % t-interval, `present` lays the
rows out in sections as the reporters show them, `budgets` sets the final scores side by side per adversary
budget, `measures` reads each measure's direction and display from the plugin that declares it. This module puts them together for the CLI: `write_leaderboard`, `print_leaderboard`.
docs/leaderboard.md states the definitions as implemented.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from functools import cached_property
from pathlib import Path

import pandas as pd

from harness.leaderboard.aggregate import aggregate
from harness.leaderboard.budgets import BudgetLadder, budget_ladders
from harness.leaderboard.curves import Curves, load_curves
from harness.leaderboard.metrics import compute_metrics
from harness.leaderboard.present import Section, sections, with_display
from harness.plugins import Registry, registry as default_registry
from harness.registry import ConfigError, PluginSpec

__all__ = ["Curves", "Leaderboard", "build_leaderboard", "load_curves", "print_leaderboard", "write_leaderboard"]


@dataclass
class Leaderboard:
    """Everything a reporter needs: curves, per-seed and aggregated metrics, and the sections to lay out."""

    results_dir: Path
    curves: Curves
    per_seed: pd.DataFrame
    table: pd.DataFrame
    sections: list[Section]
    budgets: list[BudgetLadder]  # the scenarios that list several adversary budgets
    metrics: list[PluginSpec]
    generated: str

    @cached_property
    def plots(self) -> list:
        """The figures, rendered once however many reporters embed or write them."""
        from harness.report.plots import render

        return render(self)

    def figures(self, title: str) -> list:
        """The plots shown under one table (a Section's or a BudgetLadder's title)."""
        return [plot for plot in self.plots if plot.section == title]

    @cached_property
    def pictures(self) -> dict[tuple, tuple]:
        """The pictures attack cells stored (a task's `render`), per (scenario, suite, attack, start):
        (seed, [Picture]) of the lowest seed that has them. Read from the store, never recomputed."""
        from harness.pictures import shown_pictures

        return shown_pictures(self.results_dir, self.curves.cells)


def build_leaderboard(results_dir: str | Path, suites: list[str] | None = None,
                      registry: Registry | None = None) -> Leaderboard:
    registry = registry or default_registry()
    metrics = sorted(registry.all("metric"), key=lambda s: (s.extra.get("order", 100), s.name))
    if not metrics:
        raise ConfigError("no metric plugins are installed (the built-ins come with untunable's entry points)")
    curves = load_curves(results_dir, suites, registry)
    per_seed = compute_metrics(curves, metrics)
    table = with_display(aggregate(per_seed), curves.measures)
    return Leaderboard(results_dir=Path(results_dir), curves=curves, per_seed=per_seed, table=table,
                       sections=sections(curves, table, registry), budgets=budget_ladders(curves), metrics=metrics,
                       generated=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"))


def write_leaderboard(results_dir: str | Path, formats=("md", "csv", "html", "json"), suites: list[str] | None = None,
                      out_dir: str | Path | None = None, console=None, registry: Registry | None = None) -> list[Path]:
    """Write the leaderboard in every requested format (reporter plugins; "md,csv" strings work too) and,
    given a rich console, print it there as well. Returns the files written."""
    registry = registry or default_registry()
    if isinstance(formats, str):
        formats = [f.strip() for f in formats.split(",") if f.strip()]
    reporters = [registry.get("reporter", name, where="--format") for name in formats]  # fail before computing
    board = build_leaderboard(results_dir, suites, registry)
    out = Path(out_dir) if out_dir is not None else Path(results_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = [Path(p) for spec in reporters for p in spec.load()(board, out)]
    if console is not None:
        from harness.report.terminal import render

        render(board, console)
    return list(dict.fromkeys(written))


def print_leaderboard(results_dir: str | Path, suites: list[str] | None = None, console=None,
                      registry: Registry | None = None) -> None:
    """The leaderboard as rich tables in the terminal."""
    from rich.console import Console

    from harness.report.terminal import render

    render(build_leaderboard(results_dir, suites, registry), console or Console())
