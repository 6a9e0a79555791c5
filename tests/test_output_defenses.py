"""Output defenses: each transform against a hand computation, and acting only on what the oracle answers."""

from __future__ import annotations

import pytest
import torch

from defenses.output import add_noise, poison_similar, similarity_scores, top_k_rounded
from harness.engine.oracle import make_oracle
from harness.testing import check_plugin, seeded_model, same_weights, tiny_context

NOISE = {"mean": 5.0, "std": 0.5}


def transform(function, outputs, params, *, api="probabilities", seed=0):
    return function(outputs, x=None, api=api, params=params, generator=torch.Generator().manual_seed(seed))


def test_noise_is_mean_plus_std_times_the_generators_draws_and_fresh_per_query():
    outputs = torch.tensor([[0.2, 0.8], [0.5, 0.5]])
    expected = outputs + 5.0 + 0.5 * torch.randn(2, 2, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(transform(add_noise, outputs, NOISE), expected)
    generator = torch.Generator().manual_seed(0)
    first, second = (add_noise(outputs, x=None, api="logits", params=NOISE, generator=generator) for _ in range(2))
    assert not torch.equal(first, second)


def test_top_k_keeps_the_largest_entries_then_rounds():
    outputs = torch.tensor([[0.123, 0.654, 0.223], [0.5, 0.25, 0.25]])
    kept = transform(top_k_rounded, outputs, {"k": 2, "decimals": 1})
    assert torch.equal(kept, torch.tensor([[0.0, 0.7, 0.2], [0.5, 0.0, 0.2]])) or \
        torch.equal(kept, torch.tensor([[0.0, 0.7, 0.2], [0.5, 0.2, 0.0]]))  # a tie at 0.25 keeps either one
    assert torch.allclose(transform(top_k_rounded, outputs, {"k": None, "decimals": 2}),
                          torch.tensor([[0.12, 0.65, 0.22], [0.5, 0.25, 0.25]]))
    assert torch.equal(transform(top_k_rounded, outputs, {"k": 1, "decimals": None}),
                       torch.tensor([[0.0, 0.654, 0.0], [0.5, 0.0, 0.0]]))


def test_similarity_scores_look_only_at_earlier_queries_of_the_batch():
    vectors = torch.tensor([[1.0, 0.0], [1.0, 0.1], [0.0, 1.0], [-1.0, 0.0]])
    cosine = 1 / (1 + 0.01) ** 0.5
    expected = torch.tensor([0.0, (cosine + 1) / 2, (0.1 / 1.01 ** 0.5 + 1) / 2, 0.5])
    assert torch.allclose(similarity_scores(vectors), expected, atol=1e-6)


def test_similarity_poison_replaces_only_flagged_answers_with_large_noise():
    outputs = torch.tensor([[1.0, 0.0], [1.0, 0.1], [0.0, 1.0], [-1.0, 0.0]])
    params = {"threshold": 0.8, "poison_mean": 1000.0, "std": 1.0}
    poisoned = transform(poison_similar, outputs, params, api="logits")
    draws = 1000.0 + torch.randn(4, 2, generator=torch.Generator().manual_seed(0))
    assert torch.equal(poisoned[[0, 2, 3]], outputs[[0, 2, 3]])
    assert torch.allclose(poisoned[1], draws[1])
    assert torch.equal(transform(poison_similar, outputs, {**params, "std": 0.0}, api="logits"), outputs)


@pytest.mark.parametrize("function, params", [(add_noise, NOISE), (top_k_rounded, {"k": 1, "decimals": 2}),
                                              (poison_similar, {"threshold": 0.8, "poison_mean": 1e3, "std": 1.0})])
def test_a_label_api_is_refused_in_one_sentence(function, params):
    with pytest.raises(ValueError, match="perturbs answer vectors; the scenario's api 'label' answers labels"):
        transform(function, torch.tensor([3, 1]), params, api="label")


@pytest.mark.parametrize("name", ["output-noise", "output-topk", "similarity-poison"])
def test_output_defenses_pass_the_plugin_check_and_release_the_weights_unchanged(name):
    assert check_plugin("defense", name) == []
    from harness.plugins import registry

    ctx = tiny_context({})
    model = seeded_model(ctx)
    spec = registry().get("defense", name)
    released = spec.load()(tiny_context(spec.resolve({}, name), plugin=spec), seeded_model(ctx))
    assert same_weights(released, model)


def test_the_oracle_applies_the_transform_to_its_answers():
    ctx = tiny_context({})
    model = seeded_model(ctx)
    plain = make_oracle(model, api="probabilities", budget=8)(ctx.restricted_test.x[:8])
    defended = make_oracle(model, api="probabilities", budget=8, transform=top_k_rounded,
                           transform_params={"k": 1, "decimals": 1}, generator=torch.Generator().manual_seed(0))
    answers = defended(ctx.restricted_test.x[:8])
    assert torch.equal((answers > 0).sum(dim=1), torch.ones(8, dtype=torch.long))
    assert torch.equal(answers.argmax(dim=1), plain.argmax(dim=1))
