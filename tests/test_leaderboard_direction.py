"""Direction and display come from the registrations: a lower-is-better task (denoising MSE) against numbers
computed by hand, a metric plugin's declared direction, and `untunable curves` printing each measure in its unit."""

from __future__ import annotations

import pytest

import harness.plugins
import plugins.metrics
from harness import Column, hookimpl
from harness.cli import main
from harness.leaderboard import build_leaderboard
from harness.registry import ConfigError
from tests.leaderboard_fixtures import build_denoising_store, build_store, built_in_registry
from tests.test_leaderboard import per_seed, row


@pytest.fixture(scope="module")
def board(tmp_path_factory):
    return build_leaderboard(build_denoising_store(tmp_path_factory.mktemp("gen")), registry=built_in_registry())


def gen(board, metric, start, attack=""):
    return row(board, metric, start, attack, suite="gen")


def test_resistance_for_a_lower_is_better_score(board):
    # R_gen = (MSE_D − MSE_P) / (MSE_S − MSE_P) at epoch 3, the same number as R
    assert per_seed(board, "R", "defense:x", "ft-a", "gen") == pytest.approx(
        {0: (0.70 - 0.40) / (0.48 - 0.40), 1: (0.54 - 0.42) / (0.50 - 0.42)})
    assert per_seed(board, "R", "original", "ft-a", "gen") == {0: 0.0, 1: 0.0}
    # ft-b: scratch ends 0.02 below the original (seed 0) and level with it (seed 1): n/a, gap in MSE units
    r = gen(board, "R", "defense:x", "ft-b")
    assert r["na"] and r["note"] == "seed 0: A_S − A_P = -0.02, under 0.02; seed 1: A_S − A_P = 0, under 0.02"


def test_scratch_best_is_the_lowest_mse(board):
    best = gen(board, "scratch@best", "scratch")
    assert best["per_seed"] == {0: 0.43, 1: 0.45} and best["note"] == "config ft-b"  # mean 0.44 < 0.49 (ft-a)
    assert per_seed(board, "R_tuned", "defense:x", "ft-a", "gen") == pytest.approx(
        {0: (0.70 - 0.40) / (0.43 - 0.40), 1: (0.54 - 0.42) / (0.45 - 0.42)})


def test_auc_worst_case_and_steps_for_mse(board):
    assert per_seed(board, "AUC", "defense:x", "ft-a", "gen") == pytest.approx({0: 2.5 / 3, 1: 2.54 / 3})
    assert per_seed(board, "AUC_norm", "defense:x", "ft-a", "gen") == pytest.approx(
        {0: (2.5 - 1.5) / (1.88 - 1.5), 1: (2.54 - 1.56) / (1.94 - 1.56)})
    # the attacker's best is the lowest final MSE over the suite; the lowest R only where R is defined
    assert per_seed(board, "worst_case", "defense:x", suite="gen") == {0: 0.47, 1: 0.46}
    worst_r = gen(board, "worst_case_R", "defense:x")
    assert worst_r["per_seed"] == pytest.approx({0: 3.75, 1: 1.5}) and worst_r["note"].startswith("left out: ")
    # "reaches scratch@best" means at or below its MSE (0.43, 0.45)
    assert per_seed(board, "steps_to_scratch", "original", "ft-b", "gen") == {0: 10.0, 1: 30.0}
    assert gen(board, "steps_to_scratch", "defense:x", "ft-a")["display"] == "> 30"


def test_intactness_for_mse(board):
    assert per_seed(board, "O@0", "defense:x", suite="gen") == {0: 0.36, 1: 0.36}
    assert per_seed(board, "intactness", "defense:x", suite="gen") == pytest.approx({0: 0.30 / 0.36, 1: 0.30 / 0.36})
    assert per_seed(board, "drop", "defense:x", suite="gen") == pytest.approx({0: 0.06, 1: 0.06})  # worse by 0.06


def test_mse_is_shown_raw_and_directions_follow_the_task(board, tmp_path):
    assert gen(board, "score@3", "defense:x", "ft-a")["display"] == "0.62 ± 0.1131"
    assert gen(board, "drop", "defense:x")["display"] == "0.06 ± 0"
    [section] = board.sections
    assert section.legend.startswith("Scores are restricted-domain mse (lower is better), mean ± std over 2 seeds")
    assert "%" not in section.legend and "points" not in section.legend
    better = dict(zip(board.table.metric, board.table.better))
    assert better["score@3"] == better["AUC"] == better["worst_case"] == "higher"  # a high MSE protects
    assert better["O@0"] == better["drop"] == "lower" and better["R"] == "higher" and better["scratch@best"] == ""
    toy = build_leaderboard(build_store(tmp_path / "toy"), registry=built_in_registry()).table
    toy_better = dict(zip(toy.metric, toy.better))
    assert toy_better["score@3"] == "lower" and toy_better["O@0"] == "higher"


class Spread:
    """A third-party metric declaring its direction: the final score's spread over attacks (lower is better)."""

    @staticmethod
    def spread(curves):
        final = curves.final()
        per_start = final.groupby(["scenario", "suite", "start", "seed"], as_index=False).value
        spread = per_start.agg(lambda v: v.max() - v.min())
        return spread.assign(attack="", metric="spread")

    @hookimpl
    def register_metrics(self, register):
        register("spread", factory=Spread.spread, description="final score spread over the suite's attacks",
                 columns=[Column("spread", "delta", "lower")])


def test_declared_metric_direction_is_presented(tmp_path):
    from rich.console import Console

    from harness.leaderboard import write_leaderboard
    from harness.report.html import render

    results = build_store(tmp_path / "toy")
    board = build_leaderboard(results, registry=built_in_registry(Spread()))
    spread = row(board, "spread", "defense:x")
    assert spread["per_seed"] == pytest.approx({0: 0.92 - 0.38, 1: 0.93 - 0.16})
    assert spread["unit"] == "delta" and spread["better"] == "lower"
    assert spread["display"] == "65.5 ± 16.3"  # in points: std = 0.23 / √2
    assert board.sections[0].directions.endswith("; lower drop, score@0, score@1, score@3, AUC, worst_case, spread.")
    assert '<th scope="col" data-better="lower" title="lower is better for the defense">spread</th>' in render(board)
    console = Console(record=True, width=300)
    write_leaderboard(results, formats=["csv"], registry=built_in_registry(Spread()), console=console)
    assert "Better for the defense: higher O@0, intactness, R" in console.export_text()


class Undeclared:
    @hookimpl
    def register_metrics(self, register):
        register("undeclared", factory=lambda curves: Spread.spread(curves), description="no columns declared")


def test_undeclared_column_is_refused(tmp_path):
    with pytest.raises(ValueError, match="metric plugin 'undeclared' returned column 'spread', which its registration"):
        build_leaderboard(build_store(tmp_path / "toy"), registry=built_in_registry(Undeclared()))


def test_unregistered_task_is_one_clear_error(tmp_path):
    registry = harness.plugins.Registry(strict=True)
    registry.add(plugins.metrics, name="metrics")
    with pytest.raises(ConfigError, match="scenario 'gen'.*task 'denoising' is not registered"):
        build_leaderboard(build_denoising_store(tmp_path / "gen"), registry=registry)


def _curve_rows(out: str) -> dict[tuple, list[str]]:
    """`untunable curves` table rows by (scenario, start, attack, seed): the metric column, then the values."""
    rows = [line.strip("│ ").split("│") for line in out.splitlines() if line.startswith("│")]
    return {tuple(c.strip() for c in r[:4]): [c.strip() for c in r[5:]] for r in rows}


def test_curves_prints_each_measure_in_its_unit(tmp_path, monkeypatch, capsys):
    results = build_store(tmp_path / "r")
    build_denoising_store(results)
    monkeypatch.setattr(harness.plugins, "_DEFAULT", built_in_registry())
    monkeypatch.setenv("COLUMNS", "250")
    assert main(["curves", str(results)]) == 0
    rows = _curve_rows(capsys.readouterr().out)
    assert rows[("toy", "scratch", "ft-sgd", "0")] == ["restricted/accuracy (%)", "10.0", "30.0", "50.0", "58.0"]
    assert rows[("gen", "defense:x", "ft-a", "1")] == ["restricted/mse", "1.2", "1.1", "0.9", "0.54"]
    assert main(["curves", str(results), "--metric", "restricted/loss"]) == 0
    rows = _curve_rows(capsys.readouterr().out)
    assert rows[("toy", "defense:x", "ft-sgd", "0")] == ["restricted/loss", "1.9", "1.9", "1.8", "1.62"]  # 2 − acc
    assert not any(ident[0] == "gen" for ident in rows)  # denoising records no loss


def test_columns_must_be_declared_as_column_objects():
    class Sloppy:
        @hookimpl
        def register_metrics(self, register):
            register("sloppy", factory="nowhere:metric", columns=[("R", "ratio")])

    with pytest.raises(harness.plugins.PluginError, match="metric 'sloppy': columns must be harness.Column objects"):
        built_in_registry(Sloppy())
