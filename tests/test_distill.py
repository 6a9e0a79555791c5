"""Nasty Teacher (defenses/nasty_teacher.py) and the distill attack family (attacks/distill.py): the losses against
hand computations, both plugins on tiny cells, and a grid from the defense, the normal teacher and no teacher."""

from __future__ import annotations

import math
import sqlite3

import pytest
import torch

from attacks.distill import kd_loss, teacher_targets, tempered_kl
from defenses.nasty_teacher import nasty_loss
from harness.cells import Runtime
from harness.config import load_experiment
from harness.engine.train import Diverged
from harness.plugins import registry
from harness.runner import run
from harness.testing import check_plugin, seeded_model, tiny_context
from tests.conftest import TINY_EXPERIMENT

TEACHER = torch.tensor([[2.0, 0.5, -1.0], [0.0, 1.0, 3.0]], dtype=torch.float64)
OTHER = torch.tensor([[0.5, 0.5, 0.0], [1.0, -2.0, 0.5]], dtype=torch.float64)
LABELS = torch.tensor([0, 1])


def softmax(row: list[float], tau: float) -> list[float]:
    exps = [math.exp(v / tau) for v in row]
    return [e / sum(exps) for e in exps]


def hand_kl(p_logits, q_logits, tau: float) -> float:
    """Σ_i Σ_c p_ic (log p_ic − log q_ic) / B over the τ-softened rows."""
    total = 0.0
    for p_row, q_row in zip(p_logits.tolist(), q_logits.tolist()):
        p, q = softmax(p_row, tau), softmax(q_row, tau)
        total += sum(a * (math.log(a) - math.log(b)) for a, b in zip(p, q))
    return total / len(p_logits)


def hand_ce(logits, labels) -> float:
    return sum(-math.log(softmax(row, 1.0)[y]) for row, y in zip(logits.tolist(), labels.tolist())) / len(labels)


@pytest.mark.parametrize("tau", [1.0, 4.0, 20.0])
def test_tempered_kl_matches_the_hand_computation_and_is_not_symmetric(tau):
    assert tempered_kl(TEACHER, OTHER, tau).item() == pytest.approx(hand_kl(TEACHER, OTHER, tau), rel=1e-12)
    assert tempered_kl(OTHER, TEACHER, tau).item() == pytest.approx(hand_kl(OTHER, TEACHER, tau), rel=1e-12)
    assert hand_kl(TEACHER, OTHER, tau) != pytest.approx(hand_kl(OTHER, TEACHER, tau), rel=1e-3)


@pytest.mark.parametrize("direction, first, second", [("teacher_first", TEACHER, OTHER),
                                                       ("adversary_first", OTHER, TEACHER)])
def test_nasty_loss_is_ce_minus_the_weighted_kl_in_the_chosen_direction(direction, first, second):
    loss, kl = nasty_loss(TEACHER, OTHER, LABELS, omega=0.04, tau=4.0, direction=direction)
    expected_kl = hand_kl(first, second, 4.0)
    assert kl.item() == pytest.approx(expected_kl, rel=1e-12)
    assert loss.item() == pytest.approx(hand_ce(TEACHER, LABELS) - 0.04 * 16 * expected_kl, rel=1e-12)


def test_nasty_loss_pushes_the_teacher_away_from_the_adversary():
    teacher = TEACHER.clone().requires_grad_(True)
    loss, kl = nasty_loss(teacher, OTHER, LABELS, omega=10.0, tau=4.0, direction="teacher_first")
    loss.backward()
    with torch.no_grad():
        moved = teacher - 0.01 * teacher.grad
    assert tempered_kl(moved, OTHER, 4.0).item() > kl.item()


@pytest.mark.parametrize("alpha", [0.9, 0.5, 1.0])
def test_soft_kd_loss_matches_the_hand_computation(alpha):
    student = OTHER
    value = kd_loss(student, TEACHER, LABELS, alpha=alpha, tau=4.0, mode="soft").item()
    expected = alpha * 16 * hand_kl(TEACHER, student, 4.0) + (1 - alpha) * hand_ce(student, LABELS)
    assert value == pytest.approx(expected, rel=1e-12)


def test_kd_distils_the_teacher_into_the_student_not_the_other_way():
    value = kd_loss(OTHER, TEACHER, LABELS, alpha=1.0, tau=2.0, mode="soft").item()
    assert value == pytest.approx(4 * hand_kl(TEACHER, OTHER, 2.0), rel=1e-12)
    assert value != pytest.approx(4 * hand_kl(OTHER, TEACHER, 2.0), rel=1e-3)


def test_hard_kd_loss_is_ce_to_the_teachers_labels_mixed_with_the_true_labels():
    targets = teacher_targets(TEACHER, "logits", "hard")
    assert targets.tolist() == [0, 2]
    value = kd_loss(OTHER, targets, LABELS, alpha=0.7, tau=4.0, mode="hard").item()
    assert value == pytest.approx(0.7 * hand_ce(OTHER, targets) + 0.3 * hand_ce(OTHER, LABELS), rel=1e-12)
    assert teacher_targets(TEACHER.softmax(1), "probabilities", "hard").tolist() == [0, 2]


def test_probabilities_soften_exactly_as_the_logits_do():
    logits = teacher_targets(TEACHER.softmax(1), "probabilities", "soft")
    assert tempered_kl(logits, OTHER, 4.0).item() == pytest.approx(tempered_kl(TEACHER, OTHER, 4.0).item(), rel=1e-9)


@pytest.mark.parametrize("api, mode, message", [("label", "soft", "soft KD needs logits or probabilities"),
                                                ("representation", "hard", "gives no class answers")])
def test_an_api_that_cannot_serve_the_mode_is_refused(api, mode, message):
    with pytest.raises(ValueError, match=message):
        teacher_targets(TEACHER, api, mode)


def nasty_params(**overrides):
    return registry().get("defense", "nasty-teacher").resolve(
        {"epochs": 2, "batch_size": 32, "lr": 0.01, **overrides}, "nasty-teacher")


@pytest.mark.parametrize("init", ["scratch", "normal_teacher"])
def test_the_defense_passes_plugin_check(init):
    assert check_plugin("defense", "nasty-teacher", {"epochs": 2, "batch_size": 32, "lr": 0.01,
                                                     "nasty_init": init}) == []


def test_the_defense_leaves_the_adversary_untouched_and_records_its_progress():
    ctx = tiny_context(nasty_params(), plugin=registry().get("defense", "nasty-teacher"))
    adversary = seeded_model(ctx)
    before = {k: v.clone() for k, v in adversary.state_dict().items()}
    teacher = registry().get("defense", "nasty-teacher").load()(ctx, adversary)
    assert teacher is not adversary
    assert all(torch.equal(before[k], v) for k, v in adversary.state_dict().items())
    kl = [(x, v) for x, unit, metric, v in ctx.recorder.points if metric == "original/nasty_kl"]
    # 180 images (200 less the 10 % validation slice) / 32 = 5 steps per epoch
    assert [x for x, _ in kl] == [5, 10] and all(v > 0 for _, v in kl)
    assert ctx.recorder.notes == {"steps": 10, "skipped_steps": 0}


def test_non_finite_steps_are_skipped_and_counted_then_fail_above_the_limit(monkeypatch):
    from defenses import nasty_teacher

    real, calls = nasty_teacher.nasty_loss, []

    def sometimes_nan(*args, **kwargs):
        loss, kl = real(*args, **kwargs)
        calls.append(1)
        return (loss * float("nan"), kl) if len(calls) in (3, 9) else (loss, kl)

    monkeypatch.setattr(nasty_teacher, "nasty_loss", sometimes_nan)
    ctx = tiny_context(nasty_params(max_skipped=0.2), plugin=registry().get("defense", "nasty-teacher"))
    nasty_teacher.train_nasty_teacher(ctx, seeded_model(ctx))
    assert ctx.recorder.notes == {"steps": 10, "skipped_steps": 2}
    calls.clear()
    ctx = tiny_context(nasty_params(max_skipped=0.1), plugin=registry().get("defense", "nasty-teacher"))
    with pytest.raises(Diverged, match="not finite at 2 steps, more than 10% of the 2 epochs' steps"):
        nasty_teacher.train_nasty_teacher(ctx, seeded_model(ctx))


KD = {"epochs": 2, "batch_size": 32, "queries": 150}


@pytest.mark.parametrize("params", [{}, {"mode": "hard"}, {"student": "cnn-m", "student_params": {"width": 0.25}}])
def test_the_attack_passes_plugin_check(params):
    assert check_plugin("attack", "distill", {**KD, **params}) == []


def test_the_student_is_of_the_requested_architecture_and_records_both_domains_per_epoch():
    ctx = tiny_context(registry().get("attack", "distill").resolve(
        {**KD, "student": "cnn-m", "student_params": {"width": 0.25}}, "distill"))
    from harness.engine.oracle import make_oracle

    oracle = make_oracle(seeded_model(ctx), api="logits", budget=150)
    student = registry().get("attack", "distill").load()(ctx, oracle)
    assert student[0][0].out_channels == 8  # cnn-m's 32 channels at width 0.25; the teacher is cnn-s
    assert oracle.used == 150 and ctx.recorder.notes == {"transfer_images": 150, "queries": 150}
    recorded = {(metric, unit, x) for x, unit, metric, _ in ctx.recorder.points}
    assert {("restricted/accuracy", "epoch", e) for e in (0, 1, 2)} <= recorded
    assert {("original/accuracy", "epoch", e) for e in (1, 2)} <= recorded
    assert ("original/accuracy", "epoch", 0) not in recorded  # epoch 0 on the original domain is the teacher's
    assert ("restricted/accuracy", "queries", 150) in recorded


def test_the_no_teacher_student_learns_from_labels_alone():
    ctx = tiny_context(registry().get("attack", "distill").resolve({**KD, "epochs": 3}, "distill"))
    student = registry().get("attack", "distill").load()(ctx, None)
    accuracy = [v for x, unit, metric, v in ctx.recorder.points if metric == "restricted/accuracy" and unit == "epoch"]
    assert accuracy[-1] > accuracy[0] + 0.2 and student is not None


GRID = TINY_EXPERIMENT.replace("  - {plugin: none}\n",
                               "  - {plugin: nasty-teacher, params: {epochs: 1, batch_size: 64, lr: 0.01}}\n").replace(
    "  - {plugin: finetune, label: sgd, params: {epochs: 1, batch_size: 64, lr: 0.01}}\n",
    "  - {plugin: distill, params: {epochs: 1, batch_size: 64, queries: 400, tau: [1, 20]}}\n"
    "  - {plugin: distill, label: hard, params: {epochs: 1, batch_size: 64, queries: 400, mode: hard}}\n")


def test_a_grid_distils_from_the_nasty_teacher_the_normal_teacher_and_no_teacher(write_experiment, tmp_path):
    from harness.leaderboard import build_leaderboard

    experiment = load_experiment(write_experiment(GRID))
    summary = run(experiment, Runtime(root=str(tmp_path / "r"), device="cpu", cache_dir=str(tmp_path / "c")),
                  registry())
    assert summary.ok
    with sqlite3.connect(tmp_path / "r" / "results.sqlite") as db:
        cells = db.execute("SELECT start, attack, status FROM cells WHERE kind = 'attack'").fetchall()
        queries = db.execute("SELECT DISTINCT x FROM points WHERE x_unit = 'queries'").fetchall()
        listed = db.execute("SELECT m.label FROM memberships m JOIN cells c ON c.key = m.key "
                            "WHERE c.start = 'no-teacher'").fetchall()
    labels = {"distill tau=1", "distill tau=20", "hard"}
    assert {(start, attack) for start, attack, _ in cells if start != "no-teacher"} == {
        (start, attack) for start in ("defense:nasty-teacher", "original") for attack in labels}
    # the no-teacher student reads none of the KD settings: one cell, listed under every label
    assert len([start for start, *_ in cells if start == "no-teacher"]) == 1 and {l for (l,) in listed} == labels
    assert {status for *_, status in cells} == {"done"} and queries == [(400.0,)]
    board = build_leaderboard(tmp_path / "r")
    gaps = board.per_seed[board.per_seed.metric == "gap vs no-teacher"]
    assert set(gaps.start) == {"defense:nasty-teacher", "original"} and len(gaps) == 6
    assert set(gaps.note) == {"one seed: no interval, so no verdict"}


def test_the_gap_interval_is_a_t_interval_and_the_verdict_follows_it():
    from plugins.undistillability import interval, verdict

    low, high = interval([1.0, 2.0, 3.0])
    half = 4.302652729911275 / math.sqrt(3)  # t(2 degrees of freedom, 0.975) · std 1 / √3
    assert (low, high) == (pytest.approx(2 - half, rel=1e-9), pytest.approx(2 + half, rel=1e-9))
    assert verdict([-0.05, -0.04, -0.06]).startswith("undistillable: its students are worse")
    assert verdict([-0.05, 0.01, 0.02]).startswith("undistillable: its students do not beat")
    assert verdict([0.05, 0.04, 0.06]).startswith("distillable")
    assert verdict([0.05]) == "one seed: no interval, so no verdict"
