"""The backdoor defense: trigger stamping in normalised tensors, poisoning, ASR by hand, and ASR recorded along
the clean fine-tuning curve of every attack cell that starts from the backdoored release."""

from __future__ import annotations

import pytest
import torch

from defenses.backdoor import KeptBackdoor, attack_success, implant_backdoor, poisoned, stamp, triggered
from harness.engine.context import start_evaluators
from harness.engine.data import Split
from harness.plugins import registry
from harness.testing import check_plugin, same_weights, seeded_model, tiny_context
from tests.test_access import rows
from tests.test_extract import run_tiny

TRIGGER = {"trigger_value": 1.0, "trigger_size": 2, "target": 0, "poison_rate": 0.25}
RESISTANT = {"variant": "resistant", "implant_epochs": 1, "total_loop": 2, "adaptation_steps": 3, "batch_size": 20,
             "ntr_batch_size": 32, "guard_threshold": 0.0}


def backdoor_params(**given):
    spec = registry().get("defense", "backdoor")
    return spec, spec.resolve(given, "backdoor")


def test_stamp_writes_the_square_per_channel_and_nothing_else():
    x = torch.zeros(2, 3, 4, 4)
    stamped = stamp(x, torch.tensor([1.0, 2.0, 3.0]).view(3, 1, 1), 2)
    for channel, value in enumerate((1.0, 2.0, 3.0)):
        assert torch.equal(stamped[:, channel, 2:, 2:], torch.full((2, 2, 2), value))
    stamped[..., 2:, 2:] = 0
    assert torch.equal(stamped, x) and x.abs().sum() == 0  # the input is not modified


def test_stamping_normalised_tensors_equals_stamping_raw_pixels_then_normalising():
    mean, std = (0.2, 0.5, 0.4), (0.3, 0.25, 0.5)
    ctx = tiny_context({})
    ctx.normalisation = {"original": (mean, std)}
    raw = torch.rand(3, 3, 6, 6, generator=torch.Generator().manual_seed(0))
    m, s = torch.tensor(mean).view(3, 1, 1), torch.tensor(std).view(3, 1, 1)
    expected = (stamp(raw, torch.ones(3, 1, 1), 5) - m) / s  # 255 at raw geometry, then the scenario's normalisation
    assert torch.allclose(triggered(ctx, (raw - m) / s, "original", {"trigger_value": 1.0, "trigger_size": 5}),
                          expected, atol=1e-6)
    assert torch.allclose(ctx.pixel(1.0, "original").flatten(), torch.tensor([8 / 3, 2.0, 1.2]))
    assert torch.equal(ctx.pixel(1.0, "restricted").flatten(), torch.tensor([1.0]))  # no normalisation recorded


def test_poisoning_stamps_and_relabels_a_fixed_share():
    ctx = tiny_context({})
    split = ctx.original_train
    data = poisoned(ctx, split, "original", TRIGGER, ctx.generator("poison"))
    changed = (data.x != split.x).flatten(1).any(dim=1)
    assert changed.sum().item() == round(0.25 * len(split))
    assert torch.all(data.y[changed] == 0) and torch.equal(data.y[~changed], split.y[~changed])
    assert torch.equal(poisoned(ctx, split, "original", TRIGGER, ctx.generator("poison")).x, data.x)  # by seed


class FirstPixelClassifier(torch.nn.Module):
    """Class 0 when the top-left pixel is positive, else class 1: the bottom-right trigger never changes it."""

    def forward(self, x):
        first = (x[:, 0, 0, 0] > 0).float()
        return torch.stack([first, 1 - first], dim=1)


def test_attack_success_rates_by_hand():
    x = torch.zeros(4, 1, 4, 4)
    x[:, 0, 0, 0] = torch.tensor([1.0, 1.0, 1.0, -1.0])  # predictions 0, 0, 0, 1
    split = Split(x, torch.tensor([0, 0, 1, 1]))
    values = attack_success(tiny_context({}), FirstPixelClassifier(), split, "restricted", params=TRIGGER)
    assert values == {"asr": 0.75, "asr_nontarget": 0.5}  # hits 1,1,1,0; without class 0: 1,0


@pytest.mark.parametrize("params", [{"implant_epochs": 1}, RESISTANT])
def test_backdoor_passes_the_plugin_check(params):
    assert check_plugin("defense", "backdoor", params) == []


def test_the_backdoor_release_records_asr_through_its_evaluator():
    spec, params = backdoor_params(implant_epochs=1, trigger_size=4)
    ctx = tiny_context(params, plugin=spec)
    ctx.evaluators = start_evaluators(spec, params)
    model = implant_backdoor(ctx, seeded_model(ctx))
    recorded = {(metric, unit): value for _, unit, metric, value in ctx.recorder.points}
    for on, split in (("original", ctx.original_test), ("restricted", ctx.restricted_test)):
        expected = attack_success(ctx, model, split, on, params=params)
        assert recorded[(f"{on}/asr", "epoch")] == pytest.approx(expected["asr"])
        assert recorded[(f"{on}/asr_nontarget", "epoch")] == pytest.approx(expected["asr_nontarget"])


def test_the_kept_loop_simulates_clean_support_and_queries_triggered_target_batches():
    spec, params = backdoor_params(**{**RESISTANT, "trigger_size": 3})
    ctx = tiny_context(params, plugin=spec)
    model = seeded_model(ctx)
    loop = KeptBackdoor(ctx, model, poisoned(ctx, ctx.original_train, "original", params, ctx.generator("poison")))
    batches = list(loop.simulated_batches())
    assert len(batches) == 3
    clean_images = {tuple(row.flatten().tolist()) for row in ctx.restricted_train.x}
    corner = ctx.pixel(1.0, "restricted").item()
    for support_x, support_y, query_x, query_y in batches:
        assert len(support_x) == 10 and len(query_x) == 10  # ⌊0.9·20/10⌋·10 support, the rest query
        assert all(tuple(row.flatten().tolist()) in clean_images for row in support_x)
        assert torch.all(query_x[..., -3:, -3:] == corner) and torch.all(query_y == 0)


def released(stage_seed: int, cell_seed: int, **given):
    """The backdoor's release in a tiny cell whose plan gives stage seed `stage_seed` and whose own (parameter-mixed)
    seed is `cell_seed`, from the same original model."""
    spec, params = backdoor_params(implant_epochs=1, trigger_size=3, **given)
    ctx = tiny_context(params, plugin=spec, seed=stage_seed)
    model = seeded_model(ctx, "original")
    ctx.seed = cell_seed
    return implant_backdoor(ctx, model), ctx


def parameters_of(model) -> dict:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def test_resistant_continues_from_exactly_the_plain_stage_one_model():
    plain, _ = released(5, 111)
    # lr0 0: stage 2 moves no parameter, so what is left is the resistant cell's own stage 1
    still, ctx = released(5, 222, variant="resistant", total_loop=2, adaptation_steps=2, batch_size=20,
                          ntr_batch_size=32, guard_threshold=0.0, lr0=0.0)
    assert ctx.recorder.notes["iterations"] == 2
    assert all(torch.equal(p, parameters_of(still)[n]) for n, p in parameters_of(plain).items())
    other_seed, _ = released(6, 111)
    other_rate, _ = released(5, 111, poison_rate=0.5)
    for other in (other_seed, other_rate):
        assert not same_weights(plain, other)


@pytest.mark.parametrize("corrupted, stops", [("original_test", False), ("original_val", True)])
def test_the_guard_reads_the_original_validation_slice_never_the_test_set(corrupted, stops):
    spec, params = backdoor_params(**{**RESISTANT, "total_loop": 4, "guard_every": 2, "guard_threshold": 5.0})
    ctx = tiny_context(params, plugin=spec)
    wrong = getattr(ctx, corrupted)
    setattr(ctx, corrupted, Split(wrong.x, (wrong.y + 1) % ctx.num_classes))  # every label wrong: accuracy 0
    implant_backdoor(ctx, seeded_model(ctx))
    assert ctx.recorder.notes.get("stopped_by_guard", False) is stops
    assert (ctx.recorder.notes["iterations"] < 4) is stops


@pytest.mark.parametrize("reinit", [True, False])
def test_the_simulated_attacker_re_initialises_the_head_or_keeps_it(reinit):
    import copy

    import torch.nn.functional as F

    spec, params = backdoor_params(**{**RESISTANT, "fts_head_reinit": reinit, "inner_lr": 0.0})
    ctx = tiny_context(params, plugin=spec)
    model = seeded_model(ctx)
    batches = list(KeptBackdoor(ctx, model, ctx.original_train).simulated_batches())
    loop = KeptBackdoor(ctx, model, ctx.original_train)  # the same streams again
    loop.meta_gradient()
    # inner lr 0: the simulated model is the released one, with its own head unless the head is re-initialised
    by_hand = sum(F.cross_entropy(copy.deepcopy(model)(qx), qy).item() for *_, qx, qy in batches) / len(batches)
    assert loop.environment.head_mode == ("initFC" if reinit else "direct")
    assert (loop.last_fts.query_loss == pytest.approx(by_hand, rel=1e-5)) is not reinit


def test_start_evaluators_bind_the_defense_parameters_and_only_for_defenses_that_register_one():
    spec, params = backdoor_params()
    assert start_evaluators(None, None) == [] and start_evaluators(registry().get("defense", "none"), {}) == []
    (evaluator,) = start_evaluators(spec, params)
    assert evaluator.keywords == {"params": params}


def test_asr_is_recorded_along_the_clean_fine_tuning_of_the_backdoored_start_only(write_experiment, tmp_path):
    results = run_tiny(write_experiment, tmp_path,
                       ("  - {plugin: none}\n", "  - {plugin: backdoor, params: {implant_epochs: 1, trigger_size: 2}}\n"),
                       ("params: {epochs: 1,", "params: {epochs: 2,"))
    recorded = rows(results, "SELECT c.kind, c.start, p.metric, p.x FROM points p JOIN cells c ON c.key = p.key "
                             "WHERE p.metric LIKE '%asr%' AND p.x_unit = 'epoch'")
    attack_epochs = sorted(x for kind, _, metric, x in recorded if kind == "attack" and metric == "restricted/asr")
    assert attack_epochs == [0.0, 1.0, 2.0]
    assert {start for _, start, *_ in recorded} == {"defense:backdoor"}
    assert ("attack", "defense:backdoor", "original/asr_nontarget", 0.0) in recorded  # the runner's start record


def test_domains_keep_their_normalisation_through_the_cache(tmp_path):
    import json

    from safetensors.torch import load_file, save_file

    from harness.engine.data import materialise

    spec = registry().get("dataset", "digits")
    settings = dict(image_size=8, channels=1, normalisation="per_domain", data_root=None, cache_dir=tmp_path)
    fresh = materialise(spec, spec.resolve({}, "digits"), **settings)
    cached = materialise(spec, spec.resolve({}, "digits"), **settings)
    assert len(fresh.mean) == len(fresh.std) == 1 and (cached.mean, cached.std) == (fresh.mean, fresh.std)
    raw_white = (1.0 - fresh.mean[0]) / fresh.std[0]
    assert fresh.train.x.max().item() <= raw_white + 1e-5  # no pixel is whiter than white

    (cache_file,) = (tmp_path / "data").iterdir()  # a cache written before the normalisation was kept
    tensors = load_file(cache_file)
    meta = json.loads(tensors["__meta__"].numpy().tobytes().decode())
    old = json.dumps({k: meta[k] for k in ("num_classes", "fingerprint")}).encode()
    save_file({**tensors, "__meta__": torch.frombuffer(bytearray(old), dtype=torch.uint8)}, str(cache_file))
    assert materialise(spec, spec.resolve({}, "digits"), **settings).mean == fresh.mean  # rebuilt, not ()


def test_the_leaderboard_shows_asr_at_t_for_the_backdoored_start_by_hand(tmp_path):
    import plugins.attack_success
    from harness.leaderboard import build_leaderboard
    from harness.store import Store
    from tests.leaderboard_fixtures import _add, built_in_registry

    asr = {0: [1.0, 0.9, 0.6], 1: [1.0, 0.7, 0.4]}  # restricted/asr at epochs 0..2, per seed
    store = Store(tmp_path)
    for start in ("original", "defense:backdoor"):
        for seed, curve in asr.items():
            config = {"scenario": {"name": "toy"}, "attack": {"plugin": "finetune", "params": {"epochs": 2}}}
            points = [(0, "epoch", "original/accuracy", 0.9)]
            for epoch, value in enumerate(curve):
                points.append((epoch, "epoch", "restricted/accuracy", 0.5))
                if start != "original":
                    points += [(epoch, "epoch", "restricted/asr", value),
                               (epoch, "epoch", "restricted/asr_nontarget", value - 0.1)]
            _add(store, f"{start}-{seed}", "attack", start, "ft", seed, config, points, "done")
    store.close()
    board = build_leaderboard(tmp_path, registry=built_in_registry(plugins.attack_success))
    table = board.table[board.table.metric.str.startswith("ASR")].set_index("metric")
    assert sorted(table.index) == ["ASR@0", "ASR@1", "ASR@2", "ASR_nt@0", "ASR_nt@1", "ASR_nt@2"]
    assert set(table.start) == {"defense:backdoor"}  # the original records no ASR
    assert table.loc["ASR@1", "mean"] == pytest.approx(0.8) and table.loc["ASR_nt@2", "mean"] == pytest.approx(0.4)
    assert table.loc["ASR@2", "display"] == "50.0 ± 14.1"  # percent of the triggered images: std of 60 and 40


def test_the_runner_gives_plain_and_resistant_of_one_seed_the_same_stage_one(write_experiment, tmp_path):
    from safetensors.torch import load_file

    from harness.store import Store

    still = "{variant: resistant, implant_epochs: 1, total_loop: 1, adaptation_steps: 2, batch_size: 20, lr0: 0.0}"
    results = run_tiny(write_experiment, tmp_path, ("  - {plugin: none}\n",
                                                    "  - {plugin: backdoor, name: plain, params: {implant_epochs: 1}}\n"
                                                    f"  - {{plugin: backdoor, name: still, params: {still}}}\n"
                                                    "  - {plugin: backdoor, name: other, seed: 1, "
                                                    "params: {implant_epochs: 1}}\n"))
    keys = dict(rows(results, "SELECT start, key FROM cells WHERE kind = 'defend'"))
    store = Store(results)
    plain, kept, other = (load_file(store.artifact(keys[f"defense:{name}"])) for name in ("plain", "still", "other"))
    store.close()
    parameters = [name for name in plain if "running_" not in name and "num_batches" not in name]
    assert parameters and all(torch.equal(plain[name], kept[name]) for name in parameters)
    assert not all(torch.equal(plain[name], other[name]) for name in parameters)  # another entry seed, another stage 1
