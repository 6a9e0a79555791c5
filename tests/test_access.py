"""Reference starts declared by an attack family, black-box access through an Oracle, students of other architectures."""

from __future__ import annotations

import sqlite3
import textwrap
import types

import pytest
import torch
import yaml

from harness import Param, ReferenceStart, hookimpl
from harness.cells import Runtime, _cell_seed
from harness.config import load_experiment, parse_experiment
from harness.engine.oracle import QueryBudgetExceeded, make_oracle
from harness.plugins import PluginError, Registry, registry
from harness.registry import ORIGINAL, ConfigError
from harness.plan import attack_runs
from harness.runner import plan_cells, run
from harness.testing import check_plugin, seeded_model, tiny_context
from tests.conftest import TINY_EXPERIMENT

NO_TEACHER = ReferenceStart("no-teacher", "none", "a student trained on labels alone")
QUERIES = Param("queries", "int", 100, min=1)


@pytest.fixture
def plugins():
    """Register test plugins for one test (inline workers see them), and remove them afterwards."""
    added = []

    def add(hook: str, kind: str, name: str, factory, **extra):
        plugin = types.SimpleNamespace(**{hook: hookimpl(lambda register: register(
            name, description=f"a test {kind}", factory=factory, **extra))})
        assert registry().add(plugin, name=name), registry().errors[-1].message
        added.append((plugin, kind, name))

    yield add
    for plugin, kind, name in added:
        registry().pm.unregister(plugin)
        registry().specs[kind].pop(name, None)


def run_experiment(write_experiment, tmp_path, text):
    experiment = load_experiment(write_experiment(text))
    runtime = Runtime(root=str(tmp_path / "r"), device="cpu", cache_dir=str(tmp_path / "cache"))
    return run(experiment, runtime, registry()), tmp_path / "r"


def rows(results, query):
    with sqlite3.connect(results / "results.sqlite") as db:
        return db.execute(query).fetchall()


def attack_only(name: str, params: str = "{}") -> str:
    return TINY_EXPERIMENT.replace("  - {plugin: finetune, label: sgd, params: {epochs: 1, batch_size: 64, lr: 0.01}}\n",
                                   f"  - {{plugin: {name}, params: {params}}}\n")


def test_an_attack_family_declares_its_own_reference_start(plugins, write_experiment, tmp_path):
    handed = {}

    def student(ctx, teacher):
        handed.setdefault("starts", []).append(teacher)
        model = ctx.build_model()
        ctx.record(model, on="restricted", epoch=0, step=0)
        return model

    plugins("register_attacks", "attack", "test-student", student, starts=[ORIGINAL, NO_TEACHER])
    summary, results = run_experiment(write_experiment, tmp_path, attack_only("test-student"))
    assert summary.ok
    starts = {s for (s,) in rows(results, "SELECT start FROM cells WHERE kind = 'attack'")}
    assert starts == {"original", "no-teacher", "defense:none"}  # no scratch: this family does not declare it
    assert sum(teacher is None for teacher in handed["starts"]) == 1  # the no-teacher start is handed no model


def test_a_start_that_ignores_parameters_shares_one_cell_across_them(plugins, tmp_path):
    """Configs differing only in what a start ignores are one cell from it, and distinct cells from the others."""
    knob = Param("knob", "float", 1.0)
    plugins("register_attacks", "attack", "test-student", lambda ctx, m: m, params=[knob],
            starts=[ORIGINAL, ReferenceStart("no-teacher", "none", "labels alone", ignores=("knob",))])
    data = yaml.safe_load(textwrap.dedent(attack_only("test-student", "{knob: [1.0, 2.0, 4.0]}")))
    runtime = Runtime(root=str(tmp_path), device="cpu", cache_dir=str(tmp_path / "cache"))
    resolved, planned = plan_cells(parse_experiment(data), runtime, registry())
    cells = [c for c in planned if c.kind == "attack"]
    assert attack_runs(resolved) == 7  # what `validate` counts: the planned cells, not configs x starts
    per_start = {start: len({c.key for c in cells if c.start == start}) for start in {c.start for c in cells}}
    assert per_start == {"original": 3, "defense:none": 3, "no-teacher": 1}
    [lone] = [c for c in cells if c.start == "no-teacher"]
    assert "knob" not in lone.config["attack"]["params"]
    # the shared cell is paired with each config it serves: one initial model and batch order per seed
    assert {_cell_seed(c) for c in cells} == {_cell_seed(lone)}


def test_baselines_pick_among_declared_starts(plugins, write_experiment, tmp_path):
    plugins("register_attacks", "attack", "test-student", lambda ctx, m: m, starts=[ORIGINAL, NO_TEACHER])
    text = attack_only("test-student") + "baselines: [no-teacher]\n"
    experiment = load_experiment(write_experiment(text))
    from harness.plan import resolve

    assert [s.name for s in resolve(experiment, registry()).reference_starts] == ["no-teacher"]
    with pytest.raises(ConfigError, match=r"baselines\[0\]: no attack of this experiment runs from 'no-teachr' "
                                          r"\(did you mean 'no-teacher'\?\)"):
        resolve(load_experiment(write_experiment(attack_only("test-student") + "baselines: [no-teachr]\n")),
                registry())


def test_a_black_box_attack_gets_an_oracle_and_cannot_reach_the_weights(plugins, write_experiment, tmp_path):
    seen = {}

    def steal(ctx, oracle):
        seen["oracle"] = oracle
        for attempt in ("model", "module", "_model", "parameters", "state_dict", "__dict__"):
            seen.setdefault("reached", []).append(hasattr(oracle, attempt))
        x = ctx.restricted_train.x
        first = oracle(x[:30])
        second = oracle(x[30:50])
        seen["used"] = oracle.used
        seen["shapes"] = (tuple(first.shape), tuple(second.shape))
        copy = ctx.build_model()
        ctx.record(copy, on="restricted", epoch=None, queries=oracle.used)
        return copy

    plugins("register_attacks", "attack", "test-steal", steal, access="black-box", params=[QUERIES])
    summary, results = run_experiment(write_experiment, tmp_path, attack_only("test-steal", "{queries: 50}"))
    assert summary.ok
    assert not any(seen["reached"]) and not isinstance(seen["oracle"], torch.nn.Module)
    assert seen["used"] == 50 and seen["shapes"] == ((30, 10), (20, 10))
    units = {u for (u,) in rows(results, "SELECT DISTINCT x_unit FROM points WHERE metric = 'restricted/accuracy'")}
    assert "queries" in units
    threat = rows(results, "SELECT config_json FROM cells WHERE kind = 'attack' LIMIT 1")[0][0]
    assert "black-box attacker who may only query the released model's API (logits)" in threat


def test_the_query_budget_is_exact_and_capped():
    ctx = tiny_context({})
    oracle = make_oracle(seeded_model(ctx), api="label", budget=25)
    assert oracle(ctx.restricted_test.x[:25]).shape == (25,) and oracle.remaining == 0
    with pytest.raises(QueryBudgetExceeded, match="a query of 1 images would pass the budget of 25 \\(25 used\\)"):
        oracle(ctx.restricted_test.x[:1])
    assert oracle.used == 25


@pytest.mark.parametrize("api, shape", [("logits", (8, 10)), ("probabilities", (8, 10)), ("label", (8,)),
                                        ("representation", None)])
def test_the_oracle_answers_in_the_scenario_api(api, shape):
    ctx = tiny_context({})
    model = seeded_model(ctx)
    answer = make_oracle(model, api=api, budget=8)(ctx.restricted_test.x[:8])
    if api == "probabilities":
        assert torch.allclose(answer.sum(dim=1), torch.ones(8))
    if shape is None:
        assert answer.ndim == 2 and answer.shape[0] == 8 and answer.shape[1] != 10
    else:
        assert tuple(answer.shape) == shape


def test_a_defense_output_transform_acts_at_query_time(plugins, write_experiment, tmp_path):
    answers = []

    def rounded(outputs, *, x, api, params, generator):
        return outputs.round(decimals=params["decimals"])

    def steal(ctx, oracle):
        answers.append(oracle(ctx.restricted_train.x[:4]))
        model = ctx.build_model()
        ctx.record(model, on="restricted", epoch=0)
        return model

    plugins("register_defenses", "defense", "test-round", lambda ctx, model: model, tasks="any",
            output_transform=rounded, params=[Param("decimals", "int", 0, min=0)])
    plugins("register_attacks", "attack", "test-steal", steal, access="black-box", params=[QUERIES])
    text = attack_only("test-steal", "{queries: 4}").replace("{plugin: none}", "{plugin: test-round}")
    summary, _ = run_experiment(write_experiment, tmp_path, text)
    assert summary.ok and len(answers) == 3  # scratch, original, the rounding defense
    rounded_answers = [a for a in answers if torch.equal(a, a.round())]
    assert len(rounded_answers) == 1  # only the defended start's answers went through the transform


def test_a_black_box_attack_must_declare_its_query_budget():
    reg = Registry(strict=False)
    plugin = types.SimpleNamespace(register_attacks=hookimpl(lambda register: register(
        "no-budget", factory=lambda ctx, oracle: None, access="black-box")))
    assert not reg.add(plugin, name="no-budget")
    assert "a black-box attack declares an int 'queries' parameter" in reg.errors[-1].message
    with pytest.raises(PluginError, match="access must be one of"):
        Registry(strict=True).add(types.SimpleNamespace(register_attacks=hookimpl(lambda register: register(
            "odd", factory=lambda ctx, m: m, access="grey-box"))), name="odd")


def linear_student(params, *, in_channels, image_size, num_classes):
    """A classifier whose parameter names differ from the scenario's CNN."""
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(in_channels * image_size ** 2, num_classes))
    model.head_path, model.block_paths, model.feature_path = "1", ["1"], "0"
    return model


def test_plugin_check_accepts_a_student_of_another_architecture_and_a_black_box_attack(plugins):
    def distil(ctx, teacher):
        student = ctx.build_model("test-linear")
        ctx.record(student, on="restricted", epoch=0, step=0)
        return student

    def steal(ctx, oracle):
        oracle(ctx.restricted_train.x[:10])
        copy = ctx.build_model()
        ctx.record(copy, on="restricted", epoch=None, queries=oracle.used)
        return copy

    plugins("register_architectures", "architecture", "test-linear", linear_student)
    plugins("register_attacks", "attack", "test-distil", distil)
    plugins("register_attacks", "attack", "test-steal", steal, access="black-box", params=[QUERIES])
    ctx = tiny_context({})
    student = ctx.build_model("test-linear")
    assert set(student.state_dict()) == {"1.weight", "1.bias"} != set(ctx.build_model().state_dict())
    assert check_plugin("attack", "test-distil") == []
    assert check_plugin("attack", "test-steal", {"queries": 10}) == []
    with pytest.raises(ConfigError, match="build_model: unknown architecture 'cnn-x'"):
        ctx.build_model("cnn-x")
