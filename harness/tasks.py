"""Task families: what a scenario's models do, how they are trained by default and how they are scored.

A task plugin owns everything that used to be classification-only in the core: its data contract (labels
or not), its model contract (a head or not, and how a fresh model is built), the pretraining objective,
the default training objective of attacks, and the evaluator with its declared measures. The core only
calls the methods below, so a new family is one file plus one entry point (docs/tasks.md).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

from harness.registry import DOMAINS, VALIDATION_DOMAINS, Measure, PluginSpec

if TYPE_CHECKING:
    import numpy as np
    import torch
    from torch import nn

    from harness.engine.data import Split

# objective(model, x, y) -> scalar loss; y is None for unlabelled data
Objective = Callable[["nn.Module", "torch.Tensor", "torch.Tensor | None"], "torch.Tensor"]


class UnknownMetric(ValueError):
    """A plugin recorded a metric name nobody declared: its cell fails with this message."""


@dataclass
class TinyData:
    """Small synthetic domains for `plugin-check`, with an architecture suited to the task."""

    original_train: "Split"
    original_test: "Split"
    restricted_train: "Split"
    restricted_test: "Split"
    num_classes: int
    channels: int
    size: int
    architecture: str
    arch_params: dict = field(default_factory=dict)


class Task(ABC):
    """Base class of a task family. `factory(params, spec)` is the class itself; subclasses override what differs."""

    def __init__(self, params: dict, spec: PluginSpec):
        self.params = params
        self.spec = spec

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def measures(self) -> tuple[Measure, ...]:
        return self.spec.measures

    @property
    def score(self) -> Measure:
        """The measure that ranks a scenario of this task (the first one declared)."""
        return self.measures[0]

    @property
    def labelled(self) -> bool:
        return self.spec.extra.get("labelled", True)

    @property
    def head(self) -> bool:
        return self.spec.extra.get("head", True)

    def build_model(self, architecture: PluginSpec, arch_params: dict, *, in_channels: int, image_size: int,
                    num_classes: int) -> "nn.Module":
        """A fresh model from an architecture plugin, checked against this task's model contract."""
        model = architecture.load()(arch_params, in_channels=in_channels, image_size=image_size,
                                    num_classes=num_classes)
        self.check_model(model, architecture.name)
        return model

    def check_model(self, model: "nn.Module", architecture: str) -> None:
        """Raise TypeError naming the broken contract; the default accepts any module."""

    @abstractmethod
    def objective(self, generator: "torch.Generator") -> Objective:
        """The default training loss (attacks, probes, reinforcement steps); randomness from `generator`."""

    def pretrain_objective(self, generator: "torch.Generator") -> Objective:
        """How the unprotected original is trained on the original domain (default: `objective`)."""
        return self.objective(generator)

    @abstractmethod
    def evaluate(self, model: "nn.Module", split: "Split", *, precision: str = "fp32") -> dict[str, float]:
        """Every declared measure on `split`, deterministically, leaving the model's train/eval modes as found."""

    def render(self, model: "nn.Module", split: "Split", generator: "torch.Generator") -> dict[str, "np.ndarray"]:
        """Images of what an attacked model does (name -> HxWx3 uint8), stored with its cell as PNG files for the
        leaderboard page; a task whose results read well as numbers returns none."""
        return {}

    @abstractmethod
    def tiny_data(self, **sizes) -> TinyData:
        """Small synthetic domains on which `plugin-check` runs a plugin of this task; `sizes` are the family's
        own knobs (classification: num_classes, channels, size, n_train, n_test)."""


def load_task(spec: PluginSpec, params: dict | None) -> Task:
    """Build the task object of a resolved scenario (`params` already validated by the spec)."""
    task = spec.load()(spec.resolve(params, f"task {spec.name}"), spec)
    if not isinstance(task, Task):
        raise TypeError(f"task {spec.name!r}: its factory must return a harness.tasks.Task, got {type(task).__name__}")
    return task


def metric_names(task: Task, *plugins: PluginSpec | None) -> frozenset[str]:
    """The metric names a cell may record: `<domain>/<measure>` for the task's and the plugins' measures, on
    the test domains and the adversary's validation slice."""
    measures = [*task.measures, *(m for spec in plugins if spec is not None for m in spec.measures)]
    return frozenset(f"{domain}/{m.name}" for domain in (*DOMAINS, *VALIDATION_DOMAINS) for m in measures)


def model_builder(task: Task, registry, architecture: str, arch_params: dict, *, in_channels: int, image_size: int,
                  num_classes: int, device=None) -> Callable[..., "nn.Module"]:
    """`ctx.build_model`: a fresh model of the scenario's architecture, or of any registered architecture that
    serves the task (`build_model("cnn-m", {"width": 2})`: a distillation student of another size)."""
    from harness.registry import ConfigError

    def build(name: str | None = None, params: dict | None = None) -> "nn.Module":
        spec = registry.get("architecture", name or architecture, where="build_model")
        if not spec.serves(task.name):
            raise ConfigError(f"architecture {spec.name!r} does not serve the {task.name!r} task", where="build_model")
        resolved = arch_params if name is None else spec.resolve(params, f"build_model({spec.name!r})")
        model = task.build_model(spec, resolved, in_channels=in_channels, image_size=image_size,
                                 num_classes=num_classes)
        return model.to(device) if device is not None else model

    return build
