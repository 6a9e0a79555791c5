"""Fine-tuning attacks (docs/algorithms.md §8.1-8.4): a head strategy, then training with a recipe.

`fine_tune` is the one attack loop of the package: it records the curve (restricted test metrics at epoch 0,
after every epoch and optionally every N steps; original-domain metrics at the end — the runner records them
for the unmodified start model at epoch 0), counts steps
and examples, and lets `Diverged` propagate so the runner stores the cell as diverged. LoRA and the adaptive
attacks reuse it with their own trainable parameters. The defaults are SOPHON's reference protocol (§8.2):
direct+all, SGD momentum 0.9, lr 1e-4, weight decay 1e-4, batch 200 dropping the last short batch,
20 epochs at constant lr, no augmentation.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from harness import Param, hookimpl
from harness.names import OPTIMIZERS, SCHEDULES

STRATEGIES = ("direct+all", "direct+FC", "initFC+all", "initFC+FC")
HEAD_INITS = ("xavier", "normal_0.01")

HEAD_INIT = Param("head_init", "str", "xavier", choices=HEAD_INITS,
                  help="initFC head: SOPHON's Xavier-uniform or NTLBench's N(0, 0.01^2) weight, zero bias")


def strategy_params(default: str = "direct+all") -> list[Param]:
    """The §8.1 strategy and the head initialisation initFC uses."""
    return [Param("strategy", "str", default, choices=STRATEGIES,
                  help="direct keeps the head, initFC re-initialises it; +all trains everything, +FC only the head"),
            HEAD_INIT]


TINY_PARAMS = {"epochs": 2, "batch_size": 50}  # what plugin-check runs: a few steps per epoch on its tiny data


def training_params(*, optimizer: str = "sgd_momentum", lr: float = 1e-4) -> list[Param]:
    """The training recipe; defaults are the reference protocol unless an attack family has its own."""
    return [
        Param("optimizer", "str", optimizer, choices=OPTIMIZERS, help="docs/algorithms.md §8.3"),
        Param("lr", "float", lr, min=0.0, help="learning rate (peak lr under a schedule)"),
        Param("weight_decay", "float", None, nullable=True, min=0.0,
              help="null = the optimizer's default (1e-4; AdamW's decoupled 1e-2)"),
        Param("batch_size", "int", 200, min=1, max=1_000_000, help="the last short batch of an epoch is dropped (reference)"),
        Param("epochs", "int", 20, min=0, max=10_000, help="0 only evaluates the start model"),
        Param("schedule", "str", "constant", choices=SCHEDULES, help="stepped once per optimizer step"),
        Param("eval_every_steps", "int", None, nullable=True, min=1, max=10_000_000,
              help="also record the restricted test metrics every N steps (x_unit 'step')"),
        Param("freeze_bn_stats", "bool", False,
              help="keep BatchNorm layers in eval mode while training; by default every part, frozen or not, "
                   "trains in train mode so running statistics update (reference)"),
    ]


@dataclass(frozen=True)
class Recipe:
    """How to train, independent of what is trained: the `training_params` of a resolved config."""

    optimizer: str
    lr: float
    weight_decay: float | None
    batch_size: int
    epochs: int
    schedule: str
    eval_every_steps: int | None
    freeze_bn_stats: bool

    @classmethod
    def from_params(cls, params: dict) -> "Recipe":
        return cls(**{f.name: params[f.name] for f in fields(cls)})


def prepare_head(ctx, model, *, reinit: bool, head_init: str) -> None:
    """initFC: a fresh head drawn from the cell's 'head_init' stream (resized when the restricted domain has
    another class count); direct: the kept head must already fit the restricted classes (§1.2)."""
    from torch import nn

    from harness.engine.models import head, normal_reinit_, xavier_reinit_

    linear = head(model)
    if not reinit:
        if linear.out_features != ctx.num_classes:
            raise ValueError(f"the kept head has {linear.out_features} outputs but the restricted domain has "
                             f"{ctx.num_classes} classes: only initFC strategies apply")
        return
    if linear.out_features != ctx.num_classes:
        linear = nn.Linear(linear.in_features, ctx.num_classes, bias=linear.bias is not None,
                           device=linear.weight.device, dtype=linear.weight.dtype)
        model.set_submodule(model.head_path, linear)
    (xavier_reinit_ if head_init == "xavier" else normal_reinit_)(linear, ctx.generator("head_init"))


def needs_head(strategy: str) -> bool:
    """Every strategy but direct+all addresses the classification head (re-initialises it or trains only it)."""
    return strategy != "direct+all"


def check_strategy(params: dict, task) -> str | None:
    """At validate time: a strategy that needs a head is refused on a task whose models have none."""
    if needs_head(params["strategy"]) and not task.extra.get("head", True):
        return (f"strategy {params['strategy']!r} needs a classification head, which {task.name!r} models do not "
                f"have; use direct+all")
    return None


def apply_strategy(ctx, model, strategy: str, head_init: str) -> list:
    """Apply a §8.1 strategy to `model` and return the parameters it trains."""
    from harness.engine.models import head

    if not ctx.task.head:  # validation admits only direct+all here: train everything as released
        return list(model.parameters())
    head_mode, _, trained = strategy.partition("+")
    prepare_head(ctx, model, reinit=head_mode == "initFC", head_init=head_init)
    return list(head(model).parameters()) if trained == "FC" else list(model.parameters())


def set_train_mode(model, *, freeze_bn_stats: bool) -> None:
    """Train mode everywhere, frozen parts included (§8.1); BatchNorm in eval mode when its statistics are frozen."""
    from torch.nn.modules.batchnorm import _BatchNorm

    model.train()
    if freeze_bn_stats:
        for module in model.modules():
            if isinstance(module, _BatchNorm):
                module.eval()


def fine_tune(ctx, model, trainable: list, recipe: Recipe, *, release=None):
    """Train `trainable` (parameters of `model`) on the adversary data with `recipe`, recording the curve.

    `release(model) -> model` turns the trained module into the one evaluated last and returned (LoRA merges
    its adapters there). Every parameter of the returned model requires grad again, like any start model.
    """
    from functools import partial

    from harness.engine.data import epoch_steps
    from harness.engine.train import make_optimizer, make_schedule, train_epochs

    data = ctx.restricted_train
    chosen = {id(p) for p in trainable}
    for p in model.parameters():
        p.requires_grad_(id(p) in chosen)
    per_epoch = epoch_steps(len(data), recipe.batch_size)
    optimizer = make_optimizer(recipe.optimizer, trainable, recipe.lr, recipe.weight_decay)
    schedule = make_schedule(optimizer, recipe.schedule, recipe.epochs * per_epoch)
    notes = ctx.recorder.notes
    notes.update(steps=0, examples_seen=0, trainable_parameters=sum(p.numel() for p in trainable))

    def after_step(step: int) -> None:
        notes.update(steps=step, examples_seen=step * min(recipe.batch_size, len(data)))
        every = recipe.eval_every_steps
        if every and step % every == 0 and step % per_epoch:  # epoch ends are recorded by after_epoch
            ctx.record(model, on="restricted", epoch=None, step=step)

    def after_epoch(epoch: int, step: int) -> None:
        if epoch < recipe.epochs:  # the last epoch is recorded on the released model
            ctx.record(model, on="restricted", epoch=epoch, step=step)

    ctx.record(model, on="restricted", epoch=0, step=0)
    steps = train_epochs(model, data, optimizer, objective=ctx.objective("objective"), epochs=recipe.epochs,
                         batch_size=recipe.batch_size,
                         generator=ctx.generator("batches"), schedule=schedule, precision=ctx.precision,
                         after_step=after_step, after_epoch=after_epoch,
                         train_mode=partial(set_train_mode, freeze_bn_stats=recipe.freeze_bn_stats))
    final = release(model) if release is not None else model
    final.requires_grad_(True)
    if recipe.epochs:
        ctx.record(final, on="restricted", epoch=recipe.epochs, step=steps)
        ctx.record(final, on="original", epoch=recipe.epochs)
    return final


def run(ctx, model, recipe: Recipe | None = None):
    """The `finetune` attack (and the second half of every adaptive one): strategy, then training."""
    trainable = apply_strategy(ctx, model, ctx.params["strategy"], ctx.params["head_init"])
    return fine_tune(ctx, model, trainable, recipe or Recipe.from_params(ctx.params))


@hookimpl
def register_attacks(register):
    register("finetune", factory="attacks.finetune:run", params=[*strategy_params(), *training_params()],
             version="1", tasks="any", check=check_strategy, tiny_params=TINY_PARAMS,
             description="Fine-tune the start model on the adversary data: direct/initFC head x "
                         "all/FC-only, any optimizer, lr, batch, epochs, schedule (SOPHON's protocol by default)")
