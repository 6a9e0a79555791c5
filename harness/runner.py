"""Plan -> run what is missing -> report. Resumable: finished cells are never run again.

One runner per results directory at a time (a lock file says so clearly). Cells left 'running' by a
killed run are retried; a failed cell is retried on the next run; cells whose input failed are skipped.
"""

from __future__ import annotations

import fcntl
import os
import sys
from concurrent.futures import FIRST_COMPLETED, wait
from dataclasses import dataclass, field
from pathlib import Path

from harness.cells import Runtime, data_facts
from harness.config import Experiment
from harness.plan import build_cells, memberships, resolve
from harness.registry import ConfigError
from harness.store import FINISHED, Store


@dataclass
class RunSummary:
    total: int
    reused: int
    statuses: dict[str, int] = field(default_factory=dict)
    failed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failed and not self.skipped


class RunLock:
    """An exclusive lock on a results directory, released when the process exits, even by SIGKILL."""

    def __init__(self, root: Path):
        self.handle = open(root / ".run.lock", "w")
        try:
            fcntl.flock(self.handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConfigError("another `untunable run` is using this results directory", where=str(root)) from None

    def release(self):
        self.handle.close()


def plan_cells(experiment: Experiment, runtime: Runtime, registry):
    resolved = resolve(experiment, registry)
    facts = {rs.name: data_facts(rs.config(), runtime) for rs in resolved.scenarios}
    cells = build_cells(resolved, facts, runtime.precision)
    return resolved, cells


def run(experiment: Experiment, runtime: Runtime, registry, *, executor: str = "local", workers: int | None = None,
        progress=None) -> RunSummary:
    from harness.engine.device import resolve_device

    resolve_device(runtime.device)  # a machine without CUDA fails here, once, not in every cell
    root = Path(runtime.root)
    root.mkdir(parents=True, exist_ok=True)
    lock = RunLock(root)
    try:
        store = Store(root, verify=True)
    except BaseException:
        lock.release()
        raise
    try:
        resolved, cells = plan_cells(experiment, runtime, registry)
        store.replace_memberships(memberships(cells, resolved))
        store.reset_abandoned()
        registry.notify("run_started", experiment=experiment, cells=cells)
        done = {k for k, s in store.statuses().items() if s in FINISHED}
        todo = [c for c in cells if c.key not in done]
        store.verify_artifacts(d for c in todo for d in c.deps if d in done)  # a bad checkpoint stops the run here
        summary = RunSummary(total=len(cells), reused=len(cells) - len(todo))
        exe = registry.get("executor", executor).load()(workers=experiment.workers if workers is None else workers,
                                                        runtime=runtime)
        try:
            _drive(todo, done, exe, store, registry, summary, progress)
        finally:
            exe.shutdown()
        return summary
    finally:
        store.close()
        lock.release()


def _drive(todo, done, exe, store, registry, summary, progress) -> None:
    """Submit cells whose inputs are finished, as capacity allows, until none is left."""
    waiting = list(todo)
    running = {}
    bad: set[str] = set()
    if progress:
        progress.start(total=len(todo), reused=summary.reused)
    while waiting or running:
        submitted = False
        for cell in list(waiting):
            if any(d in bad for d in cell.deps):
                waiting.remove(cell)
                bad.add(cell.key)
                summary.skipped.append(cell.title)
                if progress:
                    progress.finished(cell, "skipped (an input failed)", 0.0)
            elif all(d in done for d in cell.deps) and len(running) < exe.capacity:
                waiting.remove(cell)
                running[exe.submit(cell)] = cell
                submitted = True
                if progress:
                    progress.started(cell)
        if not running:
            if not submitted:  # nothing can ever start: inputs missing from the plan
                summary.skipped.extend(c.title for c in waiting)
                break
            continue
        finished, _ = wait(list(running), return_when=FIRST_COMPLETED)
        for future in finished:
            cell = running.pop(future)
            try:
                status = future.result()
            except Exception as exc:  # the worker itself died: out of memory, a signal, a lost Ray node
                status = _worker_died(store, cell, exc)
                exe.recover()
            summary.statuses[status] = summary.statuses.get(status, 0) + 1
            if status in FINISHED:
                done.add(cell.key)
            else:
                bad.add(cell.key)
                summary.failed.append(cell.title)
            registry.notify("cell_finished", cell=cell, status=status)
            if progress:
                progress.finished(cell, status, (store.cell(cell.key) or {}).get("seconds") or 0.0)
    if progress:
        progress.stop()


def _worker_died(store: Store, cell, exc: Exception) -> str:
    """A worker vanished mid-cell: record the cell as failed so the grid goes on."""
    if store.status(cell.key) != "running":
        store.mark_running(cell)
    store.finish(cell.key, "failed", error=f"the worker died while running this cell ({type(exc).__name__}: {exc})")
    return "failed"


def default_runtime(experiment: Experiment, *, results: str | None, device: str | None, precision: str | None,
                    cache_dir: str | None = None, threads: int | None = None) -> Runtime:
    root = experiment.results_dir(results)
    cache = cache_dir or experiment.cache_dir or os.environ.get("UNTUNABLE_CACHE") or str(root / "cache")
    return Runtime(root=str(root), device=device or experiment.device, precision=precision or experiment.precision,
                   data_root=experiment.data_root or os.environ.get("UNTUNABLE_DATA"), cache_dir=cache, threads=threads)


def is_interactive() -> bool:
    return sys.stderr.isatty() and not os.environ.get("CI")
