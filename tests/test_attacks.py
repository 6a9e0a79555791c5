"""The fine-tuning attack: strategies touch exactly what they should, optimizers and schedules are the ones named,
the curve has its points, divergence is a result, and the same seed gives the same curve.

`REGISTRY`, `attack_cell` and the autouse `one_torch_thread` fixture are shared with test_lora.py and test_adaptive.py.
"""

import itertools
import math
import subprocess
import sys

import pytest
import torch

from torch.optim.optimizer import register_optimizer_step_pre_hook

from attacks import adaptive, finetune, lora, suites
from harness.engine.models import head, state_tensors
from harness.engine.train import Diverged
from harness.names import OPTIMIZERS
from harness.plugins import Registry
from harness.testing import same_weights, seeded_model, tiny_context
from plugins import architectures, classification

REGISTRY = Registry(strict=True)
for module in (classification, architectures, finetune, lora, adaptive, suites):
    REGISTRY.add(module, name=module.__name__)

N_TRAIN, BATCH = 220, 32  # tiny_context holds a tenth of every class out for validation: 200 to train on
STEPS_PER_EPOCH = 200 // BATCH  # the last short batch is dropped


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny cells gain nothing from intra-op threads and lose much to them on a busy machine (architecture §4)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def attack_cell(name: str, *, seed: int = 0, architecture: str = "cnn-s", **params):
    """(ctx, start model, factory) for a tiny CPU cell of attack `name`, params validated like a config."""
    spec = REGISTRY.get("attack", name)
    ctx = tiny_context(spec.resolve({"epochs": 1, "batch_size": BATCH, **params}, name), seed=seed,
                       architecture=architecture, n_train=N_TRAIN, n_test=50, registry=REGISTRY)
    return ctx, seeded_model(ctx), spec.load()


def curve(ctx, metric: str = "restricted/accuracy", unit: str = "epoch") -> dict[float, float]:
    return {x: value for x, x_unit, m, value in ctx.recorder.points if x_unit == unit and m == metric}


def changed(before: dict, after: dict) -> set[str]:
    return {name for name in before if not torch.equal(before[name], after[name])}


def parameter_names(model) -> set[str]:
    return {name for name, _ in model.named_parameters()}


@pytest.mark.parametrize("head_init", ["xavier", "normal_0.01"])
def test_initfc_reinitialises_exactly_the_head(head_init):
    ctx, model, run = attack_cell("finetune", strategy="initFC+all", head_init=head_init, epochs=0)
    before = state_tensors(model)
    run(ctx, model)
    linear = head(model)
    assert changed(before, state_tensors(model)) == {f"{model.head_path}.weight", f"{model.head_path}.bias"}
    assert torch.all(linear.bias == 0)
    if head_init == "xavier":
        bound = math.sqrt(6 / (linear.in_features + linear.out_features))
        assert linear.weight.abs().max() <= bound and linear.weight.abs().max() > 0.8 * bound
    else:
        assert 0.007 < linear.weight.std().item() < 0.013


@pytest.mark.parametrize("strategy", ["direct+FC", "initFC+FC"])
def test_fc_strategies_change_only_the_head_parameters(strategy):
    ctx, model, run = attack_cell("finetune", strategy=strategy, lr=0.1)
    before = state_tensors(model)
    run(ctx, model)
    after = state_tensors(model)
    head_names = {f"{model.head_path}.weight", f"{model.head_path}.bias"}
    assert changed(before, after) & parameter_names(model) == head_names
    assert "stage1.1.running_mean" in changed(before, after)  # frozen parts stay in train mode (§8.1)
    assert all(p.requires_grad for p in model.parameters())  # handed back like any start model


def test_freeze_bn_stats_keeps_running_statistics():
    ctx, model, run = attack_cell("finetune", lr=0.1, freeze_bn_stats=True, eval_every_steps=2)
    before = state_tensors(model)
    run(ctx, model)
    buffers = {name for name, _ in model.named_buffers()}
    assert not changed(before, state_tensors(model)) & buffers
    assert changed(before, state_tensors(model)) == parameter_names(model)


EXPECTED_OPTIMIZER = {  # name -> (class, settings, state keys after a step)
    "sgd_momentum": (torch.optim.SGD, {"momentum": 0.9, "nesterov": False, "weight_decay": 1e-4}, {"momentum_buffer"}),
    "nesterov": (torch.optim.SGD, {"momentum": 0.9, "nesterov": True, "weight_decay": 1e-4}, {"momentum_buffer"}),
    "sgd": (torch.optim.SGD, {"momentum": 0, "weight_decay": 1e-4}, set()),
    "adagrad": (torch.optim.Adagrad, {"weight_decay": 1e-4}, {"sum", "step"}),
    "adadelta": (torch.optim.Adadelta, {"rho": 0.9, "weight_decay": 1e-4}, {"square_avg", "acc_delta", "step"}),
    "adam": (torch.optim.Adam, {"betas": (0.9, 0.999), "weight_decay": 1e-4}, {"exp_avg", "exp_avg_sq", "step"}),
    "adamw": (torch.optim.AdamW, {"betas": (0.9, 0.999), "weight_decay": 1e-2}, {"exp_avg", "exp_avg_sq", "step"}),
}


@pytest.fixture
def built_optimizers(monkeypatch):
    """Every optimizer an attack builds, kept for inspection."""
    import harness.engine.train

    built, make = [], harness.engine.train.make_optimizer

    def spy(*args, **kwargs):
        built.append(make(*args, **kwargs))
        return built[-1]

    monkeypatch.setattr(harness.engine.train, "make_optimizer", spy)
    return built


def test_expected_optimizers_cover_every_choice():
    assert set(EXPECTED_OPTIMIZER) == set(OPTIMIZERS)


@pytest.mark.parametrize("name", sorted(EXPECTED_OPTIMIZER))
def test_each_optimizer_is_the_one_named(name, built_optimizers):
    ctx, model, run = attack_cell("finetune", optimizer=name, lr=0.01)
    run(ctx, model)
    cls, settings, state_keys = EXPECTED_OPTIMIZER[name]
    (optimizer,) = built_optimizers
    assert type(optimizer) is cls
    group = optimizer.param_groups[0]
    assert group["lr"] == 0.01 and {key: group[key] for key in settings} == settings
    assert set(optimizer.state[group["params"][0]]) == state_keys


def test_weight_decay_overrides_the_optimizer_default(built_optimizers):
    ctx, model, run = attack_cell("finetune", optimizer="adamw", weight_decay=0.0)
    run(ctx, model)
    assert built_optimizers[0].param_groups[0]["weight_decay"] == 0.0


@pytest.mark.parametrize("strategy", finetune.STRATEGIES)
def test_curve_points_and_counters_from_a_scratch_start(strategy):
    ctx, model, run = attack_cell("finetune", strategy=strategy, epochs=2, lr=0.05)
    returned = run(ctx, model)
    assert returned is model
    for metric in ("restricted/accuracy", "restricted/loss"):
        assert sorted(curve(ctx, metric)) == [0, 1, 2]
        assert sorted(curve(ctx, metric, "step")) == [0, STEPS_PER_EPOCH, 2 * STEPS_PER_EPOCH]
    assert sorted(curve(ctx, "original/accuracy")) == [2]  # epoch 0 is the runner's, before the strategy
    assert all(0 <= acc <= 1 for acc in curve(ctx).values())
    assert ctx.recorder.notes["steps"] == 2 * STEPS_PER_EPOCH
    assert ctx.recorder.notes["examples_seen"] == 2 * STEPS_PER_EPOCH * BATCH


def test_training_learns_the_restricted_task():
    ctx, model, run = attack_cell("finetune", optimizer="adam", lr=3e-3, epochs=5)
    run(ctx, model)
    accuracy = curve(ctx)
    assert accuracy[5] > accuracy[0] + 0.3


def test_eval_every_steps_adds_step_only_points():
    ctx, model, run = attack_cell("finetune", epochs=2, eval_every_steps=2)
    run(ctx, model)
    steps = [x for x, unit, metric, _ in ctx.recorder.points if unit == "step" and metric == "restricted/accuracy"]
    assert steps == sorted(set(steps)) == list(range(0, 2 * STEPS_PER_EPOCH + 1, 2))
    assert sorted(curve(ctx)) == [0, 1, 2]


def test_a_diverging_lr_raises_diverged_with_the_epoch_0_points():
    ctx, model, run = attack_cell("finetune", lr=1e6, epochs=3)
    with pytest.raises(Diverged):
        run(ctx, model)
    assert 0 in curve(ctx)
    assert 3 not in curve(ctx)
    assert 0 < ctx.recorder.notes["steps"] < 3 * STEPS_PER_EPOCH


def test_the_same_seed_gives_the_same_curve():
    runs = []
    for seed in (0, 0, 1):
        ctx, model, run = attack_cell("finetune", strategy="initFC+all", epochs=2, lr=0.01, seed=seed)
        runs.append((ctx.recorder.points, run(ctx, model)))
    (points_a, model_a), (points_b, model_b), (points_c, _) = runs
    assert points_a == points_b and same_weights(model_a, model_b)
    assert points_a != points_c


@pytest.mark.parametrize("schedule, expected", [
    ("constant", {0: 1.0, 5: 1.0, 11: 1.0}),
    # linear warmup from 0 over the first 10% of the 12 steps (one step), then a cosine reaching 0 as training ends
    ("warmup_cosine", {0: 0.0, 1: 1.0, 6: 0.5 * (1 + math.cos(math.pi * 5 / 11)),
                       11: 0.5 * (1 + math.cos(math.pi * 10 / 11))}),
    ("cosine", {0: 1.0, 6: 0.5, 11: 0.5 * (1 + math.cos(math.pi * 11 / 12))}),
])
def test_schedules_give_the_expected_lr_at_each_step(schedule, expected):
    ctx, model, run = attack_cell("finetune", schedule=schedule, epochs=2, lr=0.1)
    lrs = []
    handle = register_optimizer_step_pre_hook(
        lambda optimizer, args, kwargs: lrs.append(optimizer.param_groups[0]["lr"]))
    try:
        run(ctx, model)
    finally:
        handle.remove()
    assert len(lrs) == 2 * STEPS_PER_EPOCH
    for step, factor in expected.items():
        assert lrs[step] == pytest.approx(0.1 * factor, abs=1e-12), step


def test_direct_needs_a_head_that_fits_and_initfc_resizes_it():
    ten_classes, model, run = attack_cell("finetune")
    four_classes = tiny_context({**ten_classes.params, "strategy": "direct+all"}, num_classes=4, size=16,
                                n_train=N_TRAIN, n_test=50, registry=REGISTRY)
    with pytest.raises(ValueError, match="only initFC"):
        run(four_classes, model)
    four_classes.params["strategy"] = "initFC+all"
    run(four_classes, model)
    assert head(model).out_features == 4 and model(four_classes.restricted_test.x[:2]).shape == (2, 4)


def test_suite_entries_validate_against_their_plugins():
    for spec in REGISTRY.all("suite"):
        labels = [entry["label"] for entry in spec.extra["entries"]]
        assert len(labels) == len(set(labels)), spec.name
        for entry in spec.extra["entries"]:
            plugin = REGISTRY.get("attack", entry["plugin"])
            grid = {k: v if isinstance(v, list) else [v] for k, v in entry["params"].items()}
            for values in itertools.product(*grid.values()):
                plugin.resolve(dict(zip(grid, values)), f"{spec.name}.{entry['label']}")
    assert {s.name for s in REGISTRY.all("suite")} == {"paper-strategies", "optimizers", "lr-grid", "batch-grid",
                                                       "schedules", "lora", "adaptive"}


def test_attack_modules_import_without_torch():
    code = ("import sys, attacks.finetune, attacks.lora, attacks.adaptive, attacks.suites; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)
