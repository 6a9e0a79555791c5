"""Leaderboard metrics against hand-computed values, and the written files against the store they came from."""

from __future__ import annotations

import csv
import html
import json
import math
import re
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest
from scipy import stats

from harness import Column, hookimpl
from harness.leaderboard import build_leaderboard, print_leaderboard, write_leaderboard
from harness.registry import ConfigError
from tests.leaderboard_fixtures import build_store, built_in_registry, stored_points

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> Path:
    return build_store(tmp_path_factory.mktemp("results"))


@pytest.fixture(scope="module")
def board(results):
    return build_leaderboard(results, registry=built_in_registry())


def row(board, metric, start, attack="", suite="paper") -> dict:
    table = board.table
    match = table[(table.suite == suite) & (table.start == start) & (table.attack == attack) & (table.metric == metric)]
    assert len(match) == 1, (metric, start, attack, suite)
    return match.iloc[0].to_dict()


def per_seed(board, metric, start, attack="", suite="paper") -> dict:
    return row(board, metric, start, attack, suite)["per_seed"]


def test_resistance_by_hand(board):
    # R = (A_P − A_D) / (A_P − A_S) at epoch 3, scratch paired on attack config and seed
    r = row(board, "R", "defense:x", "sgd")
    assert r["per_seed"] == pytest.approx({0: (0.98 - 0.38) / (0.98 - 0.58), 1: (0.96 - 0.16) / (0.96 - 0.56)})
    assert r["mean"] == pytest.approx(1.75) and r["std"] == pytest.approx(math.sqrt(0.125))
    half = stats.t.ppf(0.975, 1) * math.sqrt(0.125) / math.sqrt(2)
    assert (r["ci_low"], r["ci_high"]) == pytest.approx((1.75 - half, 1.75 + half))
    assert r["display"] == "1.750 ± 0.354"
    assert per_seed(board, "R", "original", "sgd") == {0: 0.0, 1: 0.0}
    assert per_seed(board, "R", "scratch", "sgd") == pytest.approx({0: 1.0, 1: 1.0})


def test_resistance_is_na_when_scratch_is_within_two_points(board):
    # adam: A_P − A_S = 0.90 − 0.89 = 1 point (seed 0) and 0.90 − 0.91 = −1 point (seed 1)
    r = row(board, "R", "defense:x", "adam")
    assert r["na"] and r["display"] == "n/a" and math.isnan(r["mean"])
    assert "seed 0: A_P − A_S = 1.0 points, under 2.0 points" in r["note"]
    assert "seed 1: A_P − A_S = -1.0 points" in r["note"]
    assert row(board, "AUC_norm", "defense:x", "adam")["na"]


def test_resistance_tuned_uses_scratch_best(board):
    # scratch@best in "paper" is adam (mean final 0.90 > 0.57): per seed 0.89 and 0.91
    best = row(board, "scratch@best", "scratch")
    assert best["per_seed"] == {0: 0.89, 1: 0.91} and best["note"] == "config adam"
    assert per_seed(board, "R_tuned", "defense:x", "sgd") == pytest.approx(
        {0: (0.98 - 0.38) / (0.98 - 0.89), 1: (0.96 - 0.16) / (0.96 - 0.91)})
    assert row(board, "R_tuned", "defense:x", "adam")["na"]
    # in "optimizers" the only scratch config is the paired one: R_tuned = R
    assert per_seed(board, "R_tuned", "defense:x", "momentum", "optimizers") == pytest.approx({0: 1.5, 1: 2.0})


def test_auc_by_hand(board):
    # AUC = (1/T) Σ_{t=1..T} A(t); the diverged seed-1 curve [0.10, 0.16] is carried to [.., 0.16, 0.16, 0.16]
    assert per_seed(board, "AUC", "defense:x", "sgd") == pytest.approx({0: (0.10 + 0.20 + 0.38) / 3, 1: 0.16})
    assert per_seed(board, "AUC", "original", "sgd") == pytest.approx({0: 2.48 / 3, 1: 2.56 / 3})
    assert per_seed(board, "AUC_norm", "defense:x", "sgd") == pytest.approx(
        {0: (2.48 - 0.68) / (2.48 - 1.38), 1: (2.56 - 0.48) / (2.56 - 1.16)})


def test_scratch_best_is_chosen_on_the_validation_slice_not_the_test_set(tmp_path):
    """With the validation curves favouring sgd, scratch@best is sgd and reports sgd's *test* scores, although
    adam's test scores are higher; without validation curves no config is chosen at all."""
    import sqlite3

    root = build_store(tmp_path / "r")
    with sqlite3.connect(root / "results.sqlite") as db:
        db.execute("UPDATE points SET value = 0.99 WHERE metric = 'restricted_val/accuracy' AND x_unit = 'epoch' "
                   "AND x = 3 AND key LIKE 'ft-sgd-scratch-%'")
    best = row(build_leaderboard(root, registry=built_in_registry()), "scratch@best", "scratch")
    assert best["note"] == "config sgd" and best["per_seed"] == {0: 0.58, 1: 0.56}
    with sqlite3.connect(root / "results.sqlite") as db:
        db.execute("DELETE FROM points WHERE metric LIKE 'restricted_val/%'")
    table = build_leaderboard(root, registry=built_in_registry()).table
    assert table[(table.metric == "scratch@best")].empty


def test_worst_case_is_over_the_attacks_every_seed_ran(tmp_path):
    """An attack missing a seed leaves the set for every seed (listed), instead of mixing attack sets."""
    import sqlite3

    root = build_store(tmp_path / "r")
    with sqlite3.connect(root / "results.sqlite") as db:  # adam's defense cell of seed 1 is gone
        db.execute("DELETE FROM points WHERE key = 'ft-adam-defense-1'")
        db.execute("DELETE FROM cells WHERE key = 'ft-adam-defense-1'")
    worst = row(build_leaderboard(root, registry=built_in_registry()), "worst_case", "defense:x")
    assert worst["per_seed"] == {0: 0.38, 1: 0.16}  # sgd only: adam (0.92 on seed 0) is not in every seed's set
    assert worst["note"] == "left out: adam (not run for every seed)"


def test_steps_to_scratch_by_hand(board):
    # target = scratch@best's final score per seed (0.89, 0.91); 10 steps per epoch, budget 30 steps
    original = row(board, "steps_to_scratch", "original", "sgd")
    assert original["per_seed"] == {0: 20.0, 1: 30.0} and not original["censored"] and original["display"] == "25 ± 7"
    assert per_seed(board, "steps_to_scratch", "defense:x", "adam") == {0: 30.0, 1: 30.0}


def test_steps_to_scratch_censored(board):
    never = row(board, "steps_to_scratch", "defense:x", "sgd")  # seed 1 diverged at step 10: censored at 30 too
    assert never["censored"] and never["display"] == "> 30" and never["note"] == "not reached within 30 steps"
    partly = row(board, "steps_to_scratch", "original", "adam")  # seed 0 at step 20, seed 1 never
    assert partly["censored"] and partly["display"] == "> 25"
    assert partly["note"] == "seed 1: not reached within 30 steps"


def test_worst_case_intactness_and_scores(board):
    assert per_seed(board, "worst_case", "defense:x") == {0: 0.92, 1: 0.93}
    assert per_seed(board, "worst_case", "defense:x", suite="optimizers") == {0: 0.38, 1: 0.16}
    worst_r = row(board, "worst_case_R", "defense:x")
    assert worst_r["per_seed"] == pytest.approx({0: 1.5, 1: 2.0})
    assert worst_r["note"] == "left out: adam (R n/a (A_P − A_S = 1.0 points, under 2.0 points))"
    # O@0 is the released model's score; ft-adam re-initialised its head first (0.10) and is skipped
    assert per_seed(board, "O@0", "defense:x") == {0: 0.87, 1: 0.86}
    assert per_seed(board, "intactness", "defense:x") == pytest.approx({0: 0.87 / 0.90, 1: 0.86 / 0.90})
    assert per_seed(board, "drop", "defense:x") == pytest.approx({0: 0.03, 1: 0.04})
    assert row(board, "drop", "defense:x")["display"] == "3.5 ± 0.7"
    assert per_seed(board, "score@3", "defense:x", "sgd") == {0: 0.38, 1: 0.16}
    assert sorted(set(board.table.metric[board.table.metric.str.startswith("score@")])) == \
        ["score@0", "score@1", "score@3"]
    assert set(board.table.start) == {"scratch", "original", "defense:x"}  # failed and pretrain cells ignored
    assert not board.table[(board.table.start == "scratch") & (board.table.metric == "intactness")].size


def test_failed_cells_are_named_in_the_notes(board):
    paper, optimizers = (next(s for s in board.sections if s.suite == suite) for suite in ("paper", "optimizers"))
    notes = dict(paper.notes())
    assert notes["sgd · original"].startswith("seed 0 FAILED and is left out of these numbers")
    assert "running again retries it" in notes["sgd · original"]
    assert notes["defense:y"].startswith("the defense FAILED on seed 1")
    assert "momentum · original" not in dict(optimizers.notes())  # the failed cell is listed in paper only
    assert dict(optimizers.notes())["defense:y"] == notes["defense:y"]


def _md_tables(text: str) -> dict[str, list[list[str]]]:
    """Markdown tables by the '## ' heading above them: header row and body rows, cells unescaped."""
    tables, heading = defaultdict(list), None
    for line in text.splitlines():
        if line.startswith("## "):
            heading = line[3:]
        elif line.startswith("|") and not line.startswith("|---"):
            cells = [html.unescape(re.sub(r"\\(.)", r"\1", c.strip())) for c in line.strip("|").split(" | ")]
            tables[heading].append(cells)
    return tables


def _by_hand(points: list[dict]) -> dict:
    """score@t from raw points: per (suite, label, start, t), the mean over seeds of the last value at epoch ≤ t."""
    curves = defaultdict(dict)
    for p in points:
        if p["x_unit"] == "epoch" and p["metric"] == "restricted/accuracy":
            curves[(p["suite"], p["label"], p["start"], p["seed"])][p["x"]] = p["value"]
    means = defaultdict(list)
    for (suite, label, start, seed), curve in curves.items():
        for t in (0, 1, 3):
            means[(suite, label, start, f"score@{t}")].append(curve[max(x for x in curve if x <= t)])
    return {key: sum(v) / len(v) for key, v in means.items()}


def test_written_files_match_the_store(results, tmp_path):
    out = tmp_path / "site"
    paths = write_leaderboard(results, out_dir=out, registry=built_in_registry())
    names = {p.name for p in paths}
    assert {"leaderboard.md", "leaderboard.csv", "leaderboard.html", "leaderboard.json"} <= names
    assert not (results / "leaderboard.md").exists()

    rows = list(csv.DictReader((out / "leaderboard.csv").open(encoding="utf-8")))
    keys = [(r["scenario"], r["suite"], r["start"], r["attack"], r["metric"]) for r in rows]
    assert len(keys) == len(set(keys))  # tidy: one row per start × attack × metric
    csv_rows = {k[1:]: r for k, r in zip(keys, rows)}
    expected = _by_hand(stored_points(results))
    assert expected
    for (suite, label, start, metric), mean in expected.items():
        stored = csv_rows[(suite, start, label, metric)]
        assert float(stored["mean"]) == pytest.approx(mean)
        assert len(json.loads(stored["per_seed"])) == 2

    document = json.loads((out / "leaderboard.json").read_text())
    threat = ["white-box weights; labelled adversary half of the restricted data"]
    assert [(s["suite"], s["threat"]) for s in document["sections"]] == [("paper", threat), ("optimizers", threat)]
    for section in document["sections"]:
        for r in section["rows"]:
            stored = csv_rows[(section["suite"], r["start"], r["attack"], r["metric"])]
            assert r["display"] == stored["display"]
            assert (r["mean"] is None) == (stored["mean"] == "")

    text = (out / "leaderboard.md").read_text()
    assert "**Threat model.** white-box weights; labelled adversary half of the restricted data" in text
    assert "**Scale.** epochs=3, restricted\\_train=200, width=16" in text
    assert "- sgd · defense:x: seed 1 diverged; its last recorded score is carried to the end of the budget" in text
    tables = _md_tables(text)
    assert list(tables) == ["toy · suite paper", "toy · suite optimizers"]
    for heading, lines in tables.items():
        suite = heading.rsplit(" ", 1)[1]
        header, checked = None, 0
        for cells in lines:
            if cells[0] in ("start", "attack"):
                header = cells
                continue
            labels = 2 if header[0] == "attack" else 1
            attack, start = (cells[0], cells[1]) if labels == 2 else ("", cells[0])
            for metric, shown in zip(header[labels:], cells[labels:]):
                stored = csv_rows.get((suite, start, attack, metric))
                assert shown == (stored["display"] if stored else "—"), (suite, start, attack, metric)
                checked += 1
        assert checked > 20
    for image in re.findall(r"\]\((plots/[^)]+\.png)\)", text):
        assert (out / image).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    page = (out / "leaderboard.html").read_text()
    assert "Content-Security-Policy" in page and not re.search(r"""(src|href)=["']?(https?:)?//""", page)
    assert page.count('src="data:image/png;base64,') == len(re.findall(r"\]\(plots/", text)) == 5


def test_suites_filter_and_errors(results, tmp_path):
    only = build_leaderboard(results, suites=["optimizers"], registry=built_in_registry())
    assert [s.suite for s in only.sections] == ["optimizers"] and set(only.table.suite) == {"optimizers"}
    with pytest.raises(ConfigError, match="did you mean 'optimizers'"):
        build_leaderboard(results, suites=["optimisers"], registry=built_in_registry())
    with pytest.raises(ConfigError, match="no result store"):
        build_leaderboard(tmp_path / "nowhere", registry=built_in_registry())
    with pytest.raises(ConfigError, match="unknown reporter 'pdf'"):
        write_leaderboard(results, formats="md,pdf", registry=built_in_registry())


class FinalLoss:
    """A third-party metric plugin: the restricted loss after the last epoch, from the raw points."""

    @staticmethod
    def final_loss(curves):
        points = curves.points
        loss = points[(points.metric == "restricted/loss") & (points.x_unit == "epoch")]
        last = loss.sort_values("x").groupby("key").tail(1)[["key", "value"]]
        return curves.cells.merge(last, on="key").assign(metric="final_loss")

    @hookimpl
    def register_metrics(self, register):
        register("final_loss", description="restricted loss after the last epoch", factory=FinalLoss.final_loss,
                 columns=[Column("final_loss", "raw", "higher")])


def test_third_party_metric_appears(results):
    board = build_leaderboard(results, registry=built_in_registry(FinalLoss()))
    assert per_seed(board, "final_loss", "defense:x", "sgd") == pytest.approx({0: 2 - 0.38, 1: 2 - 0.16})
    assert "final_loss" in board.sections[0].matrix(per_attack=True).columns


def test_terminal_escapes_markup_and_shows_everything(tmp_path):
    from rich.console import Console

    results = build_store(tmp_path / "r", defense="[bold red]x[/]")
    console = Console(record=True, width=220)
    print_leaderboard(results, console=console, registry=built_in_registry())
    text = console.export_text()
    assert "defense:[bold red]x[/]" in text and "Threat model: white-box weights" in text
    assert "> 30" in text and "n/a" in text and "1.750 ± 0.354" in text


def test_markdown_escapes_config_strings():
    from harness.report.markdown import escape

    assert escape("<script>a|b</script>\n*x*_[y]") == "&lt;script&gt;a\\|b&lt;/script&gt; \\*x\\*\\_\\[y\\]"


def test_plugin_modules_import_light():
    code = ("import sys, plugins.metrics, plugins.reporters; "
            "print(sorted({'pandas', 'matplotlib', 'torch'} & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
