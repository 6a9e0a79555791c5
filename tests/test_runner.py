"""The runner: content-keyed cells, one transaction per cell, resume, failure isolation, divergence."""

from __future__ import annotations

import contextlib
import ctypes
import glob
import os
import signal
import sqlite3
import subprocess
import sys
import time
import types

import pytest

from harness import hookimpl
from harness.cells import Runtime
from harness.cli import main
from harness.config import load_experiment
from harness.plugins import registry
from harness.runner import plan_cells, run
from harness.store import SPLITS, X_UNITS, Store
from tests.conftest import TINY_EXPERIMENT

PR_SET_CHILD_SUBREAPER = 36


def run_file(path, results, threads=None, **kwargs):
    experiment = load_experiment(path)
    runtime = Runtime(root=str(results), device="cpu", cache_dir=str(results / "cache"), threads=threads)
    return run(experiment, runtime, registry(), **kwargs)


def rows(results, query, *args):
    with sqlite3.connect(results / "results.sqlite") as db:
        return db.execute(query, args).fetchall()


def test_tiny_grid_stores_curves_and_rerun_does_nothing(write_experiment, tmp_path):
    path, results = write_experiment(), tmp_path / "results"
    first = run_file(path, results)
    assert first.ok and first.reused == 0 and first.statuses == {"done": 5}
    kinds = rows(results, "SELECT kind, start, status FROM cells ORDER BY kind, start")
    assert kinds == [("attack", "defense:none", "done"), ("attack", "original", "done"),
                     ("attack", "scratch", "done"), ("defend", "defense:none", "done"), ("pretrain", "original", "done")]
    declared = {m.name for m in registry().get("task", "classification").measures}
    for metric, x_unit in rows(results, "SELECT DISTINCT metric, x_unit FROM points"):
        split, measure = metric.split("/")
        assert split in SPLITS and measure in declared and x_unit in X_UNITS
    curve = rows(results, "SELECT p.x FROM points p JOIN cells c ON c.key=p.key WHERE c.start='scratch' "
                          "AND p.metric='restricted/accuracy' AND p.x_unit='epoch' ORDER BY p.x")
    assert [x for (x,) in curve] == [0.0, 1.0]
    artifacts = rows(results, "SELECT a.path FROM artifacts a JOIN cells c ON c.key=a.key WHERE c.kind='pretrain'")
    assert artifacts and artifacts[0][0].endswith(".safetensors")
    assert rows(results, "SELECT suite, label FROM memberships") == [("custom", "sgd")] * 3

    finished = rows(results, "SELECT key, finished FROM cells")
    second = run_file(path, results)
    assert second.reused == 5 and second.statuses == {}
    assert rows(results, "SELECT key, finished FROM cells") == finished


def test_same_seed_same_curve_and_shared_baselines(write_experiment, tmp_path):
    text = TINY_EXPERIMENT.replace("defenses:\n  - {plugin: none}", "defenses:\n  - {plugin: none}\n  - {plugin: none, name: again}")
    run_file(write_experiment(text), tmp_path / "a")
    run_file(write_experiment(), tmp_path / "b")
    query = "SELECT c.start, p.x_unit, p.x, p.metric, p.value FROM points p JOIN cells c ON c.key=p.key " \
            "WHERE c.start IN ('scratch', 'original') ORDER BY c.start, p.x_unit, p.metric, p.x"
    assert rows(tmp_path / "a", query) == rows(tmp_path / "b", query)
    # two defenses, still one scratch and one original cell per attack config and seed
    assert rows(tmp_path / "a", "SELECT count(*) FROM cells WHERE kind='attack' AND start IN ('scratch', 'original')") == [(2,)]


@pytest.fixture
def test_attack():
    """Register an attack plugin for one test (inline workers see it), and remove it afterwards."""
    added = []

    def add(name, factory, **extra):
        plugin = types.SimpleNamespace(register_attacks=hookimpl(lambda register: register(
            name, description="a test attack", factory=factory, **extra)))
        registry().add(plugin, name=name)
        added.append((name, plugin))

    yield add
    for name, plugin in added:
        registry().pm.unregister(plugin)
        registry().specs["attack"].pop(name, None)


@pytest.fixture
def exploding_attack(write_experiment, test_attack):
    """The tiny experiment plus an attack `test-explode` that raises after recording its first point."""
    def explode(ctx, model):
        ctx.record(model, on="restricted", epoch=0, step=0)
        raise ValueError("boom at epoch 0")

    test_attack("test-explode", explode)
    return write_experiment(TINY_EXPERIMENT.replace("attacks:\n", "attacks:\n  - {plugin: test-explode}\n"))


def test_failing_cell_is_stored_and_others_continue(exploding_attack, tmp_path):
    summary = run_file(exploding_attack, tmp_path / "r")
    assert len(summary.failed) == 3 and summary.statuses["done"] == 5
    (error,) = set(rows(tmp_path / "r", "SELECT error FROM cells WHERE status='failed'"))
    assert "ValueError: boom at epoch 0" in error[0] and "Traceback" in error[0]
    assert rows(tmp_path / "r", "SELECT count(*) FROM points p JOIN cells c ON c.key=p.key WHERE c.status='failed'")[0][0] > 0


@pytest.mark.parametrize("metric", ["restricted/fid", "train/accuracy", "accuracy"])
def test_an_unknown_metric_fails_its_cell_when_recorded(write_experiment, tmp_path, test_attack, metric):
    """An undeclared name fails the cell at the point it is recorded; no row stays running, the run goes on."""
    def record_fid(ctx, model):
        ctx.record(model, on="restricted", epoch=0, step=0)
        ctx.recorder.point(0, "epoch", metric, 1.0)
        return model

    test_attack("test-fid", record_fid)
    text = TINY_EXPERIMENT.replace("attacks:\n", "attacks:\n  - {plugin: test-fid}\n")
    summary = run_file(write_experiment(text), tmp_path / "r")
    assert len(summary.failed) == 3 and summary.statuses["done"] == 5
    assert rows(tmp_path / "r", "SELECT count(*) FROM cells WHERE status='running'") == [(0,)]
    (error,) = set(rows(tmp_path / "r", "SELECT error FROM cells WHERE status='failed'"))
    assert f"UnknownMetric: metric {metric!r} is not declared here" in error[0]
    assert "record_fid" in error[0]  # the traceback points at the plugin line that recorded it


def test_a_measure_declared_by_the_plugin_may_be_recorded(write_experiment, tmp_path, test_attack):
    from harness import Measure

    def record_extra(ctx, model):
        ctx.record(model, on="restricted", epoch=0, step=0)
        ctx.recorder.point(0, "epoch", "restricted/sharpness", 0.5)
        return model

    test_attack("test-extra", record_extra, measures=[Measure("sharpness", higher_is_better=False)])
    text = TINY_EXPERIMENT.replace("attacks:\n", "attacks:\n  - {plugin: test-extra}\n")
    summary = run_file(write_experiment(text), tmp_path / "r")
    assert summary.ok
    assert rows(tmp_path / "r", "SELECT count(*) FROM points WHERE metric='restricted/sharpness'") == [(3,)]


def test_a_run_with_failed_cells_still_writes_the_leaderboard_marking_them(exploding_attack, tmp_path, capsys):
    assert main(["run", str(exploding_attack), "--results", str(tmp_path / "r"), "--quiet"]) == 1
    out, err = capsys.readouterr()
    assert "leaderboard:" in out and "failed: attack digits-to-digits scratch test-explode seed=0" in err
    markdown = (tmp_path / "r" / "leaderboard.md").read_text()
    assert "test-explode · scratch: seed 0 FAILED and is left out of these numbers" in markdown
    assert "| sgd | defense:none |" in markdown  # the cells that finished are ranked as usual


def test_diverging_attack_is_a_result(write_experiment, tmp_path):
    text = TINY_EXPERIMENT.replace("lr: 0.01", "lr: 1.0e+8")
    summary = run_file(write_experiment(text), tmp_path / "r")
    assert summary.statuses.get("diverged") == 3 and summary.ok
    points = rows(tmp_path / "r", "SELECT count(*) FROM points p JOIN cells c ON c.key=p.key WHERE c.status='diverged'")
    assert points[0][0] > 0  # the curve so far is kept


def test_cell_keys_follow_content(write_experiment, tmp_path):
    base = load_experiment(write_experiment())
    runtime = Runtime(root=str(tmp_path), device="cpu", cache_dir=str(tmp_path / "cache"))
    _, cells = plan_cells(base, runtime, registry())
    changed = load_experiment(write_experiment(TINY_EXPERIMENT.replace("lr: 0.01", "lr: 0.02"), name="b.yaml"))
    _, cells_b = plan_cells(changed, runtime, registry())
    same = {c.key for c in cells} & {c.key for c in cells_b}
    assert same == {c.key for c in cells if c.kind in ("pretrain", "defend")}


def test_locked_results_directory_is_a_clear_error(write_experiment, tmp_path, capsys):
    import fcntl

    results = tmp_path / "r"
    results.mkdir()
    with open(results / ".run.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        assert main(["run", str(write_experiment()), "--results", str(results), "--quiet"]) == 2
    assert "another `untunable run` is using this results directory" in capsys.readouterr().err


def test_cuda_on_a_cpu_machine_is_a_clear_error(write_experiment, tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert main(["run", str(write_experiment()), "--results", str(tmp_path), "--device", "cuda", "--quiet"]) == 2
    assert "CUDA is not available" in capsys.readouterr().err


GRID = TINY_EXPERIMENT.replace("seeds: [0]", "seeds: [0, 1, 2]").replace("workers: 0", "workers: 2").replace(
    "{epochs: 1, batch_size: 64, lr: 0.01}", "{epochs: 6, batch_size: 16, lr: [0.01, 0.02]}")


def run_command(path, results):
    return [sys.executable, "-m", "harness.cli", "run", str(path), "--results", str(results), "--quiet",
            "--no-leaderboard"]


def start_runner(path, results, log=None):
    """The CLI runner as a real process (stderr, with its progress lines, to `log` if given)."""
    return subprocess.Popen(run_command(path, results), stdout=subprocess.DEVNULL,
                            stderr=open(log, "ab") if log else subprocess.DEVNULL)


def attacks_done(results) -> int:
    try:
        return rows(results, "SELECT count(*) FROM cells WHERE kind='attack' AND status='done'")[0][0]
    except sqlite3.Error:  # no store yet, or its tables are being created
        return 0


def wait_for(condition, runner, timeout=120.0) -> bool:
    """Poll `condition` until it holds, the runner exits or `timeout` passes; True if it held."""
    deadline = time.time() + timeout
    while time.time() < deadline and runner.poll() is None:
        if condition():
            return True
        time.sleep(0.05)
    return False


def kill(runner) -> None:
    os.kill(runner.pid, signal.SIGKILL)
    runner.wait()


def finished_times(results) -> dict[str, float]:
    return dict(rows(results, "SELECT key, finished FROM cells WHERE status='done'"))


def assert_grid_complete(path, results, before: dict[str, float]) -> None:
    """Every planned cell is done, none is missing or extra, and none finished before was run again."""
    after = finished_times(results)
    assert set(rows(results, "SELECT DISTINCT status FROM cells")) == {("done",)}
    assert all(after[key] == finished for key, finished in before.items())  # not run twice
    _, cells = plan_cells(load_experiment(path), Runtime(root=str(results), cache_dir=str(results / "cache")),
                          registry())
    assert {c.key for c in cells} == set(after)  # none missing, none extra


@pytest.mark.slow
def test_resume_after_sigkill_runs_every_cell_exactly_once(write_experiment, tmp_path):
    """SIGKILL the runner mid-grid; the re-run finishes the grid and re-runs no finished cell."""
    path, results = write_experiment(GRID), tmp_path / "r"
    runner = start_runner(path, results)
    wait_for(lambda: attacks_done(results) >= 3, runner)
    kill(runner)
    time.sleep(1.0)  # workers die with the runner (PR_SET_PDEATHSIG)
    before = finished_times(results)
    assert 0 < len(before) < 3 * 2 * 3 + 2
    assert rows(results, "SELECT count(*) FROM cells WHERE status='running'")[0][0] >= 1

    done = subprocess.run(run_command(path, results), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert_grid_complete(path, results, before)


@contextlib.contextmanager
def adopting_orphans():
    """Make this process the child subreaper: whatever a killed runner leaves alive is re-parented here."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(PR_SET_CHILD_SUBREAPER, 1)
    try:
        yield
    finally:
        libc.prctl(PR_SET_CHILD_SUBREAPER, 0)


def children() -> dict[int, str]:
    """pid -> state of this process's children, from /proc."""
    found = {}
    for stat in glob.glob("/proc/[0-9]*/stat"):
        with contextlib.suppress(OSError):
            pid, rest = open(stat).read().split(" ", 1)
            state, ppid = rest.rpartition(")")[2].split()[:2]
            if int(ppid) == os.getpid():
                found[int(pid)] = state
    return found


def orphans_left(known: set[int], grace: float = 10.0) -> list[int]:
    """Reap the runner's re-parented processes as they die; those still alive after `grace` seconds."""
    deadline = time.time() + grace
    while True:
        alive = []
        for pid, state in children().items():
            if pid in known:
                continue
            if state == "Z":
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, 0)
            else:
                alive.append(pid)
        if not alive or time.time() > deadline:
            return alive
        time.sleep(0.05)


# When to kill: (event, seconds after it). "start": the process was spawned; "planned": it printed
# "N cells to run" (workers are being spawned and import); a number: that many attack cells are done.
KILL_MOMENTS = [("start", 0.3), ("planned", 0.0), ("planned", 0.15), ("planned", 0.4), ("planned", 0.7),
                ("planned", 1.0), (2, 0.0), (4, 0.3), (6, 0.7), (9, 0.1)]
FAULT_GRID = GRID.replace("seeds: [0, 1, 2]", "seeds: [0, 1]").replace("epochs: 6", "epochs: 3")  # 14 cells


@pytest.mark.slow
def test_fault_injection_kills_at_many_moments(write_experiment, tmp_path):
    """SIGKILL the runner at many moments, from start-up through worker spawning to mid-grid, resuming each
    time: no process outlives a kill, no finished cell runs twice, none is lost, and the curves are those
    of an uninterrupted run."""
    path, results, log = write_experiment(FAULT_GRID), tmp_path / "r", tmp_path / "runner.log"
    reference = run_file(path, tmp_path / "reference", threads=1, workers=0)
    assert reference.ok
    seen: dict[str, float] = {}
    known = set(children())
    with adopting_orphans():
        for event, delay in KILL_MOMENTS:
            log.write_bytes(b"")
            runner = start_runner(path, results, log)
            if event == "planned":
                reached = wait_for(lambda: b"cells to run" in log.read_bytes(), runner)
            else:
                reached = event == "start" or wait_for(lambda: attacks_done(results) >= event, runner)
            time.sleep(delay)
            if not reached or runner.poll() is not None:
                runner.wait()
                continue
            kill(runner)
            left = orphans_left(known)
            for pid in left:
                os.kill(pid, signal.SIGKILL)
            assert not left, f"processes outlived the runner killed {delay}s after {event!r}: {left}"
            try:
                now = finished_times(results)
            except sqlite3.Error:  # killed before the store had its tables
                now = {}
            assert all(now[key] == finished for key, finished in seen.items()), f"a cell ran twice ({event})"
            seen = now
    done = subprocess.run(run_command(path, results), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert_grid_complete(path, results, seen)
    query = "SELECT c.key, p.x_unit, p.x, p.metric, p.value FROM points p JOIN cells c ON c.key=p.key ORDER BY 1, 2, 4, 3"
    assert rows(results, query) == rows(tmp_path / "reference", query)


@pytest.mark.slow
def test_ray_executor_gives_the_same_curves_as_local(write_experiment, tmp_path):
    pytest.importorskip("ray", reason="the ray extra is not installed")
    path = write_experiment()
    run_file(path, tmp_path / "local", threads=1)
    summary = run_file(path, tmp_path / "ray", threads=1, executor="ray", workers=2)
    assert summary.ok and summary.statuses == {"done": 5}
    query = "SELECT c.key, p.x_unit, p.x, p.metric, p.value FROM points p JOIN cells c ON c.key=p.key ORDER BY 1, 2, 4, 3"
    assert rows(tmp_path / "ray", query) == rows(tmp_path / "local", query)


def test_pretrain_alone_then_the_grid_reuses_it(write_experiment, tmp_path, capsys):
    path, results = write_experiment(), tmp_path / "r"
    assert main(["pretrain", str(path), "--results", str(results), "--quiet"]) == 0
    assert "base model(s): ready" in capsys.readouterr().out
    assert rows(results, "SELECT kind, status FROM cells") == [("pretrain", "done")]
    summary = run_file(path, results)
    assert summary.reused == 1 and summary.statuses == {"done": 4}


def test_cells_of_an_earlier_plan_leave_the_leaderboard(write_experiment, tmp_path):
    from harness.leaderboard import load_curves

    results = tmp_path / "r"
    run_file(write_experiment(), results)
    old = {k for (k,) in rows(results, "SELECT key FROM cells WHERE kind='attack'")}
    run_file(write_experiment(TINY_EXPERIMENT.replace("lr: 0.01", "lr: 0.02")), results)
    current = set(load_curves(results).cells.key)
    assert len(current) == 3 and not current & old
    assert rows(results, "SELECT count(*) FROM cells WHERE kind='attack'") == [(6,)]  # kept for reuse


def test_precision_is_part_of_the_cell_key(write_experiment, tmp_path):
    experiment = load_experiment(write_experiment())
    keys = {}
    for precision in ("fp32", "bf16"):
        runtime = Runtime(root=str(tmp_path), device="cpu", precision=precision, cache_dir=str(tmp_path / "cache"))
        keys[precision] = {c.key for c in plan_cells(experiment, runtime, registry())[1]}
    assert not keys["fp32"] & keys["bf16"]
