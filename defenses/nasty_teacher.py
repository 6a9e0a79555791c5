"""Nasty Teacher (docs/distillation.md): a classifier of normal accuracy whose softened outputs mislead distillation.

The defense's input model — the normally trained original — is the adversarial network A, frozen in eval mode
without gradients. The nasty teacher (trained from a fresh model [ref] or from a copy of A) minimises

    L = CE(z_t, y) − ω·τ²·KL(p^τ(z_t) ‖ p^τ(z_a))

on the original training set: it stays right on the labels while its softened outputs move as far from a
normal teacher's as the CE term allows. The reference adds a constant 100 to the logged loss, which changes
no gradient and is left out. A step whose loss is not finite is skipped and counted; more than
`max_skipped` of the planned steps fails the cell as diverged. torch is imported inside functions.
"""

from __future__ import annotations

from harness import Measure, Param, hookimpl
from harness.names import OPTIMIZERS

NASTY_KL = Measure("nasty_kl", higher_is_better=True,
                   description="τ-softened KL between the nasty teacher and the normal teacher A on the test set, "
                               "in the direction the loss uses (how far the dark knowledge was moved)")


def nasty_loss(teacher_logits, adversary_logits, labels, *, omega: float, tau: float, direction: str):
    """(loss, KL term): CE(z_t, y) − ω·τ²·KL, with KL(p^τ(z_t) ‖ p^τ(z_a)) for `teacher_first` (the reference's
    KLDivLoss(log p^τ(z_a), p^τ(z_t))) or KL(p^τ(z_a) ‖ p^τ(z_t)) for `adversary_first` (the paper's equation as
    transcribed)."""
    import torch.nn.functional as F

    from attacks.distill import tempered_kl

    pair = (teacher_logits, adversary_logits) if direction == "teacher_first" else (adversary_logits, teacher_logits)
    kl = tempered_kl(*pair, tau)
    return F.cross_entropy(teacher_logits, labels) - omega * tau * tau * kl, kl


def kl_on_test(ctx, teacher, adversary, params: dict) -> float:
    """The loss's KL between teacher and A over the original test set, both in eval mode."""
    import torch

    from attacks.distill import tempered_kl
    from harness.engine.train import evaluating

    split, total = ctx.original_test, 0.0
    with torch.no_grad(), evaluating(teacher), evaluating(adversary):
        for i in range(0, len(split), 1000):
            x = split.x[i:i + 1000]
            with ctx.autocast():
                t, a = teacher(x).float(), adversary(x).float()
            pair = (t, a) if params["nasty_kl_direction"] == "teacher_first" else (a, t)
            total += tempered_kl(*pair, params["tau"]).item() * len(x)
    return total / max(1, len(split))


def initial_teacher(ctx, adversary, init: str):
    """A fresh model drawn from the cell seed [ref], or a trainable copy of the normal teacher."""
    import copy

    from harness.engine import seeding

    if init == "normal_teacher":
        return copy.deepcopy(adversary).requires_grad_(True)
    seeding.seed_everything(seeding.derive_seed(ctx.seed, "nasty-init"))
    return ctx.build_model()


def record_progress(ctx, teacher, adversary, step: int) -> float:
    """Original and restricted measures and the KL to A, against steps."""
    ctx.record(teacher, on="original", epoch=None, step=step)
    ctx.record(teacher, on="restricted", epoch=None, step=step)
    kl = kl_on_test(ctx, teacher, adversary, ctx.params)
    ctx.recorder.point(step, "step", f"original/{NASTY_KL.name}", kl)
    return kl


def train_nasty_teacher(ctx, adversary):
    """Train the nasty teacher against the frozen normal teacher `adversary`; return it for release."""
    import torch

    from harness.engine.data import batch_indices, epoch_steps
    from harness.engine.train import Diverged, make_optimizer

    p = ctx.params
    adversary.eval().requires_grad_(False)
    teacher = initial_teacher(ctx, adversary, p["nasty_init"])
    data = ctx.original_train
    optimizer = make_optimizer(p["optimizer"], teacher.parameters(), p["lr"], p["weight_decay"])
    schedule = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=p["milestones"], gamma=p["gamma"])
    allowed = p["max_skipped"] * p["epochs"] * epoch_steps(len(data), p["batch_size"])
    notes = ctx.recorder.notes
    notes.update(steps=0, skipped_steps=0)
    generator, step = ctx.generator("nasty-batches"), 0
    for epoch in range(1, p["epochs"] + 1):
        teacher.train()
        for index in batch_indices(len(data), p["batch_size"], generator, drop_last=True):
            x, y = data.batch(index.to(data.x.device))
            with ctx.autocast():
                logits = teacher(x).float()
                with torch.no_grad():
                    adversary_logits = adversary(x).float()
            loss, kl = nasty_loss(logits, adversary_logits, y, omega=p["omega"], tau=p["tau"],
                                  direction=p["nasty_kl_direction"])
            step += 1
            notes["steps"] = step
            if not torch.isfinite(loss):
                notes["skipped_steps"] += 1
                if notes["skipped_steps"] > allowed:
                    raise Diverged(f"nasty-teacher loss was not finite at {notes['skipped_steps']} steps, more than "
                                   f"{p['max_skipped']:.0%} of the {p['epochs']} epochs' steps (last: step {step})")
                continue
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        schedule.step()  # the lr changes at the start of each listed 0-based epoch [ref]
        if epoch < p["epochs"]:  # the last epoch's point is the released model's, recorded below
            kl = record_progress(ctx, teacher, adversary, step)
            ctx.log(f"epoch {epoch}: loss {loss.item():.4f} test KL to the normal teacher {kl:.4f}")
    ctx.record_release(teacher, step=step)
    ctx.recorder.point(step, "step", f"original/{NASTY_KL.name}", kl_on_test(ctx, teacher, adversary, p))
    return teacher


@hookimpl
def register_defenses(register):
    register("nasty-teacher", factory="defenses.nasty_teacher:train_nasty_teacher", version="1", measures=[NASTY_KL],
             description="Nasty Teacher: self-undermining KD against a frozen normal teacher, so students "
                         "distilled from it learn worse",
             params=[
                 Param("omega", "float", 0.04, min=0.0,
                       help="ω, weight of the KL term [ref CIFAR-10: 0.04; CIFAR-100: 0.005; Tiny-ImageNet: 0.01]"),
                 Param("tau", "float", 4.0, min=0.01, help="τ, the temperature [ref CIFAR-10: 4; CIFAR-100: 20]"),
                 Param("nasty_kl_direction", "str", "teacher_first", choices=("teacher_first", "adversary_first"),
                       help="teacher_first [ref code]: KL(p(z_t) ‖ p(z_a)); adversary_first: the paper's equation "
                            "as transcribed"),
                 Param("nasty_init", "str", "scratch", choices=("scratch", "normal_teacher"),
                       help="scratch [ref]: a fresh model; normal_teacher: start from a copy of the original"),
                 Param("optimizer", "str", "sgd_momentum", choices=OPTIMIZERS, help="momentum 0.9 [ref]"),
                 Param("lr", "float", 0.1, min=0.0, help="learning rate [ref 0.1]"),
                 Param("weight_decay", "float", 5e-4, min=0.0, help="[ref 5e-4]"),
                 Param("batch_size", "int", 128, min=2, help="[ref 128]; the last short batch is dropped"),
                 Param("epochs", "int", 160, min=1, help="[ref CIFAR-10: 160; CIFAR-100: 200]"),
                 Param("milestones", "list", [80, 120],
                       help="0-based epochs at whose start the lr is multiplied by gamma [ref CIFAR-10: 80, 120; "
                            "CIFAR-100: 60, 120, 160]"),
                 Param("gamma", "float", 0.1, min=0.0, help="lr factor at each milestone [ref CIFAR-10: 0.1; "
                                                            "CIFAR-100: 0.2]"),
                 Param("max_skipped", "float", 0.01, min=0.0, max=1.0,
                       help="fail as diverged when more than this fraction of the steps had a non-finite loss"),
             ])
