"""A constructed result store with known curves, so every leaderboard number can be checked by hand.

Scenario "toy", 2 seeds, 3 epochs of 10 optimizer steps, starts scratch / original / defense:<name>.
Attack configs "ft-sgd" and "ft-adam"; suite "paper" lists them as "sgd" and "adam", suite "optimizers"
lists ft-sgd again as "momentum". The defense's seed-1 "sgd" cell diverged after epoch 1.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import harness.plugins
import plugins.classification
import plugins.metrics
import plugins.reporters
from harness import Measure, hookimpl
from harness.store import Store

SCENARIO = "toy"
THREAT = "white-box weights; labelled adversary half of the restricted data"
SCALE = {"epochs": 3, "width": 16, "restricted_train": 200}
STEPS_PER_EPOCH = 10

# restricted/accuracy at epochs 0..3, per (attack config, start kind, seed); "defense" stands for defense:<name>
CURVES = {
    ("ft-sgd", "original"): {0: [0.10, 0.60, 0.90, 0.98], 1: [0.10, 0.70, 0.90, 0.96]},
    ("ft-sgd", "scratch"): {0: [0.10, 0.30, 0.50, 0.58], 1: [0.10, 0.20, 0.40, 0.56]},
    ("ft-sgd", "defense"): {0: [0.10, 0.10, 0.20, 0.38], 1: [0.10, 0.16]},  # seed 1 diverged
    ("ft-adam", "original"): {0: [0.10, 0.80, 0.90, 0.90], 1: [0.10, 0.80, 0.88, 0.90]},
    ("ft-adam", "scratch"): {0: [0.10, 0.85, 0.89, 0.89], 1: [0.10, 0.80, 0.90, 0.91]},
    ("ft-adam", "defense"): {0: [0.10, 0.50, 0.85, 0.92], 1: [0.10, 0.40, 0.80, 0.93]},
}
# original/accuracy at epoch 0; ft-adam re-initialises the head before evaluating (like initFC)
ORIGINAL_AT_0 = {("ft-sgd", "original"): 0.90, ("ft-sgd", "defense"): {0: 0.87, 1: 0.86},
                 ("ft-adam", "original"): 0.10, ("ft-adam", "defense"): 0.10}
ATTACKS = {"ft-sgd": {"optimizer": "sgd_momentum", "lr": 1e-4, "epochs": 3},
           "ft-adam": {"optimizer": "adam", "lr": 1e-3, "epochs": 3}}
MEMBERSHIPS = [("paper", "sgd", "ft-sgd"), ("paper", "adam", "ft-adam"), ("optimizers", "momentum", "ft-sgd")]


def build_store(root: Path, *, defense: str = "x", attack_plugin: str = "finetune") -> Path:
    """Write the constructed grid into `root` and return it (the results directory)."""
    store = Store(root)
    members = []
    for (attack, kind), per_seed in CURVES.items():
        start = f"defense:{defense}" if kind == "defense" else kind
        for seed, curve in per_seed.items():
            key = f"{attack}-{kind}-{seed}"
            o0 = ORIGINAL_AT_0.get((attack, kind), 0.10)
            o0 = o0[seed] if isinstance(o0, dict) else o0
            config = {"scenario": {"name": SCENARIO, "architecture": {"name": "cnn16"}},
                      "attack": {"plugin": attack_plugin, "params": ATTACKS[attack]},
                      "defense": {"plugin": "sophon", "params": {"loss": "ice"}} if kind == "defense" else None,
                      "scale": SCALE, "threat": THREAT}
            points = [(0, "epoch", "original/accuracy", o0), (len(curve) - 1, "epoch", "original/accuracy", 0.5)]
            for epoch, accuracy in enumerate(curve):
                for x, unit in ((epoch, "epoch"), (epoch * STEPS_PER_EPOCH, "step")):
                    points += [(x, unit, "restricted/accuracy", accuracy), (x, unit, "restricted/loss", 2 - accuracy),
                               (x, unit, "restricted_val/accuracy", accuracy)]  # validation twin: same values here
                    if kind == "defense":  # the defense's evaluator measure (a backdoor's attack success rate)
                        points += [(x, unit, "restricted/asr", 1 - accuracy)]
            _add(store, key, "attack", start, attack, seed, config, points, "done" if len(curve) == 4 else "diverged")
            members += [(key, suite, label) for suite, label, config_id in MEMBERSHIPS if config_id == attack]
    # cells the leaderboard must ignore: not an attack, not finished
    _add(store, "pretrain-0", "pretrain", "original", "-", 0, {}, [(0, "epoch", "restricted/accuracy", 0.99)], "done")
    _add(store, "failed-0", "attack", "original", "ft-sgd", 0, {}, [(3, "epoch", "restricted/accuracy", 0.01)],
         "failed")
    _add(store, "defend-failed-1", "defend", "defense:y", "-", 1, {}, [], "failed")
    store.replace_memberships(members + [("failed-0", "paper", "sgd")])
    store.close()
    return root


def _add(store, key, kind, start, attack, seed, config, points, status, scenario=SCENARIO, artifacts=()):
    cell = SimpleNamespace(key=key, kind=kind, scenario=scenario, start=start, attack=attack, seed=seed,
                           config=config, versions={})
    store.mark_running(cell)
    store.finish(key, status, points=points, artifacts=artifacts, error="boom" if status == "failed" else None)


class Denoising:
    """The denoising task's registration as the leaderboard reads it (its measures), without the task's code."""

    @hookimpl
    def register_tasks(self, register):
        register("denoising", factory="nowhere:task", measures=[Measure("mse", higher_is_better=False)])


def built_in_registry(*extra) -> harness.plugins.Registry:
    """The built-in task, metric and reporter plugins (plus `extra` plugin objects), without entry points."""
    registry = harness.plugins.Registry(strict=True)
    registry.add(plugins.classification, name="classification")
    registry.add(Denoising(), name="denoising")
    registry.add(plugins.metrics, name="metrics")
    registry.add(plugins.reporters, name="reporters")
    for index, plugin in enumerate(extra):
        registry.add(plugin, name=f"extra{index}")
    return registry


def stored_points(root: Path) -> list[dict]:
    """The raw points of finished attack cells, straight from SQLite (what a reader recomputes from)."""
    import sqlite3

    with sqlite3.connect(Path(root) / "results.sqlite") as db:
        db.row_factory = sqlite3.Row
        return [dict(r) for r in db.execute(
            "SELECT c.scenario, c.start, c.attack, c.seed, c.config_json, m.suite, m.label, p.x, p.x_unit, p.metric, p.value "
            "FROM points p JOIN cells c ON c.key = p.key JOIN memberships m ON m.key = c.key "
            "WHERE c.kind = 'attack' AND c.status IN ('done', 'diverged')")]



# A lower-is-better scenario: task denoising, restricted/mse at epochs 0..3 (10 steps each), one suite "gen".
# "ft-a": the original ends below scratch (R defined); "ft-b": scratch ends at or below the original (R n/a).
DENOISING = "gen"
MSE_CURVES = {
    ("ft-a", "original"): {0: [0.90, 0.60, 0.50, 0.40], 1: [0.90, 0.62, 0.52, 0.42]},
    ("ft-a", "scratch"): {0: [1.00, 0.80, 0.60, 0.48], 1: [1.00, 0.82, 0.62, 0.50]},
    ("ft-a", "defense"): {0: [1.20, 1.00, 0.80, 0.70], 1: [1.20, 1.10, 0.90, 0.54]},
    ("ft-b", "original"): {0: [0.90, 0.42, 0.44, 0.45], 1: [0.90, 0.50, 0.46, 0.45]},
    ("ft-b", "scratch"): {0: [1.00, 0.70, 0.50, 0.43], 1: [1.00, 0.60, 0.48, 0.45]},
    ("ft-b", "defense"): {0: [1.20, 0.60, 0.50, 0.47], 1: [1.20, 0.55, 0.47, 0.46]},
}
MSE_ORIGINAL_AT_0 = {"original": 0.30, "defense": 0.36, "scratch": 1.00}  # original/mse of the start model
NO_PICTURES = ("ft-b-scratch-0",)  # this cell stored none: the page shows seed 1's


def store_pictures(folder: Path, final_mse: float) -> list[Path]:
    """What the runner stores for a task whose render returns a 2×3 grid of 4×4 grey images and a colour sample
    (distinct per cell): the runner's own code, given that render."""
    import numpy as np

    from harness.cells import _save_pictures
    from harness.pictures import image_grid

    images = np.linspace(0, final_mse, 6 * 16).reshape(6, 1, 4, 4)
    pictures = {"denoised": image_grid(images, low=0, high=1.2, columns=3),
                "samples": np.full((5, 7, 3), int(200 * final_mse), dtype=np.uint8)}
    ctx = SimpleNamespace(task=SimpleNamespace(render=lambda model, split, generator: pictures),
                          restricted_test=None, generator=lambda name: None)
    return _save_pictures(ctx, None, folder)


def build_denoising_store(root: Path) -> Path:
    """Write the lower-is-better grid, with each attack cell's pictures, into `root` (results directory)."""
    store = Store(root)
    members = []
    for (attack, kind), per_seed in MSE_CURVES.items():
        start = "defense:x" if kind == "defense" else kind
        for seed, curve in per_seed.items():
            key = f"{attack}-{kind}-{seed}"
            config = {"scenario": {"name": DENOISING, "task": {"name": "denoising", "params": {}}},
                      "attack": {"plugin": "finetune", "params": {"epochs": 3}},
                      "defense": {"plugin": "sophon", "params": {}} if kind == "defense" else None}
            points = [(0, "epoch", "original/mse", MSE_ORIGINAL_AT_0[kind])]
            points += [(epoch * scale, unit, f"{split}/mse", mse) for epoch, mse in enumerate(curve)
                       for scale, unit in ((1, "epoch"), (STEPS_PER_EPOCH, "step"))
                       for split in ("restricted", "restricted_val")]
            pictures = [] if key in NO_PICTURES else store_pictures(store.artifact_dir(key), curve[-1])
            _add(store, key, "attack", start, attack, seed, config, points, "done", scenario=DENOISING,
                 artifacts=pictures)
            members.append((key, "gen", attack))
    store.replace_memberships(members)
    store.close()
    return root


# Query ladders: scenario "steal" (a classifier copy, restricted/accuracy) stolen at budgets 100 and 400 from the
# original and defense:noise, seeds 0 and 1; scenario "steal-enc" (an encoder copy, restricted/probe_accuracy only)
# at budget 50. Each cell also records the victim's own score (restricted/victim_<measure>, as the runner does).
STEAL, STEAL_ENCODER = "steal", "steal-enc"
COPY = {("original", 100): {0: 0.60, 1: 0.64}, ("original", 400): {0: 0.80, 1: 0.84},
        ("defense", 100): {0: 0.20, 1: 0.30}, ("defense", 400): {0: 0.25, 1: 0.35}}
VICTIM = {("original", 100): {0: 0.90, 1: 0.88}, ("original", 400): {0: 0.92, 1: 0.88},  # probes differ per cell
          ("defense", 100): {0: 0.89, 1: 0.87}, ("defense", 400): {0: 0.89, 1: 0.87}}
SPENT = {("defense", 400, 1): 300}  # the adversary's images ran out: 300 of the 400 queries were spent
ENCODER_COPY, ENCODER_VICTIM = {0: 0.50, 1: 0.70}, {0: 0.80, 1: 0.82}


def build_query_store(root: Path) -> Path:
    """Write both ladders into `root` (results directory): the extract attack's labels, as a list of budgets names
    its cells ("extract queries=100"), in suite "steal"."""
    store = Store(root)
    members = []
    for (kind, budget), per_seed in COPY.items():
        start = "defense:noise" if kind == "defense" else kind
        for seed, accuracy in per_seed.items():
            key, label = f"steal-{kind}-{budget}-{seed}", f"extract queries={budget}"
            spent = SPENT.get((kind, budget, seed), budget)
            points = [(0, "epoch", "original/accuracy", 0.9), (0, "epoch", "restricted/accuracy", 0.1),
                      (2, "epoch", "restricted/accuracy", accuracy),
                      (spent, "queries", "restricted/accuracy", accuracy), (spent, "queries", "restricted/loss", 2 - accuracy),
                      (0, "epoch", "restricted/victim_accuracy", VICTIM[(kind, budget)][seed])]
            _add(store, key, "attack", start, label, seed, _extract_config(STEAL, budget, kind), points, "done",
                 scenario=STEAL)
            members.append((key, "steal", label))
    for seed, accuracy in ENCODER_COPY.items():
        key = f"steal-enc-{seed}"
        points = [(0, "epoch", "original/accuracy", 0.1), (2, "epoch", "restricted/probe_accuracy", accuracy),
                  (50, "queries", "restricted/probe_accuracy", accuracy),
                  (0, "epoch", "restricted/victim_probe_accuracy", ENCODER_VICTIM[seed])]
        _add(store, key, "attack", "original", "extract", seed, _extract_config(STEAL_ENCODER, 50, "original"),
             points, "done", scenario=STEAL_ENCODER)
        members.append((key, "steal", "extract"))
    store.replace_memberships(members)
    store.close()
    return root


def _extract_config(scenario: str, budget: int, kind: str) -> dict:
    return {"scenario": {"name": scenario}, "attack": {"plugin": "extract", "params": {"queries": budget, "epochs": 2}},
            "defense": {"plugin": "output-noise", "params": {}} if kind == "defense" else None}
