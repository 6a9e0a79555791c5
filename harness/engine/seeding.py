"""Seeds derived from cell keys, so a cell's curve is the same alone, in a grid, locally or on Ray."""

from __future__ import annotations

import hashlib
import random

import numpy as np
import torch


def derive_seed(*parts) -> int:
    """A 63-bit seed from any printable parts (a cell key, a stream name, ...)."""
    digest = hashlib.sha256("/".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def seed_everything(seed: int) -> None:
    """Seed python's, numpy's and torch's global generators (what layer initialisation draws from)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def generator(seed: int, name: str, device: torch.device | str = "cpu") -> torch.Generator:
    """A named torch generator: samplers never draw from the global RNG."""
    gen = torch.Generator(device=device)
    gen.manual_seed(derive_seed(seed, name))
    return gen
