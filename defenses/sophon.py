"""SOPHON (docs/algorithms.md §2): make a released model hard to fine-tune on one domain; ICE and KLU for classifiers.

Each outer iteration alternates fine-tuning suppression (FTS: simulate an attacker fine-tuning θ on the
defender half of the restricted data, then move θ so that the simulated result does badly) with normal
training reinforcement (NTR: the task's training objective on the original domain). The simulation is
first-order MAML, accumulated one query graph at a time. `SophonLoop` is that alternation for every task
family; `Sophon` adds what the classification variants have on top (simulated environments, head
re-initialisation, BatchNorm handling, an accuracy guard that rolls a bad iteration back, probes).
The generation variants (defenses/sophon_generation.py) reuse the loop and the meta-gradient.

Whether the defender sees half or all of the restricted training set is the scenario's `restricted_split`
(the runner hands this plugin only R_def). torch is imported inside functions so listing plugins stays light.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from types import SimpleNamespace

from harness import Measure, Param, hookimpl
from harness.registry import ConfigError, PluginSpec

INNER_OPTIMIZERS = ("sgd", "momentum", "adam")
HEAD_MODES = ("initFC", "direct")
TRAINED_LAYERS = ("all", "head")  # what a simulated attacker fine-tunes: every layer [ref], or the head alone
VAL_FRACTION = 0.1  # the probe's held-out share of R_def (docs/algorithms.md §1.2)
PROBE_WEIGHT_DECAY = 1e-4


# -- query losses (§2.1): minimised by FTS, each bounded so the suppression converges ----------------

def ice_negated_logits(logits, labels):
    """ICE as the reference codes it: CE on (1 − z) = −log softmax(−z)_y; the true class becomes least likely."""
    import torch.nn.functional as F

    return F.cross_entropy(1 - logits, labels)


def ice_log_one_minus_p(logits, labels):
    """ICE as the paper writes it, −log(1 − p_y), computed stably as logsumexp(z) − logsumexp_{j≠y}(z)."""
    import torch

    true_class = torch.nn.functional.one_hot(labels, logits.shape[1]).bool()
    others = logits.masked_fill(true_class, float("-inf"))
    return (torch.logsumexp(logits, dim=1) - torch.logsumexp(others, dim=1)).mean()


def kl_from_uniform(logits, labels=None):
    """KLU: mean over the batch of KL(u ‖ p) with u = 1/C, via log_softmax (no NaN when p underflows)."""
    import torch.nn.functional as F

    return -math.log(logits.shape[1]) - F.log_softmax(logits, dim=1).mean()


ICE_VARIANTS = {"negated-logits": ice_negated_logits, "log-one-minus-p": ice_log_one_minus_p}


# -- simulated environments (§2.4) ------------------------------------------------------------------------

@dataclass(frozen=True)
class Environment:
    """One simulated attacker: inner optimizer and lr, batch size, number of steps, head mode, weight γ, and
    which layers it fine-tunes (`all` [ref], or `head`: a linear-probe attacker on frozen features)."""

    optimizer: str
    lr: float
    batch_size: int
    steps: int
    head_mode: str
    weight: float
    trains: str = "all"


ENVIRONMENT_FIELDS = (Param("optimizer", "str", "", choices=INNER_OPTIMIZERS), Param("lr", "float", 0.0, min=0.0),
                      Param("batch_size", "int", 0, min=12, max=1_000_000), Param("steps", "int", 0, min=1, max=100_000),
                      Param("head_mode", "str", "", choices=HEAD_MODES), Param("weight", "float", 0.0, min=0.0),
                      Param("trains", "str", "all", choices=TRAINED_LAYERS))


def environment_fields(params: dict) -> tuple[Param, ...]:
    """The schema of one `environments` entry; omitted keys fall back to the defense's scalar parameters."""
    defaults = {"optimizer": "sgd", "lr": params["inner_lr"], "batch_size": params["batch_size"],
                "steps": params["adaptation_steps"], "weight": 1.0, "trains": "all",
                "head_mode": "initFC" if params["fts_head_reinit"] else "direct"}
    return tuple(dataclasses.replace(field, default=defaults[field.name]) for field in ENVIRONMENT_FIELDS)


def parse_environments(params: dict) -> list[Environment]:
    """`environments` (a list of dicts, or None for the reference's single environment) as checked objects."""
    entries = params["environments"] or [{}]
    schema = PluginSpec(kind="defense", name="environment", description="one simulated attacker",
                        params=environment_fields(params))
    environments = []
    for i, entry in enumerate(entries):
        where = f"params.environments[{i}]"
        if not isinstance(entry, dict):
            raise ConfigError(f"expected a mapping, got {type(entry).__name__}", where=where)
        environment = Environment(**schema.resolve(entry, where))
        if environment.weight <= 0:
            raise ConfigError("weight must be positive", where=f"{where}.weight")
        environments.append(environment)
    return environments


def step_weights(steps: int, reduce: str, rule: str) -> list[float]:
    """w_k per inner step: `uniform` counts every step, `last:<m>` only the last m; mean divides by the count."""
    if rule == "uniform":
        counted = steps
    else:
        kind, _, count = rule.partition(":")
        if kind != "last" or not count.isdigit() or int(count) < 1:
            raise ConfigError(f"expected 'uniform' or 'last:<m>' with m ≥ 1, got {rule!r}",
                              where="params.step_weights")
        counted = min(int(count), steps)
    weight = 1.0 / counted if reduce == "mean" else 1.0
    return [0.0] * (steps - counted) + [weight] * counted


def support_size(batch: int) -> int:
    """The reference's support set: ⌊0.9·B/10⌋·10 images (130 of 150); the rest is the query set."""
    return int(batch * 0.9 / 10) * 10


def restricted_batches(data, stream, steps: int, generator):
    """Exactly `steps` (support x, y, query x, y) tuples from a cycling batch stream, split at random."""
    import torch

    for _ in range(steps):
        index = next(stream).to(data.y.device)
        order = torch.randperm(len(index), generator=generator).to(data.y.device)
        cut = support_size(len(index))
        if cut < 1 or cut >= len(index):
            raise ConfigError(f"a batch of {len(index)} leaves no support or no query set; use at least 12 images")
        support, query = index[order[:cut]], index[order[cut:]]
        yield data.x[support], data.y[support], data.x[query], data.y[query]


# -- the FTS meta-gradient (§2.3) ----------------------------------------------------------------------

@dataclass
class MetaGradient:
    grads: dict  # parameter name -> tensor shaped like θ
    query_loss: float
    query_accuracy: float | None  # None when the simulation counts no hits (denoisers)


def correct_predictions(logits, labels) -> int:
    """How many query images a classifier gets right (the logged query accuracy)."""
    return (logits.argmax(dim=1) == labels).sum().item()


def inner_optimizer(name: str, tensors: list, lr: float):
    """The simulated attacker's optimizer over the fast weights (its state lives and dies with one FTS)."""
    import torch

    if name == "adam":
        return torch.optim.Adam(tensors, lr=lr)
    return torch.optim.SGD(tensors, lr=lr, momentum=0.9 if name == "momentum" else 0.0)


def reinit_fast_head(model, fast: dict, generator) -> None:
    """Xavier-uniform weight and zero bias on the fast copy of the head (the initFC attacker)."""
    from harness.engine.models import xavier_reinit_

    prefix = model.head_path
    xavier_reinit_(SimpleNamespace(weight=fast[f"{prefix}.weight"], bias=fast.get(f"{prefix}.bias")), generator)


def fts_meta_gradient(model, batches, environment: Environment, query_loss, weights: list[float], *,
                      head_generator=None, autocast=None, inner_loss=None,
                      hits=correct_predictions) -> MetaGradient:
    """G = Σ_k w_k ∇ℓ_k(φ_k) by first-order MAML, keeping one graph alive at a time.

    `batches` yield (support input, support target, query input, query target); an input is a tensor or a
    tuple of the model's positional arguments (a denoiser's (x_t, t)). The simulated attacker minimises
    `inner_loss(output, target)` (default cross-entropy), FTS minimises `query_loss(output, target)`, and
    `hits(output, target)` counts correct query predictions for the log (None: no accuracy).
    φ are detached leaves updated in place by the inner optimizer; the model's own parameters and BN
    buffers are never touched (BN statistics go to a private copy). Because the inner gradients are
    constants, ∂φ_k/∂θ = I and the sum equals the reference's single backward through all query graphs.
    The head gradient is taken at the re-initialised head and passed through to the real head.
    """
    import contextlib

    import torch
    import torch.nn.functional as F
    from torch.func import functional_call

    inner_loss = inner_loss or F.cross_entropy
    fast = {name: p.detach().clone().requires_grad_(True) for name, p in model.named_parameters()}
    buffers = {name: b.detach().clone() for name, b in model.named_buffers()}
    if environment.head_mode == "initFC":
        reinit_fast_head(model, fast, head_generator)
    tensors = list(fast.values())
    head = f"{model.head_path}." if environment.trains == "head" else ""
    trained = [t for name, t in fast.items() if name.startswith(head)]  # the inner steps move only these
    optimizer = inner_optimizer(environment.optimizer, trained, environment.lr)
    total = [torch.zeros_like(t) for t in tensors]
    loss_sum, correct, seen = 0.0, 0, 0

    def forward(inputs):
        with autocast() if autocast else contextlib.nullcontext():
            args = inputs if isinstance(inputs, tuple) else (inputs,)
            return functional_call(model, (fast, buffers), args).float()

    for weight, (support_x, support_y, query_x, query_y) in zip(weights, batches):
        inner_grads = torch.autograd.grad(inner_loss(forward(support_x), support_y), trained)
        for tensor, grad in zip(trained, inner_grads):
            tensor.grad = grad
        optimizer.step()
        if weight == 0.0:
            continue
        output = forward(query_x)
        loss = query_loss(output, query_y)
        for acc, grad in zip(total, torch.autograd.grad(weight * loss, tensors)):
            acc.add_(grad)
        loss_sum += loss.item()
        if hits is not None:
            correct += hits(output, query_y)
        seen += len(query_y)
    counted = sum(1 for w in weights if w)
    accuracy = correct / max(1, seen) if hits is not None else None
    return MetaGradient(dict(zip(fast, total)), loss_sum / max(1, counted), accuracy)


# -- the outer loop (§2.2) -------------------------------------------------------------------------------

def outer_optimizers(model, params: dict):
    """((FTS optimizer, gradient scale), (NTR optimizer, gradient scale)).

    `two_adam` [ref]: two Adams on the same θ with their own moments, lr α·lr0 and β·lr0.
    `weighted_single`: one Adam at lr0 stepping α·G and β·∇CE (not equivalent: shared moments).
    """
    import torch

    parameters, lr0 = list(model.parameters()), params["lr0"]
    if params["outer_optim"] == "two_adam":
        return ((torch.optim.Adam(parameters, lr=params["alpha"] * lr0), 1.0),
                (torch.optim.Adam(parameters, lr=params["beta"] * lr0), 1.0))
    shared = torch.optim.Adam(parameters, lr=lr0)
    return (shared, params["alpha"]), (shared, params["beta"])


class SophonLoop(ABC):
    """The FTS/NTR alternation every SOPHON family shares; subclasses supply what differs.

    A subclass provides `outer_optimizers()` -> ((FTS optimizer, gradient scale), (NTR optimizer, scale)),
    `meta_gradient()` -> {parameter name: G}, and may react to a non-finite NTR loss or to each NTR step.
    `grad_leak` reproduces a reference bug of the generation code: the clipped meta-gradient is not cleared
    before the next NTR step, so that step also pushes it through the NTR optimizer.
    """

    grad_leak = False

    def __init__(self, ctx, model, original):
        from harness.engine.data import cycling_batches

        self.ctx, self.model, self.params = ctx, model, ctx.params
        (self.fts_optimizer, self.fts_scale), (self.ntr_optimizer, self.ntr_scale) = self.outer_optimizers()
        self.restricted, self.original = ctx.restricted_train, original
        self.ntr_objective = ctx.objective("ntr/objective")
        self.ntr_stream = cycling_batches(len(original), self.params["ntr_batch_size"], ctx.generator("ntr/batches"),
                                          drop_last=False)
        self.fts_streams = {}
        self.last_fts = None

    @abstractmethod
    def outer_optimizers(self):
        """((FTS optimizer, gradient scale), (NTR optimizer, gradient scale)) over the model's parameters."""

    @abstractmethod
    def meta_gradient(self) -> dict:
        """{parameter name: G} for one FTS step, before clipping."""

    def fts_stream(self, batch_size: int):
        from harness.engine.data import cycling_batches

        if batch_size not in self.fts_streams:
            self.fts_streams[batch_size] = cycling_batches(len(self.restricted), batch_size,
                                                           self.ctx.generator(f"fts/batches/{batch_size}"),
                                                           drop_last=True)
        return self.fts_streams[batch_size]

    def suppress(self) -> None:
        """One FTS step: meta-gradient, clip to `meta_grad_clip`, FTS optimizer step."""
        import torch

        from harness.engine.train import Diverged

        grads = self.meta_gradient()
        self.fts_optimizer.zero_grad(set_to_none=True)
        for name, parameter in self.model.named_parameters():
            parameter.grad = grads[name]
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.params["meta_grad_clip"])
        if not torch.isfinite(norm):
            raise Diverged(f"non-finite FTS meta-gradient (norm {norm.item()})")
        self.step(self.fts_optimizer, self.fts_scale, clear=not self.grad_leak)

    def reinforce(self) -> None:
        """One NTR step: the task's objective on an original-domain batch, in train mode (BN stats update here)."""
        import torch

        x, y = self.original.batch(next(self.ntr_stream).to(self.original.x.device))
        if not self.grad_leak:
            self.ntr_optimizer.zero_grad(set_to_none=True)
        with self.ctx.autocast():
            loss = self.ntr_objective(self.model, x, y)
        if not torch.isfinite(loss):
            self.ntr_optimizer.zero_grad(set_to_none=True)
            self.non_finite_reinforcement(loss)
            return
        loss.backward()
        self.step(self.ntr_optimizer, self.ntr_scale)

    def non_finite_reinforcement(self, loss) -> None:
        from harness.engine.train import Diverged

        raise Diverged(f"non-finite NTR loss {loss.item()}")

    def step(self, optimizer, scale: float, *, clear: bool = True) -> None:
        if scale != 1.0:
            for parameter in self.model.parameters():
                parameter.grad.mul_(scale)
        optimizer.step()
        if clear:
            optimizer.zero_grad(set_to_none=True)

    def after_reinforcement(self, i: int, k: int) -> None:
        """Called after the k-th NTR step of iteration i."""

    def iterate(self, i: int) -> None:
        """ml_loop FTS steps, then nl_loop NTR steps."""
        p = self.params
        for _ in range(p["ml_loop"]):
            self.suppress()
        for k in range(1, p["nl_loop"] + 1):
            self.reinforce()
            self.after_reinforcement(i, k)


class Sophon(SophonLoop):
    """Classification SOPHON for one defense cell: environments, head re-init, BN snapshots, guard and probes."""

    def __init__(self, ctx, model, query_loss):
        from harness.engine.models import head_parameter_names

        p, self.query_loss = ctx.params, query_loss
        self.environments = parse_environments(p)
        self.weights = {env: step_weights(env.steps, p["meta_grad_reduce"], p["step_weights"])
                        for env in self.environments}
        original, self.guard_split = ctx.original_train, ctx.original_val  # the guard never reads a test set
        super().__init__(ctx, model, original)
        self.optimizers = list({id(o): o for o in (self.fts_optimizer, self.ntr_optimizer)}.values())
        self.split_generator = ctx.generator("fts/support-query")
        self.head_generator = ctx.generator("fts/head-init")
        self.environment_generator = ctx.generator("fts/environment")
        self.head_names = head_parameter_names(model)

    def outer_optimizers(self):
        return outer_optimizers(self.model, self.params)

    def chosen_environments(self) -> list[Environment]:
        import torch

        if self.params["environment_sampling"] == "all":
            return self.environments
        pick = torch.randint(len(self.environments), (1,), generator=self.environment_generator).item()
        return [self.environments[pick]]

    def meta_gradient(self) -> dict:
        """G for this FTS call: one environment's, or the γ-weighted mean over all of them (head zeroed by `drop`)."""
        chosen = self.chosen_environments()
        total_weight = sum(env.weight for env in chosen)
        combined = None
        for env in chosen:
            batches = restricted_batches(self.restricted, self.fts_stream(env.batch_size), env.steps,
                                         self.split_generator)
            result = fts_meta_gradient(self.model, batches, env, self.query_loss, self.weights[env],
                                       head_generator=self.head_generator, autocast=self.ctx.autocast)
            self.last_fts = result
            scaled = {name: g.mul_(env.weight / total_weight) for name, g in result.grads.items()}
            combined = scaled if combined is None else {n: combined[n].add_(scaled[n]) for n in combined}
        if self.params["fts_head_grad"] == "drop":
            for name in self.head_names:
                combined[name].zero_()
        return combined

    def guard_accuracy(self) -> float:
        return self.ctx.evaluate(self.model, self.guard_split)[0]

    def snapshot(self) -> dict:
        """θ and the BN buffers (and, for `skip`, both optimizer states) to roll a guard window back to."""
        state = {"model": {k: v.detach().clone() for k, v in self.model.state_dict().items()}}
        if self.params["guard_action"] == "skip":
            state["optimizers"] = [copy.deepcopy(o.state_dict()) for o in self.optimizers]
        return state

    def restore(self, snapshot: dict) -> None:
        self.model.load_state_dict(snapshot["model"])
        for optimizer, state in zip(self.optimizers, snapshot.get("optimizers", ())):
            optimizer.load_state_dict(state)

    def buffers(self) -> dict:
        return {name: b.detach().clone() for name, b in self.model.named_buffers()}

    def load_buffers(self, buffers: dict) -> None:
        import torch

        with torch.no_grad():
            for name, buffer in self.model.named_buffers():
                buffer.copy_(buffers[name])

    def probe(self, step: int) -> float:
        """A short fine-tune of a copy on R_def (§2.6); RNG state is forked so the defense is unaffected."""
        import torch

        from harness.engine.train import Diverged, make_optimizer, train_epochs

        p, ctx = self.params, self.ctx
        train, held_out = self.probe_data()
        devices = [ctx.device] if ctx.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            trial = copy.deepcopy(self.model)
            optimizer = make_optimizer("sgd_momentum", trial.parameters(), p["probe_lr"], PROBE_WEIGHT_DECAY)
            try:
                train_epochs(trial, train, optimizer, objective=ctx.objective(f"probe/{step}/loss"),
                             epochs=p["probe_epochs"], batch_size=p["probe_batch_size"],
                             generator=ctx.generator(f"probe/{step}"), precision=ctx.precision)
            except Diverged:
                pass  # a diverging probe is a (very low) probe accuracy, not a failed defense
            accuracy = ctx.evaluate(trial, held_out)[0]
        ctx.recorder.point(step, "step", "restricted/probe_accuracy", accuracy)
        return accuracy

    def probe_data(self):
        """(probe training data, probe evaluation data): 90/10 of R_def, or all of R_def and R_test [ref]."""
        from harness.engine.data import stratified_split

        if self.params["probe_eval"] == "restricted_test":
            return self.restricted, self.ctx.restricted_test
        held_out, rest = stratified_split(self.restricted.y, VAL_FRACTION, seed=0)
        return self.restricted.subset(rest), self.restricted.subset(held_out)

    def record_guard(self, x: float, accuracy: float) -> None:
        """The guard's curve: accuracy on the held-out slice of O_train (the runner's `original_val`)."""
        self.ctx.recorder.point(x, "step", "original_val/accuracy", accuracy)

    def after_reinforcement(self, i: int, k: int) -> None:
        """With `ntr_eval_every_step`, evaluate the guard split after every NTR step but the last (as the reference)."""
        p = self.params
        if p["ntr_eval_every_step"] and k < p["nl_loop"]:
            self.record_guard(i - 1 + k / p["nl_loop"], self.guard_accuracy())

    def run(self):
        """The outer loop with backups, the guard every `guard_every` iterations and probes; returns the release."""
        p, ctx = self.params, self.ctx
        every, total = p["guard_every"], p["total_loop"]
        self.model.train()
        if p["probe_every"]:
            self.probe(0)
        rollbacks, stopped, released_at, backup_at, last_bn = 0, False, 0, 0, None
        for i in range(1, total + 1):
            if (i - 1) % every == 0:
                backup, backup_at = self.snapshot(), i - 1
            last_bn = self.buffers()  # the reference re-applies these at the end (final_bn_restore)
            self.iterate(i)
            released_at = i
            if i % every == 0 or i == total:
                accuracy = self.guard_accuracy()
                failed = accuracy * 100 <= p["guard_threshold"]
                stopped = failed and p["guard_action"] == "stop"
                if i < total and not stopped:  # the last point is the released model's, recorded below
                    self.record_guard(i, accuracy)
                if failed:
                    self.restore(backup)
                    rollbacks, last_bn = rollbacks + 1, None  # the restored state predates any NTR step
                    ctx.log(f"iteration {i}: guard accuracy {accuracy:.3f} ≤ {p['guard_threshold']}%: "
                            f"back to iteration {backup_at}")
                if stopped:
                    released_at = backup_at
                    break
            if p["probe_every"] and i % p["probe_every"] == 0:
                probe = self.probe(i)
                ctx.log(f"iteration {i}: probe {probe:.3f}, query accuracy {self.last_fts.query_accuracy:.3f}, "
                        f"query loss {self.last_fts.query_loss:.3f}")
        if p["final_bn_restore"] and last_bn is not None:
            self.load_buffers(last_bn)
        ctx.recorder.notes["sophon"] = {"iterations": released_at, "guard_rollbacks": rollbacks,
                                        "stopped_by_guard": stopped}
        ctx.record_release(self.model, step=released_at)
        return self.model


def train_ice(ctx, model):
    """SOPHON with the inverse cross-entropy query loss (`ice_variant`)."""
    return Sophon(ctx, model, ICE_VARIANTS[ctx.params["ice_variant"]]).run()


def train_klu(ctx, model):
    """SOPHON with the KL-from-uniform query loss (label-free)."""
    return Sophon(ctx, model, kl_from_uniform).run()


# -- registration ----------------------------------------------------------------------------------------

# What plugin-check runs: two iterations that really train (no guard stop) and probe.
TINY_PARAMS = {"total_loop": 2, "adaptation_steps": 3, "batch_size": 20, "ntr_batch_size": 20, "guard_threshold": 0.0,
               "probe_every": 1, "probe_batch_size": 32}


def loop_params(*, total_loop: int, alpha: float, beta: float, nl_loop: int, ntr_optimizer: str) -> list[Param]:
    """The parameters of the FTS/NTR alternation every SOPHON family shares; the arguments are its per-variant
    defaults and the name of its NTR optimizer."""
    return [
        Param("total_loop", "int", total_loop, min=1, max=1_000_000, help=f"outer iterations [ref {total_loop}]"),
        Param("alpha", "float", alpha, min=0.0, help="FTS Adam lr = alpha * lr0 (a learning-rate multiplier)"),
        Param("beta", "float", beta, min=0.0, help=f"NTR {ntr_optimizer} lr = beta * lr0"),
        Param("lr0", "float", 1e-4, min=0.0, help="base learning rate of both outer optimizers [ref]"),
        Param("ml_loop", "int", 1, min=0, max=10_000, help="FTS steps per outer iteration"),
        Param("nl_loop", "int", nl_loop, min=0, max=10_000, help="NTR steps per outer iteration"),
    ]


PAPER_ENVIRONMENTS = [{"optimizer": "adam", "head_mode": "initFC"}, {"optimizer": "adam", "head_mode": "direct"}]


def sophon_params(*, alpha: float, beta: float, nl_loop: int, head_reinit: bool,
                  environments: list | None = None) -> list[Param]:
    """The classification schema; the four arguments are the README defaults that differ between ICE and KLU (§2.5);
    `environments` is the default simulation (None: the reference code's single plain-SGD attacker)."""
    return [
        *loop_params(total_loop=1000, alpha=alpha, beta=beta, nl_loop=nl_loop, ntr_optimizer="Adam"),
        Param("adaptation_steps", "int", 50, min=1, max=100_000, help="K, inner fine-tuning steps per simulation [ref]"),
        Param("inner_lr", "float", 1e-4, min=0.0, help="inner (simulated attacker) lr [ref]"),
        Param("batch_size", "int", 150, min=12, max=1_000_000,
              help="FTS batch on R_def: support ⌊0.9B/10⌋·10, query the rest [ref]"),
        Param("ntr_batch_size", "int", 150, min=1, max=1_000_000, help="NTR batch on O_train [ref]"),
        Param("meta_grad_clip", "float", 0.5, min=0.0, help="global-norm clip of the FTS meta-gradient [ref]"),
        Param("meta_grad_reduce", "str", "mean", choices=("mean", "sum"), help="mean [ref] or sum of query gradients"),
        Param("step_weights", "str", "uniform", pattern=r"uniform|last:[1-9][0-9]*", help="'uniform' [ref] or 'last:<m>' (only the last m inner steps)"),
        Param("fts_head_reinit", "bool", head_reinit, help="re-initialise the head in each simulation (initFC)"),
        Param("fts_head_grad", "str", "passthrough", choices=("passthrough", "drop"),
              help="passthrough [ref]: the head gradient at the re-initialised head updates the real head"),
        Param("environments", "list", environments, nullable=True,
              item=Param("environment", "dict", None, keys=ENVIRONMENT_FIELDS),
              help="simulated attackers [{optimizer, lr, batch_size, steps, head_mode, weight, trains}]; null = the "
                   "reference's single one from the scalar parameters"),
        Param("environment_sampling", "str", "one_per_fts", choices=("one_per_fts", "all"),
              help="one uniform draw per FTS call, or the weight-averaged meta-gradient over all"),
        Param("outer_optim", "str", "two_adam", choices=("two_adam", "weighted_single"),
              help="two Adam states [ref] or one Adam on alpha*G and beta*grad(CE)"),
        Param("guard_threshold", "float", 80.0, min=0.0, max=100.0,
              help="roll back when the guard accuracy (%) is at or below this [ref 80]"),
        Param("guard_every", "int", 1, min=1, max=1_000_000,
              help="check the guard every this many iterations, rolling back to the window's start [ref 1]"),
        Param("guard_action", "str", "stop", choices=("stop", "skip"),
              help="stop [ref]: restore and end; skip: restore model and optimizer states, continue"),
        Param("ntr_eval_every_step", "bool", False,
              help="also evaluate (and record) the guard split after every NTR step, as the reference logs"),
        Param("final_bn_restore", "bool", True,
              help="release with the BN statistics from before the last iteration's NTR steps [ref]"),
        Param("probe_every", "int", 10, min=0, max=1_000_000, help="probe every this many iterations (0: never) [ref 10]"),
        Param("probe_epochs", "int", 1, min=1, max=10_000, help="epochs of each probe fine-tune [ref 1]"),
        Param("probe_eval", "str", "defender_slice", choices=("defender_slice", "restricted_test"),
              help="probe accuracy on a 10% held-out R_def slice, or on R_test as the reference logs"),
        Param("probe_lr", "float", 1e-4, min=0.0, help="probe SGD lr (momentum 0.9, wd 1e-4) [ref]"),
        Param("probe_batch_size", "int", 256, min=1, max=1_000_000, help="probe batch [ref]"),
    ]


PROBE_MEASURE = Measure("probe_accuracy", higher_is_better=True, display="percent",
                        description="accuracy after a short probe fine-tune of a copy during defense training (§2.6)")


@hookimpl
def register_defenses(register):
    ice_variant = Param("ice_variant", "str", "negated-logits", choices=tuple(ICE_VARIANTS),
                        help="negated-logits [ref code] or log-one-minus-p [paper formula]")
    register("sophon-ice", factory="defenses.sophon:train_ice", version="1", measures=[PROBE_MEASURE],
             description="SOPHON with inverse cross-entropy: simulated fine-tuning suppression + normal training",
             params=[*sophon_params(alpha=3.0, beta=5.0, nl_loop=1, head_reinit=True), ice_variant],
             tiny_params=TINY_PARAMS)
    register("sophon-klu", factory="defenses.sophon:train_klu", version="1", measures=[PROBE_MEASURE],
             description="SOPHON with KL-from-uniform: label-free fine-tuning suppression + normal training",
             params=sophon_params(alpha=1.0, beta=1.0, nl_loop=5, head_reinit=False), tiny_params=TINY_PARAMS)
    # the paper's simulated attacker (§4.1.1): Adam, with the pre-trained head and with a re-initialised one,
    # one of the two drawn per FTS call (same cost per iteration as the code's single plain-SGD attacker)
    register("sophon-ice-paper", factory="defenses.sophon:train_ice", version="1", measures=[PROBE_MEASURE],
             description="SOPHON-ICE simulating the paper's attacker: Adam, both head set-ups",
             params=[*sophon_params(alpha=3.0, beta=5.0, nl_loop=1, head_reinit=True,
                                    environments=PAPER_ENVIRONMENTS), ice_variant],
             tiny_params=TINY_PARAMS)
    register("sophon-klu-paper", factory="defenses.sophon:train_klu", version="1", measures=[PROBE_MEASURE],
             description="SOPHON-KLU simulating the paper's attacker: Adam, both head set-ups",
             params=sophon_params(alpha=1.0, beta=1.0, nl_loop=5, head_reinit=False, environments=PAPER_ENVIRONMENTS),
             tiny_params=TINY_PARAMS)
