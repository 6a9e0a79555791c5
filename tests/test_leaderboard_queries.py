"""The query table: stolen copies against query budget, next to the victim's own, by hand on a constructed store."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from harness.leaderboard import build_leaderboard, write_leaderboard
from tests.leaderboard_fixtures import STEAL, STEAL_ENCODER, build_query_store, built_in_registry


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> Path:
    return build_query_store(tmp_path_factory.mktemp("queries"))


@pytest.fixture(scope="module")
def board(results):
    return build_leaderboard(results, registry=built_in_registry())


def row(board, metric, start, scenario=STEAL, attack="extract") -> dict:
    table = board.table
    match = table[(table.scenario == scenario) & (table.start == start) & (table.attack == attack)
                  & (table.metric == metric)]
    assert len(match) == 1, (metric, start, scenario)
    return match.iloc[0].to_dict()


def section(board, scenario):
    return next(s for s in board.sections if s.scenario == scenario)


def test_copies_at_each_budget_by_hand(board):
    copy = row(board, "copy@100", "original")
    assert copy["per_seed"] == pytest.approx({0: 0.60, 1: 0.64})
    assert copy["mean"] == pytest.approx(0.62) and copy["std"] == pytest.approx(0.04 / math.sqrt(2))
    assert copy["display"] == "62.0 ± 2.8" and copy["better"] == "lower" and copy["note"] == ""
    assert row(board, "copy@400", "defense:noise")["display"] == "30.0 ± 7.1"  # (0.25 + 0.35) / 2, std 0.1/√2


def test_the_victim_is_the_mean_of_its_ladder_cells_per_seed(board):
    victim = row(board, "victim", "original")
    assert victim["per_seed"] == pytest.approx({0: (0.90 + 0.92) / 2, 1: 0.88})
    assert victim["display"] == "89.5 ± 2.1" and victim["better"] == "higher"  # std |0.91 − 0.88| / √2
    assert row(board, "victim", "defense:noise")["per_seed"] == pytest.approx({0: 0.89, 1: 0.87})


def test_a_budget_not_fully_spent_is_noted_on_its_seed(board):
    assert row(board, "copy@400", "defense:noise")["note"] == (
        "seed 1: spent 300 queries: every image the adversary holds")
    assert row(board, "copy@400", "original")["note"] == ""


def test_the_ladder_is_its_own_table_with_budgets_in_order(board):
    steal = section(board, STEAL)
    assert steal.query_ladders == ["extract"] and steal.attacks == ["extract queries=100", "extract queries=400"]
    table = steal.queries()
    assert table.labels == ["attack", "start"] and table.columns == ["victim", "copy@100", "copy@400"]
    assert [labels for labels, _ in table.rows] == [["extract", "original"], ["extract", "defense:noise"]]
    assert [c["display"] for c in table.rows[0][1]] == ["89.5 ± 2.1", "62.0 ± 2.8", "82.0 ± 2.8"]
    per_attack = steal.matrix(True)
    assert per_attack.rows and not any(c.startswith(("copy@", "victim")) for c in per_attack.columns)
    assert "victim" in steal.queries_legend and "copy@" not in steal.directions


def test_an_encoder_ladder_is_scored_by_its_probe_and_says_so(board):
    encoder = section(board, STEAL_ENCODER)  # no epoch score at all: the section exists for its ladder
    copy, victim = row(board, "copy@50", "original", STEAL_ENCODER), row(board, "victim", "original", STEAL_ENCODER)
    assert copy["mean"] == pytest.approx(0.60) and victim["mean"] == pytest.approx(0.81)
    assert copy["note"] == victim["note"] == "restricted probe_accuracy"
    assert encoder.queries().columns == ["victim", "copy@50"] and encoder.matrix(True).rows == []


def test_every_report_shows_the_query_table_and_plot(results, tmp_path):
    written = write_leaderboard(results, formats="md,html,csv,json", out_dir=tmp_path, registry=built_in_registry())
    markdown = (tmp_path / "leaderboard.md").read_text()
    assert markdown.count("### Against queries") == 2
    assert "| extract | defense:noise | 88.0 ± 1.4 | 25.0 ± 7.1 | 30.0 ± 7.1 |" in markdown
    page = (tmp_path / "leaderboard.html").read_text()
    assert 'id="s0-queries"' in page and 'id="s1-queries"' in page
    assert "copy@400" in (tmp_path / "leaderboard.csv").read_text()
    plots = [p for p in written if "-queries-" in p.name and "-curve-" not in p.name]
    assert len(plots) == 2 and all(p.read_bytes()[:4] == b"\x89PNG" for p in plots)
