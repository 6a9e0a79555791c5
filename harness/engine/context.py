"""What a plugin sees when its cell runs: its parameters, only the data its role allows, and a recorder.

Data roles are enforced by construction: a defense context holds the original training set and the
defender half of the restricted set; an attack context holds only the adversary half (plus original
training data when the attack declares it needs some). Test sets are for recording only: a choice (a guard,
a config search, early stopping) reads `original_val` (defenses, held out of the original training set)
or `restricted_val` (attacks, held out of the adversary's data).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Callable

import torch
from torch import nn

from harness.engine import seeding
from harness.engine.data import Split
from harness.engine.device import autocast
from harness.engine.train import evaluate
from harness.registry import DOMAINS, PluginSpec, did_you_mean, load_reference
from harness.store import X_UNITS
from harness.tasks import Objective, Task, UnknownMetric

if TYPE_CHECKING:
    from harness.trials import Trial

# evaluator(ctx, model, split, on) -> {measure: value}: extra measures a defense adds to every record of its own
# cell and of the attack cells that start from its release (a backdoor's attack success rate)
Evaluator = Callable[["CellContext", nn.Module, Split, str], dict]


def start_evaluators(defense: PluginSpec | None, params: dict | None) -> list[Evaluator]:
    """The `evaluator` a defense registers (`evaluator=function(ctx, model, split, on, *, params)` or its
    "module:function"), bound to the defense's parameters; none for other starts."""
    reference = defense.extra.get("evaluator") if defense is not None else None
    return [partial(load_reference(reference), params=params or {})] if reference else []


@dataclass
class Recorder:
    """Collects a cell's curve points and notes; the runner commits them with the cell in one transaction.

    `allowed` names the metrics this cell may record (the task's and the plugin's declared measures on
    each domain): anything else raises UnknownMetric at once, so the cell fails where the mistake is.
    """

    points: list[tuple[float, str, str, float]] = field(default_factory=list)
    notes: dict = field(default_factory=dict)
    allowed: frozenset[str] | None = None

    def point(self, x: float, x_unit: str, metric: str, value: float) -> None:
        if x_unit not in X_UNITS:
            raise UnknownMetric(f"x unit {x_unit!r} of metric {metric!r} is not one of {list(X_UNITS)}")
        if self.allowed is not None and metric not in self.allowed:
            raise UnknownMetric(
                f"metric {metric!r} is not declared here{did_you_mean(metric, sorted(self.allowed))}: a metric is "
                f"'<domain>/<measure>' with domain restricted or original and a measure declared by the task or "
                f"by the plugin's registration (measures=[Measure(...)]); known: {', '.join(sorted(self.allowed))}")
        self.points.append((float(x), x_unit, metric, float(value)))


@dataclass
class CellContext:
    """What a defense or attack is handed: its parameters, its data role, the task, and a recorder (docs/api.md)."""

    params: dict
    seed: int
    device: torch.device
    precision: str
    num_classes: int
    original_test: Split
    restricted_train: Split
    restricted_test: Split
    build_model: Callable[..., nn.Module]  # () -> the scenario's architecture; (name, params) -> another one
    recorder: Recorder
    task: Task
    original_train: Split | None = None
    original_val: Split | None = None
    restricted_val: Split | None = None
    log: Callable[[str], None] = print
    normalisation: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = field(default_factory=dict)
    evaluators: list[Evaluator] = field(default_factory=list)
    stage_seed: int = 0  # the plan's seed for this stage, before it is mixed with the cell's parameters
    # (ctx, plugin, params) -> Trial: runs another attack config as a trial of this attack cell (docs/search.md)
    trials: Callable[["CellContext", str, dict], "Trial"] | None = None

    def generator(self, name: str) -> torch.Generator:
        """A named CPU generator derived from the cell seed (index permutations are drawn on the CPU)."""
        return seeding.generator(self.seed, name)

    def autocast(self):
        """bf16 autocast around forward passes when the cell runs in bf16, else nothing."""
        return autocast(self.device, self.precision)

    def pixel(self, value: float, on: str) -> torch.Tensor:
        """A raw pixel intensity in [0, 1] as the `on` domain's normalised tensors hold it, per channel, shaped
        (C, 1, 1): (value − mean) / std. A domain without recorded normalisation (synthetic test data) holds raw
        values."""
        mean, std = self.normalisation.get(on) or ((), ())
        if not mean:
            mean, std = (0.0,), (1.0,)
        return ((value - torch.tensor(mean)) / torch.tensor(std)).view(-1, 1, 1).to(self.device)

    def run_trial(self, plugin: str, params: dict) -> "Trial":
        """Run attack `plugin` with `params` from this cell's start, on its data and seed, as a trial: a cell of
        its own, read from the store when it already finished there (docs/search.md). Only attack cells can."""
        if self.trials is None:
            raise RuntimeError("this cell cannot run trials: only an attack cell can (a trial runs none itself)")
        return self.trials(self, plugin, params)

    # -- task-neutral: whatever the scenario's task trains with and measures ---------------------------

    def objective(self, stream: str) -> Objective:
        """The task's training loss, its randomness (noise, timesteps) drawn from the named stream."""
        return self.task.objective(self.generator(stream))

    def measure(self, model: nn.Module, split: Split) -> dict[str, float]:
        """Every measure the task declares, on `split` (nothing is recorded)."""
        return self.task.evaluate(model, split, precision=self.precision)

    def score(self, model: nn.Module, split: Split) -> float:
        """The task's score measure on `split` (accuracy for classifiers, MSE for denoisers)."""
        return self.measure(model, split)[self.task.score.name]

    def record(self, model: nn.Module, *, on: str, epoch: float | None, step: int | None = None,
               queries: int | None = None) -> dict[str, float]:
        """Evaluate on the `on` test set ("restricted" or "original") and record every measure (the task's and the
        cell's evaluators') against the epoch, the step and the number of oracle queries given (None skips that
        unit); return the measures.

        An attack's restricted record also records the task's measures on the adversary's validation slice
        (`restricted_val/<measure>`): what attacker-side choices such as scratch@best read."""
        if on not in DOMAINS:
            raise ValueError(f"on must be one of {list(DOMAINS)}, not {on!r}")
        split = self.restricted_test if on == "restricted" else self.original_test
        values = self.measure(model, split)
        for evaluator in self.evaluators:
            values.update(evaluator(self, model, split, on))
        self._points(values, on, epoch, step, queries)
        if on == "restricted" and self.restricted_val is not None:
            self._points(self.measure(model, self.restricted_val), "restricted_val", epoch, step, queries)
        return values

    def _points(self, values: dict[str, float], domain: str, epoch: float | None, step: int | None,
                queries: int | None) -> None:
        for x, unit in ((epoch, "epoch"), (step, "step"), (queries, "queries")):
            if x is None:
                continue
            for name, value in values.items():
                self.recorder.point(x, unit, f"{domain}/{name}", value)

    def record_release(self, model: nn.Module, *, step: int) -> None:
        """A defense's released model: original and restricted test measures at epoch 0, and the original score
        and restricted measures at its last `step`."""
        score = self.task.score.name
        self.recorder.point(step, "step", f"original/{score}", self.record(model, on="original", epoch=0)[score])
        self.record(model, on="restricted", epoch=0, step=step)

    # -- classification helpers (kept for classification plugins) ------------------------------------

    def evaluate(self, model: nn.Module, split: Split) -> tuple[float, float]:
        """(accuracy, mean cross-entropy) of a classifier on `split`."""
        return evaluate(model, split, precision=self.precision)

    def record_restricted(self, model: nn.Module, *, epoch: float | None, step: int) -> float:
        """`record(on="restricted")`, returning the score. `epoch=None` records against steps only: the extra
        points of a step-budget attack between epochs."""
        return self.record(model, on="restricted", epoch=epoch, step=step)[self.task.score.name]

    def record_original(self, model: nn.Module, *, epoch: float) -> float:
        """`record(on="original")` against epochs only, returning the score."""
        return self.record(model, on="original", epoch=epoch)[self.task.score.name]
