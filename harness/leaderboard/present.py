"""Presentation: the aggregated rows as the reports show them, laid out in sections (scenario × suite).

Units and directions come from the registrations (the task's score measure, the metric's declared columns),
so a loss is never shown as a percentage and "better" follows the measure.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import pandas as pd

from harness.leaderboard.curves import Curves
from harness.leaderboard.measures import format_amount
from harness.plugins import Registry
from harness.registry import Measure


def with_display(table: pd.DataFrame, measures: dict[str, Measure]) -> pd.DataFrame:
    """`display`: each aggregated value as the tables show it ("mean ± std", "> mean" when censored, "n/a")."""
    percent = [measures[scenario].display == "percent" for scenario in table.scenario]
    return table.assign(display=[_display(*row) for row in zip(table["mean"], table["std"], table.censored,
                                                               table.unit, percent)])


def _display(mean: float, std: float, censored: bool, unit: str, percent: bool) -> str:
    shown = format_amount(mean, unit, percent)
    if censored:
        return "> " + shown
    return f"{shown} ± {format_amount(std, unit, percent)}" if math.isfinite(std) else shown


@dataclass
class Matrix:
    """A section's table as reporters lay it out: row labels, metric columns, aggregated records (None = blank)."""

    labels: list[str]
    columns: list[str]
    rows: list[tuple[list[str], list[dict | None]]]
    better: dict[str, str]  # column -> "higher", "lower" or "" (better for the defense)


class ScoreUnits:
    """Formatting for a table whose values are in its `score` measure's unit (or a Column unit derived from it)."""

    score: Measure

    @property
    def percent(self) -> bool:
        return self.score.display == "percent"

    def amount(self, value: float | None, unit: str) -> str:
        """A value of one of this table's columns, in its unit."""
        return format_amount(value, unit, self.percent)


@dataclass
class Section(ScoreUnits):
    """One leaderboard table: a scenario under one attack suite."""

    scenario: str
    suite: str
    score: Measure
    starts: list[str]
    attacks: list[str]
    query_ladders: list[str]  # query ladders (black-box attack configs at a list of budgets): the query table's rows
    seeds: list[int]
    threats: list[str]
    scales: list[str]
    attack_plugins: dict[str, dict]  # label -> {"plugin", "params", "description"}
    defense_plugins: dict[str, dict]  # start -> {"plugin", "params", "description"}
    rows: pd.DataFrame  # this section's aggregated rows
    diverged: list[tuple[str, str, int]]  # (attack, start, seed) of the cells that diverged
    failed: list[tuple[str, str, str, int]]  # (kind, attack, start, seed) of the cells that failed
    chosen: list[tuple[str, str, int, str]]  # (attack, start, seed, what it chose) of attacks that chose (a search)

    @property
    def title(self) -> str:
        return f"{self.scenario} · {self.suite}"

    @property
    def measure(self) -> str:
        return self.score.name

    @property
    def legend(self) -> str:
        """What the numbers are and which way is better, in one line."""
        what = f"restricted-domain {self.measure}" + (" in %" if self.percent else "")
        better = "higher" if self.score.higher_is_better else "lower"
        points = "; drop in points" if self.percent else ""
        return (f"Scores are {what} ({better} is better), {self._spread}{points}; "
                f"R = 0: no protection, 1: as hard as scratch. {self.directions}").rstrip()

    @property
    def directions(self) -> str:
        """Which columns are better high or low for the defense, in one line ('' when none declares a direction)."""
        return _directions(self.rows[~self.rows.attack.isin(self.query_ladders)])

    def matrix(self, per_attack: bool) -> Matrix:
        """The table over the suite (one row per start) or per attack (a query ladder's rows are in `queries`)."""
        if per_attack:
            return self._matrix([attack for attack in self.attacks if attack not in self.query_ladders])
        return self._matrix([""])

    def queries(self) -> Matrix:
        """The query table: per ladder and start, the victim's own score and the copy's at each budget."""
        return self._matrix(self.query_ladders)

    @property
    def queries_legend(self) -> str:
        """What the query table shows, in one line."""
        rows = self.rows[self.rows.attack.isin(self.query_ladders)]
        return (f"One row per query ladder (a black-box attack config at every budget of its list) and start, in "
                f"restricted-domain {self.measure} unless a note names another measure; {self._spread}. "
                f"{_directions(rows)}").rstrip()

    @property
    def _spread(self) -> str:
        seeds = ", ".join(map(str, self.seeds))
        return f"mean ± std over {len(self.seeds)} seeds ({seeds})" if len(self.seeds) > 1 else f"1 seed ({seeds})"

    def _matrix(self, attacks: list[str]) -> Matrix:
        """Rows of `attacks` ("" = over the suite) by start, with every metric they fill as a column."""
        rows = self.rows[self.rows.attack.isin(attacks)]
        columns = list(dict.fromkeys(rows.metric))
        records = {(r["attack"], r["start"], r["metric"]): r for r in rows.to_dict("records")}
        out = []
        for attack in attacks:
            for start in self.starts:
                cells = [records.get((attack, start, metric)) for metric in columns]
                if any(cells):
                    out.append(([attack, start] if attack else [start], cells))
        better = dict(zip(rows.metric, rows.better))
        return Matrix(["attack", "start"] if attacks != [""] else ["start"], columns, out, better)

    def plugins(self) -> list[tuple[str, dict]]:
        """(what, plugin) for the section's attacks and defenses, as their configs used them."""
        return [(f"attack {label}", p) for label, p in self.attack_plugins.items()] + [*self.defense_plugins.items()]

    def notes(self) -> list[tuple[str, str]]:
        """(where, note) for every n/a, censored or caveated value; one line per attack and note text."""
        noted = self.rows[self.rows.note != ""]
        values = [(" · ".join(part for part in (attack, ", ".join(dict.fromkeys(group.metric)),
                                                ", ".join(sorted(set(group.start), key=start_order))) if part), note)
                  for (attack, note), group in noted.groupby(["attack", "note"], sort=False)]
        return values + [(f"{attack} · {start}",
                          f"seed {seed} diverged; its last recorded score is carried to the end of the budget")
                         for attack, start, seed in self.diverged] + [
            (" · ".join(part for part in (attack, start) if part), _failure_note(kind, seed))
            for kind, attack, start, seed in self.failed] + [
            (f"{attack} · {start}", f"seed {seed} chose {what}") for attack, start, seed, what in self.chosen]


def _directions(rows: pd.DataFrame) -> str:
    columns = rows.drop_duplicates("metric")
    parts = [f"{way} {', '.join(columns.metric[columns.better == way])}" for way in ("higher", "lower")
             if (columns.better == way).any()]
    return f"Better for the defense: {'; '.join(parts)}." if parts else ""


def _failure_note(kind: str, seed: int) -> str:
    what = {"attack": f"seed {seed} FAILED and is left out of these numbers",
            "defend": f"the defense FAILED on seed {seed}, so no attack ran from it",
            "pretrain": f"pretraining FAILED on seed {seed}, so nothing that starts from it ran"}[kind]
    return f"{what} (`untunable list` with `--failed` shows why; running again retries it)"


def start_order(start: str) -> tuple:
    """scratch, original, an attack's other reference starts (no-teacher, ...), then the defenses, by name."""
    rank = {"scratch": 0, "original": 1}.get(start, 3 if start.startswith("defense:") else 2)
    return rank, start


def _describe(config: dict | None, kind: str, registry: Registry) -> dict:
    """A plugin's name, parameters and registered description, as a config used it."""
    config = config or {}
    plugin = str(config.get("plugin", ""))
    spec = registry.specs.get(kind, {}).get(plugin)
    return {"plugin": plugin, "params": config.get("params", {}),
            "description": spec.description if spec else "(plugin not installed)"}


def sections(curves: Curves, table: pd.DataFrame, registry: Registry) -> list[Section]:
    """One section per scenario × suite, scenarios by name, suites in plan order."""
    out = []
    ladders = curves.by_queries()
    for (scenario, suite), cells in curves.cells.groupby(["scenario", "suite"], sort=False):
        configs = cells.drop_duplicates("key").config
        laddered = ladders[(ladders.scenario == scenario) & (ladders.suite == suite)]
        out.append(Section(
            scenario=scenario, suite=suite, score=curves.measures[scenario],
            starts=sorted(set(cells.start), key=start_order),
            attacks=list(dict.fromkeys(cells.attack)),
            query_ladders=list(dict.fromkeys(laddered.sort_values("rank", kind="stable").ladder)),
            seeds=sorted(set(cells.seed)),
            threats=sorted({str(c.get("threat", "")) for c in configs} - {""}),
            scales=[s for s in dict.fromkeys(", ".join(f"{k}={json.dumps(v) if isinstance(v, (dict, list)) else v}"
                                                 for k, v in (c.get("scale") or {}).items()) for c in configs) if s],
            attack_plugins={a: _describe(c.get("attack"), "attack", registry)
                            for a, c in zip(cells.attack, cells.config)},
            defense_plugins={s: _describe(c.get("defense"), "defense", registry)
                             for s, c in zip(cells.start, cells.config) if s.startswith("defense:")},
            rows=table[(table.scenario == scenario) & (table.suite == suite)].reset_index(drop=True),
            diverged=list(cells.loc[cells.status == "diverged", ["attack", "start", "seed"]]
                          .itertuples(index=False, name=None)),
            failed=[(f.kind, f.attack, f.start, int(f.seed)) for f in curves.failed.itertuples()
                    if f.scenario == scenario and (pd.isna(f.suite) or f.suite == suite)],
            chosen=_chosen(cells, curves.notes)))
    return sorted(out, key=lambda s: s.scenario)  # stable: suites stay in plan order


def _chosen(cells: pd.DataFrame, notes: dict[str, dict]) -> list[tuple[str, str, int, str]]:
    """What each cell that chose something (a searched attack: its config) says it chose, from its notes."""
    attacks = list(dict.fromkeys(cells.attack))
    chose = [(c.attack, c.start, int(c.seed), str(notes[c.key]["chosen"])) for c in cells.itertuples()
             if "chosen" in notes.get(c.key, {})]
    return sorted(chose, key=lambda row: (attacks.index(row[0]), start_order(row[1]), row[2]))
