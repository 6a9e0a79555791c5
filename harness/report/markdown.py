"""leaderboard.md: per scenario × suite, the threat model and scale, a table over the suite (one row per start),
a table per attack, the query table (stolen copies against query budget, when a black-box attack ran a ladder),
the notes behind every n/a or censored value, the plugins used, and the PNG plots."""

from __future__ import annotations

import html
import json
import re
from pathlib import Path

from harness.leaderboard import Leaderboard
from harness.leaderboard.present import Matrix, Section
from harness.report import plots

_SPECIAL = re.compile(r"([\\`*_\[\]|])")


def escape(text) -> str:
    """Text from configs and plugins, inert in a markdown table: no HTML, no emphasis, no cell breaks."""
    return _SPECIAL.sub(r"\\\1", html.escape(" ".join(str(text).split()), quote=False))


def write(board: Leaderboard, out_dir: Path) -> list[Path]:
    out_dir = Path(out_dir)
    images = plots.write(board, out_dir)
    path = out_dir / "leaderboard.md"
    path.write_text(render(board), encoding="utf-8")
    return [path, *images]


def render(board: Leaderboard) -> str:
    lines = ["# Leaderboard", "",
             f"Results: `{escape(board.results_dir.name)}` · generated {board.generated} · "
             "95 % t-intervals and per-seed values are in leaderboard.csv, leaderboard.json and leaderboard.html.", "",
             "Metrics: " + "; ".join(f"**{escape(m.name)}**: {escape(m.description)}" for m in board.metrics), ""]
    for section in board.sections:
        lines += _section(section, board.figures(section.title))
    for ladder in board.budgets:
        lines += [f"## {escape(ladder.title)}", "", escape(ladder.legend), "", *_table(ladder.matrix()), "",
                  *_images(board.figures(ladder.title)), ""]
    return "\n".join(lines) + "\n"


def _section(section: Section, figures: list) -> list[str]:
    lines = [f"## {escape(section.scenario)} · suite {escape(section.suite)}", ""]
    lines += [f"**Threat model.** {escape(threat)}  " for threat in section.threats]
    lines += [f"**Scale.** {escape(scale)}  " for scale in section.scales]
    lines += [escape(section.legend), "", "### Over the suite", "", *_table(section.matrix(False)),
              "", "### Per attack", "", *_table(section.matrix(True)), ""]
    if section.query_ladders:
        lines += ["### Against queries", "", escape(section.queries_legend), "", *_table(section.queries()), ""]
    notes = section.notes()
    if notes:
        lines += ["Notes:", "", *[f"- {escape(where)}: {escape(note)}" for where, note in notes], ""]
    lines += ["Plugins:", ""]
    lines += [f"- {escape(name)}: {escape(p['plugin'])} {escape(json.dumps(p['params'], sort_keys=True))}"
              f" — {escape(p['description'])}" for name, p in section.plugins()]
    lines.append("")
    lines += _images(figures)
    return lines + [""]


def _images(figures: list) -> list[str]:
    return [f"![{escape(f.title)}](plots/{f.name}.png)" for f in figures]


def _table(matrix: Matrix) -> list[str]:
    header = matrix.labels + matrix.columns
    lines = ["| " + " | ".join(escape(h) for h in header) + " |",
             "|" + "|".join(["---"] * len(matrix.labels) + ["---:"] * len(matrix.columns)) + "|"]
    for labels, cells in matrix.rows:
        shown = [escape(label) for label in labels] + [escape(c["display"]) if c else "—" for c in cells]
        lines.append("| " + " | ".join(shown) + " |")
    return lines
