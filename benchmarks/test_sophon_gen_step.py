"""One SOPHON-MSE / SOPHON-DoS suppression (FTS) step: the lean meta-gradient against a reference-style one.

The reference-style step (ChiangE/Sophon `generation/`, learn2learn first-order MAML) clones the UNet,
takes K inner SGD steps and keeps every query graph alive until one backward of the mean query loss; the
lean step (defenses/sophon_generation.py on the shared `fts_meta_gradient`) keeps one graph at a time.
Both run K = 50 and a batch of 100 (support 90 / query 10, the MSE README defaults; DoS's README batch is
200) on `unet-tiny` at 8×8 (a CPU size: the paper's UNet is 128× larger), from the same seed and model, in
one pytest run; their meta-gradients must agree. Only the FTS step is timed: the NTR step is the same code
for both. Ratios go to benchmarks/results/sophon_gen_step.json; peak memory as in
benchmarks/sophon_helpers.py.

Run: .venv/bin/python -m pytest benchmarks/test_sophon_gen_step.py -q -o addopts=""
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from benchmarks.sophon_helpers import keep_all_graphs_query_loss, measure, relative_error, write_ratios
from defenses import sophon, sophon_generation as gen
from harness.engine.data import cycling_batches
from harness.plugins import registry
from harness.testing import seeded_model, tiny_context

RESULTS = Path(__file__).parent / "results" / "sophon_gen_step.json"
ROUNDS = 2
SETUP = {"architecture": "unet-tiny", "image_size": 8, "channels": 1, "restricted_train": 500, "fast_batches": 50,
         "batch_size": 100, "rounds": ROUNDS, "threads": 1}
VARIANTS = {"sophon-mse": "mse", "sophon-dos": "dos"}


def make_cell(defense: str):
    """A defense context on the denoising task's synthetic 8×8 domains, and a seeded `unet-tiny`."""
    torch.set_num_threads(1)
    spec = registry().get("defense", defense)
    params = spec.resolve({"fast_batches": SETUP["fast_batches"], "batch_size": SETUP["batch_size"]}, defense)
    ctx = tiny_context(params, task="denoising", plugin=spec, size=SETUP["image_size"],
                       n_train=SETUP["restricted_train"], n_test=50)
    return ctx, seeded_model(ctx).train()


class ReferenceStyle:
    """The reference's FTS step: all K query graphs in one backward, then clip and the FTS Adam step."""

    def __init__(self, ctx, model, variant: str):
        p = ctx.params
        self.ctx, self.model, self.params, self.query_loss = ctx, model, p, gen.QUERY_LOSSES[variant]
        self.fts = torch.optim.Adam(model.parameters(), lr=p["alpha"] * p["lr0"])
        self.stream = cycling_batches(len(ctx.restricted_train), p["batch_size"],
                                      ctx.generator(f"fts/batches/{p['batch_size']}"), drop_last=True)
        self.noise = ctx.generator("fts/noise")

    def batches(self):
        return gen.denoising_batches(self.ctx.task, self.ctx.restricted_train, self.stream, self.params["fast_batches"],
                                     self.noise)

    def mean_query_loss(self, batches):
        fast = {n: t.clone() for n, t in self.model.named_parameters()}  # the clone is an identity in autograd
        return keep_all_graphs_query_loss(self.model, fast, dict(self.model.named_buffers()), batches,
                                          self.params["inner_lr"], F.mse_loss, self.query_loss)

    def step(self) -> None:
        loss = self.mean_query_loss(self.batches())
        self.fts.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.params["meta_grad_clip"])
        self.fts.step()


@pytest.fixture(scope="module")
def results(pytestconfig):
    """Collects every measurement of this module; once all have run, writes the ratios and prints them."""
    collected = {}
    yield collected
    write_ratios(RESULTS, SETUP, collected, VARIANTS, pytestconfig)


@pytest.mark.parametrize("defense", list(VARIANTS))
def test_meta_gradients_agree(defense, results):
    ctx, model = make_cell(defense)
    reference = ReferenceStyle(ctx, model, VARIANTS[defense])
    batches = list(reference.batches())
    reference.mean_query_loss(batches).backward()
    expected = {n: t.grad for n, t in model.named_parameters()}
    trainer = gen.GenerativeSophon(ctx, model, VARIANTS[defense])
    lean = sophon.fts_meta_gradient(model, batches, trainer.environment, reference.query_loss, trainer.weights,
                                    inner_loss=F.mse_loss, hits=None).grads
    results[(defense, "error")] = error = relative_error(lean, expected)
    assert error <= 1e-5


@pytest.mark.parametrize("implementation", ["lean", "reference"])
@pytest.mark.parametrize("defense", list(VARIANTS))
def test_fts_step(benchmark, results, defense, implementation):
    ctx, model = make_cell(defense)
    if implementation == "lean":
        step = gen.GenerativeSophon(ctx, model, VARIANTS[defense]).suppress
    else:
        step = ReferenceStyle(ctx, model, VARIANTS[defense]).step
    measure(benchmark, results, (defense, implementation), step, ROUNDS)
