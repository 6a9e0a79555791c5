"""Knowledge-distillation attack (docs/distillation.md): train a student on the teacher's answers to the transfer set.

Black-box: KD needs only the teacher's outputs, so the attack is handed an Oracle in the scenario's `api`.
Each transfer image is queried once and its answer reused every epoch (there is no augmentation, so the
teacher's answer would not change): the `queries` budget is the number of transfer images bought; a budget
below the adversary's data draws that many at random (the same images from every start).

Three kinds of start: the released (defended) teacher, the normal teacher (`original`), and `no-teacher` —
a student trained on the same images' labels alone with label smoothing 0.1, CMIM's criterion for calling a
teacher undistillable. The student is any registered architecture (`student`, `student_params`).
torch is imported inside functions so listing plugins stays light.
"""

from __future__ import annotations

from dataclasses import replace

from harness import Param, ReferenceStart, hookimpl
from harness.registry import ORIGINAL

from attacks.finetune import Recipe, training_params

NO_TEACHER = ReferenceStart("no-teacher", "none",
                            "the student trained on the transfer set's labels alone, with label smoothing (CMIM)",
                            ignores=("mode", "alpha", "tau"))  # KD settings: without a teacher there is nothing to distil
MODES = ("soft", "hard")
QUERY_CHUNK = 1000  # images per oracle call; the count is the same however the set is chunked


def tempered_kl(p_logits, q_logits, tau: float):
    """KL(softmax(p/τ) ‖ softmax(q/τ)), summed over classes and averaged over the batch (KLDivLoss batchmean)."""
    import torch.nn.functional as F

    log_p, log_q = F.log_softmax(p_logits / tau, dim=1), F.log_softmax(q_logits / tau, dim=1)
    return F.kl_div(log_q, log_p, log_target=True, reduction="sum") / len(p_logits)


def kd_loss(student_logits, teacher, labels, *, alpha: float, tau: float, mode: str):
    """soft: α·τ²·KL(p^τ(teacher) ‖ p^τ(student)) + (1 − α)·CE(student, y) [ref]; `teacher` is logits.
    hard: α·CE(student, teacher's label) + (1 − α)·CE(student, y); `teacher` is the labels the teacher gave."""
    import torch.nn.functional as F

    if mode == "soft":
        distilled = tau * tau * tempered_kl(teacher, student_logits, tau)
    else:
        distilled = F.cross_entropy(student_logits, teacher)
    if alpha == 1.0:  # α = 1 uses no labels
        return distilled
    return alpha * distilled + (1 - alpha) * F.cross_entropy(student_logits, labels)


def teacher_targets(answers, api: str, mode: str):
    """What the loss distils from the oracle's answers: logits for soft KD, labels for hard KD.

    Probabilities become log-probabilities, which soften exactly as logits do (a constant shift per row);
    an API that answers only labels serves hard KD alone."""
    import torch

    if api == "representation":
        raise ValueError("distill: the scenario's api 'representation' gives no class answers; use logits, "
                         "probabilities or label")
    if api == "label":
        if mode == "soft":
            raise ValueError("distill: soft KD needs logits or probabilities, but the scenario's api is 'label'; "
                             "use mode: hard")
        return answers
    logits = answers if api == "logits" else torch.log(answers.clamp_min(1e-12))
    return logits if mode == "soft" else logits.argmax(dim=1)


def transfer_set(ctx, queries: int):
    """The adversary images the attacker buys answers for: all of them, or a random `queries` of them."""
    import torch

    data = ctx.restricted_train
    if queries >= len(data):
        return data
    return data.subset(torch.randperm(len(data), generator=ctx.generator("transfer"))[:queries])


def ask(oracle, images):
    """Every image's answer, queried once in chunks."""
    import torch

    return torch.cat([oracle(images[i:i + QUERY_CHUNK]) for i in range(0, len(images), QUERY_CHUNK)])


def by_position(loss):
    """A train_epochs objective whose batch `y` is each example's position in the transfer set, so `loss` can
    look up that example's label and teacher answer."""

    def objective(model, x, position):
        return loss(model(x).float(), position)

    return objective


def student_loss(params: dict, labels, answers, api: str | None):
    """loss(student_logits, positions): KD on the teacher's answers, or label-smoothed CE without a teacher."""
    import torch.nn.functional as F

    if answers is None:
        def smoothed(logits, at):
            return F.cross_entropy(logits, labels[at], label_smoothing=params["no_teacher_smoothing"])
        return smoothed
    teacher = teacher_targets(answers, api, params["mode"])

    def distilled(logits, at):
        return kd_loss(logits, teacher[at], labels[at], alpha=params["alpha"], tau=params["tau"], mode=params["mode"])
    return distilled


def build_student(ctx, params: dict):
    """A fresh student drawn from the cell seed alone, so every start trains the same initial student."""
    from harness.engine import seeding

    seeding.seed_everything(seeding.derive_seed(ctx.seed, "student-init"))
    return ctx.build_model(params["student"], params["student_params"])


def run(ctx, oracle):
    """Distil from the oracle's answers (or, from the no-teacher start, learn the labels with smoothing)."""
    from functools import partial

    import torch

    from attacks.finetune import set_train_mode
    from harness.engine.data import Split, epoch_steps
    from harness.engine.train import make_optimizer, make_schedule, train_epochs

    p = ctx.params
    recipe = Recipe.from_params(p)
    data = transfer_set(ctx, p["queries"])
    loss = student_loss(p, data.y, None if oracle is None else ask(oracle, data.x), oracle and oracle.api)
    student = build_student(ctx, p)
    indexed = Split(data.x, torch.arange(len(data), device=data.x.device))
    optimizer = make_optimizer(recipe.optimizer, student.parameters(), recipe.lr, recipe.weight_decay)
    per_epoch = epoch_steps(len(data), recipe.batch_size)
    schedule = make_schedule(optimizer, recipe.schedule, recipe.epochs * per_epoch)
    queried = oracle.used if oracle is not None else None
    ctx.recorder.notes.update(transfer_images=len(data), queries=queried or 0)

    def after_step(step: int) -> None:
        if recipe.eval_every_steps and step % recipe.eval_every_steps == 0 and step % per_epoch:
            ctx.record(student, on="restricted", epoch=None, step=step)

    def after_epoch(epoch: int, step: int) -> None:
        last = epoch == recipe.epochs
        ctx.record(student, on="restricted", epoch=epoch, step=step, queries=queried if last else None)
        ctx.record(student, on="original", epoch=epoch)  # epoch 0's original point is the released teacher's

    ctx.record(student, on="restricted", epoch=0, step=0)
    train_epochs(student, indexed, optimizer, objective=by_position(loss), epochs=recipe.epochs,
                 batch_size=recipe.batch_size, generator=ctx.generator("batches"), schedule=schedule,
                 precision=ctx.precision, after_step=after_step, after_epoch=after_epoch,
                 train_mode=partial(set_train_mode, freeze_bn_stats=recipe.freeze_bn_stats))
    return student


def _kd_training_params() -> list[Param]:
    """The fine-tuning recipe with the plain-CNN student's reference defaults: Adam 1e-3, batch 128, 100 epochs."""
    defaults = {"batch_size": 128, "epochs": 100}
    return [replace(p, default=defaults.get(p.name, p.default)) for p in training_params(optimizer="adam", lr=1e-3)]


@hookimpl
def register_attacks(register):
    register(
        "distill", factory="attacks.distill:run", version="2", access="black-box", starts=[ORIGINAL, NO_TEACHER],
        description="Knowledge distillation: a student (any architecture) learns the teacher's softened logits "
                    "(or its labels) on the adversary data; from the defense, the normal teacher and no teacher",
        params=[
            Param("queries", "int", 50_000, min=1,
                  help="transfer images whose answers the attacker buys, each queried once and reused every epoch; "
                       "fewer than the adversary data = a random subset (the whole CIFAR train set by default)"),
            Param("student", "str", None, nullable=True, help="the student's architecture; null = the scenario's"),
            Param("student_params", "dict", {}, help="the student architecture's parameters (with `student`)"),
            Param("mode", "str", "soft", choices=MODES,
                  help="soft: KL to the teacher's softened outputs [ref]; hard: CE to the teacher's top-1 label"),
            Param("alpha", "float", 0.9, min=0.0, max=1.0,
                  help="weight of the distillation term; 1 uses no labels [ref 0.9]"),
            Param("tau", "float", 4.0, min=0.01,
                  help="KD temperature τ [ref CIFAR-10: 4, CIFAR-100: 20]; a list makes a grid (high τ: HTC)"),
            Param("no_teacher_smoothing", "float", 0.1, min=0.0, max=1.0,
                  help="label smoothing of the no-teacher student (CMIM's comparison: 0.1)"),
            *_kd_training_params(),
        ])


@hookimpl
def register_suites(register):
    register("distill", version="1", description="KD at τ 1, 4 and 20 with α 0.9, and hard-label KD (Nasty Teacher "
                                                  "and the attacks that break it)",
             entries=[{"label": "kd", "plugin": "distill", "params": {"tau": [1.0, 4.0, 20.0]}},
                      {"label": "hard-kd", "plugin": "distill", "params": {"mode": "hard"}}])
