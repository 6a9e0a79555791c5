"""SOPHON for diffusion models, MSE and DoS (docs/algorithms.md §3): a denoiser that will not learn the restricted domain.

The loop and the meta-gradient are classification SOPHON's (defenses/sophon.py, `SophonLoop` and
`fts_meta_gradient`); what differs is the variation: the simulated attacker minimises the denoising MSE,
FTS minimises a query loss on denoiser outputs (DoS: drive ε̂ to 0; MSE: maximise the error), support and
query are the first 90% / last 10% of each batch, there is no head, no BatchNorm handling and no guard, NTR
uses AdamW with weight decay on weight matrices and kernels only, and a non-finite NTR loss skips that
step (counted in the cell's notes) instead of failing the cell. See docs/generation.md.
"""

from __future__ import annotations

from harness import Param, hookimpl

from defenses.sophon import Environment, SophonLoop, fts_meta_gradient, loop_params, step_weights

MSE_CLAMP = 40.0  # `mse_clamp: [-40,0]`: no suppression once the mean query MSE exceeds this
SUPPORT_FRACTION = 0.9


def denial_of_service(predicted, noise=None):
    """DoS query loss: mean ε̂² over the query images; its minimum turns the denoiser into a no-op."""
    return predicted.pow(2).mean()


def negated_mse(predicted, noise):
    """MSE query loss: −mean (ε̂ − ε)², minimised by FTS, so the post-fine-tuning error grows without bound."""
    import torch.nn.functional as F

    return -F.mse_loss(predicted, noise)


QUERY_LOSSES = {"mse": negated_mse, "dos": denial_of_service}


def denoising_batches(task, data, stream, steps: int, generator):
    """Exactly `steps` ((x_t, t), ε, (x_t, t), ε) tuples: the first 90% of each batch is the support set
    [ref], the rest the query set; t and ε come from the task's training timestep policy and `generator`."""
    from harness.registry import ConfigError

    for _ in range(steps):
        x = data.x[next(stream).to(data.x.device)]
        cut = int(SUPPORT_FRACTION * len(x))
        if cut < 1 or cut >= len(x):
            raise ConfigError(f"a batch of {len(x)} leaves no support or no query set; use at least 10 images")
        noisy, t, noise = task.noisy_batch(x, generator, task.training_step)
        yield (noisy[:cut], t[:cut]), noise[:cut], (noisy[cut:], t[cut:]), noise[cut:]


class GenerativeSophon(SophonLoop):
    """One SOPHON-MSE or SOPHON-DoS defense cell on a denoising scenario."""

    def __init__(self, ctx, model, variant: str):
        super().__init__(ctx, model, ctx.original_train)
        p = self.params
        self.variant, self.grad_leak = variant, p["reference_grad_leak"]
        self.environment = Environment("sgd", p["inner_lr"], p["batch_size"], p["fast_batches"], "direct", 1.0)
        self.weights = step_weights(p["fast_batches"], "mean", "uniform")
        self.noise_generator = ctx.generator("fts/noise")
        self.skipped_ntr_steps = self.clamped_fts_steps = 0

    def outer_optimizers(self):
        """FTS: Adam(α·lr0) [ref]; NTR: AdamW(β·lr0) with weight decay on tensors of rank ≥ 2 only [proj]."""
        import torch

        p, parameters = self.params, list(self.model.parameters())
        decayed = [t for t in parameters if t.ndim >= 2]
        plain = [t for t in parameters if t.ndim < 2]
        ntr = torch.optim.AdamW([{"params": decayed, "weight_decay": p["ntr_weight_decay"]},
                                 {"params": plain, "weight_decay": 0.0}], lr=p["beta"] * p["lr0"])
        return (torch.optim.Adam(parameters, lr=p["alpha"] * p["lr0"]), 1.0), (ntr, 1.0)

    def meta_gradient(self) -> dict:
        """G over K = `fast_batches` simulated SGD steps; zero when `mse_clamp` holds and the query MSE exceeds 40."""
        import torch.nn.functional as F

        p = self.params
        batches = denoising_batches(self.ctx.task, self.restricted, self.fts_stream(p["batch_size"]),
                                    p["fast_batches"], self.noise_generator)
        result = fts_meta_gradient(self.model, batches, self.environment, QUERY_LOSSES[self.variant], self.weights,
                                   autocast=self.ctx.autocast, inner_loss=F.mse_loss, hits=None)
        self.last_fts = result
        if p.get("mse_clamp") == "[-40,0]" and result.query_loss < -MSE_CLAMP:
            self.clamped_fts_steps += 1
            for grad in result.grads.values():
                grad.zero_()
        return result.grads

    def non_finite_reinforcement(self, loss) -> None:
        """The reference zeroes the gradients and still steps; here the step is skipped and counted."""
        self.skipped_ntr_steps += 1
        self.ctx.log(f"non-finite NTR loss {loss.item()}: step skipped")

    def run(self):
        """`total_loop` iterations, test-set MSEs every `eval_every` of them; returns the released model."""
        p, ctx = self.params, self.ctx
        self.model.train()
        for i in range(1, p["total_loop"] + 1):
            self.iterate(i)
            if p["eval_every"] and i % p["eval_every"] == 0 and i < p["total_loop"]:
                restricted = ctx.record(self.model, on="restricted", epoch=None, step=i)
                ctx.record(self.model, on="original", epoch=None, step=i)
                query = f"query loss {self.last_fts.query_loss:.4f}, " if self.last_fts else ""
                ctx.log(f"iteration {i}: {query}restricted test MSE {restricted['mse']:.4f}")
        ctx.recorder.notes["sophon"] = {"iterations": p["total_loop"], "skipped_ntr_steps": self.skipped_ntr_steps,
                                        "clamped_fts_steps": self.clamped_fts_steps}
        ctx.record_release(self.model, step=p["total_loop"])
        return self.model


def train_mse(ctx, model):
    """SOPHON-MSE: FTS maximises the simulated attacker's denoising error on the restricted domain."""
    return GenerativeSophon(ctx, model, "mse").run()


def train_dos(ctx, model):
    """SOPHON-DoS: FTS drives the simulated attacker's predicted noise to zero on the restricted domain."""
    return GenerativeSophon(ctx, model, "dos").run()


# -- registration ----------------------------------------------------------------------------------------

# What plugin-check runs: two short iterations on its tiny data.
TINY_PARAMS = {"total_loop": 2, "fast_batches": 2, "batch_size": 20, "ntr_batch_size": 20, "nl_loop": 1, "eval_every": 1}


def generation_params(*, alpha: float, beta: float, batch_size: int, nl_loop: int, total_loop: int) -> list[Param]:
    """The shared schema; the arguments are the README defaults that differ between MSE and DoS (§3.2)."""
    return [
        *loop_params(total_loop=total_loop, alpha=alpha, beta=beta, nl_loop=nl_loop, ntr_optimizer="AdamW"),
        Param("fast_batches", "int", 50, min=1, max=100_000, help="K, simulated fine-tuning steps per FTS [ref]"),
        Param("inner_lr", "float", 1e-4, min=0.0, help="simulated attacker's plain-SGD lr [ref, hard-coded there]"),
        Param("batch_size", "int", batch_size, min=10, max=1_000_000,
              help="FTS batch on R_def: the first 90% is the support set, the rest the query set [ref]"),
        Param("ntr_batch_size", "int", batch_size, min=1, max=1_000_000, help="NTR batch on O_train"),
        Param("ntr_weight_decay", "float", 1e-4, min=0.0,
              help="NTR AdamW weight decay on tensors of rank >= 2 (none on biases and norms) [proj]"),
        Param("meta_grad_clip", "float", 0.5, min=0.0, help="global-norm clip of the FTS meta-gradient [ref]"),
        Param("reference_grad_leak", "bool", False,
              help="reproduce the reference bug: the first NTR step also applies the clipped meta-gradient"),
        Param("eval_every", "int", 10, min=0, max=1_000_000,
              help="record the restricted and original test MSE every this many iterations (0: never) [ref 10]"),
    ]


@hookimpl
def register_defenses(register):
    clamp = Param("mse_clamp", "str", "none", choices=("none", "[-40,0]"),
                  help="none [ref]: unbounded; [-40,0]: no FTS gradient once the mean query MSE exceeds 40")
    register("sophon-mse", factory="defenses.sophon_generation:train_mse", version="1", tasks=("denoising",),
             description="SOPHON for denoisers with the (unbounded) negated-MSE query loss",
             params=[*generation_params(alpha=1.0, beta=5.0, batch_size=100, nl_loop=1, total_loop=1000), clamp],
             tiny_params=TINY_PARAMS)
    register("sophon-dos", factory="defenses.sophon_generation:train_dos", version="1", tasks=("denoising",),
             description="SOPHON for denoisers with the denial-of-service query loss (predicted noise -> 0)",
             params=generation_params(alpha=0.05, beta=2.0, batch_size=200, nl_loop=10, total_loop=200),
             tiny_params=TINY_PARAMS)
