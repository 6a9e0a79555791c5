"""NTL (defenses/ntl.py): the loss against hand computations, the feature hook, the schedule, determinism."""

from __future__ import annotations

import math

import pytest
import torch

from defenses import ntl
from harness.plugins import registry
from harness.testing import same_weights, seeded_model, tiny_context


def params(**overrides):
    return registry().get("defense", "ntl").resolve(overrides, "ntl")


def hand_kl(logits, labels, classes: int, per: str) -> float:
    """Σ_i Σ_j y_ij (log y_ij − log p_ij) over one-hot y, divided by B·C (elementwise mean) or B."""
    total = sum(-math.log(logits[i].softmax(0)[labels[i]].item()) for i in range(len(labels)))
    return total / (len(labels) * classes if per == "elementwise_mean" else len(labels))


def hand_mmd(source, target) -> float:
    """Biased multi-kernel MMD written out with loops: bandwidth = mean off-diagonal distance / 4, kernels h·2^m."""
    rows = [r.flatten().tolist() for r in torch.cat([source, target])]
    n, total = len(source), len(rows)
    dist = [[sum((a - b) ** 2 for a, b in zip(rows[i], rows[j])) for j in range(total)] for i in range(total)]
    h = sum(map(sum, dist)) / (total * total - total) / 4
    k = [[sum(math.exp(-dist[i][j] / (h * 2 ** m)) for m in range(5)) for j in range(total)] for i in range(total)]
    return sum(k[i][j] + k[n + i][n + j] - k[i][n + j] - k[n + i][j] for i in range(n) for j in range(n)) / n ** 2


@pytest.fixture
def batch():
    gen = torch.Generator().manual_seed(0)
    shapes = ((4, 3), (4, 3), (4, 2, 3), (4, 2, 3))
    tensors = [torch.randn(shape, generator=gen, dtype=torch.float64) for shape in shapes]
    labels = torch.tensor([0, 1, 2, 1]), torch.tensor([2, 2, 0, 1])
    return tensors[0], labels[0], tensors[1].requires_grad_(True), labels[1], tensors[2], tensors[3]


def test_mmd_and_kl_match_hand_computations(batch):
    source_logits, source_labels, target_logits, target_labels, fs, ft = batch
    assert ntl.multi_kernel_mmd(fs, ft).item() == pytest.approx(hand_mmd(fs, ft), rel=1e-9)
    for per in ("elementwise_mean", "batchmean"):
        value = ntl.kl_to_labels(source_logits, source_labels, 3, per).item()
        assert value == pytest.approx(hand_kl(source_logits, source_labels, 3, per), rel=1e-12)


@pytest.mark.parametrize("alpha, beta, kl_clamped, mmd_clamped", [(0.1, 0.1, False, False), (1e3, 1e3, True, True),
                                                                   (1e3, 0.1, True, False)])
def test_code_form_clamps_each_factor_separately(batch, alpha, beta, kl_clamped, mmd_clamped):
    source_logits, source_labels, target_logits, target_labels, fs, ft = batch
    loss, parts = ntl.ntl_loss(source_logits, source_labels, target_logits, target_labels, fs, ft,
                               params(alpha=alpha, beta=beta), 3)
    kl_factor = 1.0 if kl_clamped else alpha * hand_kl(target_logits.detach(), target_labels, 3, "elementwise_mean")
    mmd_factor = 1.0 if mmd_clamped else beta * hand_mmd(fs, ft)
    assert alpha * parts["kl_target"] > 1 if kl_clamped else alpha * parts["kl_target"] <= 1
    expected = hand_kl(source_logits, source_labels, 3, "elementwise_mean") - kl_factor * mmd_factor
    assert loss.item() == pytest.approx(expected, rel=1e-9)
    loss.backward()
    target_gradient = target_logits.grad.abs().sum().item()
    assert (target_gradient == 0.0) == kl_clamped  # a clamped factor is a constant


def test_paper_form_caps_the_product(batch):
    source_logits, source_labels, target_logits, target_labels, fs, ft = batch
    kl_s = hand_kl(source_logits, source_labels, 3, "elementwise_mean")
    product = 0.1 * hand_kl(target_logits.detach(), target_labels, 3, "elementwise_mean") * hand_mmd(fs, ft)
    for bound, expected in ((10.0, kl_s - product), (product / 2, kl_s - product / 2)):
        loss, _ = ntl.ntl_loss(source_logits, source_labels, target_logits, target_labels, fs, ft,
                               params(ntl_form="paper", paper_bound=bound), 3)
        assert loss.item() == pytest.approx(expected, rel=1e-9)


def test_learning_rate_decays_per_step():
    model = torch.nn.Linear(2, 2)
    for decay, factor in (("per_step_0.999", 0.999 ** 5), ("none", 1.0)):
        optimizer, schedule = ntl.ntl_optimizer(model, params(ntl_lr_decay=decay))
        for _ in range(5):
            optimizer.step()
            schedule.step()
        assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-4 * factor)


def ntl_context(**overrides):
    return tiny_context(params(**{"epochs": 2, "batch_size": 16, **overrides}), arch_params={"width": 0.5}, n_train=106,
                        n_test=40)


def test_training_is_deterministic_records_curves_and_removes_its_hook():
    runs = []
    for _ in range(2):
        ctx = ntl_context()
        runs.append((ntl.train_ntl(ctx, seeded_model(ctx)), ctx.recorder.points))
    (first, points), (second, again) = runs
    assert same_weights(first, second) and points == again
    assert not first.get_submodule(first.feature_path)._forward_hooks
    steps = sorted({x for x, unit, metric, _ in points if unit == "step" and metric == "original/accuracy"})
    assert steps == [6.0, 12.0]  # 96 pairs (106 less the validation slice) / 16 per batch = 6 steps per epoch


def test_feature_module_override():
    ctx = ntl_context(feature_module="stage1", epochs=1)
    model = ntl.train_ntl(ctx, seeded_model(ctx))
    assert all(torch.isfinite(p).all() for p in model.parameters())
    with pytest.raises(AttributeError):
        ntl.train_ntl(ntl_context(feature_module="no_such_module"), seeded_model(ctx))
