"""SOPHON (defenses/sophon.py): the meta-gradient, BN handling, optimizers, guard, losses and determinism."""

from __future__ import annotations

import itertools
import math
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from defenses import sophon
from harness.engine.data import cycling_batches
from harness.engine.models import state_tensors
from harness.plugins import registry
from harness.registry import ConfigError
from harness.testing import same_weights, seeded_model, tiny_context

FAST = {"total_loop": 2, "adaptation_steps": 3, "batch_size": 40, "ntr_batch_size": 40, "probe_every": 0,
        "guard_threshold": 0.0}


def context(name: str = "sophon-ice", **overrides):
    spec = registry().get("defense", name)
    return tiny_context(spec.resolve({**FAST, **overrides}, name), arch_params={"width": 0.5}, n_train=120, n_test=60,
                        plugin=spec)


def batches(ctx, steps: int, batch_size: int = 40):
    stream = cycling_batches(len(ctx.restricted_train), batch_size, torch.Generator().manual_seed(1), True)
    return list(sophon.restricted_batches(ctx.restricted_train, stream, steps, torch.Generator().manual_seed(2)))


def keep_all_graphs_gradient(model, data, lr: float, loss_fn, head_init: dict | None, trains: str = "all"):
    """The reference's way: θ' with requires_grad, a K-step trajectory whose inner gradients are constants,
    every query graph alive until one backward of the mean query loss. `trains="head"` steps only the head."""
    theta = {n: p.detach().clone().requires_grad_(True) for n, p in model.named_parameters()}
    fast = dict(theta)
    if head_init:  # the clone is an identity in autograd: the value is re-initialised, the gradient passes
        fast.update({n: theta[n] + (value - theta[n]).detach() for n, value in head_init.items()})
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    losses = []
    for support_x, support_y, query_x, query_y in data:
        support = F.cross_entropy(functional_call(model, (fast, buffers), (support_x,)), support_y)
        grads = torch.autograd.grad(support, list(fast.values()))
        fast = {n: t - lr * g.detach() if trains == "all" or n.startswith(f"{model.head_path}.") else t
                for (n, t), g in zip(fast.items(), grads)}
        losses.append(loss_fn(functional_call(model, (fast, buffers), (query_x,)), query_y))
    torch.stack(losses).mean().backward()
    return {n: t.grad for n, t in theta.items()}


def relative_error(a: dict, b: dict) -> float:
    diff = math.sqrt(sum((a[n] - b[n]).pow(2).sum().item() for n in a))
    return diff / math.sqrt(sum(b[n].pow(2).sum().item() for n in b))


@pytest.mark.parametrize("head_mode, trains", [("initFC", "all"), ("direct", "all"), ("initFC", "head")])
def test_lean_meta_gradient_matches_keep_all_graphs(head_mode, trains):
    ctx = context()
    model = seeded_model(ctx).train()
    data = batches(ctx, steps=4)
    env = sophon.Environment("sgd", 1e-2, 40, 4, head_mode, 1.0, trains)
    lean = sophon.fts_meta_gradient(model, data, env, sophon.ice_negated_logits, [0.25] * 4,
                                    head_generator=torch.Generator().manual_seed(7))
    head_init = None
    if head_mode == "initFC":
        fresh = {n: p.detach().clone() for n, p in model.named_parameters()}
        sophon.reinit_fast_head(model, fresh, torch.Generator().manual_seed(7))
        head_init = {n: fresh[n] for n in (f"{model.head_path}.weight", f"{model.head_path}.bias")}
    reference = keep_all_graphs_gradient(model, data, 1e-2, sophon.ice_negated_logits, head_init, trains)
    assert relative_error(lean.grads, reference) <= 1e-5
    if trains == "head":  # a head-only attacker moves only the head: the body's gradient differs from `all`'s
        everything = keep_all_graphs_gradient(model, data, 1e-2, sophon.ice_negated_logits, head_init)
        assert relative_error(lean.grads, everything) > 1e-3
    assert 0.0 <= lean.query_accuracy <= 1.0


def test_sum_reduction_and_last_m_weights():
    assert sophon.step_weights(4, "mean", "uniform") == [0.25] * 4
    assert sophon.step_weights(4, "sum", "uniform") == [1.0] * 4
    assert sophon.step_weights(4, "mean", "last:2") == [0.0, 0.0, 0.5, 0.5]
    assert sophon.step_weights(4, "sum", "last:9") == [1.0] * 4
    with pytest.raises(ConfigError, match="last:<m>"):
        sophon.step_weights(4, "mean", "first:2")


def test_fts_leaves_bn_statistics_untouched():
    ctx = context()
    model = seeded_model(ctx)
    trainer = sophon.Sophon(ctx, model, sophon.ice_negated_logits)
    before = state_tensors(model)
    trainer.suppress()
    after = state_tensors(model)
    buffers = {name for name, _ in model.named_buffers()}
    assert all(torch.equal(before[n], after[n]) for n in buffers)
    assert any(not torch.equal(before[n], after[n]) for n in before if n not in buffers)


def test_two_adam_optimizers_with_alpha_and_beta_learning_rates():
    ctx = context(alpha=3.0, beta=5.0, lr0=1e-4)
    model = seeded_model(ctx)
    trainer = sophon.Sophon(ctx, model, sophon.ice_negated_logits)
    fts, ntr = trainer.fts_optimizer, trainer.ntr_optimizer
    assert isinstance(fts, torch.optim.Adam) and isinstance(ntr, torch.optim.Adam) and fts is not ntr
    assert fts.param_groups[0]["lr"] == pytest.approx(3e-4) and ntr.param_groups[0]["lr"] == pytest.approx(5e-4)
    trainer.iterate(1)
    first = next(model.parameters())
    assert fts.state[first]["exp_avg"] is not ntr.state[first]["exp_avg"]
    assert not torch.equal(fts.state[first]["exp_avg"], ntr.state[first]["exp_avg"])

    single = sophon.Sophon(context(outer_optim="weighted_single"), seeded_model(ctx), sophon.ice_negated_logits)
    assert single.fts_optimizer is single.ntr_optimizer and single.fts_optimizer.param_groups[0]["lr"] == 1e-4
    assert (single.fts_scale, single.ntr_scale) == (3.0, 5.0)


def test_guard_stop_restores_the_backup_and_ends_training():
    ctx = context(guard_threshold=100.0, guard_action="stop", total_loop=3)
    model = seeded_model(ctx)
    start = state_tensors(model)
    released = sophon.train_ice(ctx, model)
    assert all(torch.equal(start[n], t) for n, t in state_tensors(released).items())
    assert ctx.recorder.notes["sophon"] == {"iterations": 0, "guard_rollbacks": 1, "stopped_by_guard": True}


def test_guard_skip_restores_model_and_optimizers_then_continues(monkeypatch):
    ctx = context(guard_threshold=50.0, guard_action="skip", total_loop=3, final_bn_restore=False)
    trainer = sophon.Sophon(ctx, seeded_model(ctx), sophon.ice_negated_logits)
    verdicts = itertools.chain([1.0, 0.0], itertools.repeat(1.0))  # only the second iteration fails
    monkeypatch.setattr(trainer, "guard_accuracy", lambda: next(verdicts))
    trainer.run()
    assert ctx.recorder.notes["sophon"] == {"iterations": 3, "guard_rollbacks": 1, "stopped_by_guard": False}

    backup = trainer.snapshot()
    trainer.iterate(4)
    trainer.restore(backup)
    assert all(torch.equal(backup["model"][n], t) for n, t in trainer.model.state_dict().items())
    for optimizer, saved in zip(trainer.optimizers, backup["optimizers"]):
        for state, kept in zip(optimizer.state_dict()["state"].values(), saved["state"].values()):
            assert all(torch.equal(state[k], kept[k]) for k in ("exp_avg", "exp_avg_sq"))


def test_guard_every_rolls_back_whole_windows():
    ctx = context(guard_threshold=100.0, guard_action="skip", guard_every=2, total_loop=5)
    model = seeded_model(ctx)
    start = state_tensors(model)
    released = sophon.train_ice(ctx, model)
    assert ctx.recorder.notes["sophon"] == {"iterations": 5, "guard_rollbacks": 3, "stopped_by_guard": False}
    assert all(torch.equal(start[n], t) for n, t in state_tensors(released).items())


def test_ice_forms_and_klu_match_hand_formulas():
    logits = torch.tensor([[2.0, -1.0, 0.5], [0.1, 0.2, 3.0]], dtype=torch.float64)
    labels = torch.tensor([0, 2])
    p = logits.softmax(dim=1)
    negated = (-logits).softmax(dim=1)
    hand_negated = -(negated[0, 0].log() + negated[1, 2].log()) / 2
    hand_paper = -((1 - p[0, 0]).log() + (1 - p[1, 2]).log()) / 2
    u = 1.0 / 3
    hand_klu = sum(u * (math.log(u) - p[i, j].log()) for i in range(2) for j in range(3)) / 2
    assert sophon.ice_negated_logits(logits, labels).item() == pytest.approx(hand_negated.item(), rel=1e-12)
    assert sophon.ice_log_one_minus_p(logits, labels).item() == pytest.approx(hand_paper.item(), rel=1e-12)
    assert sophon.kl_from_uniform(logits).item() == pytest.approx(hand_klu.item(), rel=1e-12)


def test_environments_are_checked_and_default_to_the_scalars():
    params = registry().get("defense", "sophon-klu").resolve({"inner_lr": 1e-3}, "d")
    assert sophon.parse_environments(params) == [sophon.Environment("sgd", 1e-3, 150, 50, "direct", 1.0)]
    params["environments"] = [{"optimizer": "adam", "batch_size": 50}, {"head_mode": "initFC", "weight": 2}]
    first, second = sophon.parse_environments(params)
    assert (first.optimizer, first.batch_size, first.lr) == ("adam", 50, 1e-3)
    assert (second.head_mode, second.weight) == ("initFC", 2.0)
    params["environments"] = [{"trains": "head"}]
    assert sophon.parse_environments(params)[0].trains == "head"
    params["environments"] = [{"learning_rate": 1e-3}]
    with pytest.raises(ConfigError, match=r"environments\[0\]"):
        sophon.parse_environments(params)
    params["environments"] = [{"trains": "body"}]
    with pytest.raises(ConfigError, match=r"environments\[0\].trains"):
        sophon.parse_environments(params)


def test_all_environments_average_their_gradients():
    envs = [{"optimizer": "momentum", "steps": 2}, {"optimizer": "adam", "steps": 3, "weight": 3.0}]
    ctx = context(environments=envs, environment_sampling="all")
    released = sophon.train_ice(ctx, seeded_model(ctx))
    assert all(torch.isfinite(t).all() for t in state_tensors(released).values())


def test_reference_defaults_per_loss():
    ice = {p.name: p.default for p in registry().get("defense", "sophon-ice").params}
    klu = {p.name: p.default for p in registry().get("defense", "sophon-klu").params}
    assert [ice[k] for k in ("alpha", "beta", "ml_loop", "nl_loop", "fts_head_reinit")] == [3.0, 5.0, 1, 1, True]
    assert [klu[k] for k in ("alpha", "beta", "ml_loop", "nl_loop", "fts_head_reinit")] == [1.0, 1.0, 1, 5, False]
    reference = (ice["total_loop"], ice["adaptation_steps"], ice["batch_size"], ice["guard_threshold"])
    assert reference == (1000, 50, 150, 80.0)
    assert "ice_variant" in ice and "ice_variant" not in klu


def test_deterministic_and_probes_never_change_the_model():
    runs = []
    for probe_every in (1, 1, 0):
        ctx = context(probe_every=probe_every, probe_batch_size=32)
        runs.append((sophon.train_klu(ctx, seeded_model(ctx)), ctx.recorder))
    (first, rec_a), (second, rec_b), (unprobed, _) = runs
    assert same_weights(first, second) and rec_a.points == rec_b.points
    assert same_weights(first, unprobed)
    probes = [x for x, _, metric, _ in rec_a.points if metric == "restricted/probe_accuracy"]
    assert probes == [0.0, 1.0, 2.0]


def test_listing_the_plugin_does_not_import_torch():
    code = "import sys, defenses.sophon, defenses.ntl; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


@pytest.mark.parametrize("name", ["sophon-ice-paper", "sophon-klu-paper"])
def test_paper_presets_simulate_adam_with_both_heads_and_train(name):
    spec = registry().get("defense", name)
    code = registry().get("defense", name.removesuffix("-paper"))
    params = spec.resolve({}, name)
    assert [(e.optimizer, e.head_mode) for e in sophon.parse_environments(params)] == [("adam", "initFC"),
                                                                                       ("adam", "direct")]
    assert [e.optimizer for e in sophon.parse_environments(code.resolve({}, "code"))] == ["sgd"]
    assert params == {**code.resolve({}, "code"), "environments": sophon.PAPER_ENVIRONMENTS}
    ctx = context(name)
    released = spec.load()(ctx, seeded_model(ctx))
    assert all(torch.isfinite(t).all() for t in state_tensors(released).values())
