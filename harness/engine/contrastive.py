"""Representations and contrastive learning on them: what an encoder serves, InfoNCE, and SimCLR pretraining.

The extraction attack steals a representation with InfoNCE (docs/extraction.md); the `simclr` pretraining
objective trains the scenario's original with the same loss on two augmented views of each original-domain image,
labels unused, so a scenario can serve a self-supervised victim encoder offline. Augmentations are torch ops on the
(normalised) tensors with randomness from the cell's generator: nothing is downloaded.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from harness.engine.train import evaluating

INFONCE_TEMPERATURE = 0.07  # [ref] the stealing loss


def representation(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The output of `model.feature_path` for `x`, flattened (what an encoder's representation API answers)."""
    captured = []
    handle = model.get_submodule(model.feature_path).register_forward_hook(lambda m, i, out: captured.append(out))
    try:
        model(x)
    finally:
        handle.remove()
    return captured[-1].float().flatten(1)


def infonce_loss(f: torch.Tensor, v: torch.Tensor, temperature: float = INFONCE_TEMPERATURE) -> torch.Tensor:
    """Rows of [f; v] L2-normalised; each row's positive is its partner, the other 2B − 2 rows negatives
    (SimCLR's NT-Xent when f and v are two views' projections)."""
    rows = F.normalize(torch.cat([f, v]), dim=1)
    similarity = rows @ rows.T / temperature
    n = len(f)
    similarity = similarity.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=f.device), float("-inf"))
    partners = torch.cat([torch.arange(n, 2 * n), torch.arange(n)]).to(f.device)
    return F.cross_entropy(similarity, partners)


def augmented_view(x: torch.Tensor, generator: torch.Generator, *, min_crop: float, flip: bool,
                   noise_std: float) -> torch.Tensor:
    """One random view per image: a square crop covering `min_crop`..1 of the area at a random place, resized
    back (bilinear), mirrored left-right with probability 1/2 when `flip`, plus N(0, noise_std²) per pixel."""
    n = len(x)
    side = (min_crop + (1 - min_crop) * torch.rand(n, generator=generator)).sqrt()
    shift = (2 * torch.rand(n, 2, generator=generator) - 1) * (1 - side)[:, None]
    mirror = torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0) if flip else torch.ones(n)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 1, 1] = side * mirror, side
    theta[:, :, 2] = shift
    grid = F.affine_grid(theta.to(x.device, x.dtype), list(x.shape), align_corners=False)
    view = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    noise = torch.randn(x.shape, generator=generator) * noise_std
    return view + noise.to(x.device, x.dtype)


def projection_head(model: nn.Module, sample: torch.Tensor, width: int) -> nn.Module:
    """SimCLR's MLP g (representation -> width -> width), sized from the model's representation of `sample`; it
    is trained with the encoder and thrown away."""
    with torch.no_grad(), evaluating(model):  # eval mode: this probe must not move BatchNorm statistics
        features = representation(model, sample[:2]).shape[1]
    return nn.Sequential(nn.Linear(features, width), nn.ReLU(), nn.Linear(width, width)).to(sample.device)


def simclr_objective(head: nn.Module, generator: torch.Generator, *, temperature: float, min_crop: float,
                     flip: bool, noise_std: float):
    """objective(model, x, y) -> InfoNCE between the projections of two views of each image; `y` is ignored."""
    def objective(model: nn.Module, x: torch.Tensor, y) -> torch.Tensor:
        views = torch.cat([augmented_view(x, generator, min_crop=min_crop, flip=flip, noise_std=noise_std)
                           for _ in range(2)])
        z = head(representation(model, views))
        return infonce_loss(z[:len(x)], z[len(x):], temperature)

    return objective
