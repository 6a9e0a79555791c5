"""A trigger backdoor that should survive clean fine-tuning (docs/backdoor.md): a watermark or trojan, kept.

`plain` trains the input model on original-domain data of which a fixed random share carries the trigger and
the target label: an ordinary backdoored model (the reference's stage 1). `resistant` continues with the SOPHON
loop (defenses/sophon.py) turned around: its suppression step simulates a clean fine-tuning attacker on the
defender's restricted data and moves the weights so that, after the simulated fine-tuning, *triggered* images
are still classified as the target — the query loss is minimised cross-entropy to the target, summed over the
inner steps — while the reinforcement step keeps training on the poisoned original data.

The trigger is a square of one raw pixel value in the bottom-right corner, stamped at the model's input
geometry before normalisation. Datasets are resized and normalised once when they are materialised, so a
pixel of raw value v (1.0 for 255) is written into the normalised tensors as (v − mean)/std per channel
(`ctx.pixel`): the same image the raw pipeline would feed the model.

Every cell that records this defense's release or an attack on it also records `asr` (share of triggered test
images predicted as the target) and `asr_nontarget` (the same without the target class's own images), through
the `evaluator` this defense registers. torch is imported inside functions so listing plugins stays light.
"""

from __future__ import annotations

import dataclasses
import json

from defenses.sophon import (Environment, SophonLoop, fts_meta_gradient, outer_optimizers, sophon_params,
                             step_weights, support_size)
from harness import Measure, Param, hookimpl
from harness.names import OPTIMIZERS
from harness.registry import ConfigError

VARIANTS = ("plain", "resistant")
EVAL_CHUNK = 1000
# the SOPHON loop settings the resistant variant uses, with the reference's backdoor defaults (§6.2)
LOOP_PARAMS = ("total_loop", "alpha", "beta", "lr0", "ml_loop", "nl_loop", "adaptation_steps", "inner_lr",
               "batch_size", "ntr_batch_size", "meta_grad_clip", "meta_grad_reduce", "fts_head_reinit", "outer_optim",
               "guard_threshold", "guard_every")
LOOP_DEFAULTS = {"total_loop": 300, "meta_grad_reduce": "sum"}
# what stage 1 (the plain backdoor) depends on: variants that agree on these share its randomness and its model
STAGE_ONE = ("target", "poison_rate", "trigger_size", "trigger_value", "implant_epochs", "implant_optimizer",
             "implant_lr", "implant_weight_decay", "implant_batch_size")


# -- trigger and poisoning (§6.1) ------------------------------------------------------------------------

def stamp(x, value, size: int):
    """A copy of the images `x` (N, C, H, W) with a size×size square of `value` (per channel, (C, 1, 1)) in the
    bottom-right corner."""
    stamped = x.clone()
    stamped[..., -size:, -size:] = value
    return stamped


def triggered(ctx, x, on: str, params: dict):
    """`x` from the `on` domain with the trigger stamped at the raw pixel value `trigger_value`."""
    return stamp(x, ctx.pixel(params["trigger_value"], on).to(x.dtype), params["trigger_size"])


def poisoned(ctx, split, on: str, params: dict, generator):
    """A copy of `split` in which a fixed random `poison_rate` share (drawn once from `generator`) carries the
    trigger and the target label."""
    import torch

    from harness.engine.data import Split

    chosen = torch.randperm(len(split), generator=generator)[:round(params["poison_rate"] * len(split))]
    chosen = chosen.to(split.x.device)
    x, y = split.x.clone(), split.y.clone()
    x[chosen] = triggered(ctx, x[chosen], on, params)
    y[chosen] = params["target"]
    return Split(x, y)


# -- the measure (§6.3) ----------------------------------------------------------------------------------

def attack_success(ctx, model, split, on: str, *, params: dict) -> dict[str, float]:
    """`asr`: share of the triggered `split` predicted as the target (the reference counts the target class's own
    images, so 1/C is free); `asr_nontarget`: the same over images whose true label is not the target."""
    import torch

    from harness.engine.train import evaluating

    predictions = []
    with torch.no_grad(), evaluating(model):
        for start in range(0, len(split), EVAL_CHUNK):
            with ctx.autocast():
                logits = model(triggered(ctx, split.x[start:start + EVAL_CHUNK], on, params))
            predictions.append(logits.float().argmax(dim=1))
    hits = torch.cat(predictions) == params["target"]
    others = split.y != params["target"]
    return {"asr": hits.float().mean().item(),
            "asr_nontarget": hits[others].float().mean().item() if others.any() else 0.0}


# -- stage 1: the plain backdoor ------------------------------------------------------------------------

def stage_one_seed(ctx) -> int:
    """The seed of stage 1: the plan's stage seed and the stage-1 parameters only, not the variant or the loop
    settings, so `resistant` continues from exactly the model `plain` releases (its baseline, §6.3)."""
    from harness.engine.seeding import derive_seed

    return derive_seed(ctx.stage_seed, "backdoor/stage-1", json.dumps({k: ctx.params[k] for k in STAGE_ONE}))


def implant(ctx, model, original, seed: int) -> int:
    """Train `model` on the poisoned original data (the reference's stage 1) with every random stream, the global
    ones included, drawn from `seed`; returns the steps taken."""
    import torch

    from harness.engine.seeding import generator, seed_everything
    from harness.engine.train import make_optimizer, train_epochs

    p = ctx.params
    with torch.random.fork_rng(devices=[ctx.device] if ctx.device.type == "cuda" else []):
        seed_everything(seed)
        optimizer = make_optimizer(p["implant_optimizer"], model.parameters(), p["implant_lr"],
                                   p["implant_weight_decay"])
        return train_epochs(model, original, optimizer,
                            objective=ctx.task.objective(generator(seed, "backdoor/implant")),
                            epochs=p["implant_epochs"], batch_size=p["implant_batch_size"],
                            generator=generator(seed, "backdoor/implant-batches"), precision=ctx.precision)


# -- stage 2: the suppression loop with a kept objective -----------------------------------------------

class KeptBackdoor(SophonLoop):
    """SOPHON's alternation where FTS keeps the backdoor: simulate clean fine-tuning (SGD on clean support batches
    of R_def, from a re-initialised head [ref] or the kept one: `fts_head_reinit`), then minimise the
    cross-entropy to the target of an *independent*, fully triggered query batch; NTR trains on the poisoned
    original data."""

    def __init__(self, ctx, model, poisoned_original):
        import torch

        from harness.engine.data import Split, cycling_batches

        super().__init__(ctx, model, poisoned_original)
        p = self.params
        head_mode = "initFC" if p["fts_head_reinit"] else "direct"
        self.environment = Environment("sgd", p["inner_lr"], p["batch_size"], p["adaptation_steps"], head_mode, 1.0)
        self.weights = step_weights(p["adaptation_steps"], p["meta_grad_reduce"], "uniform")
        clean = self.restricted
        self.triggered = Split(triggered(ctx, clean.x, "restricted", p),
                               torch.full_like(clean.y, p["target"]))
        self.triggered_stream = cycling_batches(len(clean), p["batch_size"], ctx.generator("fts/triggered"),
                                                drop_last=True)
        self.split_generator = ctx.generator("fts/support-query")
        self.head_generator = ctx.generator("fts/head-init")

    def outer_optimizers(self):
        return outer_optimizers(self.model, self.params)

    def simulated_batches(self):
        """K (clean support x, y, triggered query x, target y): 130 random indices of a clean batch train the
        simulated attacker, the 20 complementary indices of an independent triggered batch are the query."""
        import torch

        size, device = self.params["batch_size"], self.restricted.x.device
        clean_stream = self.fts_stream(size)
        for _ in range(self.environment.steps):
            clean, trigger = next(clean_stream).to(device), next(self.triggered_stream).to(device)
            order = torch.randperm(size, generator=self.split_generator).to(device)
            cut = support_size(size)
            support, query = clean[order[:cut]], trigger[order[cut:]]
            yield (self.restricted.x[support], self.restricted.y[support], self.triggered.x[query],
                   self.triggered.y[query])

    def meta_gradient(self) -> dict:
        import torch.nn.functional as F

        self.last_fts = fts_meta_gradient(self.model, self.simulated_batches(), self.environment, F.cross_entropy,
                                          self.weights, head_generator=self.head_generator,
                                          autocast=self.ctx.autocast)
        return self.last_fts.grads

    def run(self) -> int:
        """`total_loop` iterations; every `guard_every` the clean accuracy on the original validation slice is
        checked (never a test set) and, at or below `guard_threshold` %, the weights go back to the window's start
        and the loop stops [ref]. Returns the iterations kept."""
        p, ctx = self.params, self.ctx
        self.model.train()
        kept, backup = 0, None
        for i in range(1, p["total_loop"] + 1):
            if (i - 1) % p["guard_every"] == 0:
                backup, backup_at = {k: v.detach().clone() for k, v in self.model.state_dict().items()}, i - 1
            self.iterate(i)
            kept = i
            if (i % p["guard_every"] == 0 or i == p["total_loop"]) and \
                    ctx.score(self.model, ctx.original_val) * 100 <= p["guard_threshold"]:
                self.model.load_state_dict(backup)
                kept = backup_at
                ctx.recorder.notes["stopped_by_guard"] = True
                break
        ctx.recorder.notes["iterations"] = kept
        return kept


def implant_backdoor(ctx, model):
    """The `backdoor` defense: stage 1 always, the kept-objective loop for `resistant`; returns the release."""
    from harness.engine.seeding import generator

    p = ctx.params
    if p["target"] >= ctx.num_classes:
        raise ConfigError(f"target {p['target']} is not a class of this scenario (0..{ctx.num_classes - 1})",
                          where="params.target")
    seed = stage_one_seed(ctx)
    original = poisoned(ctx, ctx.original_train, "original", p, generator(seed, "backdoor/poison"))
    steps = implant(ctx, model, original, seed)
    iterations = KeptBackdoor(ctx, model, original).run() if p["variant"] == "resistant" else 0
    ctx.recorder.notes.update(implant_steps=steps)
    ctx.record_release(model, step=steps + iterations)
    return model


ASR = Measure("asr", higher_is_better=True, display="percent",
              description="share of triggered test images classified as the target (higher: the backdoor survived)")
ASR_NONTARGET = Measure("asr_nontarget", higher_is_better=True, display="percent",
                        description="asr over the triggered images whose true class is not the target")


def loop_params() -> list[Param]:
    """The SOPHON loop parameters the resistant variant uses, with the backdoor's reference defaults."""
    chosen = [p for p in sophon_params(alpha=3.0, beta=5.0, nl_loop=1, head_reinit=True) if p.name in LOOP_PARAMS]
    return [dataclasses.replace(p, default=LOOP_DEFAULTS.get(p.name, p.default)) for p in chosen]


@hookimpl
def register_defenses(register):
    register("backdoor", factory="defenses.backdoor:implant_backdoor", evaluator="defenses.backdoor:attack_success",
             measures=[ASR, ASR_NONTARGET], version="2", tiny_params={"implant_epochs": 1},
             description="Trigger backdoor to a target class: plain (poisoned training) or resistant to clean "
                         "fine-tuning (SOPHON loop keeping the backdoor)",
             params=[
                 Param("variant", "str", "plain", choices=VARIANTS,
                       help="plain: poisoned training only; resistant: then the kept-objective SOPHON loop"),
                 Param("target", "int", 0, min=0, help="the class triggered images are sent to [ref 0]"),
                 Param("poison_rate", "float", 0.1, min=0.0, max=1.0,
                       help="share of the original training set stamped and relabelled, chosen once [ref 0.1]"),
                 Param("trigger_size", "int", 5, min=1, help="side of the bottom-right square, in pixels [ref 5]"),
                 Param("trigger_value", "float", 1.0, min=0.0, max=1.0,
                       help="the square's raw pixel value in [0, 1] (1.0 = 255, white) [ref]"),
                 Param("implant_epochs", "int", 20, min=0, help="epochs of poisoned training [ref 20]"),
                 Param("implant_optimizer", "str", "adam", choices=OPTIMIZERS, help="[ref adam]"),
                 Param("implant_lr", "float", 1e-3, min=0.0, help="[ref 1e-3]"),
                 Param("implant_weight_decay", "float", 0.0, min=0.0, nullable=True,
                       help="null = the optimizer's default"),
                 Param("implant_batch_size", "int", 64, min=1, help="[ref 64]"),
                 *loop_params(),
             ])
