"""The searched attack (docs/search.md): per start and seed, Optuna searches the attacker's choices (attack
family, strategy, optimizer, lr, batch size, schedule, epochs, LoRA rank) within a declared budget, and keeps
the trial with the best final score on the adversary's validation slice — never a test point.

Every trial is a cell of its own (`ctx.run_trial`, harness/trials.py), so trials are resumable and reused. The
Optuna study is not stored: its sampler is seeded from the stage seed and every parameter but `trials`, so asking
again and telling the stored trials' scores in order replays the same suggestions, and raising `trials` extends
a finished search instead of starting a new one. The cell records the chosen trial's curve as its own,
so the leaderboard, R and the worst case read it like any attack's.
"""

from __future__ import annotations

import json
import math

from harness import Param, hookimpl
from harness.names import OPTIMIZERS, SCHEDULES

from attacks.finetune import STRATEGIES

FAMILIES = ("finetune", "lora")
SAMPLERS = ("tpe", "random")


def _choices(name: str, default: list, choices=None, kind: str = "str", help: str = "", **bounds) -> Param:
    return Param(name, "list", default, item=Param(name, kind, default[0], choices=choices, **bounds), help=help)


SPACE = (
    _choices("plugin", list(FAMILIES), FAMILIES, help="the attack each trial runs"),
    _choices("strategy", ["direct+all", "initFC+FC", "initFC+all"], STRATEGIES,
             help="finetune head strategies (SOPHON Table I); a LoRA trial picks direct or initFC among their heads"),
    _choices("optimizer", ["sgd_momentum", "nesterov", "adagrad", "adadelta", "adam", "adamw"], OPTIMIZERS,
             help="SOPHON Table V plus AdamW"),
    Param("lr", "list", [1e-5, 1e-1], item=Param("lr", "float", 1e-3, min=0.0),
          help="[low, high]: the learning rate is searched on a log scale between them"),
    _choices("batch_size", [32, 64, 128, 256], kind="int", min=1, max=1_000_000),
    _choices("schedule", ["constant", "warmup_cosine"], SCHEDULES),
    Param("epochs", "list", None, nullable=True, item=Param("epochs", "int", 1, min=1, max=10_000),
          help="epoch counts to choose from, each at most max_epochs; null: every trial trains max_epochs"),
    _choices("rank", [4, 8, 16], kind="int", min=1, max=4096, help="LoRA ranks (LoRA trials only)"),
)

FIRST = Param("first", "list", [], item=Param("first", "dict", {}, keys=tuple(
    Param("strategy", "str", "direct+all", help="a finetune strategy, or direct / initFC for a LoRA trial")
    if dimension.name == "strategy" else dimension.item for dimension in SPACE
)), help="trial configs tried before the sampler's own (e.g. the fixed suite entries, so the search is at least as "
         "strong on validation as each); they count towards `trials`; a choice left out is sampled")

TINY_PARAMS = {"trials": 2, "max_epochs": 1,
               "space": {"plugin": ["finetune"], "optimizer": ["adam"], "lr": [1e-3, 1e-2], "batch_size": [50]}}


def full_space(params: dict) -> dict:
    """The searched choices: the given dimensions, the others at their defaults, epochs at most max_epochs."""
    space = {**{p.name: p.default for p in SPACE}, **params["space"]}
    return {**space, "epochs": space["epochs"] or [params["max_epochs"]]}


def check_space(params: dict, task) -> str | None:
    """At validate time: every dimension non-empty, lr a proper range, no epoch count above the per-trial cap."""
    space = full_space(params)
    for name, values in space.items():
        if not values:
            return f"space.{name} is empty: give at least one value"
    low_high = space["lr"]
    if len(low_high) != 2 or not 0 < low_high[0] < low_high[1]:
        return f"space.lr must be [low, high] with 0 < low < high, got {low_high}"
    over = [e for e in space["epochs"] if e > params["max_epochs"]]
    if over:
        return f"space.epochs {over} exceeds the per-trial cap max_epochs={params['max_epochs']}"
    if len(params["first"]) > params["trials"]:
        return f"first holds {len(params['first'])} configs but trials is {params['trials']}: raise trials"
    for i, config in enumerate(params["first"]):
        problem = _outside(config, space)
        if problem:
            return f"first[{i}].{problem}"
    return None


def _outside(config: dict, space: dict) -> str | None:
    """What in a `first` config lies outside the searched space, if anything."""
    if "plugin" not in config:
        return "plugin: missing; expected one of " + ", ".join(space["plugin"])
    lora = config["plugin"] == "lora"
    if "rank" in config and not lora:
        return "rank: only LoRA trials have a rank"
    for name, value in config.items():
        if name == "lr":
            low, high = space["lr"]
            if not low <= value <= high:
                return f"lr: {value} is outside space.lr [{low}, {high}]"
            continue
        allowed = _lora_heads(space) if name == "strategy" and lora else space[name]
        if value not in allowed:
            return f"{name}: {value!r} is outside the searched space; expected one of {allowed}"
    return None


def _lora_heads(space: dict) -> list[str]:
    return sorted({strategy.partition("+")[0] for strategy in space["strategy"]})


def _as_optuna_params(config: dict) -> dict:
    """A `first` config under the names `suggest` asks Optuna for (a LoRA trial's head is `lora_strategy`)."""
    named = dict(config)
    if named["plugin"] == "lora" and "strategy" in named:
        named["lora_strategy"] = named.pop("strategy")
    return named


def suggest(trial, space: dict) -> tuple[str, dict]:
    """One attack config from an Optuna trial: (plugin, params). LoRA's own choices are asked only of LoRA trials."""
    plugin = trial.suggest_categorical("plugin", space["plugin"])
    params = {"optimizer": trial.suggest_categorical("optimizer", space["optimizer"]),
              "lr": trial.suggest_float("lr", *space["lr"], log=True),
              "batch_size": trial.suggest_categorical("batch_size", space["batch_size"]),
              "schedule": trial.suggest_categorical("schedule", space["schedule"]),
              "epochs": trial.suggest_categorical("epochs", space["epochs"])}
    if plugin == "lora":
        params.update(strategy=trial.suggest_categorical("lora_strategy", _lora_heads(space)),
                      rank=trial.suggest_categorical("rank", space["rank"]))
    else:
        params["strategy"] = trial.suggest_categorical("strategy", space["strategy"])
    return plugin, params


def describe(plugin: str, params: dict) -> str:
    """A trial's config in one short phrase."""
    shown = " ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted(params.items()))
    return f"{plugin} {shown}"


def _sampler(params: dict, stage_seed: int):
    """Seeded without `trials`: a search given more trials asks the same first ones, which are then reused."""
    import optuna

    from harness.engine.seeding import derive_seed  # imports torch: not at registration time

    rest = json.dumps({k: v for k, v in params.items() if k != "trials"}, sort_keys=True)
    seed = derive_seed(stage_seed, "search/sampler", rest) % 2**32  # numpy's generators take 32-bit seeds
    if params["sampler"] == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=params["startup_trials"])


def run(ctx, model):
    """Run the search's trials in order (reading finished ones from the store), choose on validation, and record
    the chosen trial's curve and model as this cell's."""
    import optuna

    from harness.engine.train import Diverged

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    params, score = ctx.params, ctx.task.score
    space = full_space(params)
    study = optuna.create_study(direction="maximize" if score.higher_is_better else "minimize",
                                sampler=_sampler(params, ctx.stage_seed))
    for config in params["first"]:
        study.enqueue_trial(_as_optuna_params(config))
    done = []
    for _ in range(params["trials"]):
        asked = study.ask()
        plugin, trial_params = suggest(asked, space)
        trial = ctx.run_trial(plugin, trial_params)
        value = trial.last(f"restricted_val/{score.name}")  # the validation slice only: never a test point
        if value is None or not math.isfinite(value):
            study.tell(asked, state=optuna.trial.TrialState.FAIL)
            value = None
        else:
            study.tell(asked, value)
        done.append((plugin, trial_params, trial, value))
    scored = [i for i, entry in enumerate(done) if entry[3] is not None]
    if not scored:
        raise ValueError(f"none of the {len(done)} trials recorded a finite restricted_val/{score.name}")
    best = max(scored, key=lambda i: score.sign * done[i][3])  # ties: the first
    plugin, chosen_params, chosen, value = done[best]
    _record(ctx, chosen.points)
    ctx.recorder.notes.update(
        chosen.notes,
        chosen=f"{describe(plugin, chosen_params)} (validation {score.name} {value:.4g}, trial {best + 1} of "
               f"{len(done)})",
        chosen_config={"plugin": plugin, "params": chosen_params}, chosen_trial=chosen.key,
        trials=[{"plugin": p, "params": tp, "validation": v, "status": t.status, "key": t.key}
                for p, tp, t, v in done],
        search_steps=sum(t.notes.get("steps", 0) for _, _, t, _ in done))
    if chosen.status == "diverged":
        raise Diverged(f"the chosen trial diverged: {describe(plugin, chosen_params)}")
    return chosen.load_model()


def _record(ctx, points) -> None:
    """The chosen trial's points as this cell's, but for the ones this cell already recorded (the start model's
    original-domain score at epoch 0)."""
    recorded = {(x, unit, metric) for x, unit, metric, _ in ctx.recorder.points}
    for x, unit, metric, value in points:
        if (x, unit, metric) not in recorded:
            ctx.recorder.point(x, unit, metric, math.nan if value is None else value)


@hookimpl
def register_attacks(register):
    register("search", factory="attacks.search:run", version="3", check=check_space, tiny_params=TINY_PARAMS,
             params=[Param("space", "dict", {}, keys=SPACE,
                           help="the choices searched; a dimension left out takes its default (docs/search.md)"),
                     Param("trials", "int", 8, min=1, max=10_000, help="trials per start and seed"),
                     FIRST,
                     Param("max_epochs", "int", 20, min=1, max=10_000,
                           help="per-trial cap: no trial trains more epochs"),
                     Param("sampler", "str", "tpe", choices=SAMPLERS, help="Optuna's TPE, or uniform random"),
                     Param("startup_trials", "int", 4, min=0, max=10_000,
                           help="TPE: random trials before it models the scores")],
             description="Optuna search over strategy, optimizer, lr, batch, schedule, epochs and LoRA rank within a "
                         "trial budget, choosing on the adversary's validation slice; each trial is a cell")
