"""SOPHON-MSE and SOPHON-DoS (defenses/sophon_generation.py): losses, batches, optimizers, leak, NaN skip, clamp."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from defenses import sophon, sophon_generation as gen
from harness.engine.data import cycling_batches
from harness.plugins import registry
from harness.testing import check_plugin, seeded_model, tiny_context
from test_attacks import one_torch_thread  # noqa: F401 (autouse fixture)

FAST = {"total_loop": 2, "fast_batches": 2, "batch_size": 20, "ntr_batch_size": 16, "nl_loop": 1, "eval_every": 0}


def context(name: str = "sophon-dos", **overrides):
    spec = registry().get("defense", name)
    return tiny_context(spec.resolve({**FAST, **overrides}, name), task="denoising", plugin=spec)


def test_dos_and_mse_query_losses_match_hand_computations():
    predicted = torch.tensor([[[[1.0, -2.0]]], [[[0.5, 0.0]]]])
    noise = torch.tensor([[[[0.0, 1.0]]], [[[0.5, 2.0]]]])
    assert gen.denial_of_service(predicted, noise).item() == pytest.approx((1 + 4 + 0.25 + 0) / 4)
    assert gen.negated_mse(predicted, noise).item() == pytest.approx(-(1 + 9 + 0 + 4) / 4)


def test_support_is_the_first_ninety_percent_of_each_batch():
    ctx = context()
    stream = cycling_batches(len(ctx.restricted_train), 20, torch.Generator().manual_seed(0), True)
    batches = list(gen.denoising_batches(ctx.task, ctx.restricted_train, stream, 3, torch.Generator()))
    assert len(batches) == 3
    (support_x, support_t), support_noise, (query_x, query_t), query_noise = batches[0]
    assert (len(support_x), len(query_x), len(support_noise), len(query_noise)) == (18, 2, 18, 2)
    assert support_t.unique().tolist() == query_t.unique().tolist() == [1]  # the task's fixed:1 policy
    index = next(cycling_batches(len(ctx.restricted_train), 20, torch.Generator().manual_seed(0), True))
    clean = ctx.restricted_train.x[index]
    assert torch.allclose(support_x, ctx.task.noised(clean[:18], support_t, support_noise))
    assert torch.allclose(query_x, ctx.task.noised(clean[18:], query_t, query_noise))


def test_one_step_meta_gradient_is_the_query_gradient_after_one_sgd_step():
    ctx = context()
    model = seeded_model(ctx).train()
    stream = cycling_batches(len(ctx.restricted_train), 20, torch.Generator().manual_seed(0), True)
    batch = next(gen.denoising_batches(ctx.task, ctx.restricted_train, stream, 1, torch.Generator()))
    env = sophon.Environment("sgd", 1e-2, 20, 1, "direct", 1.0)
    lean = sophon.fts_meta_gradient(model, [batch], env, gen.denial_of_service, [1.0], inner_loss=F.mse_loss,
                                    hits=None)
    stepped = copy.deepcopy(model)
    (support, support_noise, query, _) = batch
    inner = torch.autograd.grad(F.mse_loss(stepped(*support), support_noise), list(stepped.parameters()))
    with torch.no_grad():
        for parameter, grad in zip(stepped.parameters(), inner):
            parameter.sub_(1e-2 * grad)
    expected = torch.autograd.grad(gen.denial_of_service(stepped(*query)), list(stepped.parameters()))
    for (name, _), grad in zip(stepped.named_parameters(), expected):
        torch.testing.assert_close(lean.grads[name], grad, rtol=1e-4, atol=1e-6)
    assert lean.query_accuracy is None


def test_outer_optimizers_adam_for_fts_and_adamw_with_decay_on_matrices_for_ntr():
    ctx = context(alpha=0.05, beta=2.0, lr0=1e-4)
    trainer = gen.GenerativeSophon(ctx, seeded_model(ctx), "dos")
    fts, ntr = trainer.fts_optimizer, trainer.ntr_optimizer
    assert type(fts) is torch.optim.Adam and fts.param_groups[0]["lr"] == pytest.approx(5e-6)
    assert fts.param_groups[0]["weight_decay"] == 0
    assert type(ntr) is torch.optim.AdamW and all(g["lr"] == pytest.approx(2e-4) for g in ntr.param_groups)
    decayed, plain = ntr.param_groups
    assert decayed["weight_decay"] == 1e-4 and all(t.ndim >= 2 for t in decayed["params"])
    assert plain["weight_decay"] == 0 and all(t.ndim < 2 for t in plain["params"])


def ntr_gradients(leak: bool, monkeypatch) -> tuple[dict, dict]:
    """(clipped FTS gradient, gradient seen by the first NTR step) of one iteration."""
    ctx = context(reference_grad_leak=leak)
    trainer = gen.GenerativeSophon(ctx, seeded_model(ctx), "mse")
    seen = {}
    for label, optimizer in (("fts", trainer.fts_optimizer), ("ntr", trainer.ntr_optimizer)):
        def spy(*args, _label=label, _step=optimizer.step, **kwargs):
            seen.setdefault(_label, {n: p.grad.clone() for n, p in trainer.model.named_parameters()})
            return _step(*args, **kwargs)
        monkeypatch.setattr(optimizer, "step", spy)
    trainer.iterate(1)
    assert all(p.grad is None for p in trainer.model.parameters())  # nothing leaks past the NTR step
    return seen["fts"], seen["ntr"]


def test_reference_grad_leak_pushes_the_clipped_meta_gradient_through_the_first_ntr_step(monkeypatch):
    fts, fixed = ntr_gradients(False, monkeypatch)
    fts_leak, leaked = ntr_gradients(True, monkeypatch)
    for name in fts:
        torch.testing.assert_close(fts[name], fts_leak[name])
        torch.testing.assert_close(leaked[name], fixed[name] + fts[name], rtol=1e-5, atol=1e-8)


def test_a_non_finite_ntr_loss_skips_the_step_and_is_counted():
    ctx = context(total_loop=2, nl_loop=2, alpha=0.0)
    trainer = gen.GenerativeSophon(ctx, seeded_model(ctx), "dos")
    start = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.ntr_objective = lambda model, x, y: model(x, torch.ones(len(x), dtype=torch.long)).sum() * float("nan")
    released = trainer.run()
    assert ctx.recorder.notes["sophon"]["skipped_ntr_steps"] == 4
    assert all(torch.equal(start[n], p) for n, p in released.named_parameters())  # alpha 0: FTS does not move


def test_mse_clamp_zeroes_the_meta_gradient_beyond_forty(monkeypatch):
    ctx = context("sophon-mse", mse_clamp="[-40,0]")
    trainer = gen.GenerativeSophon(ctx, seeded_model(ctx), "mse")
    ones = {n: torch.ones_like(p) for n, p in trainer.model.named_parameters()}
    for query_loss, expected in ((-50.0, 0.0), (-30.0, 1.0)):
        result = sophon.MetaGradient({n: g.clone() for n, g in ones.items()}, query_loss, None)
        monkeypatch.setattr(gen, "fts_meta_gradient", lambda *args, _r=result, **kwargs: _r)
        assert all(torch.all(g == expected) for g in trainer.meta_gradient().values())
    assert trainer.clamped_fts_steps == 1


def test_reference_defaults_per_loss():
    def defaults(name):
        return {p.name: p.default for p in registry().get("defense", name).params}

    keys = ("alpha", "beta", "batch_size", "fast_batches", "ml_loop", "nl_loop", "total_loop", "inner_lr",
            "meta_grad_clip", "reference_grad_leak")
    assert [defaults("sophon-mse")[k] for k in keys] == [1.0, 5.0, 100, 50, 1, 1, 1000, 1e-4, 0.5, False]
    assert [defaults("sophon-dos")[k] for k in keys] == [0.05, 2.0, 200, 50, 1, 10, 200, 1e-4, 0.5, False]
    assert defaults("sophon-mse")["mse_clamp"] == "none" and "mse_clamp" not in defaults("sophon-dos")
    for name in ("sophon-mse", "sophon-dos"):
        assert registry().get("defense", name).extra["tasks"] == ("denoising",)


@pytest.mark.parametrize("name", ["sophon-mse", "sophon-dos"])
def test_plugin_check_on_a_tiny_denoising_cell(name):
    assert check_plugin("defense", name, {**FAST, "eval_every": 1}) == []


@pytest.mark.parametrize("ml_loop", [1, 0])  # 0: reinforcement alone, a control for what suppression adds
def test_training_records_test_mse_curves_and_notes(ml_loop):
    ctx = context(total_loop=3, eval_every=1, ml_loop=ml_loop)
    gen.train_dos(ctx, seeded_model(ctx))
    steps = sorted({(metric, x) for x, unit, metric, _ in ctx.recorder.points if unit == "step"})
    assert steps == [(f"{on}/mse", x) for on in ("original", "restricted") for x in (1.0, 2.0, 3.0)]
    assert ctx.recorder.notes["sophon"] == {"iterations": 3, "skipped_ntr_steps": 0, "clamped_fts_steps": 0}
