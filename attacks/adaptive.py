"""Adaptive attacks (docs/algorithms.md §8.7): undo what a defense is likely to rely on, then fine-tune.

Each is registered under its own name so its config holds only the parameters it uses, and each then runs the
`finetune` attack with the same strategy and recipe parameters:
- `bn_reestimate`: replace the BatchNorm running statistics (a defense ships original-domain ones) by the
  adversary data's, cumulatively over whole passes without gradients; `epochs: 0` only evaluates the result.
- `reinit_last_k`: re-initialise the last k blocks (`model.block_paths`) with their modules' default init,
  then initFC+all.
- `weight_noise`: θ ← θ + σ·rms(θ)·N(0, I) for every parameter tensor (buffers untouched), then direct+all.
- `long_horizon`: `horizon_factor` times the configured epochs, so it stays relative when an experiment scales
  epochs down for CPU.
The curve's epoch 0 is the model after the adaptive step, i.e. what the attacker starts training from.
"""

from __future__ import annotations

from dataclasses import replace

from harness import Param, hookimpl

from attacks.finetune import TINY_PARAMS, Recipe, run as fine_tune_with_strategy, strategy_params, training_params


def reestimate_bn_(ctx, model, *, batch_size: int, passes: int) -> int:
    """Reset every BatchNorm's running statistics and re-estimate them on the adversary data; returns the count."""
    import torch
    from torch.nn.modules.batchnorm import _BatchNorm

    layers = [m for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]
    momenta = [m.momentum for m in layers]
    for layer in layers:
        layer.reset_running_stats()
        layer.momentum = None  # cumulative average over every batch forwarded
    data = ctx.restricted_train
    was_training = model.training
    model.train()
    with torch.no_grad(), ctx.autocast():
        for _ in range(passes):
            for start in range(0, len(data), batch_size):
                model(data.x[start:start + batch_size])
    model.train(was_training)
    for layer, momentum in zip(layers, momenta):
        layer.momentum = momentum
    return len(layers)


def reinit_blocks_(ctx, model, k: int) -> list[str]:
    """Reset every module of the last k blocks to its default init, drawn from a seed derived from the cell's."""
    import torch

    from harness.engine.seeding import derive_seed

    if not 1 <= k <= len(model.block_paths):
        raise ValueError(f"k={k}, but the model has {len(model.block_paths)} blocks: {model.block_paths}")
    paths = model.block_paths[-k:]
    with torch.random.fork_rng(devices=[ctx.device] if ctx.device.type == "cuda" else []):
        torch.manual_seed(derive_seed(ctx.seed, "reinit_last_k"))
        for path in paths:
            for module in model.get_submodule(path).modules():
                if hasattr(module, "reset_parameters"):
                    module.reset_parameters()
    return paths


def add_weight_noise_(ctx, model, sigma: float) -> None:
    """θ ← θ + σ·rms(θ)·N(0, I) per parameter tensor (an all-zero tensor stays zero), drawn from the cell's
    'weight_noise' stream."""
    import torch

    generator = ctx.generator("weight_noise")
    with torch.no_grad():
        for p in model.parameters():
            noise = torch.randn(p.shape, generator=generator).to(device=p.device, dtype=p.dtype)
            p.add_(noise * (sigma * p.float().pow(2).mean().sqrt()))


def bn_reestimate(ctx, model):
    layers = reestimate_bn_(ctx, model, batch_size=ctx.params["batch_size"], passes=ctx.params["bn_passes"])
    ctx.recorder.notes["bn_layers"] = layers
    return fine_tune_with_strategy(ctx, model)


def reinit_last_k(ctx, model):
    ctx.recorder.notes["reinitialised_blocks"] = reinit_blocks_(ctx, model, ctx.params["k"])
    return fine_tune_with_strategy(ctx, model)


def weight_noise(ctx, model):
    add_weight_noise_(ctx, model, ctx.params["sigma"])
    return fine_tune_with_strategy(ctx, model)


def long_horizon(ctx, model):
    recipe = Recipe.from_params(ctx.params)
    return fine_tune_with_strategy(ctx, model, replace(recipe, epochs=recipe.epochs * ctx.params["horizon_factor"]))


@hookimpl
def register_attacks(register):
    def attack(name: str, description: str, *own: Param, strategy: str = "direct+all"):
        register(name, factory=f"attacks.adaptive:{name}", version="1", description=description,
                 params=[*own, *strategy_params(strategy), *training_params()], tiny_params=TINY_PARAMS)

    attack("bn_reestimate", "Re-estimate BatchNorm statistics on the adversary data, then fine-tune",
           Param("bn_passes", "int", 1, min=1, max=10_000, help="passes over the adversary data (batches of batch_size)"))
    attack("reinit_last_k", "Re-initialise the last k blocks with their default init, then initFC+all",
           Param("k", "int", 1, min=1, max=1_000, help="how many of the model's last blocks to re-initialise"),
           strategy="initFC+all")
    attack("weight_noise", "Add Gaussian noise scaled by each tensor's rms to every weight, then direct+all",
           Param("sigma", "float", 0.03, min=0.0, help="noise std relative to each parameter tensor's rms"))
    attack("long_horizon", "Fine-tune for horizon_factor times the configured epochs (late recovery)",
           Param("horizon_factor", "int", 5, min=1, max=1_000, help="multiple of `epochs` to train for"))
