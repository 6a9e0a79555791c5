"""The first thing a worker process does: tie its life to the runner's, before any heavy import.

A worker spawned just before the runner is killed must not live on. Linux's parent-death signal covers a
parent that dies after it is set; comparing the parent's pid with the runner's covers one that died before.
This module imports nothing heavy, so the window between the process starting and the signal being set
is as short as the interpreter allows, and the pid check closes it.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal

PR_SET_PDEATHSIG = 1


def die_with_parent(parent_pid: int | None = None) -> None:
    """Ask the kernel to SIGKILL this process when its parent dies; exit now if `parent_pid` is already gone."""
    with contextlib.suppress(OSError, AttributeError):  # without Linux's libc workers may outlive a killed runner
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if parent_pid is not None and os.getppid() != parent_pid:
        os._exit(1)


def start_worker(parent_pid: int, threads: int | None) -> None:
    """ProcessPoolExecutor's initializer: die with the runner, then set the torch thread count."""
    die_with_parent(parent_pid)
    if threads:
        os.environ["OMP_NUM_THREADS"] = str(threads)
        import torch
        torch.set_num_threads(threads)
