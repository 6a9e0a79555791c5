"""Test sets are for reporting only: no defense or attack chooses anything by reading one.

Each plugin runs twice on the same tiny cell: once with the real test sets, once with poisoned ones
(constant images with balanced labels: every model scores exactly chance on them). Both runs must train
the same weights and write the same notes; only the recorded test points may differ. SOPHON's guard is
set so that it would roll back at once if it read the poisoned original test set.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from harness.engine.data import Split
from harness.engine.train import cross_entropy_objective, make_optimizer, train_epochs
from harness.plugins import registry
from harness.testing import same_weights, seeded_model, tiny_context

SOPHON = {"total_loop": 4, "adaptation_steps": 2, "batch_size": 40, "ntr_batch_size": 40, "probe_every": 0,
          "guard_every": 1, "guard_threshold": 50.0}
PLUGINS = [
    ("defense", "sophon-ice", SOPHON),
    ("defense", "sophon-klu", SOPHON),
    ("defense", "ntl", {"epochs": 1, "batch_size": 16}),
    ("defense", "backdoor", {**{k: v for k, v in SOPHON.items() if k != "probe_every"}, "variant": "resistant",
                             "implant_epochs": 1}),
    ("attack", "finetune", {"epochs": 2, "batch_size": 32, "optimizer": "adam", "lr": 1e-3}),
    ("attack", "lora", {"epochs": 1, "batch_size": 32}),
    ("attack", "bn_reestimate", {"epochs": 1, "batch_size": 32}),
    ("attack", "search", {"trials": 3, "max_epochs": 1, "sampler": "random", "space": {"batch_size": [32]}}),
]


def chance_split(split: Split, num_classes: int) -> Split:
    """Constant images with balanced labels: any model gets exactly 1/num_classes right."""
    return Split(torch.zeros_like(split.x), torch.arange(len(split)) % num_classes)


def trained_on_original(ctx):
    """A start model that is good on the original domain, so a guard that reads its validation slice passes."""
    model = seeded_model(ctx)
    train_epochs(model, ctx.original_train, make_optimizer("adam", model.parameters(), 3e-3),
                 objective=cross_entropy_objective, epochs=10, batch_size=32, generator=torch.Generator().manual_seed(0))
    return model


def run(kind: str, name: str, params: dict, *, poisoned: bool):
    spec = registry().get(kind, name)
    ctx = tiny_context(spec.resolve(params, name), arch_params={"width": 0.5}, n_train=220, n_test=60, plugin=spec)
    start = trained_on_original(ctx)
    if poisoned:
        ctx = dataclasses.replace(ctx, original_test=chance_split(ctx.original_test, ctx.num_classes),
                                  restricted_test=chance_split(ctx.restricted_test, ctx.num_classes))
    model = spec.load()(ctx, start)
    return model, ctx.recorder


@pytest.mark.parametrize("kind, name, params", PLUGINS, ids=[p[1] for p in PLUGINS])
def test_no_choice_reads_a_test_set(kind, name, params):
    honest_model, honest = run(kind, name, params, poisoned=False)
    poisoned_model, poisoned = run(kind, name, params, poisoned=True)
    assert same_weights(honest_model, poisoned_model)
    assert honest.notes == poisoned.notes
    assert not honest.notes.get("sophon", {}).get("stopped_by_guard")  # the guard passed: it had a choice to make
    tests = {p for p in honest.points if p[2].split("/")[0] in ("restricted", "original")}
    assert tests and tests != {p for p in poisoned.points if p[2].split("/")[0] in ("restricted", "original")}
    others = [p for p in honest.points if p[2].split("/")[0] not in ("restricted", "original")]
    assert others == [p for p in poisoned.points if p[2].split("/")[0] not in ("restricted", "original")]


def test_sophon_guard_reads_the_held_out_original_slice():
    """The same guard, fed the poisoned slice as its validation data, rolls back at its first check."""
    spec = registry().get("defense", "sophon-ice")
    ctx = tiny_context(spec.resolve(SOPHON, "sophon-ice"), arch_params={"width": 0.5}, n_train=220, n_test=60,
                       plugin=spec)
    start = trained_on_original(ctx)
    ctx = dataclasses.replace(ctx, original_val=chance_split(ctx.original_val, ctx.num_classes))
    spec.load()(ctx, start)
    assert ctx.recorder.notes["sophon"] == {"iterations": 0, "guard_rollbacks": 1, "stopped_by_guard": True}
