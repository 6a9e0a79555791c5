"""What a black-box attack is handed instead of the model: an API that answers queries, counts them and caps them.

The oracle answers what the scenario's `api` setting allows (logits, probabilities, the top-1 label, or the
representation at the model's `feature_path`), after the defense's output transform when the defense has
one (noise, rounding, prediction poisoning act here, at query time). Every image sent counts as one query;
a query that would pass the budget is refused whole. The model lives only inside the answering closure:
the oracle has no attribute that leads to it (Python cannot stop deliberate introspection of closures;
the harness's built-in attacks and its test hold to the API).
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from harness.engine.device import autocast
from harness.engine.train import evaluating

# transform(outputs, *, x, api, params, generator) -> outputs, registered by a defense as `output_transform`
OutputTransform = Callable[..., torch.Tensor]


class QueryBudgetExceeded(RuntimeError):
    """An attack asked for more answers than its `queries` budget: the cell fails (the attack is at fault)."""


class Oracle:
    """Answers queries on a batch of images; `used` and `budget` count images."""

    __slots__ = ("_answer", "api", "budget", "_used")

    def __init__(self, answer: Callable[[torch.Tensor], torch.Tensor], *, api: str, budget: int):
        self._answer = answer
        self.api = api
        self.budget = int(budget)
        self._used = 0

    @property
    def used(self) -> int:
        return self._used

    @property
    def remaining(self) -> int:
        return self.budget - self._used

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        count = len(x)
        if count > self.remaining:
            raise QueryBudgetExceeded(f"a query of {count} images would pass the budget of {self.budget} "
                                      f"({self._used} used)")
        self._used += count
        return self._answer(x)

    def __repr__(self) -> str:
        return f"Oracle(api={self.api!r}, used={self._used}, budget={self.budget})"


def make_oracle(model: nn.Module, *, api: str, budget: int, precision: str = "fp32",
                transform: OutputTransform | None = None, transform_params: dict | None = None,
                generator: torch.Generator | None = None) -> Oracle:
    """An Oracle over `model` (kept in eval mode, no gradients) answering in the form `api` names."""
    model.requires_grad_(False)
    features: list[torch.Tensor] = []
    if api == "representation":
        model.get_submodule(model.feature_path).register_forward_hook(lambda m, i, out: features.append(out))

    @torch.no_grad()
    def answer(x: torch.Tensor) -> torch.Tensor:
        features.clear()
        with evaluating(model), autocast(x.device, precision):
            logits = model(x)
        outputs = _shaped(api, logits.float(), features)
        if transform is not None:
            outputs = transform(outputs, x=x, api=api, params=transform_params or {}, generator=generator)
        return outputs.detach()

    return Oracle(answer, api=api, budget=budget)


def _shaped(api: str, logits: torch.Tensor, features: list[torch.Tensor]) -> torch.Tensor:
    if api == "logits":
        return logits
    if api == "probabilities":
        return F.softmax(logits, dim=1)
    if api == "label":
        return logits.argmax(dim=1)
    if api == "representation":
        return features[-1].float().flatten(1)
    raise ValueError(f"unknown api {api!r}")
