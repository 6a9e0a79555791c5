"""Output defenses against extraction (docs/extraction.md): perturb what the API answers, not the weights.

Each defense releases its input model unchanged and registers an `output_transform` that the oracle applies
to every answer of a black-box attack (docs/starts-and-access.md); white-box attacks are not affected.
Randomness comes from the generator the oracle is given (derived from the attack cell's seed), so noise is
fresh per query yet reproducible. A top-1 label API has no vector to perturb: these transforms refuse it.
torch is imported inside functions so listing plugins stays light.
"""

from __future__ import annotations

from harness import Param, hookimpl


def release_unchanged(ctx, model):
    """The weights are not what these defenses protect: release the model as given, measured at epoch 0."""
    ctx.record_release(model, step=0)
    return model


def vector_answers(outputs, api: str, defense: str):
    """The outputs as a float vector per query; a label API is refused with one clear sentence."""
    if api == "label" or outputs.ndim != 2:
        raise ValueError(f"defense {defense!r} perturbs answer vectors; the scenario's api {api!r} answers labels")
    return outputs


def gaussian(shape, mean: float, std: float, generator, like):
    """N(mean, std²) draws of `shape` from the CPU `generator`, moved to `like`'s device and dtype."""
    import torch

    return (mean + std * torch.randn(shape, generator=generator)).to(device=like.device, dtype=like.dtype)


def add_noise(outputs, *, x, api, params, generator):
    """output-noise: v ← v + N(μ, σ²) elementwise, fresh for every query."""
    vector_answers(outputs, api, "output-noise")
    return outputs + gaussian(outputs.shape, params["mean"], params["std"], generator, outputs)


def top_k_rounded(outputs, *, x, api, params, generator):
    """output-topk: keep each answer's k largest entries (the rest become 0), then round to `decimals`."""
    import torch

    vector_answers(outputs, api, "output-topk")
    k = params["k"]
    if k is not None and k < outputs.shape[1]:
        kept = outputs.topk(k, dim=1).indices
        outputs = torch.zeros_like(outputs).scatter(1, kept, outputs.gather(1, kept))
    return outputs if params["decimals"] is None else outputs.round(decimals=params["decimals"])


def similarity_scores(vectors):
    """s_i = max_{j<i} (cos(h_i, h_j) + 1)/2 within the batch, in order; the first query scores 0 (never flagged)."""
    import torch
    import torch.nn.functional as F

    unit = F.normalize(vectors.float(), dim=1)
    similarity = (unit @ unit.T + 1) / 2
    earlier = torch.ones_like(similarity, dtype=torch.bool).tril(diagonal=-1)
    scores = similarity.masked_fill(~earlier, float("-inf")).max(dim=1).values
    return scores.clamp_min(0.0)


def poison_similar(outputs, *, x, api, params, generator):
    """similarity-poison: an answer whose vector is too similar to an earlier one of the same batch is replaced
    by per-element draws from N(poison_mean, σ²) (the reference's type 1, within-batch memory).

    The reference compares the victim's projection-head outputs; here the answer vectors themselves (logits,
    probabilities or representations) are compared, since the API's answer is what the transform sees.
    """
    vector_answers(outputs, api, "similarity-poison")
    if params["std"] <= 0:
        return outputs
    flagged = similarity_scores(outputs) > params["threshold"]
    noise = gaussian(outputs.shape, params["poison_mean"], params["std"], generator, outputs)
    return outputs.where(~flagged[:, None].to(outputs.device), noise)


@hookimpl
def register_defenses(register):
    common = dict(factory="defenses.output:release_unchanged", version="1", tasks="any")
    register("output-noise", output_transform="defenses.output:add_noise", **common,
             description="Gaussian noise on every API answer, fresh per query (weights released unchanged)",
             params=[Param("mean", "float", 5.0, help="μ of the added noise [ref 5]"),
                     Param("std", "float", 0.5, min=0.0, help="σ of the added noise [ref 0.5]")])
    register("output-topk", output_transform="defenses.output:top_k_rounded", **common,
             description="Answer only each query's top-k entries, rounded (weights released unchanged)",
             params=[Param("k", "int", 1, min=1, nullable=True, help="entries kept per answer; null = all"),
                     Param("decimals", "int", 2, min=0, nullable=True, help="round to this many decimals; "
                                                                            "null = no rounding")])
    register("similarity-poison", output_transform="defenses.output:poison_similar", **common,
             description="Replace answers too similar to an earlier one of the same query batch by large noise",
             params=[Param("threshold", "float", 0.8, min=0.0, max=1.0,
                           help="flag a query when (cos + 1)/2 to an earlier one of its batch exceeds this [ref]"),
                     Param("poison_mean", "float", 1000.0, help="mean of the replacement draws [ref 1000]"),
                     Param("std", "float", 1.0, min=0.0, help="σ of the replacement draws; 0 turns poisoning "
                                                              "off [ref: a run setting]")])
