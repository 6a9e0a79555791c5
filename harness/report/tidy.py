"""Machine-readable outputs: leaderboard.csv (tidy, one row per start × attack × metric) and leaderboard.json
(the same rows grouped by section, with the threat model, scale and plugins). Values are raw (fractions stay
fractions); `display` is what the tables show; `better` is which way is better for the defense ('' = none).
An empty attack means a value over the whole suite."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pandas as pd

from harness.leaderboard import Leaderboard

COLUMNS = ["scenario", "suite", "start", "attack", "metric", "unit", "better", "measure", "n_seeds", "mean", "std",
           "ci_low", "ci_high", "censored", "na", "display", "note", "per_seed"]


# A spreadsheet evaluates a cell starting with one of these as a formula (=HYPERLINK(...), +cmd|...).
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
PLAIN_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?%?")


def neutralise(value):
    """A text cell a spreadsheet would run as a formula, prefixed with ' so it is shown as text; numbers pass."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS) and not PLAIN_NUMBER.fullmatch(value):
        return "'" + value
    return value


def write_csv(board: Leaderboard, out_dir: Path) -> list[Path]:
    path = Path(out_dir) / "leaderboard.csv"
    table = board.table[COLUMNS].assign(per_seed=board.table.per_seed.map(lambda d: json.dumps(d, sort_keys=True)))
    table = table.apply(lambda column: column if pd.api.types.is_numeric_dtype(column) else column.map(neutralise))
    table.to_csv(path, index=False)
    return [path]


def write_json(board: Leaderboard, out_dir: Path) -> list[Path]:
    path = Path(out_dir) / "leaderboard.json"
    document = {
        "results_dir": str(board.results_dir),
        "generated": board.generated,
        "metrics": [{"name": m.name, "description": m.description, "version": m.version,
                     "distribution": m.distribution} for m in board.metrics],
        "sections": [{"scenario": s.scenario, "suite": s.suite, "measure": s.measure, "legend": s.legend,
                      "score": {"name": s.score.name, "higher_is_better": s.score.higher_is_better,
                                "display": s.score.display},
                      "threat": s.threats, "scale": s.scales, "seeds": s.seeds, "starts": s.starts,
                      "attacks": s.attack_plugins, "defenses": s.defense_plugins, "rows": _records(s.rows[COLUMNS]),
                      "chosen": [{"attack": attack, "start": start, "seed": seed, "chose": what}
                                 for attack, start, seed, what in s.chosen]}
                     for s in board.sections],
    }
    path.write_text(json.dumps(document, indent=1, allow_nan=False) + "\n", encoding="utf-8")
    return [path]


def _records(frame: pd.DataFrame) -> list[dict]:
    """Rows as JSON-ready dicts: NaN becomes null."""
    return [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}
            for row in frame.to_dict("records")]
