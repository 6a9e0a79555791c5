"""The LoRA attack trains only adapters and the head, merges back into a plain module with the same outputs,
skips what peft cannot merge, and works on the small CNNs and timm's resnet18."""

from collections import OrderedDict

import pytest
import torch
from torch import nn

from attacks import lora
from harness.engine.models import state_tensors
from test_attacks import attack_cell, curve, one_torch_thread  # noqa: F401 (autouse fixture)


@pytest.fixture
def adapted(monkeypatch):
    """What the adapted (peft) model looked like just before the merge: its parameters and test logits."""
    seen, fine_tune = {}, lora.fine_tune

    def spy(ctx, model, trainable, recipe, *, release):
        def inspect_then_release(peft_model):
            seen["parameters"] = {name: p.detach().clone() for name, p in peft_model.named_parameters()}
            seen["logits"] = peft_model.eval()(ctx.restricted_test.x)
            return release(peft_model)
        return fine_tune(ctx, model, trainable, recipe, release=inspect_then_release)

    monkeypatch.setattr(lora, "fine_tune", spy)
    return seen


def plain_name(peft_name: str) -> str:
    """The start model's name for a base parameter of the peft-wrapped model."""
    return peft_name.removeprefix("base_model.model.").replace(".base_layer.", ".")


@pytest.mark.parametrize("strategy", ["direct", "initFC"])
def test_only_adapters_and_head_change_and_the_merge_keeps_the_outputs(strategy, adapted):
    ctx, model, run = attack_cell("lora", strategy=strategy, rank=4, lr=1e-2)
    start = {name: p.detach().clone() for name, p in model.named_parameters()}
    cls, keys = type(model), list(model.state_dict())
    merged = run(ctx, model)

    trained = adapted["parameters"]
    head = {name for name in trained if ".modules_to_save." in name}
    adapters = {name for name in trained if ".lora_" in name}
    assert head == {f"base_model.model.{model.head_path}.modules_to_save.default.{p}" for p in ("weight", "bias")}
    assert any(torch.any(trained[name] != 0) for name in adapters if ".lora_B." in name)  # B starts at zero
    for name in trained.keys() - adapters:
        if model.head_path not in name:  # the head is re-initialised by initFC, then trained by both
            assert torch.equal(trained[name], start[plain_name(name)]), name

    assert type(merged) is cls and list(merged.state_dict()) == keys
    torch.testing.assert_close(merged.eval()(ctx.restricted_test.x), adapted["logits"], atol=1e-5, rtol=1e-5)
    assert sorted(curve(ctx)) == [0, 1] and sorted(curve(ctx, "original/accuracy")) == [1]
    assert ctx.recorder.notes["lora_skipped"] == [] and ctx.recorder.notes["lora_adapted"] == 3


def test_merging_changes_exactly_the_adapted_weights_and_the_head():
    ctx, model, run = attack_cell("lora", rank=4, lr=1e-2, freeze_bn_stats=True)
    targets, _ = lora.lora_targets(model)
    before = state_tensors(model)
    after = state_tensors(run(ctx, model))
    expected = {f"{name}.weight" for name in targets} | {f"{model.head_path}.weight", f"{model.head_path}.bias"}
    assert {name for name in before if not torch.equal(before[name], after[name])} == expected


def test_grouped_convolutions_are_skipped_and_listed(adapted):
    ctx, _, run = attack_cell("lora", rank=4)
    model = nn.Sequential(OrderedDict([
        ("conv", nn.Conv2d(1, 4, 3, padding=1)), ("depthwise", nn.Conv2d(4, 4, 3, padding=1, groups=4)),
        ("pool", nn.AdaptiveAvgPool2d(1)), ("flatten", nn.Flatten()), ("head", nn.Linear(4, 10))]))
    model.head_path, model.block_paths, model.feature_path = "head", ["conv", "depthwise"], "conv"
    assert lora.lora_targets(model) == (["conv"], ["depthwise"])
    merged = run(ctx, model)
    assert ctx.recorder.notes["lora_skipped"] == ["depthwise"]
    torch.testing.assert_close(merged.eval()(ctx.restricted_test.x), adapted["logits"], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("architecture", ["cnn-m", "resnet18"])
def test_works_on_the_cpu_cnns_and_timm_resnet18(architecture, adapted):
    ctx, model, run = attack_cell("lora", architecture=architecture, rank=4)
    cls, keys = type(model), list(model.state_dict())
    merged = run(ctx, model)
    assert type(merged) is cls and list(merged.state_dict()) == keys
    assert merged.head_path == model.head_path
    torch.testing.assert_close(merged.eval()(ctx.restricted_test.x), adapted["logits"], atol=1e-4, rtol=1e-4)
    assert ctx.recorder.notes["lora_adapted"] > 0


def test_alpha_defaults_to_twice_the_rank(monkeypatch):
    import peft

    configs, get_peft_model = [], peft.get_peft_model

    def spy(model, config):
        configs.append(config)
        return get_peft_model(model, config)

    monkeypatch.setattr(peft, "get_peft_model", spy)
    ctx, model, run = attack_cell("lora", rank=4, epochs=0)
    run(ctx, model)
    assert configs[0].r == 4 and configs[0].lora_alpha == 8 and configs[0].modules_to_save == [model.head_path]
