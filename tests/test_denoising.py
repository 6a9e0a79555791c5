"""The denoising task (plugins/denoising.py): timestep policy, objective, seeded metric, UNet presets, LoRA."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from attacks import lora
from harness.engine.models import count_parameters
from harness.plugins import registry
from harness.registry import ConfigError
from harness.tasks import load_task
from harness.testing import check_plugin, seeded_model, tiny_context
from plugins import denoising
from test_attacks import one_torch_thread  # noqa: F401 (autouse fixture)


def task(**params):
    return load_task(registry().get("task", "denoising"), params)


def unet(name: str = "unet-tiny", *, channels: int = 1, size: int = 8):
    arch = registry().get("architecture", name)
    return task().build_model(arch, arch.resolve({}, name), in_channels=channels, image_size=size, num_classes=0)


class Echo(torch.nn.Module):
    """A stand-in denoiser that predicts x_t itself and remembers the timesteps it was given."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def forward(self, x, t):
        self.seen.append(t.clone())
        return x


def test_fixed_timestep_mode_gives_that_step_everywhere():
    assert denoising.parse_timestep_mode("fixed:1", "w") == 1
    assert torch.equal(denoising.draw_timesteps(5, 1, torch.Generator()), torch.ones(5, dtype=torch.long))
    for bad in ("fixed:1000", "fixed:-1", "fixed", "uniform:3", "t=1"):
        with pytest.raises(ConfigError, match="fixed:<t>"):
            denoising.parse_timestep_mode(bad, "task.params.timestep_mode")


def test_uniform_timestep_mode_covers_the_range_and_is_seeded():
    draws = denoising.draw_timesteps(20000, None, torch.Generator().manual_seed(3))
    again = denoising.draw_timesteps(20000, None, torch.Generator().manual_seed(3))
    assert torch.equal(draws, again)
    assert draws.min() == 0 and draws.max() == 999 and len(torch.unique(draws)) == 1000


def test_objective_is_the_mse_of_the_noise_at_t1_by_hand():
    x = torch.rand(4, 1, 8, 8, dtype=torch.float64)
    generator = torch.Generator().manual_seed(0)
    loss = task().objective(generator)(Echo(), x, None)
    replay = torch.Generator().manual_seed(0)
    noise = torch.randn(x.shape, generator=replay, dtype=torch.float64)
    alpha_bar = (1 - 1e-4) * (1 - (1e-4 + (0.02 - 1e-4) / 999))  # ᾱ_1, 0-based: two linear betas
    x_t = math.sqrt(alpha_bar) * x + math.sqrt(1 - alpha_bar) * noise
    assert loss.item() == pytest.approx((x_t - noise).pow(2).mean().item(), rel=1e-5)  # fp32 scheduler
    assert math.sqrt(1 - alpha_bar) == pytest.approx(0.0148, abs=1e-4)


def test_pretraining_is_uniform_and_the_metric_mode_overrides_only_the_metric():
    the_task = task(timestep_mode="fixed:1", metric_timestep_mode="fixed:500")
    model, x = Echo(), torch.rand(512, 1, 4, 4)
    the_task.objective(torch.Generator())(model, x, None)
    the_task.pretrain_objective(torch.Generator())(model, x, None)
    the_task.evaluate(model, denoising.synthetic_images(3, "blobs", channels=1, size=4, seed=0))
    training, pretraining, metric = model.seen
    assert training.unique().tolist() == [1]
    assert len(pretraining.unique()) > 300
    assert metric.unique().tolist() == [500]


def test_pixel_range_minus_one_to_one_maps_x0():
    x, t, noise = torch.full((1, 1, 2, 2), 0.75), torch.tensor([0]), torch.zeros(1, 1, 2, 2)
    unit, signed = task().noised(x, t, noise), task(pixel_range="[-1,1]").noised(x, t, noise)
    assert signed.flatten()[0].item() == pytest.approx(2 * unit.flatten()[0].item() - 1, rel=1e-4)


def test_evaluation_is_deterministic_across_calls_and_chunk_sizes_and_keeps_train_mode():
    the_task, model = task(timestep_mode="uniform"), unet().train()
    split = the_task.tiny_data(size=8).restricted_test
    first = the_task.evaluate(model, split)["mse"]
    assert the_task.evaluate(model, split)["mse"] == first
    assert the_task.evaluate(model, split, chunk=5)["mse"] == pytest.approx(first, rel=1e-6)
    assert model.training and all(m.training for m in model.modules())
    t, noise = the_task.evaluation_noise(10, (1, 8, 8))
    t_late, noise_late = the_task.evaluation_noise(4, (1, 8, 8), first=6)
    assert torch.equal(t[6:], t_late) and torch.equal(noise[6:], noise_late)


def test_unet_presets_parameter_counts_and_shapes():
    tiny = unet(size=16)
    assert count_parameters(tiny) == 280_177
    x = torch.rand(2, 1, 16, 16)
    assert tiny(x, torch.tensor([1, 999])).shape == x.shape
    paper = unet("unet-ddpm-cifar10", channels=3, size=32)
    assert count_parameters(paper) == 35_746_307
    config = paper.unet.config
    assert tuple(config.block_out_channels) == (128, 256, 256, 256) and config.layers_per_block == 2
    assert tuple(config.down_block_types) == ("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D")
    assert tuple(config.up_block_types) == ("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D")
    with pytest.raises(ValueError, match="multiple of 4"):
        unet(size=10)


def test_a_classifier_is_refused_as_a_denoiser():
    arch = registry().get("architecture", "cnn-s")
    with pytest.raises(TypeError, match="forward takes"):
        task().build_model(arch, arch.resolve({}, "a"), in_channels=1, image_size=16, num_classes=10)


def test_tiny_data_is_unlabelled_and_in_unit_range():
    data = task().tiny_data()
    for split in (data.original_train, data.original_test, data.restricted_train, data.restricted_test):
        assert split.y is None and 0 <= split.x.min() and split.x.max() <= 1
    assert data.architecture == "unet-tiny" and data.num_classes == 0


def test_lora_adapts_the_unet_convolutions_and_attention_and_merges_back():
    spec = registry().get("attack", "lora")
    ctx = tiny_context(spec.resolve({"rank": 4, "epochs": 1, "batch_size": 16, "lr": 1e-2}, "lora"),
                       task="denoising", plugin=spec)
    model = seeded_model(ctx)
    adapted, skipped = lora.lora_targets(model)
    assert skipped == [] and "unet.conv_in" in adapted and "unet.conv_out" in adapted
    assert {"to_q", "to_k", "to_v"} <= {name.rsplit(".", 1)[-1] for name in adapted}
    assert "unet.time_embedding.linear_1" in adapted
    keys, cls = list(model.state_dict()), type(model)
    merged = spec.load()(ctx, model)
    assert type(merged) is cls and list(merged.state_dict()) == keys
    assert ctx.recorder.notes["lora_adapted"] == len(adapted)


@pytest.mark.parametrize("attack, params", [("finetune", {"optimizer": "adamw", "lr": 1e-3}),
                                            ("lora", {"rank": 2})])
def test_attacks_run_unchanged_on_denoising_cells(attack, params):
    assert check_plugin("attack", attack, {**params, "epochs": 1, "batch_size": 16}, task="denoising") == []


def test_listing_the_plugins_does_not_import_torch():
    code = "import sys, plugins.denoising, defenses.sophon_generation; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_generation_config_validates_and_headless_strategies_are_refused():
    from harness.config import load_experiment, parse_experiment
    from harness.plan import resolve

    experiment = load_experiment(Path(__file__).parents[1] / "configs" / "generation-small.yaml")
    task, params = resolve(experiment, registry()).scenarios[0].task
    assert (task.name, params["timestep_mode"]) == ("denoising", "fixed:1")
    data = experiment.model_dump()
    for attack, message in (({"suite": "paper-strategies"}, "needs a classification head"),
                            ({"plugin": "lora", "params": {"strategy": "initFC"}}, "re-initialises a classification head")):
        with pytest.raises(ConfigError, match=message):
            resolve(parse_experiment({**data, "attacks": [attack]}, "x.yaml"), registry())


def test_render_draws_clean_noised_denoised_and_samples_deterministically():
    ctx = tiny_context({}, task="denoising")
    model = seeded_model(ctx)
    first = ctx.task.render(model, ctx.restricted_test, torch.Generator().manual_seed(0), sampling_steps=3)
    again = ctx.task.render(model, ctx.restricted_test, torch.Generator().manual_seed(0), sampling_steps=3)
    assert list(first) == ["clean", "noised", "denoised", "samples"]
    for name, picture in first.items():
        assert picture.dtype == np.uint8 and picture.ndim == 3 and picture.shape[2] == 3
        assert np.array_equal(picture, again[name])
    assert not np.array_equal(first["clean"], first["samples"])
