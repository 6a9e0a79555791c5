"""Metrics: run every metric plugin over the curves and label its rows with the unit and direction it declares.

A metric plugin is `factory(curves, **params) -> DataFrame` of per-seed rows (columns CELL + metric, value,
optionally note and censored) registered with `columns=[Column(...)]`; the built-ins live in plugins/metrics/.
"""

from __future__ import annotations

import pandas as pd

from harness.leaderboard.curves import CELL, Curves
from harness.registry import Column, Measure, PluginSpec

PER_SEED = CELL + ["metric", "unit", "better", "measure", "value", "censored", "note"]


def compute_metrics(curves: Curves, metrics: list[PluginSpec]) -> pd.DataFrame:
    """Every metric plugin's per-seed rows, in plugin order; a plugin's parameters take their defaults."""
    frames = []
    for spec in metrics:
        rows = spec.load()(curves, **spec.resolve(None, where=f"metric {spec.name}"))
        missing = [c for c in CELL + ["metric", "value"] if c not in rows]
        if missing:
            raise ValueError(f"metric plugin {spec.name!r} returned no column(s) {missing}")
        declared = {name: _declaration(spec, name) for name in rows.metric.unique()}
        measures = [curves.measures[scenario] for scenario in rows.scenario]
        rows = rows.assign(
            unit=[declared[name].unit for name in rows.metric],
            better=[better(declared[name], m) for name, m in zip(rows.metric, measures)],
            measure=[m.name for m in measures],
            note=rows.note.fillna("") if "note" in rows else "",
            censored=rows.censored.eq(True) if "censored" in rows else False)
        frames.append(rows[PER_SEED])
    return pd.concat(frames, ignore_index=True)


def _declaration(spec: PluginSpec, name: str) -> Column:
    for column in spec.extra.get("columns") or ():
        if column.covers(name):
            return column
    raise ValueError(f"metric plugin {spec.name!r} returned column {name!r}, which its registration does not "
                     "declare: register it with columns=[Column(name, unit, better)]")


def better(column: Column, measure: Measure) -> str:
    """'higher', 'lower' or '' (no direction): which way a column is better for the defense in this scenario."""
    if column.better in ("score", "against-score"):
        return "higher" if measure.higher_is_better == (column.better == "score") else "lower"
    return column.better or ""
