"""One SOPHON outer iteration: the project's lean step against a reference-style step, seconds and peak memory.

The reference-style step (ChiangE/Sophon `inverse_loss.py`, learn2learn first-order MAML) keeps every query
graph alive until one backward of the mean query loss, and evaluates the full original test set after every
NTR step. The lean step (defenses/sophon.py) keeps one graph at a time and evaluates the guard once per
iteration. Both run at the reference defaults (K = 50, B = 150) on the 28×28 `cnn-s`, from the same seed
and model, in one pytest run; their meta-gradients must agree.

Peak memory is measured during one extra, profiled iteration (benchmarks/sophon_helpers.py says how).
The lean step's peak is the guard's chunked evaluation (1,000 images at a time); the reference-style peak
is the K query graphs. Timing rounds run without the profiler. Ratios go to benchmarks/results/sophon_step.json.

Run: .venv/bin/python -m pytest benchmarks/test_sophon_step.py -q -o addopts=""
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from benchmarks.sophon_helpers import keep_all_graphs_query_loss, measure, relative_error, write_ratios
from defenses import sophon
from harness.engine.context import CellContext, Recorder
from harness.engine.data import cycling_batches
from harness.engine.models import build_model
from harness.plugins import registry
from harness.tasks import load_task
from harness.testing import synthetic_split

RESULTS = Path(__file__).parent / "results" / "sophon_step.json"
ROUNDS = 3
SIZES = {"original_train": 3000, "original_test": 10000, "restricted_train": 719, "restricted_test": 359}
LOSSES = {"sophon-ice": sophon.ice_negated_logits, "sophon-klu": sophon.kl_from_uniform}


def make_cell(defense: str):
    """A defense context at the reference defaults on 28×28 synthetic domains, and a seeded `cnn-s`."""
    torch.set_num_threads(1)
    params = registry().get("defense", defense).resolve({"probe_every": 0, "guard_threshold": 0.0}, defense)
    arch = registry().get("architecture", "cnn-s")
    shape = dict(size=28, channels=1, num_classes=10)

    def build():
        torch.manual_seed(0)
        return build_model(arch, arch.resolve({}, "arch"), in_channels=1, image_size=28, num_classes=10)

    splits = {name: synthetic_split(n, seed=i, pattern_seed=int(name.startswith("restricted")), **shape)
              for i, (name, n) in enumerate(SIZES.items())}
    task = load_task(registry().get("task", "classification"), {})
    ctx = CellContext(params=params, seed=99, device=torch.device("cpu"), precision="fp32", num_classes=10,
                      build_model=build, recorder=Recorder(), task=task, log=lambda message: None, **splits)
    return ctx, build().train()


class ReferenceStyle:
    """The reference's outer iteration: deep-copied backup, save/load BN around a learn2learn-style clone whose
    K query losses stay in one graph, then NTR steps each followed by a full original-test evaluation."""

    def __init__(self, ctx, model, query_loss):
        p = ctx.params
        self.ctx, self.model, self.params, self.query_loss = ctx, model, p, query_loss
        self.fts = torch.optim.Adam(model.parameters(), lr=p["alpha"] * p["lr0"])
        self.ntr = torch.optim.Adam(model.parameters(), lr=p["beta"] * p["lr0"])
        self.fts_stream = cycling_batches(len(ctx.restricted_train), p["batch_size"],
                                                 ctx.generator("fts/batches/150"), drop_last=True)
        self.ntr_stream = cycling_batches(len(ctx.original_train), p["ntr_batch_size"],
                                                 ctx.generator("ntr/batches"), drop_last=False)
        self.split_generator = ctx.generator("fts/support-query")
        self.head_generator = ctx.generator("fts/head-init")

    def mean_query_loss(self, batches, head_generator):
        """The clone is an identity in autograd; the head is re-initialised in value only; BN buffers are shared."""
        model, p = self.model, self.params
        fast = {n: t.clone() for n, t in model.named_parameters()}
        if p["fts_head_reinit"]:
            fresh = {n: t.detach().clone() for n, t in fast.items()}
            sophon.reinit_fast_head(model, fresh, head_generator)
            for name in (f"{model.head_path}.weight", f"{model.head_path}.bias"):
                fast[name] = fast[name] + (fresh[name] - fast[name]).detach()
        return keep_all_graphs_query_loss(model, fast, dict(model.named_buffers()), batches, p["inner_lr"],
                                          F.cross_entropy, self.query_loss)

    def iterate(self) -> float:
        p, ctx, model = self.params, self.ctx, self.model
        backup = copy.deepcopy(model)
        for _ in range(p["ml_loop"]):
            batches = list(sophon.restricted_batches(ctx.restricted_train, self.fts_stream, p["adaptation_steps"],
                                                     self.split_generator))
            saved_bn = {n: b.clone() for n, b in model.named_buffers()}
            loss = self.mean_query_loss(batches, self.head_generator)
            self.fts.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), p["meta_grad_clip"])
            self.fts.step()
            with torch.no_grad():
                for name, buffer in model.named_buffers():
                    buffer.copy_(saved_bn[name])
        for _ in range(p["nl_loop"]):
            index = next(self.ntr_stream)
            self.ntr.zero_grad()
            F.cross_entropy(model(ctx.original_train.x[index]), ctx.original_train.y[index]).backward()
            self.ntr.step()
            accuracy = ctx.evaluate(model, ctx.original_test)[0]
        if accuracy * 100 <= p["guard_threshold"]:
            model.load_state_dict(backup.state_dict())
        return accuracy


def lean_iteration(trainer: sophon.Sophon):
    """The body of Sophon.run at `guard_every: 1`: snapshot, FTS and NTR, guard, rollback when it fails."""
    state = {"i": 0}

    def run() -> float:
        state["i"] += 1
        backup = trainer.snapshot()
        trainer.iterate(state["i"])
        accuracy = trainer.guard_accuracy()
        if accuracy * 100 <= trainer.params["guard_threshold"]:
            trainer.restore(backup)
        return accuracy
    return run


@pytest.fixture(scope="module")
def results(pytestconfig):
    """Collects every measurement of this module; once all have run, writes the ratios and prints them."""
    collected = {}
    yield collected
    setup = {"architecture": "cnn-s", "image_size": 28, "rounds": ROUNDS, "threads": 1, **SIZES,
             "adaptation_steps": 50, "batch_size": 150}
    write_ratios(RESULTS, setup, collected, LOSSES, pytestconfig)


@pytest.mark.parametrize("defense", list(LOSSES))
def test_meta_gradients_agree(defense, results):
    ctx, model = make_cell(defense)
    p = ctx.params
    reference = ReferenceStyle(ctx, model, LOSSES[defense])
    batches = list(sophon.restricted_batches(ctx.restricted_train, reference.fts_stream, p["adaptation_steps"],
                                             reference.split_generator))
    reference.mean_query_loss(batches, torch.Generator().manual_seed(7)).backward()
    expected = {n: t.grad for n, t in model.named_parameters()}
    env = sophon.parse_environments(p)[0]
    weights = sophon.step_weights(env.steps, p["meta_grad_reduce"], p["step_weights"])
    lean = sophon.fts_meta_gradient(model, batches, env, LOSSES[defense], weights,
                                    head_generator=torch.Generator().manual_seed(7)).grads
    results[(defense, "error")] = error = relative_error(lean, expected)
    assert error <= 1e-5


@pytest.mark.parametrize("implementation", ["lean", "reference"])
@pytest.mark.parametrize("defense", list(LOSSES))
def test_outer_iteration(benchmark, results, defense, implementation):
    ctx, model = make_cell(defense)
    if implementation == "lean":
        step = lean_iteration(sophon.Sophon(ctx, model, LOSSES[defense]))
    else:
        step = ReferenceStyle(ctx, model, LOSSES[defense]).iterate
    measure(benchmark, results, (defense, implementation), step, ROUNDS)
