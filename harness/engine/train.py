"""The tensor-resident training loop shared by pretraining, attacks and defense probes.

Data stays on the device as tensors and batches are index gathers (no DataLoader per step). The loop
keeps no hidden state: model, optimizer, schedule and generator are passed in, so several configs that
share a start could later be run as one vmapped ensemble.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from harness.engine.data import Split, batch_indices
from harness.engine.device import autocast
from harness.names import OPTIMIZERS, SCHEDULES
from harness.tasks import Objective

# docs/algorithms.md §8.3: the weight decay each optimizer uses unless a config says otherwise
DEFAULT_WEIGHT_DECAY = {"sgd_momentum": 1e-4, "nesterov": 1e-4, "sgd": 1e-4, "adagrad": 1e-4, "adadelta": 1e-4,
                        "adam": 1e-4, "adamw": 1e-2}


class Diverged(Exception):
    """A NaN or infinite training loss: the cell is a result ('diverged'), not a crash."""


def make_optimizer(name: str, params: Iterable, lr: float, weight_decay: float | None = None) -> torch.optim.Optimizer:
    """An optimizer by name (harness.names.OPTIMIZERS) at the settings of docs/algorithms.md §8.3; `weight_decay`
    None takes the optimizer's default from DEFAULT_WEIGHT_DECAY."""
    wd = DEFAULT_WEIGHT_DECAY[name] if weight_decay is None else weight_decay
    if name == "sgd_momentum":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=wd)
    if name == "nesterov":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, nesterov=True, weight_decay=wd)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, weight_decay=wd)
    if name == "adagrad":
        return torch.optim.Adagrad(params, lr=lr, weight_decay=wd)
    if name == "adadelta":
        return torch.optim.Adadelta(params, lr=lr, rho=0.9, weight_decay=wd)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, betas=(0.9, 0.999), weight_decay=wd)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.999), weight_decay=wd)
    raise ValueError(f"unknown optimizer {name!r}; known: {', '.join(OPTIMIZERS)}")


def make_schedule(optimizer: torch.optim.Optimizer, schedule: str, total_steps: int,
                  warmup_fraction: float = 0.1) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-step lr multiplier: constant; cosine to 0; or linear warmup from 0 then cosine to 0."""
    total = max(1, total_steps)
    warmup = int(warmup_fraction * total) if schedule == "warmup_cosine" else 0

    def factor(step: int) -> float:
        if schedule == "constant":
            return 1.0
        if step < warmup:
            return step / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; known: {', '.join(SCHEDULES)}")
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def cross_entropy_objective(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Classification's training objective: mean cross-entropy of the logits (computed in fp32)."""
    return F.cross_entropy(model(x).float(), y)


@contextmanager
def evaluating(model: nn.Module):
    """Eval mode for the duration, then every module's train/eval flag as it was.

    Restoring per module keeps layers a caller holds in eval mode during training (frozen BatchNorm
    statistics) that way.
    """
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, training in modes:
            module.training = training


@torch.no_grad()
def evaluate(model: nn.Module, split: Split, *, precision: str = "fp32", chunk: int = 1000) -> tuple[float, float]:
    """(accuracy, mean cross-entropy) of a classifier over the whole split, in eval mode and in chunks."""
    correct, loss_sum = 0, 0.0
    device = split.x.device
    with evaluating(model):
        for start in range(0, len(split), chunk):
            x, y = split.x[start:start + chunk], split.y[start:start + chunk]
            with autocast(device, precision):
                logits = model(x)
            logits = logits.float()
            loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
            correct += (logits.argmax(dim=1) == y).sum().item()
    n = max(1, len(split))
    return correct / n, loss_sum / n


def train_epochs(model: nn.Module, data: Split, optimizer: torch.optim.Optimizer, *, objective: Objective,
                 epochs: int, batch_size: int, generator: torch.Generator,
                 schedule: torch.optim.lr_scheduler.LRScheduler | None = None,
                 precision: str = "fp32", drop_last: bool = True,
                 after_epoch: Callable[[int, int], None] | None = None, start_step: int = 0,
                 after_step: Callable[[int], None] | None = None,
                 train_mode: Callable[[nn.Module], None] | None = None) -> int:
    """Train for `epochs` epochs of shuffled batches; call `after_step(steps)` after every optimizer step and
    `after_epoch(epoch, steps)` after every epoch; return steps taken.

    `objective(model, x, y) -> loss` is the task's training loss (`ctx.objective(...)`; classification's is
    `cross_entropy_objective`); `y` is None for unlabelled data.

    `train_mode(model)` puts the model in training mode (default `model.train()`); attacks pass one that
    keeps BatchNorm layers in eval mode to freeze their statistics.
    Raises Diverged at the first non-finite loss, after the steps before it were taken.
    """
    device = data.x.device
    steps = start_step
    (train_mode or type(model).train)(model)
    for epoch in range(1, epochs + 1):
        for index in batch_indices(len(data), batch_size, generator, drop_last):
            x, y = data.batch(index.to(device))
            with autocast(device, precision):
                loss = objective(model, x, y)
            if not torch.isfinite(loss):
                raise Diverged(f"loss became {loss.item()} at epoch {epoch}, step {steps + 1}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if schedule is not None:
                schedule.step()
            steps += 1
            if after_step is not None:
                after_step(steps)
        if after_epoch is not None:
            after_epoch(epoch, steps)
    return steps
