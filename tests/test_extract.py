"""The extraction attack: its losses against hand computations, the black-box contract, exact capped budgets."""

from __future__ import annotations

import math

import pytest
import torch

from attacks.extract import (label_cross_entropy, logit_kl, mse_loss, soft_cross_entropy, softnn_loss, steal,
                             wasserstein_loss)
from harness.engine.contrastive import infonce_loss
from harness.engine.oracle import Oracle, make_oracle
from harness.testing import check_plugin, seeded_model, tiny_context
from tests.conftest import TINY_EXPERIMENT
from tests.test_access import rows, run_experiment

EXTRACT_PARAMS = {"queries": 60, "epochs": 2, "batch_size": 16, "requery": False, "optimizer": "adam", "lr": 1e-3,
                  "weight_decay": None, "logit_loss": "mse", "representation_loss": "mse", "probe_epochs": 2,
                  "probe_lr": 1e-3, "probe_weight_decay": 8e-4, "probe_batch_size": 64}


def test_mse_is_the_mean_squared_difference():
    assert mse_loss(torch.tensor([[1.0, 2.0]]), torch.zeros(1, 2)).item() == pytest.approx(2.5)


def test_soft_cross_entropy_and_label_cross_entropy():
    uniform_logits = torch.zeros(1, 2)
    assert soft_cross_entropy(uniform_logits, torch.tensor([[0.3, 0.7]])).item() == pytest.approx(math.log(2))
    logits = torch.tensor([[0.0, math.log(3.0)]])  # softmax (0.25, 0.75)
    assert label_cross_entropy(logits, torch.tensor([1])).item() == pytest.approx(-math.log(0.75))


def test_logit_kl_is_kl_from_the_victims_softmax():
    copy = torch.zeros(1, 2)  # softmax (0.5, 0.5)
    victim = torch.tensor([[0.0, math.log(3.0)]])  # softmax (0.25, 0.75)
    expected = 0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5)
    assert logit_kl(copy, victim).item() == pytest.approx(expected)
    assert logit_kl(victim, victim).item() == pytest.approx(0.0, abs=1e-7)


def test_infonce_on_orthogonal_pairs():
    # rows f1=e1, f2=e2, v1=e1, v2=e2: each row's partner has cosine 1, the two other rows 0
    f = torch.eye(2)
    assert infonce_loss(f, f.clone(), temperature=0.5).item() == pytest.approx(math.log(1 + 2 * math.exp(-2)))
    f, v = torch.tensor([[5.0, 0.0]]), torch.tensor([[0.6, 0.8]])
    assert infonce_loss(f, v).item() == pytest.approx(0.0, abs=1e-6)  # one pair: the partner is the only candidate


def test_softnn_on_two_one_dimensional_pairs():
    # rows 0, 1, 0, 1: the partner is at distance 0, the two others at squared distance 1 and 0 resp. 1
    f = torch.tensor([[0.0], [1.0]])
    expected = math.log(1 + 2 * math.exp(-1 / 100))
    assert softnn_loss(f, f.clone()).item() == pytest.approx(expected, rel=1e-6)


def test_wasserstein_between_point_masses_and_its_refusal_of_negative_outputs():
    # (1, 0) vs (0, 1): CDFs (1, 1) and (0, 1) differ by 1 at the first coordinate
    assert wasserstein_loss(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])).item() == pytest.approx(1.0)
    assert wasserstein_loss(torch.tensor([[2.0, 2.0]]), torch.tensor([[1.0, 1.0]])).item() == pytest.approx(0.0)
    with pytest.raises(ValueError, match="non-negative"):
        wasserstein_loss(torch.tensor([[1.0, -1.0]]), torch.tensor([[0.0, 1.0]]))


@pytest.mark.parametrize("api", ["logits", "probabilities", "label", "representation"])
def test_extract_passes_the_plugin_check_in_every_api(api):
    assert check_plugin("attack", "extract", {"queries": 60, "epochs": 2, "probe_epochs": 2}, api=api) == []


def api_only_oracle(ctx, *, budget: int, api: str = "logits") -> tuple[Oracle, list[int]]:
    """An oracle whose answers come from a function with no model behind it: an attack that reached for
    weights would find none. Records the size of every query it answers."""
    teacher = seeded_model(ctx, "victim")
    teacher.requires_grad_(False)
    sizes = []

    def answer(x):
        sizes.append(len(x))
        return teacher(x)

    return Oracle(answer, api=api, budget=budget), sizes


@pytest.mark.parametrize("budget", [1, 37, 80, 1000])
def test_every_ladder_step_spends_exactly_what_it_may(budget):
    ctx = tiny_context({**EXTRACT_PARAMS, "queries": budget})
    oracle, sizes = api_only_oracle(ctx, budget=budget)
    copy = steal(ctx, oracle)
    available = len(ctx.restricted_train)
    assert oracle.used == sum(sizes) == min(budget, available) <= budget
    assert ctx.recorder.notes["distinct_images"] == min(budget, available)
    assert isinstance(copy, torch.nn.Module)
    points = [p for p in ctx.recorder.points if p[1] == "queries"]
    assert points and {x for x, *_ in points} == {float(oracle.used)}


def test_requerying_costs_one_answer_per_image_and_epoch_within_the_budget():
    ctx = tiny_context({**EXTRACT_PARAMS, "queries": 50, "epochs": 3, "requery": True})
    oracle, sizes = api_only_oracle(ctx, budget=50)
    steal(ctx, oracle)
    assert ctx.recorder.notes["distinct_images"] == 16 and oracle.used == sum(sizes) == 48


def test_a_budget_that_buys_no_image_fails_clearly():
    ctx = tiny_context({**EXTRACT_PARAMS, "queries": 2, "epochs": 3, "requery": True})
    oracle, _ = api_only_oracle(ctx, budget=2)
    with pytest.raises(ValueError, match="a budget of 2 queries buys no image"):
        steal(ctx, oracle)


def test_the_victim_is_untouched_and_the_copy_learns_from_answers():
    ctx = tiny_context(EXTRACT_PARAMS | {"queries": 200, "epochs": 5, "lr": 3e-3})
    victim = seeded_model(ctx, "victim")
    before = {k: v.clone() for k, v in victim.state_dict().items()}
    oracle = make_oracle(victim, api="label", budget=200)
    copy = steal(ctx, oracle)
    assert copy is not victim and all(torch.equal(before[k], v) for k, v in victim.state_dict().items())
    with torch.no_grad():
        agreement = (copy.eval()(ctx.restricted_test.x).argmax(1) == victim.eval()(ctx.restricted_test.x).argmax(1))
    assert agreement.float().mean() > 0.5  # well above the 10% of an unrelated model


def run_tiny(write_experiment, tmp_path, *edits: tuple[str, str]):
    """Run the tiny experiment with `edits` (old, new) applied to its text; return its results directory."""
    text = TINY_EXPERIMENT
    for old, new in edits:
        text = text.replace(old, new)
    summary, results = run_experiment(write_experiment, tmp_path, text)
    assert summary.ok
    return results


def test_a_ladder_of_budgets_is_a_grid_of_cells(write_experiment, tmp_path):
    results = run_tiny(write_experiment, tmp_path,
                       ("  - {plugin: finetune, label: sgd, params: {epochs: 1, batch_size: 64, lr: 0.01}}\n",
                        "  - {plugin: extract, params: {queries: [40, 120], epochs: 1}}\n"),
                       ("  - {plugin: none}\n",
                        "  - {plugin: none}\n  - {plugin: output-noise, params: {mean: 0.0, std: 0.1}}\n"))
    spent = rows(results, "SELECT x FROM points WHERE x_unit = 'queries' AND metric = 'restricted/accuracy'")
    starts = {s for (s,) in rows(results, "SELECT DISTINCT start FROM cells WHERE kind = 'attack'")}
    assert sorted(x for (x,) in spent) == [40.0] * 3 + [120.0] * 3  # original, none, noise per budget
    assert starts == {"original", "defense:none", "defense:output-noise"}


def test_the_extract_suite_is_each_loss_at_each_budget_of_the_ladder(write_experiment):
    from harness.config import load_experiment
    from harness.plan import resolve
    from harness.plugins import registry

    text = TINY_EXPERIMENT.replace("{plugin: finetune, label: sgd, params: {epochs: 1, batch_size: 64, lr: 0.01}}",
                                   "{suite: extract, params: {epochs: 1}}")
    attacks = resolve(load_experiment(write_experiment(text)), registry()).attacks
    assert sorted((a.params["representation_loss"], a.params["queries"]) for a in attacks) == sorted(
        (loss, budget) for loss in ("mse", "infonce", "softnn") for budget in (1000, 5000, 9000, 20000, 50000))
