"""What the SOPHON step benchmarks share: the reference-style meta-gradient, peak memory, and the ratio file.

Peak memory is the peak of "Total Allocated" over the CPU allocator events recorded by torch's profiler
(`profile_memory=True`) during one extra, profiled step: it counts tensor bytes allocated after the
profiler started (the data and weights alive before are the same for both implementations), unlike
tracemalloc, which does not see torch's allocator, or ru_maxrss, which is a process-wide high-water mark
that cannot be reset.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path

import torch
from torch.func import functional_call


def keep_all_graphs_query_loss(model, fast: dict, buffers: dict, batches, inner_lr: float, inner_loss, query_loss):
    """The reference's (learn2learn first-order MAML) mean query loss: `fast` are θ-connected clones, K plain SGD
    steps whose gradients are constants, and every query graph kept alive until the caller's single backward.
    An input of a batch is a tensor or a tuple of the model's positional arguments."""
    def forward(weights, inputs):
        return functional_call(model, (weights, buffers), inputs if isinstance(inputs, tuple) else (inputs,))

    losses = []
    for support_in, support_target, query_in, query_target in batches:
        support = inner_loss(forward(fast, support_in), support_target)
        grads = torch.autograd.grad(support, list(fast.values()))  # first order: no create_graph
        fast = {n: t - inner_lr * g for (n, t), g in zip(fast.items(), grads)}
        losses.append(query_loss(forward(fast, query_in), query_target))
    return torch.stack(losses).mean()


def relative_error(lean: dict, expected: dict) -> float:
    """‖lean − expected‖ / ‖expected‖ over all parameter tensors."""
    difference = sum((lean[n] - expected[n]).pow(2).sum().item() for n in lean)
    return math.sqrt(difference / sum(expected[n].pow(2).sum().item() for n in lean))


def peak_allocated_mib(step) -> float:
    """Peak bytes allocated during `step`, from the profiler's CPU memory events (see the module docstring)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    handle, path = tempfile.mkstemp(suffix=".json")
    os.close(handle)
    try:
        prof.export_chrome_trace(path)
        events = json.loads(Path(path).read_text())["traceEvents"]
    finally:
        os.remove(path)
    return max(e["args"]["Total Allocated"] for e in events if e.get("name") == "[memory]") / 2 ** 20


def measure(benchmark, results: dict, key, step, rounds: int) -> None:
    """Profile one `step` for its peak memory (which also warms up), then time `rounds` more; store both."""
    benchmark.extra_info["peak_mib"] = peak = peak_allocated_mib(step)
    benchmark.pedantic(step, rounds=rounds, iterations=1)
    results[key] = {"seconds": benchmark.stats.stats.mean, "peak_mib": peak}


def write_ratios(path: Path, setup: dict, collected: dict, names, pytestconfig) -> None:
    """Write reference/lean time and memory ratios per name to `path` and print them in the closing summary.

    `collected[(name, "lean" | "reference")]` = {"seconds", "peak_mib"}; `collected[(name, "error")]` = the
    meta-gradient relative error. A partial run (`-k`) that measured no complete pair leaves the file alone.
    """
    summary = {}
    for name in names:
        lean, reference = collected.get((name, "lean")), collected.get((name, "reference"))
        if lean and reference:
            summary[name] = {"lean": lean, "reference": reference,
                             "time_ratio_reference_over_lean": reference["seconds"] / lean["seconds"],
                             "memory_ratio_reference_over_lean": reference["peak_mib"] / lean["peak_mib"],
                             "meta_gradient_relative_error": collected.get((name, "error"))}
    if not summary:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"setup": setup, **summary}, indent=2) + "\n")
    ratios = {name: {k: v for k, v in row.items() if "ratio" in k or "error" in k} for name, row in summary.items()}
    with pytestconfig.pluginmanager.get_plugin("capturemanager").global_and_fixture_disabled():
        print(f"\n{path}: {json.dumps(ratios, indent=1)}")
