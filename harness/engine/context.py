"""What a plugin sees when its cell runs: its parameters, only the data its role allows, and a recorder.

Data roles are enforced by construction: a defense context holds the original training set and the
defender half of the restricted set; an attack context holds only the adversary half (plus original
training data when the attack declares it needs some). Test sets are for evaluation only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from harness.engine import seeding
from harness.engine.data import Split
from harness.engine.device import autocast
from harness.engine.train import evaluate


@dataclass
class Recorder:
    """Collects a cell's curve points and artifact files; the runner commits them in one transaction."""

    points: list[tuple[float, str, str, float]] = field(default_factory=list)
    artifacts: list[Path] = field(default_factory=list)
    notes: dict = field(default_factory=dict)

    def point(self, x: float, x_unit: str, metric: str, value: float) -> None:
        self.points.append((float(x), x_unit, metric, float(value)))


@dataclass
class CellContext:
    params: dict
    seed: int
    device: torch.device
    precision: str
    num_classes: int
    original_test: Split
    restricted_train: Split
    restricted_test: Split
    build_model: Callable[[], nn.Module]
    recorder: Recorder
    original_train: Split | None = None
    workdir: Path | None = None
    log: Callable[[str], None] = print

    def generator(self, name: str) -> torch.Generator:
        """A named CPU generator derived from the cell seed (index permutations are drawn on the CPU)."""
        return seeding.generator(self.seed, name)

    def autocast(self):
        return autocast(self.device, self.precision)

    def evaluate(self, model: nn.Module, split: Split) -> tuple[float, float]:
        return evaluate(model, split, precision=self.precision)

    def record_restricted(self, model: nn.Module, *, epoch: float | None, step: int) -> float:
        """Evaluate on the restricted test set and record accuracy and loss against epochs and steps.

        `epoch=None` records against steps only: the extra points of a step-budget attack between epochs.
        """
        accuracy, loss = self.evaluate(model, self.restricted_test)
        for x, unit in ((epoch, "epoch"), (step, "step")):
            if x is None:
                continue
            self.recorder.point(x, unit, "restricted/accuracy", accuracy)
            self.recorder.point(x, unit, "restricted/loss", loss)
        return accuracy

    def record_release(self, model: nn.Module, *, step: int) -> None:
        """A defense's released model: original and restricted test metrics at epoch 0 and at its last `step`."""
        original = self.record_original(model, epoch=0)
        self.recorder.point(step, "step", "original/accuracy", original)
        self.record_restricted(model, epoch=0, step=step)

    def record_original(self, model: nn.Module, *, epoch: float) -> float:
        accuracy, loss = self.evaluate(model, self.original_test)
        self.recorder.point(epoch, "epoch", "original/accuracy", accuracy)
        self.recorder.point(epoch, "epoch", "original/loss", loss)
        return accuracy
