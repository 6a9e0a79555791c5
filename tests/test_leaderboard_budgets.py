"""The adversary-budget ladder: final scores of `<scenario>@<budget>` cells side by side, checked by hand."""

from __future__ import annotations

import pytest

from harness.leaderboard import build_leaderboard, write_leaderboard
from harness.leaderboard.budgets import budget_order
from harness.store import Store
from tests.leaderboard_fixtures import _add

# final restricted accuracy (epoch 1) per (budget, start, attack label, seed)
FINAL = {
    ("per_class:5", "scratch", "sgd"): (0.40, 0.50), ("per_class:5", "original", "sgd"): (0.70, 0.80),
    ("per_class:5", "scratch", "adam"): (0.50, 0.50), ("per_class:5", "original", "adam"): (0.60, 0.60),
    ("all", "scratch", "sgd"): (0.90, 0.92), ("all", "original", "sgd"): (0.91, 0.93),
    ("all", "scratch", "adam"): (0.94, 0.96), ("all", "original", "adam"): (0.90, 0.90),
}


def budget_store(root):
    store = Store(root)
    members = []
    for (budget, start, label), values in FINAL.items():
        for seed, value in enumerate(values):
            key = f"{budget}-{start}-{label}-{seed}"
            config = {"scenario": {"name": f"toy@{budget}", "adversary_budget": budget},
                      "attack": {"plugin": "finetune", "params": {"epochs": 1, "optimizer": label}}}
            points = [(epoch, "epoch", "restricted/accuracy", v) for epoch, v in ((0, 0.1), (1, value))]
            _add(store, key, "attack", start, f"ft-{label}", seed, config, points, "done", scenario=f"toy@{budget}")
            members.append((key, "paper", label))
    # a scenario with one budget has no ladder
    _add(store, "lone", "attack", "scratch", "ft-sgd", 0,
         {"scenario": {"name": "lone", "adversary_budget": "all"},
          "attack": {"plugin": "finetune", "params": {"epochs": 1}}},
         [(0, "epoch", "restricted/accuracy", 0.1), (1, "epoch", "restricted/accuracy", 0.5)], "done", scenario="lone")
    store.replace_memberships(members + [("lone", "paper", "sgd")])
    store.close()
    return root


def test_budgets_order_from_least_data_to_most():
    assert sorted(["all", "fraction:0.5", "per_class:20", "per_class:5"], key=budget_order) == \
        ["per_class:5", "per_class:20", "fraction:0.5", "all"]


def test_the_ladder_sets_each_budget_side_by_side(tmp_path):
    board = build_leaderboard(budget_store(tmp_path))
    [ladder] = board.budgets
    assert (ladder.scenario, ladder.suite, ladder.budgets) == ("toy", "paper", ["per_class:5", "all"])
    matrix = ladder.matrix()
    assert matrix.columns == ["per_class:5", "all"]
    shown = {tuple(labels): [cell["display"] for cell in cells] for labels, cells in matrix.rows}
    # sgd from the original at per_class:5: mean(0.70, 0.80) = 75.0, std = 7.1 points
    assert shown[("sgd", "original")] == ["75.0 ± 7.1", "92.0 ± 1.4"]
    assert shown[("adam", "scratch")] == ["50.0 ± 0.0", "95.0 ± 1.4"]
    strongest = ladder.strongest().set_index(["start", "budget"])
    # the strongest attack per start and budget: scratch adam 50 > sgd 45; original sgd 75 > adam 60
    assert strongest.loc[("scratch", "per_class:5")].attack == "adam"
    assert strongest.loc[("original", "per_class:5")].attack == "sgd"
    assert strongest.loc[("original", "per_class:5"), "mean"] == pytest.approx(0.75)
    assert strongest.loc[("original", "all"), "mean"] == pytest.approx(0.92)


def test_every_reporter_shows_the_ladder(tmp_path):
    written = write_leaderboard(budget_store(tmp_path), formats=("md", "html"))
    markdown = (tmp_path / "leaderboard.md").read_text(encoding="utf-8")
    assert "## toy · paper · adversary budget" in markdown
    assert "| sgd | original | 75.0 ± 7.1 | 92.0 ± 1.4 |" in markdown
    html = (tmp_path / "leaderboard.html").read_text(encoding="utf-8")
    assert "toy · paper · adversary budget" in html and "75.0 ± 7.1" in html
    assert any(p.name.startswith("toy-paper-budgets") for p in written)
