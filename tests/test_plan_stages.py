"""Which cells a plan shares and replicates: pretraining keyed by what it reads, adversary budgets sharing the
defender's cells, per-stage seeds, and the data split seed apart from the training seeds."""

from __future__ import annotations

import textwrap

import pytest
import yaml

from harness.cells import Runtime
from harness.config import parse_experiment
from harness.plugins import registry
from harness.registry import ConfigError
from harness.runner import plan_cells
from tests.conftest import TINY_EXPERIMENT


def plan(tmp_path, **changes):
    """The tiny experiment's cells, with top-level or first-scenario settings changed."""
    data = yaml.safe_load(textwrap.dedent(TINY_EXPERIMENT))
    scenario = data["scenarios"][0]
    for key, value in changes.items():
        (scenario if key in scenario or key in SCENARIO_KEYS else data)[key] = value
    runtime = Runtime(root=str(tmp_path), device="cpu", cache_dir=str(tmp_path / "cache"))
    return plan_cells(parse_experiment(data), runtime, registry())[1]


SCENARIO_KEYS = ("adversary_budgets", "split_seed", "validation_fraction", "restricted")


def of(cells, kind):
    return [c for c in cells if c.kind == kind]


def test_scenarios_with_the_same_original_share_one_pretrain_cell(tmp_path):
    data = yaml.safe_load(textwrap.dedent(TINY_EXPERIMENT))
    other = {**data["scenarios"][0], "name": "digits-again", "restricted_split": "fraction:0.3"}
    data["scenarios"].append(other)
    cells = plan_cells(parse_experiment(data), Runtime(root=str(tmp_path), device="cpu",
                                                       cache_dir=str(tmp_path / "cache")), registry())[1]
    assert len(of(cells, "pretrain")) == 1
    assert len(of(cells, "defend")) == 2  # the defender's data differs
    assert len({c.key for c in cells}) == len(cells)


def test_budgets_share_pretraining_and_defenses_and_limit_the_adversary(tmp_path):
    cells = plan(tmp_path, adversary_budgets=["per_class:5", "all"])
    assert len(of(cells, "pretrain")) == 1 and len(of(cells, "defend")) == 1
    attacks = of(cells, "attack")
    assert {c.scenario for c in attacks} == {"digits-to-digits@per_class:5", "digits-to-digits@all"}
    sizes = {c.scenario: (c.config["data"]["adversary_train"], c.config["data"]["adversary_val"]) for c in attacks}
    assert sizes["digits-to-digits@per_class:5"] == (40, 10)  # 5 per class, one of each held out for validation
    assert sum(sizes["digits-to-digits@all"]) > 500
    defense = of(cells, "defend")[0].key
    assert all(c.deps == [defense] for c in attacks if c.start == "defense:none")


def test_single_budget_keeps_the_scenario_name_and_the_cells(tmp_path):
    assert [c.key for c in plan(tmp_path)] == [c.key for c in plan(tmp_path, adversary_budgets=["all"])]
    assert {c.scenario for c in plan(tmp_path, adversary_budgets=["fraction:0.5"])} == {"digits-to-digits"}


def test_replicated_stages_get_one_cell_per_seed_and_seed_0_reuses_the_unreplicated(tmp_path):
    once = plan(tmp_path, seeds=[0, 1])
    every = plan(tmp_path, seeds=[0, 1], replicate=["pretrain", "defense", "attack"])
    assert (len(of(once, "pretrain")), len(of(once, "defend"))) == (1, 1)
    assert (len(of(every, "pretrain")), len(of(every, "defend"))) == (2, 2)
    assert {c.key for c in once if c.seed == 0} <= {c.key for c in every}
    defenses = {c.seed: c.key for c in of(every, "defend")}
    for cell in of(every, "attack"):
        if cell.start == "defense:none":
            assert cell.deps == [defenses[cell.seed]]
    only_defense = plan(tmp_path, seeds=[0, 1], replicate=["defense", "attack"])
    assert (len(of(only_defense, "pretrain")), len(of(only_defense, "defend"))) == (1, 2)


def test_the_data_split_seed_moves_the_split_not_the_training_seeds(tmp_path):
    base, moved = plan(tmp_path), plan(tmp_path, split_seed=7)
    assert of(base, "defend")[0].config["data"]["split_manifest"] != of(moved, "defend")[0].config["data"][
        "split_manifest"]
    assert [c.seed for c in base] == [c.seed for c in moved]
    assert not {c.key for c in base} & {c.key for c in moved}


@pytest.mark.parametrize("changes, message", [
    ({"replicate": ["pretrain"]}, "replicate must include 'attack'"),
    ({"adversary_budgets": ["per_class:1"]}, "per_class:<n>"),
    ({"adversary_budgets": ["all", "all"]}, "distinct"),
    ({"validation_fraction": 0.0}, "greater than 0"),
])
def test_bad_stage_and_budget_settings_are_config_errors(tmp_path, changes, message):
    with pytest.raises(ConfigError, match=message):
        plan(tmp_path, **changes)


def test_validate_states_what_replication_costs(write_experiment, capsys):
    from harness.cli import main

    path = write_experiment(TINY_EXPERIMENT.replace("seeds: [0]", "seeds: [0, 1, 2]\nreplicate: [defense, attack]"))
    assert main(["validate", str(path)]) == 0
    assert "replicated over the seeds: defense, attack — at most 1 pretraining and 3 defense cell(s)" in \
        capsys.readouterr().out


def test_a_budget_grid_runs_with_shared_cells_and_validation_curves(write_experiment, tmp_path):
    from harness.config import load_experiment
    from harness.runner import run
    from harness.store import Store

    path = write_experiment(TINY_EXPERIMENT.replace("    pretrain:", "    adversary_budgets: [per_class:5, all]\n"
                                                                     "    pretrain:"))
    runtime = Runtime(root=str(tmp_path / "r"), device="cpu", cache_dir=str(tmp_path / "cache"))
    summary = run(load_experiment(path), runtime, registry())
    assert not summary.failed and summary.total == 1 + 1 + 2 * 3  # one pretraining, one defense, 3 starts x 2 budgets
    store = Store(tmp_path / "r")
    try:
        points = store.db.execute("SELECT c.scenario, p.metric FROM points p JOIN cells c ON c.key = p.key "
                                  "WHERE c.kind = 'attack'").fetchall()
    finally:
        store.close()
    assert {s for s, _ in points} == {"digits-to-digits@per_class:5", "digits-to-digits@all"}
    assert {m for _, m in points} >= {"restricted/accuracy", "restricted_val/accuracy", "original/accuracy"}


def test_replicated_pretraining_gives_intactness_a_spread(write_experiment, tmp_path):
    """With the original retrained per seed, the released model's original-domain accuracy varies by seed."""
    import sqlite3

    from harness.config import load_experiment
    from harness.runner import run

    path = write_experiment(TINY_EXPERIMENT.replace("seeds: [0]", "seeds: [0, 1]\nreplicate: [pretrain, attack]"))
    runtime = Runtime(root=str(tmp_path / "r"), device="cpu", cache_dir=str(tmp_path / "cache"))
    assert not run(load_experiment(path), runtime, registry()).failed
    with sqlite3.connect(tmp_path / "r" / "results.sqlite") as db:
        intactness = dict(db.execute(
            "SELECT c.seed, p.value FROM points p JOIN cells c ON c.key = p.key WHERE c.kind = 'attack' AND "
            "c.start = 'original' AND p.metric = 'original/accuracy' AND p.x_unit = 'epoch' AND p.x = 0").fetchall())
    assert set(intactness) == {0, 1} and intactness[0] != intactness[1]


def test_the_leaderboard_scale_says_which_stages_were_replicated(tmp_path):
    once = plan(tmp_path)
    every = plan(tmp_path, seeds=[0, 1], replicate=["pretrain", "defense", "attack"])
    assert {c.config["scale"]["replicated_stages"] for c in of(once, "attack")} == {"attack"}
    assert {c.config["scale"]["replicated_stages"] for c in of(every, "attack")} == {"pretrain+defense+attack"}
    assert {c.key for c in of(once, "attack")} <= {c.key for c in of(every, "attack")}  # scale is not in the key


def test_replicated_defense_training_gives_sophon_intactness_and_r_a_spread(write_experiment, tmp_path):
    """With `replicate: [defense, attack]` each run seed trains its own SOPHON, so its intactness and R vary."""
    from harness.config import load_experiment
    from harness.leaderboard import build_leaderboard
    from harness.runner import run

    sophon = ("  - {plugin: sophon-ice, params: {total_loop: 6, adaptation_steps: 3, batch_size: 20, "
              "ntr_batch_size: 32, probe_every: 0, guard_threshold: 0.0}}")
    text = (TINY_EXPERIMENT.replace("seeds: [0]", "seeds: [0, 1]\nreplicate: [defense, attack]")
            .replace("  - {plugin: none}", sophon).replace("epochs: 1, batch_size: 64}", "epochs: 4, batch_size: 32}"))
    runtime = Runtime(root=str(tmp_path / "r"), device="cpu", cache_dir=str(tmp_path / "cache"))
    assert not run(load_experiment(write_experiment(text)), runtime, registry()).failed
    rows = build_leaderboard(tmp_path / "r").table.set_index(["start", "attack", "metric"])
    intactness = rows.loc[("defense:sophon-ice", "", "intactness")]
    resistance = rows.loc[("defense:sophon-ice", "sgd", "R")]
    assert len(set(intactness.per_seed.values())) == 2 and intactness["std"] > 0
    assert len(set(resistance.per_seed.values())) == 2 and resistance["std"] > 0, resistance.note
