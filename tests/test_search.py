"""The searched attack: it chooses on the adversary's validation slice, its trials are cells that are reused and
resume after a kill, and a bad search space is a config error at validate time."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import time

import pytest

from attacks.search import check_space
from harness.cli import main
from harness.config import load_experiment
from harness.plan import resolve
from harness.plugins import registry
from harness.registry import ConfigError
from harness.testing import seeded_model, tiny_context
from harness.trials import Trial
from tests.conftest import TINY_EXPERIMENT
from tests.test_runner import kill, rows, run_command, run_file, start_runner, wait_for

SEARCH = "  - {plugin: search, label: search, params: {trials: 4, max_epochs: 2, space: {batch_size: [64]}}}\n"
EXPERIMENT = TINY_EXPERIMENT + SEARCH


def disagreeing_trial(ctx, plugin, params):
    """A stand-in trial whose validation and test scores disagree: validation rewards a small lr, test a large one."""
    val, test = 1.0 - params["lr"], params["lr"]
    points = [(e, "epoch", f"{split}/accuracy", value * e / 2) for e in (0, 1, 2)
              for split, value in (("restricted", test), ("restricted_val", val))]
    return Trial(f"lr={params['lr']}", "done", points, {"steps": 2}, lambda: seeded_model(ctx))


def test_the_search_chooses_on_validation_not_on_test():
    spec = registry().get("attack", "search")
    params = spec.resolve({"trials": 6, "sampler": "random", "space": {"lr": [1e-3, 0.9]}}, "search")
    ctx = dataclasses.replace(tiny_context(params, plugin=spec), trials=disagreeing_trial)
    spec.load()(ctx, seeded_model(ctx))
    notes = ctx.recorder.notes
    tried = [trial["params"]["lr"] for trial in notes["trials"]]
    assert [trial["validation"] for trial in notes["trials"]] == [1.0 - lr for lr in tried]
    assert notes["chosen_config"]["params"]["lr"] == min(tried) != max(tried)  # the best on test was not chosen
    assert notes["chosen_trial"] == f"lr={min(tried)}" and "trial" in notes["chosen"]
    curve = [(x, value) for x, unit, metric, value in ctx.recorder.points if metric == "restricted/accuracy"]
    assert curve == [(e, min(tried) * e / 2) for e in (0, 1, 2)]  # the chosen trial's test curve, recorded as is


def test_first_configs_are_tried_before_the_samplers_own():
    """The fixed entries given as `first` are the first trials, exactly as given, and win when best on validation."""
    spec = registry().get("attack", "search")
    first = [{"plugin": "finetune", "strategy": "initFC+FC", "optimizer": "sgd_momentum", "lr": 1e-3,
              "batch_size": 64, "schedule": "constant", "epochs": 2},
             {"plugin": "lora", "strategy": "direct", "lr": 2e-3, "rank": 8}]
    params = spec.resolve({"trials": 4, "max_epochs": 2, "sampler": "random", "first": first,
                           "space": {"lr": [1e-3, 0.9]}}, "search")
    assert check_space(params, None) is None  # what validate checks
    ctx = dataclasses.replace(tiny_context(params, plugin=spec), trials=disagreeing_trial)
    spec.load()(ctx, seeded_model(ctx))
    tried = ctx.recorder.notes["trials"]
    assert len(tried) == 4
    assert (tried[0]["plugin"], tried[0]["params"]) == ("finetune", {k: v for k, v in first[0].items() if k != "plugin"})
    assert tried[1]["plugin"] == "lora" and {k: tried[1]["params"][k] for k in ("strategy", "lr", "rank")} == {
        "strategy": "direct", "lr": 2e-3, "rank": 8}
    assert ctx.recorder.notes["chosen_config"]["params"]["lr"] == 1e-3  # the smallest lr scores best on validation


def searched(results):
    """Per search cell: its stored curve and what it chose and tried."""
    out = {}
    for key, notes in rows(results, "SELECT c.key, n.json FROM cells c JOIN notes n ON n.key = c.key "
                                    "WHERE c.attack = 'search'"):
        notes = json.loads(notes)
        points = rows(results, "SELECT x, x_unit, metric, value FROM points WHERE key = ? ORDER BY rowid", key)
        out[key] = (points, notes["chosen_config"], notes["trials"])
    return out


def test_trials_are_cells_reused_by_a_search_run_again(write_experiment, tmp_path):
    path, results = write_experiment(EXPERIMENT), tmp_path / "r"
    assert run_file(path, results).ok
    trials = dict(rows(results, "SELECT key, finished FROM cells WHERE kind = 'trial'"))
    assert len(trials) == 3 * 4 and all(trials.values())  # 4 trials for each of scratch, original, defense:none
    assert main(["check", str(results)]) == 0
    assert main(["leaderboard", str(results), "--format", "md,json"]) == 0
    board = (results / "leaderboard.md").read_text()
    assert "search · original: seed 0 chose finetune" in board or "search · original: seed 0 chose lora" in board
    chosen = json.loads((results / "leaderboard.json").read_text())["sections"][0]["chosen"]
    assert [(c["attack"], c["start"], c["seed"]) for c in chosen] == [
        ("search", "scratch", 0), ("search", "original", 0), ("search", "defense:none", 0)]
    assert "trial finetune" not in board and "trial lora" not in board  # trials are not rows

    first = searched(results)
    rows(results, "UPDATE cells SET status = 'pending' WHERE attack = 'search'")
    again = run_file(path, results)
    assert again.statuses == {"done": 3}  # the three searches ran again...
    assert dict(rows(results, "SELECT key, finished FROM cells WHERE kind = 'trial'")) == trials  # ...no trial did
    assert searched(results) == first


def test_raising_trials_extends_a_finished_search(write_experiment, tmp_path):
    """The sampler is seeded without `trials`: a search given one more trial reuses the first ones."""
    results = tmp_path / "r"
    assert run_file(write_experiment(EXPERIMENT), results).ok
    before = dict(rows(results, "SELECT key, finished FROM cells WHERE kind = 'trial'"))
    assert run_file(write_experiment(EXPERIMENT.replace("trials: 4", "trials: 5")), results).ok
    after = dict(rows(results, "SELECT key, finished FROM cells WHERE kind = 'trial'"))
    assert len(after) == 3 * 5 and all(after[key] == finished for key, finished in before.items())


@pytest.mark.parametrize("space, says", [
    ("{lr: [0.01, 0.0001]}", "space.lr must be [low, high] with 0 < low < high"),
    ("{optimizer: [adamm]}", "did you mean 'adam'"),
    ("{epochs: [5]}", "space.epochs [5] exceeds the per-trial cap max_epochs=2"),
    ("{strategy: []}", "space.strategy is empty"),
    ("{rnak: [4]}", "did you mean 'rank'"),
    ("{batch_size: [64]}, first: [{plugin: finetune, lr: 0.5}]", "first[0].lr: 0.5 is outside space.lr"),
    ("{batch_size: [64]}, first: [{plugin: finetune, batch_size: 32}]", "first[0].batch_size: 32 is outside"),
    ("{batch_size: [64]}, first: [{plugin: finetune, rank: 4}]", "first[0].rank: only LoRA trials have a rank"),
    ("{batch_size: [64]}, first: [{plugin: finetune, optimiser: adam}]", "did you mean 'optimizer'"),
    ("{batch_size: [64]}, first: [{lr: 0.001}]", "first[0].plugin: missing"),
    ("{batch_size: [64]}, first: [{plugin: lora}, {plugin: lora}, {plugin: lora}, {plugin: lora}, {plugin: lora}]",
     "first holds 5 configs but trials is 4"),
])
def test_a_bad_search_space_is_a_config_error(write_experiment, capsys, space, says):
    path = write_experiment(EXPERIMENT.replace("{batch_size: [64]}", space))
    with pytest.raises(ConfigError, match=None) as error:
        resolve(load_experiment(path), registry())
    assert says in str(error.value) and str(path) in str(error.value)
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert says in err and "\n" not in err


@pytest.mark.slow
def test_a_search_killed_mid_way_resumes_with_its_finished_trials(write_experiment, tmp_path):
    """SIGKILL the runner while searches are running; the re-run reuses every finished trial, and the chosen
    configs and curves equal those of an uninterrupted run."""
    path = write_experiment(EXPERIMENT.replace("trials: 4", "trials: 6"))
    whole = tmp_path / "whole"
    assert subprocess.run(run_command(path, whole), capture_output=True).returncode == 0

    results = tmp_path / "killed"
    runner = start_runner(path, results)
    trials_done = "SELECT count(*) FROM cells WHERE kind = 'trial' AND status = 'done'"

    def mid_search():
        try:
            return rows(results, trials_done)[0][0] >= 8
        except Exception:  # no store yet
            return False

    assert wait_for(mid_search, runner)
    kill(runner)
    time.sleep(0.5)
    before = dict(rows(results, "SELECT key, finished FROM cells WHERE kind = 'trial' AND status = 'done'"))
    assert rows(results, "SELECT count(*) FROM cells WHERE attack = 'search' AND status = 'done'")[0][0] < 3
    assert subprocess.run(run_command(path, results), capture_output=True).returncode == 0
    after = dict(rows(results, "SELECT key, finished FROM cells WHERE kind = 'trial'"))
    assert all(after[key] == finished for key, finished in before.items())  # no finished trial ran again
    assert len(after) == 3 * 6
    assert searched(results) == searched(whole)
