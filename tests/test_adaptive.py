"""Adaptive attacks change what they claim and nothing else, then fine-tune through the shared loop."""

import pytest
import torch

from attacks import adaptive
from harness.engine.models import state_tensors
from test_attacks import (STEPS_PER_EPOCH, attack_cell, changed, curve, one_torch_thread,  # noqa: F401 (autouse)
                          parameter_names)


def test_bn_reestimation_sets_the_adversary_statistics_and_touches_no_parameter():
    ctx, model, _ = attack_cell("bn_reestimate")
    before = state_tensors(model)
    data = ctx.restricted_train
    assert adaptive.reestimate_bn_(ctx, model, batch_size=len(data), passes=1) == 2
    after = state_tensors(model)
    assert changed(before, after) == {f"stage{i}.1.{b}" for i in (1, 2)
                                      for b in ("running_mean", "running_var", "num_batches_tracked")}
    with torch.no_grad():  # one batch, cumulative average: the statistics of the first conv's output itself
        features = model.stage1[0](data.x)
    torch.testing.assert_close(model.stage1[1].running_mean, features.mean(dim=(0, 2, 3)))
    torch.testing.assert_close(model.stage1[1].running_var, features.var(dim=(0, 2, 3), unbiased=True))
    assert model.stage1[1].momentum == 0.1


def test_bn_reestimate_with_no_epochs_only_evaluates():
    ctx, model, run = attack_cell("bn_reestimate", epochs=0)
    before = state_tensors(model)
    run(ctx, model)
    assert not changed(before, state_tensors(model)) & parameter_names(model)
    assert sorted(curve(ctx)) == [0] and ctx.recorder.notes["bn_layers"] == 2


def test_weight_noise_has_the_right_scale():
    ctx, model, _ = attack_cell("weight_noise")
    before = state_tensors(model)
    adaptive.add_weight_noise_(ctx, model, 0.1)
    after = state_tensors(model)
    nonzero = {name for name in parameter_names(model) if before[name].any()}  # rms 0 (BN biases): no noise
    assert changed(before, after) == nonzero  # and buffers untouched
    for name, param in model.named_parameters():
        if param.numel() >= 1000:
            rms = before[name].pow(2).mean().sqrt()
            assert (after[name] - before[name]).std() / rms == pytest.approx(0.1, rel=0.1), name


@pytest.mark.parametrize("k, blocks", [(1, ["classifier"]), (2, ["stage2", "classifier"])])
def test_reinit_last_k_changes_only_the_last_k_blocks_and_the_head(k, blocks):
    ctx, model, run = attack_cell("reinit_last_k", k=k, epochs=0)
    before = state_tensors(model)
    run(ctx, model)
    after = state_tensors(model)
    assert all(any(name.startswith(block + ".") for block in blocks) for name in changed(before, after))
    weights = {name for name, p in model.named_parameters() if p.dim() > 1}  # conv and linear weights
    assert {name for name in weights if name.split(".")[0] in blocks} <= changed(before, after)
    assert ctx.recorder.notes["reinitialised_blocks"] == blocks
    assert ctx.params["strategy"] == "initFC+all"


def test_reinit_last_k_is_seeded_and_checks_k():
    models = []
    for _ in range(2):
        ctx, model, run = attack_cell("reinit_last_k", k=2, epochs=0)
        models.append(run(ctx, model))
    assert not changed(state_tensors(models[0]), state_tensors(models[1]))
    ctx, model, run = attack_cell("reinit_last_k", k=4, epochs=0)
    with pytest.raises(ValueError, match="3 blocks"):
        run(ctx, model)


def test_long_horizon_trains_horizon_factor_times_the_epochs():
    ctx, model, run = attack_cell("long_horizon", epochs=1, horizon_factor=3)
    run(ctx, model)
    assert sorted(curve(ctx)) == [0, 1, 2, 3]
    assert ctx.recorder.notes["steps"] == 3 * STEPS_PER_EPOCH


@pytest.mark.parametrize("name", ["bn_reestimate", "reinit_last_k", "weight_noise", "long_horizon"])
def test_each_adaptive_attack_then_fine_tunes_and_repeats_under_a_seed(name):
    points = []
    for _ in range(2):
        ctx, model, run = attack_cell(name, lr=0.01)
        run(ctx, model)
        points.append(ctx.recorder.points)
    assert points[0] == points[1]
    assert len(curve(ctx, "original/accuracy")) == 1  # after (the runner records the start's)
