"""Datasets materialised once as tensors, with a content fingerprint; batches are index gathers.

Preprocessing (resize, channel count, normalisation) is a scenario setting applied here, once, and is
part of the fingerprint. The materialised tensors are cached as safetensors so a second run (or another
worker process) reads them back in a fraction of a second.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
NORMALISATIONS = ("per_domain", "imagenet", "none")


@dataclass
class Split:
    """Images (N, C, H, W) float and labels (N,) long, on one device; `y` is None for unlabelled data."""

    x: torch.Tensor
    y: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.x)

    def subset(self, index) -> "Split":
        index = torch.as_tensor(index, dtype=torch.long, device=self.x.device)
        return Split(self.x[index], None if self.y is None else self.y[index])

    def batch(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(x, y) of the examples at `index` (y None when unlabelled): what an objective is called with."""
        return self.x[index], None if self.y is None else self.y[index]

    def to(self, device) -> "Split":
        return Split(self.x.to(device), None if self.y is None else self.y.to(device))


@dataclass
class Domain:
    """One preprocessed dataset: train and test splits, class count, content fingerprint, and the per-channel
    normalisation applied to its pixels in [0, 1] (what a raw pixel value becomes in these tensors)."""

    name: str
    train: Split
    test: Split
    num_classes: int
    fingerprint: str
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()

    def to(self, device) -> "Domain":
        return Domain(self.name, self.train.to(device), self.test.to(device), self.num_classes, self.fingerprint,
                      self.mean, self.std)


def _to_float_nchw(images: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(np.ascontiguousarray(images))
    x = x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2)
    return x.float().div_(255.0)


def _convert_channels(x: torch.Tensor, channels: int) -> torch.Tensor:
    if x.shape[1] == channels:
        return x
    if x.shape[1] == 1:
        return x.repeat(1, channels, 1, 1)
    if channels == 1:
        return x.mean(dim=1, keepdim=True)
    raise ValueError(f"cannot convert {x.shape[1]}-channel images to {channels} channels")


@contextmanager
def _one_thread():
    """Preprocessing at one torch thread: resizing and the per-domain statistics round differently per thread
    count, and the data (so every curve trained on it) must not depend on the threads of the process that
    materialised it."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _resize(x: torch.Tensor, size: int, chunk: int = 4096) -> torch.Tensor:
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    return torch.cat([F.interpolate(x[i:i + chunk], size=(size, size), mode="bilinear", antialias=True,
                                    align_corners=False) for i in range(0, len(x), chunk)])


def _stats(raw, train: torch.Tensor, normalisation: str, channels: int):
    if normalisation == "none":
        return (0.0,) * channels, (1.0,) * channels
    if normalisation == "imagenet":
        mean, std = IMAGENET_MEAN, IMAGENET_STD
    elif raw.mean is not None:
        mean, std = tuple(raw.mean), tuple(raw.std)
    else:
        return tuple(train.mean(dim=(0, 2, 3)).tolist()), tuple(train.std(dim=(0, 2, 3)).clamp_min(1e-6).tolist())
    if len(mean) != channels:  # grey statistics for colour inputs and vice versa
        mean, std = (float(np.mean(mean)),) * channels, (float(np.mean(std)),) * channels
    return mean, std


def _in_order(*tensors: torch.Tensor | None) -> list[torch.Tensor]:
    """The tensors that exist (labels are absent for unlabelled data), in the order given."""
    return [t for t in tensors if t is not None]


def fingerprint(*tensors: torch.Tensor, settings: dict) -> str:
    """A SHA-256 over the settings (as sorted JSON) and the tensors' bytes: what a materialised dataset is keyed by."""
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    for tensor in tensors:
        digest.update(tensor.contiguous().cpu().numpy().tobytes())
    return digest.hexdigest()


def materialise(spec, params: dict, *, image_size: int, channels: int, normalisation: str,
                data_root: Path | None, cache_dir: Path | None) -> Domain:
    """Read a dataset plugin's raw arrays, preprocess them once, and cache the tensors."""
    from safetensors.torch import save_file

    settings = {"dataset": spec.name, "version": spec.cache_version, "params": params, "image_size": image_size,
                "channels": channels, "normalisation": normalisation}
    cache_key = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()
    cache_file = Path(cache_dir) / "data" / f"{spec.name}-{cache_key[:16]}.safetensors" if cache_dir else None
    if cache_file is not None and cache_file.exists():
        cached = _read_cache(cache_file, spec.name)
        if cached is not None:
            return cached

    raw = spec.load()(params, data_root=data_root, image_size=image_size)
    with _one_thread():
        train = _resize(_convert_channels(_to_float_nchw(raw.train_x), channels), image_size)
        test = _resize(_convert_channels(_to_float_nchw(raw.test_x), channels), image_size)
        mean, std = _stats(raw, train, normalisation, channels)
    mean_t, std_t = torch.tensor(mean).view(1, -1, 1, 1), torch.tensor(std).view(1, -1, 1, 1)
    train, test = (train - mean_t) / std_t, (test - mean_t) / std_t
    labels = {"train_y": torch.from_numpy(raw.train_y), "test_y": torch.from_numpy(raw.test_y)} if raw.labelled else {}
    settings["mean"], settings["std"] = list(mean), list(std)
    domain = Domain(spec.name, Split(train, labels.get("train_y")), Split(test, labels.get("test_y")),
                    raw.num_classes, fingerprint(*_in_order(train, labels.get("train_y"), test, labels.get("test_y")),
                                                 settings={k: settings[k] for k in settings if k != "version"}),
                    tuple(mean), tuple(std))
    if cache_file is not None:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        meta = json.dumps({"num_classes": domain.num_classes, "fingerprint": domain.fingerprint,
                           "settings": {k: settings[k] for k in settings if k != "version"}}).encode()
        tmp = cache_file.with_suffix(f".tmp{os.getpid()}")
        save_file({"train_x": train.contiguous(), "test_x": test.contiguous(), **labels,
                   "__meta__": torch.frombuffer(bytearray(meta), dtype=torch.uint8)}, str(tmp))
        os.replace(tmp, cache_file)
    return domain


def _read_cache(cache_file: Path, name: str) -> Domain | None:
    """The cached domain if its tensors still hash to the fingerprint stored with them; else None (rebuild).

    A truncated or altered cache file is reported on stderr and rebuilt, never trusted and never fatal.
    """
    from safetensors.torch import load_file

    try:
        tensors = load_file(cache_file)
        meta = json.loads(tensors.pop("__meta__").numpy().tobytes().decode())
        if "settings" not in meta:
            return None  # written before caches carried what verifies them: rebuilt once, quietly
        parts = [tensors["train_x"], tensors.get("train_y"), tensors["test_x"], tensors.get("test_y")]
        intact = fingerprint(*_in_order(*parts), settings=meta["settings"]) == meta["fingerprint"]
    except Exception as exc:  # safetensors, JSON and key errors alike mean a damaged file
        intact, why = False, f"{type(exc).__name__}: {exc}"
    else:
        why = "its tensors no longer match their fingerprint"
    if not intact:
        print(f"{cache_file}: damaged data cache ({' '.join(why.split())[:160]}); rebuilding it", file=sys.stderr)
        return None
    settings = meta["settings"]
    return Domain(name, Split(parts[0], parts[1]), Split(parts[2], parts[3]), meta["num_classes"], meta["fingerprint"],
                  tuple(settings["mean"]), tuple(settings["std"]))


def stratified_split(labels: torch.Tensor, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (first, rest): `fraction` of every class goes to `first`, chosen by a seeded permutation."""
    gen = torch.Generator().manual_seed(seed)
    first, rest = [], []
    labels = labels.cpu()
    for cls in torch.unique(labels):
        idx = torch.nonzero(labels == cls).flatten()
        idx = idx[torch.randperm(len(idx), generator=gen)]
        cut = int(round(fraction * len(idx)))
        first.append(idx[:cut])
        rest.append(idx[cut:])
    return torch.sort(torch.cat(first)).values, torch.sort(torch.cat(rest)).values


def restricted_roles(train: Split, mode: str, seed: int = 0) -> tuple[Split, Split, str]:
    """Split the restricted training set into (defender, adversary) parts and a manifest hash.

    `halves`: stratified 50/50 (the project default); `none`: both get everything (the reference);
    `fraction:f`: the defender gets a stratified share f.
    """
    if mode == "none":
        index_def = index_adv = torch.arange(len(train))
    else:
        share = 0.5 if mode == "halves" else float(mode.partition(":")[2])
        index_def, index_adv = stratified_split(_strata(train), share, seed)
    manifest = hashlib.sha256(index_def.numpy().tobytes() + b"|" + index_adv.numpy().tobytes()).hexdigest()
    return train.subset(index_def), train.subset(index_adv), manifest


def _strata(split: Split) -> torch.Tensor:
    """Class labels to stratify by (one stratum for unlabelled data)."""
    return split.y if split.y is not None else torch.zeros(len(split), dtype=torch.long)


def held_out(split: Split, fraction: float, seed: int) -> tuple[Split, Split]:
    """(fit, validation): a stratified `fraction` of every class (at least one example of each class that has
    two or more) is held out for choices; the rest is trained on."""
    gen = torch.Generator().manual_seed(seed)
    fit, val = [], []
    labels = _strata(split).cpu()
    for cls in torch.unique(labels):
        idx = torch.nonzero(labels == cls).flatten()
        idx = idx[torch.randperm(len(idx), generator=gen)]
        cut = min(len(idx) - 1, max(1, int(round(fraction * len(idx))))) if len(idx) > 1 else 0
        val.append(idx[:cut])
        fit.append(idx[cut:])
    return split.subset(torch.sort(torch.cat(fit)).values), split.subset(torch.sort(torch.cat(val)).values)


def within_budget(split: Split, budget: str, seed: int) -> Split:
    """The adversary's share under a data budget: `all`, `per_class:n` (the first n of every class in a seeded
    order) or `fraction:f` (a stratified share f)."""
    head, _, amount = budget.partition(":")
    if budget == "all":
        return split
    if head == "fraction":
        return split.subset(stratified_split(_strata(split), float(amount), seed)[0])
    gen = torch.Generator().manual_seed(seed)
    labels = _strata(split).cpu()
    kept = [idx[torch.randperm(len(idx), generator=gen)][:int(amount)]
            for idx in (torch.nonzero(labels == cls).flatten() for cls in torch.unique(labels))]
    return split.subset(torch.sort(torch.cat(kept)).values)


def _epoch_stop(n: int, batch_size: int, drop_last: bool) -> int:
    """How many examples one epoch uses: a short final batch is dropped unless it is the only one."""
    return n - n % batch_size if drop_last and n >= batch_size else n


def epoch_steps(n: int, batch_size: int, drop_last: bool = True) -> int:
    """How many batches `batch_indices` yields per epoch (schedules and step budgets need it up front)."""
    return -(-_epoch_stop(n, batch_size, drop_last) // batch_size)


def cycling_batches(n: int, batch_size: int, generator: torch.Generator, drop_last: bool = True):
    """Shuffled index batches forever, reshuffled at every wrap (never a dropped batch at the wrap)."""
    while True:
        yield from batch_indices(n, batch_size, generator, drop_last)


def batch_indices(n: int, batch_size: int, generator: torch.Generator, drop_last: bool = True):
    """One epoch of shuffled index batches; with drop_last a short final batch is skipped (reference)."""
    order = torch.randperm(n, generator=generator)
    for start in range(0, _epoch_stop(n, batch_size, drop_last), batch_size):
        yield order[start:start + batch_size]
