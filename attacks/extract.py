"""Model extraction (docs/extraction.md): steal a copy of a victim that answers only through its API.

The attacker queries the victim (an Oracle, never the weights) on its own unlabelled images — the adversary
half of the restricted data, labels ignored — and trains a fresh model of the scenario's architecture on the
answers. What it learns from depends on the scenario's `api`: soft cross-entropy to probabilities,
cross-entropy to top-1 labels, MSE or KL to logits, and for an encoder's `representation` one of the §7.2
losses on the copy's own representation (its `feature_path` output). A list of `queries` budgets expands to
one cell per budget, so a ladder of budgets is a grid.

Classifier copies are recorded like any attacked model (restricted and original test measures against
epochs; the last point also against queries). Encoder copies are scored by a linear probe (§7.4): the copy
frozen, a fresh linear layer trained on the adversary's labels, tested on the restricted test set.
torch is imported inside functions so listing plugins stays light.
"""

from __future__ import annotations

from harness import Measure, Param, hookimpl
from harness.names import OPTIMIZERS
from harness.registry import ORIGINAL

LOGIT_LOSSES = ("mse", "kl")
REPRESENTATION_LOSSES = ("mse", "infonce", "softnn", "wasserstein")
SOFTNN_TEMPERATURE = 100.0  # [ref]
WASSERSTEIN_EPSILON = 1e-14  # [ref]
QUERY_CHUNK = 256  # images per oracle call (every image counts; the chunk only bounds memory)


# -- losses: f = the copy's outputs (with grad), v = the victim's answers (constants) ----------------------

def mse_loss(f, v):
    """Mean over elements of (f − v)²."""
    return (f - v).pow(2).mean()


def soft_cross_entropy(logits, probabilities):
    """Cross-entropy to the victim's probabilities: −Σ_j v_j log softmax(f)_j, batch mean (Knockoff-style)."""
    import torch.nn.functional as F

    return -(probabilities * F.log_softmax(logits, dim=1)).sum(dim=1).mean()


def label_cross_entropy(logits, labels):
    """Cross-entropy to the victim's top-1 answers."""
    import torch.nn.functional as F

    return F.cross_entropy(logits, labels)


def logit_kl(logits, victim_logits):
    """KL(softmax(v) ‖ softmax(f)), summed over classes, batch mean."""
    import torch.nn.functional as F

    return F.kl_div(F.log_softmax(logits, dim=1), F.log_softmax(victim_logits, dim=1), log_target=True,
                    reduction="batchmean")


def softnn_loss(f, v, temperature: float = SOFTNN_TEMPERATURE):
    """Soft nearest-neighbour loss: each pair (f_i, v_i) is a class; squared distances in float64.

    L = −mean_i log(Σ_{j ∈ pos(i)} e^{−d_ij/τ} / Σ_{j ≠ i} e^{−d_ij/τ}).
    """
    import torch

    rows = torch.cat([f, v]).double()
    n = len(f)
    distances = torch.cdist(rows, rows).pow(2)
    scores = -distances / temperature
    self_pairs = torch.eye(2 * n, dtype=torch.bool, device=f.device)
    classes = torch.arange(2 * n, device=f.device) % n
    positive = (classes[:, None] == classes[None, :]) & ~self_pairs
    log_positive = torch.logsumexp(scores.masked_fill(~positive, float("-inf")), dim=1)
    log_all = torch.logsumexp(scores.masked_fill(self_pairs, float("-inf")), dim=1)
    return -(log_positive - log_all).mean().to(f.dtype)


def wasserstein_loss(f, v, epsilon: float = WASSERSTEIN_EPSILON):
    """W1 between the vectors read as distributions over coordinates: Σ_d |CDF_f(d) − CDF_v(d)|, batch mean.

    Each vector is divided by its sum (+ε), which makes sense only for non-negative (post-ReLU) outputs.
    """
    if (v < 0).any() or (f < 0).any():
        raise ValueError("representation_loss 'wasserstein' needs non-negative (post-ReLU) representations; "
                         "these have negative values: use mse, infonce or softnn")
    f = f / (f.sum(dim=1, keepdim=True) + epsilon)
    v = v / (v.sum(dim=1, keepdim=True) + epsilon)
    return (f.cumsum(dim=1) - v.cumsum(dim=1)).abs().sum(dim=1).mean()


def representation_loss(name: str):
    """The §7.2 stealing loss `name` (InfoNCE is shared with SimCLR pretraining: harness.engine.contrastive)."""
    if name == "infonce":
        from harness.engine.contrastive import infonce_loss

        return infonce_loss
    return {"mse": mse_loss, "softnn": softnn_loss, "wasserstein": wasserstein_loss}[name]


def classifier_loss(api: str, logit_loss: str):
    """The loss a copy of a classifier trains with, given what the API answers."""
    if api == "probabilities":
        return soft_cross_entropy
    if api == "label":
        return label_cross_entropy
    return mse_loss if logit_loss == "mse" else logit_kl


def objective_for(api: str, params: dict):
    """objective(model, x, answers) -> loss for train_epochs (answers ride in the split's `y`)."""
    if api == "representation":
        from harness.engine.contrastive import representation

        loss = representation_loss(params["representation_loss"])
        return lambda model, x, v: loss(representation(model, x), v)
    loss = classifier_loss(api, params["logit_loss"])
    return lambda model, x, v: loss(model(x).float(), v)


# -- querying --------------------------------------------------------------------------------------------

def query(oracle, images):
    """The oracle's answers for `images`, asked in chunks; every image counts once against the budget."""
    import torch

    return torch.cat([oracle(images[start:start + QUERY_CHUNK]) for start in range(0, len(images), QUERY_CHUNK)])


def query_images(ctx, oracle, epochs: int, requery: bool):
    """The attacker's distinct query images: as many as the budget buys (one answer each, or one per epoch when
    re-querying), at most the adversary's whole set, drawn at random from it."""
    import torch

    data = ctx.restricted_train
    per_image = max(1, epochs) if requery else 1
    count = min(len(data), oracle.remaining // per_image)
    if count < 1:
        raise ValueError(f"a budget of {oracle.budget} queries buys no image at {per_image} answers per image")
    chosen = torch.randperm(len(data), generator=ctx.generator("extract/queries"))[:count]
    return data.x[chosen.to(data.x.device)]


# -- the linear probe (§7.4) -----------------------------------------------------------------------------

def probe_accuracy(ctx, encoder) -> float:
    """Freeze `encoder`, train a fresh (zero-initialised) linear layer on its representations of the adversary's
    labelled data, and return its accuracy on the restricted test set."""
    import torch

    from harness.engine.contrastive import representation
    from harness.engine.data import Split
    from harness.engine.train import cross_entropy_objective, evaluate, evaluating, make_optimizer, train_epochs

    p = ctx.params
    with torch.no_grad(), evaluating(encoder):
        train = Split(representation(encoder, ctx.restricted_train.x), ctx.restricted_train.y)
        test = Split(representation(encoder, ctx.restricted_test.x), ctx.restricted_test.y)
    linear = torch.nn.Linear(train.x.shape[1], ctx.num_classes, device=train.x.device)
    torch.nn.init.zeros_(linear.weight)
    torch.nn.init.zeros_(linear.bias)
    optimizer = make_optimizer("adam", linear.parameters(), p["probe_lr"], p["probe_weight_decay"])
    train_epochs(linear, train, optimizer, objective=cross_entropy_objective, epochs=p["probe_epochs"],
                 batch_size=p["probe_batch_size"], generator=ctx.generator("extract/probe"), drop_last=False)
    return evaluate(linear, test)[0]


def score_victim(ctx, victim, *, api: str) -> dict[str, float]:
    """The victim's own restricted score, by the protocol that scores its copies (the runner calls this with the
    weights before the attack gets its oracle, and records it as `restricted/victim_<measure>`)."""
    if api == "representation":
        return {"probe_accuracy": probe_accuracy(ctx, victim)}
    return {ctx.task.score.name: ctx.score(victim, ctx.restricted_test)}


# -- the attack ------------------------------------------------------------------------------------------

def record_copy(ctx, copy, api: str, *, epoch: int, queries: int | None = None, original: bool = False) -> None:
    """A classifier copy: the task's measures; an encoder copy: its probe accuracy (restricted test)."""
    if api != "representation":
        ctx.record(copy, on="restricted", epoch=epoch, queries=queries)
        if original:
            ctx.record(copy, on="original", epoch=epoch)
        return
    accuracy = probe_accuracy(ctx, copy)
    ctx.recorder.point(epoch, "epoch", "restricted/probe_accuracy", accuracy)
    if queries is not None:
        ctx.recorder.point(queries, "queries", "restricted/probe_accuracy", accuracy)


def steal(ctx, oracle):
    """Query the victim within the budget, train a fresh copy on the answers, record it, return it."""
    from harness.engine import seeding
    from harness.engine.data import Split
    from harness.engine.train import make_optimizer, train_epochs

    p, api = ctx.params, oracle.api
    if api == "representation" and ctx.restricted_train.y is None:
        raise ValueError("the linear probe that scores a stolen encoder needs the adversary's labels")
    images = query_images(ctx, oracle, p["epochs"], p["requery"])
    seeding.seed_everything(seeding.derive_seed(ctx.seed, "extract/copy"))
    copy = ctx.build_model()
    optimizer = make_optimizer(p["optimizer"], copy.parameters(), p["lr"], p["weight_decay"])
    objective = objective_for(api, p)
    batches = ctx.generator("extract/batches")
    notes = ctx.recorder.notes
    notes.update(distinct_images=len(images), answers_per_image=p["epochs"] if p["requery"] else 1)
    if api != "representation":
        record_copy(ctx, copy, api, epoch=0)
    answers = None
    steps = 0
    for epoch in range(1, p["epochs"] + 1):
        if answers is None or p["requery"]:
            answers = query(oracle, images)
        steps = train_epochs(copy, Split(images, answers), optimizer, objective=objective, epochs=1,
                             batch_size=p["batch_size"], generator=batches, precision=ctx.precision,
                             drop_last=False, start_step=steps)
        if epoch < p["epochs"] and api != "representation":
            record_copy(ctx, copy, api, epoch=epoch)
    notes.update(queries=oracle.used, steps=steps)
    record_copy(ctx, copy, api, epoch=p["epochs"], queries=oracle.used, original=True)
    return copy


QUERY_LADDER = (1000, 5000, 9000, 20000, 50000)  # §7.4; 9000 is the reference's budget
SUITE_LOSSES = ("mse", "infonce", "softnn")

PROBE_ACCURACY = Measure("probe_accuracy", higher_is_better=True, display="percent",
                         description="accuracy of a linear probe on the frozen model's representation (§7.4)")
VICTIM_MEASURES = [Measure("victim_accuracy", higher_is_better=True, display="percent",
                           description="the victim's own test accuracy (what its copies are compared with)"),
                   Measure("victim_probe_accuracy", higher_is_better=True, display="percent",
                           description="the victim encoder's own linear-probe accuracy, same probe as its copies'")]


@hookimpl
def register_attacks(register):
    register("extract", factory="attacks.extract:steal", version="1", access="black-box", starts=[ORIGINAL],
             measures=[PROBE_ACCURACY, *VICTIM_MEASURES], score_victim="attacks.extract:score_victim",
             tasks=["classification"],
             tiny_params={"queries": 60, "epochs": 2, "probe_epochs": 2},
             description="Steal a copy through the victim's API with the adversary's unlabelled images, at a "
                         "query budget (a list of budgets is a ladder)",
             params=[
                 Param("queries", "int", 1000, min=1, help="query budget: every image answered counts once"),
                 Param("requery", "bool", False,
                       help="ask for fresh answers every epoch (averages output noise; each image then costs "
                            "`epochs` queries) instead of keeping the first answers"),
                 Param("epochs", "int", 10, min=1, help="passes over the answered images"),
                 Param("batch_size", "int", 64, min=1, help="training batch [ref 64]"),
                 Param("optimizer", "str", "adam", choices=OPTIMIZERS, help="copy's optimizer"),
                 Param("lr", "float", 1e-3, min=0.0, help="copy's learning rate"),
                 Param("weight_decay", "float", None, nullable=True, min=0.0,
                       help="null = the optimizer's default"),
                 Param("logit_loss", "str", "mse", choices=LOGIT_LOSSES,
                       help="api logits: MSE between logits, or KL from the victim's softmax"),
                 Param("representation_loss", "str", "mse", choices=REPRESENTATION_LOSSES,
                       help="api representation: the §7.2 stealing loss"),
                 Param("probe_epochs", "int", 20, min=1, help="linear-probe epochs (encoder copies)"),
                 Param("probe_lr", "float", 1e-3, min=0.0, help="linear-probe Adam learning rate"),
                 Param("probe_weight_decay", "float", 8e-4, min=0.0, help="linear-probe weight decay [ref]"),
                 Param("probe_batch_size", "int", 256, min=1, help="linear-probe batch [ref]"),
             ])


@hookimpl
def register_suites(register):
    register("extract", version="1",
             description="Encoder stealing with the MSE, InfoNCE and SoftNN losses at the §7.4 query budgets "
                         "(for scenarios whose api is representation)",
             entries=[{"label": loss, "plugin": "extract",
                       "params": {"representation_loss": loss, "queries": list(QUERY_LADDER)}}
                      for loss in SUITE_LOSSES])
