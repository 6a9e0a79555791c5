"""Attack throughput: the engine's tensor-resident loop against a reference-style DataLoader loop.

Both fine-tune the same cnn-m start on the same 4,000 synthetic 1x28x28 images with SOPHON's recipe
(momentum SGD 0.9, lr 1e-4, weight decay 1e-4, batch 200, last short batch dropped). The DataLoader's sampler
draws exactly the permutation `batch_indices` draws (one torch.randperm per epoch from an equally seeded
generator), so both loops must trace the same curve; only how batches reach the model differs. The ratio of
their examples/s goes to benchmarks/results/attack_throughput.json and into the run's closing summary.

    .venv/bin/python -m pytest benchmarks/test_attack_throughput.py -q -p no:cacheprovider -o addopts=""
"""

import json
import platform
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Sampler, TensorDataset

from harness.engine import seeding
from harness.engine.models import build_model, state_tensors
from harness.engine.train import evaluate, make_optimizer, train_epochs
from harness.plugins import Registry
from harness.testing import synthetic_split
from plugins import architectures

N_TRAIN, N_TEST, BATCH, SEED, LR = 4000, 1000, 200, 0, 1e-4
RESULTS = Path(__file__).parent / "results" / "attack_throughput.json"

TRAIN = synthetic_split(N_TRAIN, size=28, seed=3, pattern_seed=1)
TEST = synthetic_split(N_TEST, size=28, seed=4, pattern_seed=1)


def start_model() -> torch.nn.Module:
    """The same cnn-m start for every loop (seeded init)."""
    registry = Registry(strict=True)
    registry.add(architectures, name="architectures")
    spec = registry.get("architecture", "cnn-m")
    seeding.seed_everything(SEED)
    return build_model(spec, spec.resolve({}, "cnn-m"), in_channels=1, image_size=28, num_classes=10)


def batch_generator() -> torch.Generator:
    return seeding.generator(SEED, "batches")


class EpochPermutations(Sampler):
    """What the engine's `batch_indices` draws: one torch.randperm per epoch from the given generator."""

    def __init__(self, n: int, generator: torch.Generator):
        self.n, self.generator = n, generator

    def __iter__(self):
        return iter(torch.randperm(self.n, generator=self.generator).tolist())

    def __len__(self) -> int:
        return self.n


class EngineLoop:
    """The attack engine's way: data stays a tensor on the device, batches are index gathers."""

    def __init__(self, model):
        self.model, self.generator = model, batch_generator()
        self.optimizer = make_optimizer("sgd_momentum", model.parameters(), LR)

    def epoch(self) -> None:
        train_epochs(self.model, TRAIN, self.optimizer, epochs=1, batch_size=BATCH, generator=self.generator)


class DataLoaderLoop:
    """The reference's way (SOPHON's finetune_test.py): a DataLoader over a dataset, each batch moved to the device."""

    def __init__(self, model):
        self.model, self.device = model, TRAIN.x.device
        dataset = TensorDataset(TRAIN.x.cpu(), TRAIN.y.cpu())
        self.loader = DataLoader(dataset, batch_size=BATCH, drop_last=True,
                                 sampler=EpochPermutations(len(dataset), batch_generator()))
        self.optimizer = torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9, weight_decay=1e-4)

    def epoch(self) -> None:
        self.model.train()
        running_loss = 0.0
        for x, y in self.loader:
            x, y = x.to(self.device), y.to(self.device)
            self.optimizer.zero_grad()
            loss = F.cross_entropy(self.model(x), y)
            loss.backward()
            self.optimizer.step()
            running_loss += loss.item()  # the reference logs every batch: a sync, like the engine's finite check


def examples_per_epoch() -> int:
    return N_TRAIN - N_TRAIN % BATCH


@pytest.mark.parametrize("loop", [EngineLoop, DataLoaderLoop], ids=["engine", "dataloader"])
def test_epoch_throughput(benchmark, loop):
    benchmark.group = "attack-throughput (one epoch, cnn-m, 4000 x 1x28x28, batch 200)"
    benchmark.pedantic(lambda trainer: trainer.epoch(), setup=lambda: ((loop(start_model()),), {}), rounds=2)
    benchmark.extra_info["examples_per_second"] = examples_per_epoch() / benchmark.stats.stats.mean


def test_same_curve_and_throughput_ratio(report):
    """Two epochs of each loop, interleaved so both see the same machine load; only training is timed."""
    loops = {"engine": EngineLoop(start_model()), "dataloader": DataLoaderLoop(start_model())}
    seconds = dict.fromkeys(loops, 0.0)
    curves = {name: [] for name in loops}
    for _ in range(2):
        for name, loop in loops.items():
            started = time.perf_counter()
            loop.epoch()
            seconds[name] += time.perf_counter() - started
            curves[name].append(evaluate(loop.model, TEST))
    for (acc_e, loss_e), (acc_d, loss_d) in zip(curves["engine"], curves["dataloader"]):
        assert acc_e == pytest.approx(acc_d, abs=1e-5) and loss_e == pytest.approx(loss_d, abs=1e-5)
    engine, dataloader = (state_tensors(loops[name].model) for name in loops)
    for key in engine:
        torch.testing.assert_close(engine[key], dataloader[key], atol=1e-5, rtol=0)

    speed = {name: 2 * examples_per_epoch() / seconds[name] for name in loops}
    result = {
        "engine_examples_per_second": round(speed["engine"], 1),
        "dataloader_examples_per_second": round(speed["dataloader"], 1),
        "ratio": round(speed["engine"] / speed["dataloader"], 3),
        "setup": {"model": "cnn-m", "images": f"{N_TRAIN} x 1x28x28 synthetic", "batch_size": BATCH, "epochs": 2,
                  "optimizer": "sgd_momentum lr 1e-4 wd 1e-4", "device": str(TRAIN.x.device),
                  "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
                  "machine": platform.machine(), "python": platform.python_version()},
        "same_curve": {"restricted_accuracy_per_epoch": [acc for acc, _ in curves["engine"]]},
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    report(f"attack throughput: engine {result['engine_examples_per_second']} examples/s, DataLoader "
           f"{result['dataloader_examples_per_second']} examples/s, ratio {result['ratio']}x "
           f"(same curve; {RESULTS})")
