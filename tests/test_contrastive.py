"""SimCLR pretraining (`pretrain: {objective: simclr}`): its views and loss by hand, its validation, a tiny run."""

from __future__ import annotations

import math
from collections import OrderedDict

import pytest
import torch
from torch import nn

from harness.config import load_experiment
from harness.engine.contrastive import augmented_view, simclr_objective
from harness.plan import build_cells, resolve
from harness.plugins import registry
from harness.registry import ConfigError
from tests.conftest import TINY_EXPERIMENT
from tests.test_access import rows, run_experiment

PRETRAIN = "    pretrain: {epochs: 1, batch_size: 64}\n"
IDENTITY_VIEW = {"min_crop": 1.0, "flip": False, "noise_std": 0.0}


def flat_encoder() -> nn.Module:
    """A model whose representation is its flattened input."""
    model = nn.Sequential(OrderedDict(feat=nn.Flatten()))
    model.feature_path = "feat"
    return model


def test_a_full_crop_without_flip_or_noise_is_the_image_itself():
    x = torch.arange(2 * 1 * 4 * 4, dtype=torch.float32).view(2, 1, 4, 4)
    view = augmented_view(x, torch.Generator().manual_seed(0), **IDENTITY_VIEW)
    assert torch.allclose(view, x, atol=1e-5)


def test_flips_mirror_whole_images_and_views_follow_the_generator():
    x = torch.randn(16, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    view = augmented_view(x, torch.Generator().manual_seed(0), **{**IDENTITY_VIEW, "flip": True})
    mirrored = [torch.allclose(v, xi.flip(-1), atol=1e-5) for v, xi in zip(view, x)]
    kept = [torch.allclose(v, xi, atol=1e-5) for v, xi in zip(view, x)]
    assert all(m or k for m, k in zip(mirrored, kept)) and any(mirrored) and any(kept)
    settings = {"min_crop": 0.3, "flip": True, "noise_std": 0.1}
    first, again = (augmented_view(x, torch.Generator().manual_seed(5), **settings) for _ in range(2))
    assert torch.equal(first, again) and first.shape == x.shape and not torch.allclose(first, x)


def test_simclr_objective_is_infonce_between_two_views_by_hand():
    """Two orthogonal images, identical views, identity projection: each of the 4 rows has its partner at
    cosine 1 and two negatives at cosine 0, so the loss is log(1 + 2 e^{-1/T})."""
    x = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]], [[[0.0, 1.0], [0.0, 0.0]]]])
    objective = simclr_objective(nn.Identity(), torch.Generator().manual_seed(0), temperature=0.5, **IDENTITY_VIEW)
    assert objective(flat_encoder(), x, None).item() == pytest.approx(math.log(1 + 2 * math.exp(-2)), rel=1e-5)


def resolve_pretrain(write_experiment, pretrain: str, experiment: str = TINY_EXPERIMENT):
    return resolve(load_experiment(write_experiment(experiment.replace(PRETRAIN, pretrain))), registry())


@pytest.mark.parametrize("pretrain, where, says", [
    ("    pretrain: {objective: byol}\n", "scenarios[0].pretrain.objective", "'task' or 'simclr'"),
    ("    pretrain: {simclr: {temperature: 0.2}}\n", "scenarios[0].pretrain", "it needs objective: simclr"),
    ("    pretrain: {objective: simclr, simclr: {temperature: 0}}\n", "scenarios[0].pretrain.simclr.temperature",
     "greater than 0"),
    ("    pretrain: {objective: simclr, simclr: {min_crop: 1.5}}\n", "scenarios[0].pretrain.simclr.min_crop",
     "less than or equal to 1"),
    ("    pretrain: {objective: simclr, simclr: {temprature: 0.2}}\n", "scenarios[0].pretrain.simclr.temprature",
     "did you mean 'temperature'"),
])
def test_bad_pretraining_objectives_name_the_field(write_experiment, pretrain, where, says):
    with pytest.raises(ConfigError) as error:
        resolve_pretrain(write_experiment, pretrain)
    message = str(error.value)
    assert where in message and says in message and "\n" not in message, message


def test_simclr_needs_a_task_whose_models_have_a_representation(write_experiment):
    denoising = (TINY_EXPERIMENT.replace("    image_size: 8\n", "    image_size: 8\n    task: denoising\n")
                 .replace("{name: cnn-s, params: {width: 0.5}}", "{name: unet-tiny}"))
    with pytest.raises(ConfigError, match=r"scenarios\[0\]\.pretrain\.objective: objective simclr trains a "
                                          r"representation .* 'denoising'"):
        resolve_pretrain(write_experiment, "    pretrain: {objective: simclr}\n", denoising)


def pretrain_cell(resolved):
    facts = {"original_fingerprint": "o", "restricted_fingerprint": "r", "split_manifest": "m", "original_train": 1,
             "original_val": 1, "defender_train": 1, "adversary_train": 1, "adversary_val": 1, "restricted_test": 1,
             "num_classes": 10}
    return next(c for c in build_cells(resolved, {"digits-to-digits": facts}) if c.kind == "pretrain")


def test_the_objective_is_part_of_the_pretrain_key_and_the_default_key_is_unchanged(write_experiment):
    default = pretrain_cell(resolve_pretrain(write_experiment, PRETRAIN))
    assert default.config["pretrain"] == {"epochs": 1, "optimizer": "adam", "lr": 1e-3, "weight_decay": 0.0,
                                          "batch_size": 64, "seed": 0}  # as before objectives: same key and seed
    simclr = pretrain_cell(resolve_pretrain(write_experiment, "    pretrain: {epochs: 1, objective: simclr}\n"))
    warmer = pretrain_cell(resolve_pretrain(write_experiment, "    pretrain: {epochs: 1, objective: simclr, "
                                                              "simclr: {temperature: 0.9}}\n"))
    assert simclr.config["pretrain"]["simclr"]["temperature"] == 0.5  # defaults are filled into the key
    assert len({default.key, simclr.key, warmer.key}) == 3


def test_a_simclr_victim_is_stolen_and_probed_next_to_its_copy(write_experiment, tmp_path):
    text = (TINY_EXPERIMENT.replace(PRETRAIN, "    pretrain: {epochs: 1, batch_size: 64, objective: simclr}\n")
            .replace("    image_size: 8\n", "    image_size: 8\n    api: representation\n")
            .replace("  - {plugin: finetune, label: sgd, params: {epochs: 1, batch_size: 64, lr: 0.01}}\n",
                     "  - {plugin: extract, params: {queries: 40, epochs: 1, probe_epochs: 1}}\n"))
    summary, results = run_experiment(write_experiment, tmp_path, text)
    assert summary.ok
    assert {kind for (kind,) in rows(results, "SELECT kind FROM cells WHERE status = 'done'")} == {
        "pretrain", "defend", "attack"}
    recorded = rows(results, "SELECT c.start, p.metric, p.x_unit, p.x FROM points p JOIN cells c ON c.key = p.key "
                             "WHERE c.kind = 'attack' AND p.metric LIKE 'restricted/%'")
    for start in ("original", "defense:none"):
        assert (start, "restricted/victim_probe_accuracy", "epoch", 0.0) in recorded
        assert (start, "restricted/probe_accuracy", "queries", 40.0) in recorded
