"""Loading: the stored attack curves of a results directory, read with pandas, on each attack's epoch grid.

Every leaderboard number is derived from what this returns, so it can be recomputed from the store's `points`.
"""

from __future__ import annotations

import json
import sqlite3
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from harness.leaderboard.measures import score_measure, task_of
from harness.plugins import Registry, registry as default_registry
from harness.registry import ConfigError, Measure, did_you_mean
from harness.store import DB_NAME, FINISHED

NO_SUITE = "(no suite)"  # attack cells that no suite lists are still ranked, under this name

CELL = ["scenario", "suite", "start", "attack", "seed"]
PAIR = ["scenario", "suite", "attack", "seed"]  # a cell's baselines share these with it
PER_START = ["scenario", "suite", "start", "seed"]


@dataclass
class Curves:
    """The stored attack curves. `cells` has one row per (attack cell, suite membership); values are the
    scenario's score measure (`measures[scenario]`, declared by its task), with `sign` = +1 when higher is better."""

    # key, scenario, suite, attack (its label in the suite), attack_id (cells.attack), start, seed, status,
    # config (parsed config_json), measure, sign
    cells: pd.DataFrame
    epochs: pd.DataFrame  # key, epoch, value: on the attack's epoch grid, carried forward after a divergence
    steps: pd.DataFrame  # key, step, value
    original: pd.DataFrame  # key, value: original-domain score at epoch 0
    queries: pd.DataFrame  # key, budget, spent, copy_measure, value, victim: a stolen copy's score at its budget
    points: pd.DataFrame  # key, x, x_unit, metric, value: every stored point, for metrics needing other measures
    measures: dict[str, Measure]  # scenario -> its score measure
    failed: pd.DataFrame  # kind, scenario, suite (None = every suite), attack, start, seed: failed cells
    notes: dict[str, dict] = field(default_factory=dict)  # key -> the cell's notes (counters; what it chose)

    def by_epoch(self) -> pd.DataFrame:
        return self.cells.merge(self.epochs, on="key")

    def final(self) -> pd.DataFrame:
        """Each cell's score at the last epoch of its attack's budget."""
        curve = self.by_epoch()
        return curve[curve.epoch == curve.groupby("key").epoch.transform("max")]

    def by_step(self) -> pd.DataFrame:
        return self.cells.merge(self.steps, on="key")

    def by_queries(self) -> pd.DataFrame:
        """The cells scored against a query budget, each with its `ladder`: the label without `queries=<budget>`,
        so one attack config's cells at every budget of a list line up."""
        out = self.cells.merge(self.queries, on="key")
        return out.assign(ladder=[ladder_label(label, budget) for label, budget in zip(out.attack, out.budget)])


def ladder_label(label: str, budget: float) -> str:
    """An attack label without the `queries=<budget>` part that a list of budgets adds to it."""
    kept = [part for part in label.split(" ") if part != f"queries={budget:g}"]
    return " ".join(kept) or label


def load_curves(results_dir: str | Path, suites: list[str] | None = None,
                registry: Registry | None = None) -> Curves:
    """Finished attack cells (done or diverged) and their score curves, restricted to `suites` if given."""
    path = Path(results_dir) / DB_NAME
    if not path.is_file():
        raise ConfigError(f"no result store at {path} (run `untunable run` first)")
    finished = ", ".join("?" * len(FINISHED))
    with closing(sqlite3.connect(path)) as db:
        cells = pd.read_sql("SELECT rowid AS rank, key, scenario, start, attack AS attack_id, seed, status, "
                            f"config_json FROM cells WHERE kind = 'attack' AND status IN ({finished}) ORDER BY rowid",
                            db, params=FINISHED)
        points = pd.read_sql("SELECT p.key, p.x, p.x_unit, p.metric, p.value FROM points p JOIN cells c "
                             f"ON c.key = p.key WHERE c.kind = 'attack' AND c.status IN ({finished})",
                             db, params=FINISHED)
        members = pd.read_sql("SELECT rowid AS member_rank, key, suite, label AS attack FROM memberships "
                              "ORDER BY rowid", db)
        failed = _failed_cells(db)
        notes = dict(db.execute("SELECT n.key, n.json FROM notes n JOIN cells c ON c.key = n.key WHERE "
                                f"c.kind = 'attack' AND c.status IN ({finished})", FINISHED).fetchall())
    if not members.empty:  # cells of an earlier plan (the experiment file changed since) are stale
        cells = cells[cells.key.isin(members.key)]
    if cells.empty:
        raise ConfigError(f"{path}: no finished attack cells yet")
    cells = cells.merge(members, on="key", how="left")
    unlisted = cells.suite.isna()
    cells.loc[unlisted, "suite"] = NO_SUITE
    cells.loc[unlisted, "attack"] = cells.attack_id[unlisted]
    cells["rank"] = cells.member_rank.fillna(cells["rank"] + 1e9)  # listed cells in plan order, unlisted after
    if suites:
        unknown = [s for s in suites if s not in set(cells.suite)]
        if unknown:
            raise ConfigError(f"no finished attack cells in suite {unknown[0]!r}"
                              f"{did_you_mean(unknown[0], sorted(set(cells.suite)))}", where="--suite")
        cells = cells[cells.suite.isin(suites)]

    cells["config"] = cells.config_json.map(json.loads)
    measures = _score_measures(cells, registry or default_registry(), path)
    cells["measure"] = cells.scenario.map({scenario: m.name for scenario, m in measures.items()})
    per_epoch = points[(points.x_unit == "epoch")].merge(cells[["key", "measure"]].drop_duplicates("key"), on="key")
    queries = _query_scores(points, cells.drop_duplicates("key"))
    scored = set(per_epoch.key[per_epoch.metric == "restricted/" + per_epoch.measure]) | set(queries.key)
    cells = cells[cells.scenario.isin(set(cells.scenario[cells.key.isin(scored)]))]
    if cells.empty:
        wanted = ", ".join(sorted({"restricted/" + m.name for m in measures.values()}))
        raise ConfigError(f"{path}: no attack cell recorded its task's score per epoch ({wanted}) or a restricted "
                          "score against queries")
    cells["sign"] = cells.scenario.map({scenario: m.sign for scenario, m in measures.items()})
    cells["seed"] = cells.seed.astype(int)
    cells = cells.sort_values(["scenario", "rank"], kind="stable").drop(columns=["config_json", "member_rank"])

    unique = cells.drop_duplicates("key")[["key", "scenario", "attack_id", "measure", "config"]]
    scored = points.merge(unique, on="key")
    score = scored[scored.metric == "restricted/" + scored.measure]
    original = scored[(scored.metric == "original/" + scored.measure) & (scored.x_unit == "epoch") & (scored.x == 0)]
    steps = score[(score.x_unit == "step") & score.value.notna()]
    return Curves(cells=cells.reset_index(drop=True),
                  epochs=_carry_forward(score[score.x_unit == "epoch"]),
                  steps=steps.rename(columns={"x": "step"})[["key", "step", "value"]],
                  original=original[["key", "value"]].dropna(),
                  queries=queries[queries.key.isin(unique.key)].reset_index(drop=True),
                  points=points[points.key.isin(unique.key)].reset_index(drop=True),
                  measures={s: m for s, m in measures.items() if s in set(cells.scenario)},
                  failed=failed, notes={key: json.loads(notes[key]) for key in unique.key if key in notes})


def _query_scores(points: pd.DataFrame, cells: pd.DataFrame) -> pd.DataFrame:
    """Per cell that recorded a restricted measure against `queries` (a black-box copy): its budget (the attack's
    `queries` parameter), the queries it spent, the measure (the scenario's score when recorded, else the first
    other by name: an encoder copy's probe_accuracy), its value there, and the victim's own value of that measure
    (`restricted/victim_<measure>`, recorded by the runner; NaN when absent)."""
    against = points[(points.x_unit == "queries") & points.metric.str.startswith("restricted/")]
    against = against.merge(cells[["key", "measure", "config"]], on="key")
    if against.empty:
        return pd.DataFrame(columns=["key", "budget", "spent", "copy_measure", "value", "victim"])
    against = against.assign(name=against.metric.str.removeprefix("restricted/"))
    against = against.assign(rank=(against.name != against.measure).astype(int))
    out = against.sort_values(["key", "rank", "name", "x"], ascending=[True, True, True, False]).drop_duplicates("key")
    out = out.assign(spent=out.x,
                     budget=[float((c.get("attack") or {}).get("params", {}).get("queries", x))
                             for c, x in zip(out.config, out.x)])
    victims = points[points.metric.str.startswith("restricted/victim_")]
    victims = victims.assign(name=victims.metric.str.removeprefix("restricted/victim_"))
    victims = victims.groupby(["key", "name"], as_index=False).value.mean().rename(columns={"value": "victim"})
    out = out.merge(victims, on=["key", "name"], how="left").rename(columns={"name": "copy_measure"})
    return out[["key", "budget", "spent", "copy_measure", "value", "victim"]].reset_index(drop=True)


def _failed_cells(db) -> pd.DataFrame:
    """Failed attack cells of the current plan (by their suite label), and failed pretrain and defend cells that
    no later run of the same start and seed replaced: the leaderboard names them instead of hiding them."""
    return pd.read_sql(
        "SELECT c.kind, c.scenario, m.suite, m.label AS attack, c.start, c.seed FROM cells c "
        "JOIN memberships m ON m.key = c.key WHERE c.kind = 'attack' AND c.status = 'failed' "
        "UNION ALL SELECT f.kind, f.scenario, NULL, '', f.start, f.seed FROM cells f "
        "WHERE f.kind IN ('pretrain', 'defend') AND f.status = 'failed' AND NOT EXISTS (SELECT 1 FROM cells d "
        "WHERE d.kind = f.kind AND d.scenario = f.scenario AND d.start = f.start AND d.seed = f.seed "
        "AND d.status = 'done') ORDER BY 1, 2, 5, 6", db)


def _score_measures(cells: pd.DataFrame, registry: Registry, path: Path) -> dict[str, Measure]:
    """Per scenario, its task's score measure (a scenario's cells share one task)."""
    tasks = cells.drop_duplicates("scenario").set_index("scenario").config.map(task_of)
    return {scenario: score_measure(registry, task, where=f"{path}: scenario {scenario!r}")
            for scenario, task in tasks.items()}


def _carry_forward(points: pd.DataFrame) -> pd.DataFrame:
    """Every cell's curve on its attack's common epoch grid (the epochs any start recorded, up to the configured
    budget). A curve that stops early (a diverged cell) keeps its last recorded value: the attack failed to learn."""
    frames = []
    for _, group in points.groupby(["scenario", "attack_id"]):
        recorded = set(group.x)
        budget = group.config.map(lambda c: (c.get("attack") or {}).get("params", {}).get("epochs")).dropna()
        last = int(max(recorded))
        tail = range(last + 1, int(budget.max()) + 1) if len(budget) else ()
        grid = pd.Index(sorted(recorded | {float(t) for t in tail}), name="epoch")
        wide = group.pivot_table(index="x", columns="key", values="value", aggfunc="last").reindex(grid).ffill()
        frames.append(wide.melt(ignore_index=False, value_name="value").reset_index())
    if not frames:
        return pd.DataFrame(columns=["epoch", "key", "value"])
    return pd.concat(frames, ignore_index=True).dropna(subset=["value"])
