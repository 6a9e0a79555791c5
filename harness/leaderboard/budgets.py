"""The adversary-budget ladder: final restricted score against how much restricted data the adversary holds.

A scenario listing several `adversary_budgets` runs as one scenario per budget (`<name>@<budget>`, see
docs/protocol.md); this puts them back side by side, for scratch, the original and every defense, so a reader
sees where pretraining (and so a defense) matters: R is only defined where the original beats scratch.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from harness.leaderboard.aggregate import aggregate
from harness.leaderboard.curves import Curves
from harness.leaderboard.present import Matrix, ScoreUnits, start_order, with_display
from harness.registry import Measure


def budget_order(budget: str) -> tuple:
    """per_class:n by n, then fraction:f by f, then all: from the least data to the most."""
    head, _, amount = budget.partition(":")
    return {"per_class": 0, "fraction": 1}.get(head, 2), float(amount or 0)


@dataclass
class BudgetLadder(ScoreUnits):
    """One scenario under one suite at every adversary budget it lists."""

    scenario: str  # the scenario's own name, without the `@<budget>` suffix
    suite: str
    score: Measure
    budgets: list[str]  # least data first
    starts: list[str]
    attacks: list[str]
    rows: pd.DataFrame  # aggregated: one row per (attack, start, budget) with `metric` = the budget

    @property
    def title(self) -> str:
        return f"{self.scenario} · {self.suite} · adversary budget"

    @property
    def legend(self) -> str:
        better = "higher" if self.score.higher_is_better else "lower"
        return (f"Final restricted-domain {self.score.name}" + (" in %" if self.percent else "")
                + f" ({better} is better for the attacker) against the adversary's data budget, "
                  "mean ± std over seeds; the pretraining and defense cells are the same at every budget.")

    def matrix(self) -> Matrix:
        """Rows attack × start, one column per budget."""
        records = {(r["attack"], r["start"], r["metric"]): r for r in self.rows.to_dict("records")}
        out = [([attack, start], [records.get((attack, start, budget)) for budget in self.budgets])
               for attack in self.attacks for start in self.starts
               if any((attack, start, budget) in records for budget in self.budgets)]
        return Matrix(["attack", "start"], list(self.budgets), out, {})

    def strongest(self) -> pd.DataFrame:
        """Per start and budget, the suite's strongest attack (best mean final score for the attacker):
        start, budget, attack, mean, std."""
        sign = 1 if self.score.higher_is_better else -1
        ranked = self.rows.assign(rank=sign * self.rows["mean"]).sort_values("rank", ascending=False, kind="stable")
        best = ranked.drop_duplicates(["start", "metric"]).rename(columns={"metric": "budget"})
        return best[["start", "budget", "attack", "mean", "std"]]


def budget_ladders(curves: Curves) -> list[BudgetLadder]:
    """A ladder for every scenario that lists two or more adversary budgets, per suite."""
    final = curves.final()
    if final.empty:
        return []
    budget = final.config.map(lambda c: c["scenario"].get("adversary_budget", "all"))
    base = [scenario[:-len(b) - 1] if scenario.endswith("@" + b) else scenario
            for scenario, b in zip(final.scenario, budget)]
    final = final.assign(budget=budget, base=base)
    ladders = []
    for (scenario, suite), group in final.groupby(["base", "suite"], sort=True):
        budgets = sorted(set(group.budget), key=budget_order)
        if len(budgets) < 2:
            continue
        measure = curves.measures[group.scenario.iloc[0]]
        per_seed = pd.DataFrame({
            "scenario": scenario, "suite": suite, "start": group.start, "attack": group.attack,
            "metric": group.budget, "unit": "score", "better": "", "measure": measure.name,
            "seed": group.seed, "value": group.value, "censored": False, "note": ""})
        rows = with_display(aggregate(per_seed), {scenario: measure})
        ladders.append(BudgetLadder(scenario, suite, measure, budgets, sorted(set(group.start), key=start_order),
                                    list(dict.fromkeys(group.attack)), rows))
    return ladders
