"""Device and precision are configuration: nothing calls `.cuda()`; everything goes through here."""

from __future__ import annotations

import contextlib

import torch

from harness.registry import ConfigError

PRECISIONS = ("fp32", "bf16")


def resolve_device(name: str = "auto", where: str | None = None) -> torch.device:
    """`auto` picks CUDA when present; `cuda`/`cuda:N` fail clearly (naming `where` it was asked for) without it."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("CUDA is not available on this machine (use cpu or auto)", where=where or f"device {name}")
    return device


def autocast(device: torch.device, precision: str):
    """bf16 autocast around forward passes, or nothing for fp32."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
