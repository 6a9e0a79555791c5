"""Running one cell (pretrain, defend, attack, or a trial an attack cell runs) inside a worker, and committing it.

A cell re-derives everything it needs from its config (plugins from the registry, data from the cache,
its inputs from stored safetensors), so it gives the same curve in any process, locally or on Ray.
"""

from __future__ import annotations

import json
import os
import traceback
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from harness.plan import Cell
from harness.store import Store, repair_hint


@dataclass(frozen=True)
class Runtime:
    """Where and how cells run. Only `precision` enters cell keys; the rest changes results by float noise only."""

    root: str
    device: str = "auto"
    precision: str = "fp32"
    data_root: str | None = None
    cache_dir: str | None = None
    threads: int | None = None


@dataclass
class ScenarioData:
    """A scenario's data in its roles. Test splits are for recording; choices read the validation slices.

    Pretrain cells see a scenario config without a restricted domain (`restricted` and the roles cut from it
    are then None): pretraining reads only the original domain.
    """

    original: object        # Domain: its test split is recorded
    original_fit: object    # what pretraining and defenses train on
    original_val: object    # held out of the original training set for defense-side choices (SOPHON's guard)
    restricted: object
    defender: object
    adversary: object       # the adversary's training data under its budget, less its validation slice
    adversary_val: object   # attacker-side choices (scratch@best, R_tuned, searched attacks)
    manifest: str


def _registry():
    from harness.plugins import registry
    return registry()


def _materialise(role_config: dict, scenario: dict, runtime: Runtime):
    from harness.engine.data import materialise

    spec = _registry().get("dataset", role_config["dataset"])
    return materialise(spec, role_config["params"], image_size=scenario["image_size"], channels=scenario["channels"],
                       normalisation=scenario["normalisation"],
                       data_root=Path(runtime.data_root) if runtime.data_root else None,
                       cache_dir=Path(runtime.cache_dir) if runtime.cache_dir else None)


@lru_cache(maxsize=4)
def _scenario_data(scenario_json: str, runtime: Runtime) -> ScenarioData:
    from harness.engine.data import held_out, restricted_roles, within_budget
    from harness.engine.device import resolve_device

    scenario = json.loads(scenario_json)
    device = resolve_device(runtime.device)
    seed, fraction = scenario["split_seed"], scenario["validation_fraction"]  # the data split seed, not a training seed
    original = _materialise(scenario["original"], scenario, runtime).to(device)
    original_fit, original_val = held_out(original.train, fraction, seed)
    if "restricted" not in scenario:  # a pretrain cell's scenario: the original domain only
        return ScenarioData(original, original_fit, original_val, None, None, None, None, "")
    restricted = _materialise(scenario["restricted"], scenario, runtime).to(device)
    defender, adversary, manifest = restricted_roles(restricted.train, scenario["restricted_split"], seed)
    budget = within_budget(adversary, scenario.get("adversary_budget", "all"), seed)
    return ScenarioData(original, original_fit, original_val, restricted, defender, *held_out(budget, fraction, seed),
                        manifest)


def scenario_data(scenario: dict, runtime: Runtime) -> ScenarioData:
    return _scenario_data(json.dumps(scenario, sort_keys=True), runtime)


def data_facts(scenario: dict, runtime: Runtime) -> dict:
    """Fingerprints and sizes that enter cell keys and the leaderboard's statement of scale."""
    data = scenario_data(scenario, runtime)
    return {"original_fingerprint": data.original.fingerprint, "restricted_fingerprint": data.restricted.fingerprint,
            "split_manifest": data.manifest, "original_train": len(data.original_fit),
            "original_val": len(data.original_val), "defender_train": len(data.defender),
            "adversary_train": len(data.adversary), "adversary_val": len(data.adversary_val),
            "restricted_test": len(data.restricted.test), "num_classes": data.restricted.num_classes}


def scenario_task(scenario: dict):
    """The task object of a scenario config (classification for configs written before tasks were plugins)."""
    from harness.tasks import load_task

    ref = scenario.get("task") or {"name": "classification", "params": {}}
    return load_task(_registry().get("task", ref["name"]), ref["params"])


def _build_model_fn(scenario: dict, task, num_classes: int, device):
    from harness.tasks import model_builder

    return model_builder(task, _registry(), scenario["architecture"]["name"], scenario["architecture"]["params"],
                         in_channels=scenario["channels"], image_size=scenario["image_size"],
                         num_classes=num_classes, device=device)


def _context(cell: Cell, runtime: Runtime, data: ScenarioData, recorder, *, seed: int, params: dict, role: str,
             plugin=None, trials=None):
    """The plugin's view of its cell. A cell whose model is (or starts from) a defense's release also records that
    defense's evaluator measures (docs/starts-and-access.md)."""
    from harness.engine.context import CellContext, start_evaluators
    from harness.engine.device import resolve_device
    from harness.tasks import metric_names

    device = resolve_device(runtime.device)
    task = scenario_task(cell.config["scenario"])
    restricted = data.restricted
    unlabelled = data.original.train.y is None or (restricted is not None and restricted.train.y is None)
    if task.labelled and unlabelled:
        raise ValueError(f"task {task.name!r} needs labelled data, but a dataset of this scenario has no labels")
    if task.head and restricted is not None and data.original.num_classes != restricted.num_classes:
        raise ValueError("original and restricted domains must have the same number of classes (head reuse)")
    defense = cell.config.get("defense") if role in ("defend", "attack") else None
    start = _registry().get("defense", defense["plugin"]) if defense else None
    recorder.allowed = metric_names(task, plugin, start)
    return CellContext(
        params=params, seed=seed, device=device, precision=runtime.precision,
        num_classes=data.original.num_classes, original_test=data.original.test,
        restricted_train={"defend": data.defender, "attack": data.adversary}.get(role),
        restricted_test=None if restricted is None else restricted.test,
        original_train=data.original_fit if role in ("defend", "pretrain") else None,
        original_val=data.original_val if role in ("defend", "pretrain") else None,
        restricted_val=data.adversary_val if role == "attack" else None,
        build_model=_build_model_fn(cell.config["scenario"], task, data.original.num_classes, device),
        recorder=recorder, task=task, log=lambda message: None,
        normalisation={"original": (data.original.mean, data.original.std),
                       **({} if restricted is None else {"restricted": (restricted.mean, restricted.std)})},
        evaluators=start_evaluators(start, defense["params"] if defense else None), stage_seed=cell.seed,
        trials=trials,
    )


def _pretrain(ctx, settings: dict):
    """The unprotected original: the architecture trained on the original domain with the task's pretraining
    objective (docs/algorithms.md §9), or self-supervised with SimCLR (`objective: simclr`, docs/extraction.md)."""
    from harness.engine.train import make_optimizer, train_epochs

    model = ctx.build_model()
    objective, extra = _pretrain_objective(ctx, model, settings)
    optimizer = make_optimizer(settings["optimizer"], [*model.parameters(), *extra], settings["lr"],
                               settings["weight_decay"])

    def after_epoch(epoch, steps):
        ctx.record(model, on="original", epoch=epoch)

    ctx.record(model, on="original", epoch=0)
    train_epochs(model, ctx.original_train, optimizer, objective=objective,
                 epochs=settings["epochs"], batch_size=settings["batch_size"],
                 generator=ctx.generator("pretrain-batches"), precision=ctx.precision, after_epoch=after_epoch)
    return model


def _pretrain_objective(ctx, model, settings: dict):
    """(objective, the extra parameters it trains): the task's own, or SimCLR's InfoNCE through a projection head
    that is trained alongside and not saved."""
    if settings.get("objective", "task") == "task":
        return ctx.task.pretrain_objective(ctx.generator("pretrain")), []
    from harness.engine.contrastive import projection_head, simclr_objective

    simclr = dict(settings["simclr"])
    head = projection_head(model, ctx.original_train.x, simclr.pop("projection_dim"))
    return simclr_objective(head, ctx.generator("pretrain"), **simclr), list(head.parameters())


def _load_input(store: Store, key: str, model):
    from harness.engine.models import load_model

    path = store.artifact(key)
    if path is None:
        raise RuntimeError(f"input cell {key[:12]} has no stored model; {repair_hint(store.root)}")
    return load_model(model, path)


def _cell_seed(cell: Cell) -> int:
    """Derived from what the cell computes and its seed (not the start), so paired cells share batch orders; a
    trial trains exactly as the attack cell of its config."""
    from harness.engine.seeding import derive_seed

    stage = "attack" if cell.kind == "trial" else cell.kind
    what = {"pretrain": cell.config.get("pretrain"), "defend": cell.config.get("defense"),
            "attack": _paired_attack(cell.config["attack"]) if stage == "attack" else None}
    return derive_seed(stage, json.dumps(what[stage], sort_keys=True), cell.seed)


def _paired_attack(attack: dict) -> dict:
    """The attack without the parameters any of its starts ignores: a cell from such a start serves several
    configurations (the no-teacher student, every τ of a KD grid), so it must draw what each of them draws."""
    ignored = {name for start in _registry().get("attack", attack["plugin"]).starts for name in start.ignores}
    return {"plugin": attack["plugin"], "params": {k: v for k, v in attack["params"].items() if k not in ignored}}


def _run(cell: Cell, runtime: Runtime, store: Store, recorder) -> list[Path]:
    from harness.engine.models import save_model
    from harness.engine.seeding import derive_seed, seed_everything
    from harness.trials import cell_trials

    data = scenario_data(cell.config["scenario"], runtime)
    seed = _cell_seed(cell)
    seed_everything(seed)
    if cell.kind == "pretrain":
        ctx = _context(cell, runtime, data, recorder, seed=seed, params={}, role="pretrain")
        model = _pretrain(ctx, cell.config["pretrain"])
    elif cell.kind == "defend":
        defense = cell.config["defense"]
        spec = _registry().get("defense", defense["plugin"])
        ctx = _context(cell, runtime, data, recorder, seed=seed, params=defense["params"], role="defend", plugin=spec)
        model = _load_input(store, cell.deps[0], ctx.build_model())
        model = spec.load()(ctx, model)
    else:
        attack = cell.config["attack"]
        spec = _registry().get("attack", attack["plugin"])
        trials = cell_trials(cell, runtime) if cell.kind == "attack" else None  # a trial runs no trials itself
        ctx = _context(cell, runtime, data, recorder, seed=seed, params=attack["params"], role="attack", plugin=spec,
                       trials=trials)
        seed_everything(derive_seed(seed, "scratch-init"))
        model = None if cell.config.get("source") == "none" else ctx.build_model()
        if cell.deps:
            model = _load_input(store, cell.deps[0], model)
        if model is not None:
            ctx.record(model, on="original", epoch=0)  # intactness: the start as released, before any attack step
        black_box = spec.access == "black-box" and model is not None
        if black_box:
            _score_victim(cell, ctx, spec, model)
        handed = _oracle(cell, ctx, model) if black_box else model
        attacked = spec.load()(ctx, handed)
        shown = attacked if attacked is not None and attacked is not handed else model
        artifacts = _save_pictures(ctx, shown, store.artifact_dir(cell.key)) if shown is not None else []
        if cell.kind == "trial" and attacked is not None:  # a search hands on its chosen trial's model
            artifacts.append(save_model(attacked, store.artifact_dir(cell.key) / "model.safetensors",
                                        metadata={"cell": cell.key, "kind": cell.kind}))
        return artifacts
    return [save_model(model, store.artifact_dir(cell.key) / "model.safetensors",
                       metadata={"cell": cell.key, "kind": cell.kind})]


def _score_victim(cell: Cell, ctx, spec, model) -> None:
    """The victim's own restricted score, before its black-box attacker gets the oracle: the attack's registered
    `score_victim(ctx, victim, *, api) -> {measure: value}`, recorded as `restricted/victim_<measure>` at epoch 0,
    so each copy is compared with its victim by the same protocol (docs/starts-and-access.md)."""
    from harness.registry import load_reference

    reference = spec.extra.get("score_victim")
    if reference is None:
        return
    for name, value in load_reference(reference)(ctx, model, api=cell.config["scenario"]["api"]).items():
        ctx.recorder.point(0, "epoch", f"restricted/victim_{name}", value)


def _oracle(cell: Cell, ctx, model):
    """A black-box attack's view of its start: the scenario's API, the attack's query budget, and the defense's
    output transform (when the start is a defense that has one)."""
    from harness.engine.oracle import make_oracle
    from harness.registry import load_reference

    defense = cell.config.get("defense")
    spec = _registry().get("defense", defense["plugin"]) if defense else None
    transform = spec.extra.get("output_transform") if spec else None
    return make_oracle(model, api=cell.config["scenario"]["api"], budget=ctx.params["queries"],
                       precision=ctx.precision, transform=load_reference(transform) if transform else None,
                       transform_params=defense["params"] if defense else None, generator=ctx.generator("oracle"))


def _save_pictures(ctx, model, folder: Path) -> list[Path]:
    """The task's pictures of the attacked model as PNG artifacts of the cell (docs/tasks.md)."""
    from matplotlib.image import imsave

    from harness.pictures import NAME, PREFIX

    paths = []
    for name, image in ctx.task.render(model, ctx.restricted_test, ctx.generator("pictures")).items():
        if not isinstance(name, str) or not NAME.fullmatch(name):
            raise ValueError(f"task {ctx.task.name!r} rendered a picture named {name!r}: use 1-64 letters, digits, "
                             f"'-' or '_'")
        path = folder / f"{PREFIX}{name}.png"
        imsave(path, image)
        paths.append(path)
    return paths


def execute(cell: Cell, runtime: Runtime) -> str:
    """Run a cell and commit it; returns its status. Never raises for a failure inside the cell."""
    from harness.engine.context import Recorder
    from harness.engine.train import Diverged

    if runtime.threads:
        import torch
        torch.set_num_threads(runtime.threads)
    store = Store(runtime.root)
    try:
        store.mark_running(cell)
        recorder = Recorder()
        try:
            artifacts = _run(cell, runtime, store, recorder)
            status, error = "done", None
        except Diverged as exc:
            artifacts, status, error = [], "diverged", str(exc)
        except Exception:
            artifacts, status, error = [], "failed", traceback.format_exc()
        store.finish(cell.key, status, points=recorder.points, artifacts=artifacts, error=error,
                     notes=recorder.notes)
        return status
    finally:
        store.close()


def worker_init(threads: int | None) -> None:
    """Worker processes die with the runner (so a killed run leaves no orphan finishing cells)."""
    from harness.executors.worker_start import start_worker

    start_worker(os.getppid(), threads)
