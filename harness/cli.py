"""`untunable run | validate | pretrain | list | curves | leaderboard | check | plugins | plugin-check | new`.

User errors (a bad experiment file or flag, an unknown plugin, a missing dataset, a missing, damaged or
foreign results store) print one line and exit with status 2, without a traceback; failed cells make
`run` exit with status 1, and so does an internal error, whose traceback is stored in a file it names.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import traceback

from harness import validation
from harness.registry import ConfigError

EXIT_USAGE, EXIT_FAILED_CELLS, EXIT_INTERNAL = 2, 1, 1
LEADERBOARD_FORMATS = "md,csv,html,json,png"


def _registry():
    from harness.plugins import registry
    return registry()


def _console():
    from rich.console import Console
    return Console(stderr=False)


def _experiment(path: str):
    from harness.config import load_experiment
    return load_experiment(path)


def _runtime(args, experiment):
    from harness.runner import default_runtime
    return default_runtime(experiment, results=validation.directory_option(args.results, "--results"),
                           device=args.device, precision=args.precision,
                           cache_dir=validation.directory_option(args.cache_dir, "--cache-dir"), threads=args.threads)


def _with_flags(args, experiment):
    """The experiment with its command-line overrides, each held to the rule the file's field obeys."""
    from harness.config import with_overrides

    return with_overrides(experiment, {"device": ("--device", args.device), "precision": ("--precision", args.precision),
                                       "workers": ("--workers", args.workers)})


def _check_device(args, runtime) -> None:
    """A device the machine lacks is blamed on where it was asked for: the flag, or the file's field."""
    from harness.engine.device import resolve_device

    resolve_device(runtime.device, where=f"--device {args.device}" if args.device is not None else f"{args.file}: device")


def cmd_validate(args) -> int:
    from harness.plan import attack_runs, resolve

    experiment = _experiment(args.file)
    resolved = resolve(experiment, _registry())
    seeds, starts = len(experiment.seeds), len(resolved.reference_starts) + len(resolved.defenses)
    attacks = attack_runs(resolved) * seeds * len(resolved.scenarios)
    print(f"{args.file}: ok — {len(resolved.scenarios)} scenario(s), {len(resolved.defenses)} defense(s), "
          f"{len(resolved.attacks)} attack config(s) x {seeds} seed(s) x up to {starts} start(s) = {attacks} attack "
          f"cells")
    per_seed = {stage: seeds if stage in experiment.replicate else 1 for stage in ("pretrain", "defense")}
    print(f"replicated over the seeds: {', '.join(experiment.replicate)} — at most "
          f"{len(experiment.scenarios) * per_seed['pretrain']} pretraining and "
          f"{len(experiment.scenarios) * len(resolved.defenses) * per_seed['defense']} defense cell(s)")
    return 0


def _run(args, *, only_pretrain: bool) -> int:
    from harness.progress import make_progress
    from harness.runner import is_interactive, run

    experiment = _with_flags(args, _experiment(args.file))
    if only_pretrain:
        experiment = experiment.model_copy(update={"defenses": [], "baselines": []})
    runtime = _runtime(args, experiment)
    _check_device(args, runtime)
    console = _console()
    progress = make_progress(args.quiet, is_interactive(), console)
    summary = run(experiment, runtime, _registry(), executor=args.executor, progress=progress)
    if only_pretrain:
        print(f"base model(s): {'failed' if summary.failed else 'ready'} in {runtime.root}")
    else:
        counts = ", ".join(f"{n} {s}" for s, n in sorted(summary.statuses.items())) or "nothing new to run"
        print(f"{summary.total} cells: {summary.reused} reused, {counts}. Results: {runtime.root}")
        if not args.no_leaderboard:
            _print_leaderboard(runtime.root, console)
    for title in summary.failed:
        print(f"failed: {title}", file=sys.stderr)
    for title in summary.skipped:
        print(f"skipped (input failed): {title}", file=sys.stderr)
    if not summary.ok:
        print(f"tracebacks: untunable list {runtime.root} --failed", file=sys.stderr)
        return EXIT_FAILED_CELLS
    return 0


def _print_leaderboard(root, console):
    """The leaderboard in the terminal, and its files next to the store; failed cells are named in its notes."""
    from harness.leaderboard import write_leaderboard

    try:
        written = write_leaderboard(root, formats=LEADERBOARD_FORMATS, console=console)
    except ConfigError as exc:  # e.g. every attack cell failed: say so, and let the failures be listed
        print(f"leaderboard: not written ({exc})", file=sys.stderr)
        return
    print(f"leaderboard: {', '.join(str(p) for p in written if p.suffix != '.png')} (+{sum(p.suffix == '.png' for p in written)} plots)")


def _results(path: str):
    """The store, opened read-only after SQLite's integrity check: reading commands never write."""
    from harness.store import Store

    return Store(path, readonly=True, verify=True)


def cmd_list(args) -> int:
    store = _results(args.results)
    query = "SELECT key, kind, scenario, start, attack, seed, status, seconds, error FROM cells"
    query += " WHERE status='failed'" if args.failed else ""
    for row in store.db.execute(query + " ORDER BY started"):
        seconds = f"{row['seconds']:.1f}s" if row["seconds"] is not None else "-"
        print(f"{row['key'][:12]}  {row['status']:8s} {seconds:>8s}  {row['kind']:8s} {row['scenario']} "
              f"{row['start']} {row['attack']} seed={row['seed']}")
        if args.failed and row["error"]:
            print("    " + row["error"].strip().replace("\n", "\n    "))
        elif row["kind"] == "defend" and (notes := store.notes(row["key"])):  # e.g. a guard stopped training
            print(f"    notes: {json.dumps(notes, sort_keys=True)}")
    return 0


def cmd_curves(args) -> int:
    """The stored curves of every attack cell, one row per cell and measure, each in its own unit (accuracy in %,
    a loss or an MSE raw). Without --metric, each cell's restricted-domain score: its task's first measure."""
    from rich.table import Table

    from harness.leaderboard.measures import declared_measures, format_measure, score_measure, task_of
    from harness.report.terminal import print_unwrapped

    from harness.store import check_metric

    if args.metric is not None:
        try:
            check_metric(args.metric, "epoch")
        except ValueError as exc:
            raise ConfigError(str(exc), where=f"--metric {args.metric}") from None
    store, registry = _results(args.results), _registry()
    rows = store.db.execute(
        "SELECT c.scenario, c.start, c.attack, c.seed, c.status, c.config_json, p.metric, p.x, p.value FROM cells c"
        " JOIN points p ON p.key=c.key WHERE c.kind='attack' AND p.x_unit='epoch' AND (p.metric=? OR ? IS NULL)"
        " ORDER BY c.scenario, c.start, c.attack, c.seed, p.metric, p.x", (args.metric, args.metric)).fetchall()
    wanted: dict[str, str] = {}  # config_json -> the metric shown for its cell
    curves: dict[tuple, dict[float, float]] = {}
    for r in rows:
        if r["config_json"] not in wanted:
            wanted[r["config_json"]] = args.metric or "restricted/" + score_measure(
                registry, task_of(json.loads(r["config_json"])), where=f"scenario {r['scenario']!r}").name
        if r["metric"] == wanted[r["config_json"]]:
            ident = (r["scenario"], r["start"], r["attack"], r["seed"], r["status"], r["metric"])
            curves.setdefault(ident, {})[r["x"]] = r["value"]
    measures = declared_measures(registry)
    epochs = sorted({x for curve in curves.values() for x in curve})
    table = Table(title=f"{args.metric or 'restricted score'} by epoch ({args.results})")
    for column in ("scenario", "start", "attack", "seed", "status", "metric"):
        table.add_column(column)
    for epoch in epochs:
        table.add_column(f"{epoch:g}", justify="right")
    for (*ident, metric), curve in curves.items():
        measure = measures.get(metric.partition("/")[2])
        unit = " (%)" if measure is not None and measure.display == "percent" else ""
        table.add_row(*map(str, ident), metric + unit, *(format_measure(curve[e], measure) if e in curve else ""
                                                          for e in epochs))
    if not curves:
        raise ConfigError(f"no attack cell has stored {args.metric or 'restricted score'} points per epoch",
                          where=args.results)
    print_unwrapped(_console(), table)
    return 0


def cmd_leaderboard(args) -> int:
    from harness.leaderboard import write_leaderboard

    _results(args.results).close()
    formats = [f.strip() for f in args.format.split(",") if f.strip()]
    if not formats:
        raise ConfigError(f"no format given; expected a comma-separated list of {LEADERBOARD_FORMATS}",
                          where=f"--format {args.format!r}")
    suites = [s.strip() for s in args.suite.split(",") if s.strip()] if args.suite is not None else None
    if suites == []:
        raise ConfigError("no suite given; name at least one attack suite", where=f"--suite {args.suite!r}")
    out = validation.directory_option(args.out, "--out")
    paths = write_leaderboard(args.results, formats=formats, suites=suites, out_dir=out, console=_console())
    for path in paths:
        print(f"wrote {path}")
    return 0


def cmd_plugins(args) -> int:
    reg = _registry()
    for spec in reg.all():
        print(f"{spec.kind:12s} {spec.name:20s} {spec.distribution} {spec.dist_version:8s} v{spec.version:4s}"
              f"{spec.description}")
        if args.params:
            for p in spec.params:
                print(f"{'':14s}{p.name} ({p.summary()}) {p.help}")
    for error in reg.errors:
        print(f"error        {error.plugin:20s} {error.distribution}: {error.message}", file=sys.stderr)
    return 0


def cmd_plugin_check(args) -> int:
    """Check one plugin at `--threads` torch threads (1 by default: more threads thrash a busy small machine)."""
    import time

    import torch

    from harness.testing import CHECKED_KINDS, check_plugin

    kinds = [k for k in CHECKED_KINDS if args.name in _registry().specs[k]]
    if not kinds:
        _registry().get("attack", args.name, where="plugin-check")  # raises with a did-you-mean
    if kinds[0] == "metric" and not args.results:
        raise ConfigError("checking a metric needs a results directory to run on (--results DIR)", where=args.name)
    if args.task is not None:
        _registry().get("task", args.task, where="plugin-check --task")
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    problems = check_plugin(kinds[0], args.name, task=args.task, results=args.results,
                            data_root=args.data_root or os.environ.get("UNTUNABLE_DATA"))
    took = f"{time.perf_counter() - started:.1f} s at {args.threads} thread{'s' if args.threads > 1 else ''}"
    for problem in problems:
        print(f"{args.name}: {problem}")
    print(f"{args.name}: {'FAILED' if problems else f'ok ({kinds[0]} conformance: runs, deterministic, finite)'}"
          f" in {took}")
    return 1 if problems else 0


def cmd_check(args) -> int:
    from harness.integrity import check_results

    problems = check_results(args.results, repair=args.repair, say=print)
    return 1 if problems and not args.repair else 0


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (the usage is one `--help` away) and exit status 2."""

    def error(self, message):
        self.exit(EXIT_USAGE, f"error: {self.prog}: {message} (see {self.prog} --help)\n")


def _bounded(low: int, high: int):
    """An argparse type: an integer in [low, high], the same bounds a file's value obeys."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"expected an integer from {low} to {high}, got {value}")
        return value
    return parse


def cmd_new(args) -> int:
    from harness.scaffold import scaffold

    written = scaffold(args.kind, args.name, args.dir, _registry())
    root = written[0].parent
    for path in written:
        print(f"wrote {path}")
    print(f"next: pip install -e {root} && (cd {root} && python -m pytest) && untunable plugin-check {args.name}")
    return 0


def parser() -> argparse.ArgumentParser:
    top = OneLineParser(prog="untunable", description="How well does a model protection survive attack? "
                        "Runs every attack against every defense, next to scratch and the original.")
    sub = top.add_subparsers(dest="command", required=True, parser_class=OneLineParser)

    def runner_options(p):
        p.add_argument("file", help="experiment file (YAML)")
        p.add_argument("--results", help="results directory (default: the file's `results`, else runs/<name>)")
        p.add_argument("--device", help="cpu, cuda, cuda:N or auto (default: the file's, else auto)")
        p.add_argument("--precision", choices=("fp32", "bf16"), help="fp32, or bf16 autocast")
        p.add_argument("--executor", default="local", help="executor plugin (local; ray with the extra)")
        p.add_argument("--workers", type=_bounded(0, validation.MAX_WORKERS), help="worker processes (0 = run inline)")
        p.add_argument("--threads", type=_bounded(1, validation.MAX_THREADS),
                       help="torch threads per worker (default 1 with workers)")
        p.add_argument("--cache-dir", help="where materialised datasets are cached (default RESULTS/cache)")
        p.add_argument("--quiet", action="store_true", help="plain progress lines instead of a live bar")

    p = sub.add_parser("run", help="run (or resume) an experiment and print its leaderboard")
    runner_options(p)
    p.add_argument("--no-leaderboard", action="store_true", help="do not print or write the leaderboard at the end")
    p.set_defaults(func=lambda a: _run(a, only_pretrain=False))
    p = sub.add_parser("pretrain", help="train (or reuse) only the experiment's base models")
    runner_options(p)
    p.set_defaults(func=lambda a: _run(a, only_pretrain=True))
    p = sub.add_parser("validate", help="check an experiment file without running it")
    p.add_argument("file")
    p.set_defaults(func=cmd_validate)
    p = sub.add_parser("list", help="list the cells of a results directory with their status")
    p.add_argument("results")
    p.add_argument("--failed", action="store_true", help="only failed cells, with their tracebacks")
    p.set_defaults(func=cmd_list)
    p = sub.add_parser("curves", help="print the stored curves of every attack cell")
    p.add_argument("results")
    p.add_argument("--metric", help="a recorded metric, e.g. original/loss (default: each cell's restricted score)")
    p.set_defaults(func=cmd_curves)
    p = sub.add_parser("leaderboard", help="metrics over stored curves: terminal table and files")
    p.add_argument("results")
    p.add_argument("--format", default=LEADERBOARD_FORMATS, help="comma-separated: md, csv, html, json, png")
    p.add_argument("--suite", help="only these attack suites (comma-separated)")
    p.add_argument("--out", help="output directory (default: the results directory)")
    p.set_defaults(func=cmd_leaderboard)
    p = sub.add_parser("check", help="verify a results store and every artifact's hash; --repair marks bad cells "
                                     "for a re-run")
    p.add_argument("results")
    p.add_argument("--repair", action="store_true",
                   help="salvage a damaged store and make cells with missing or altered artifacts (and everything "
                        "built on them) run again on the next `untunable run`")
    p.set_defaults(func=cmd_check)
    p = sub.add_parser("plugin-check", help="check a plugin against its kind's contract (a tiny CPU cell, twice)")
    p.add_argument("name")
    p.add_argument("--task", help="the task family of the tiny cell (default: the first one the plugin serves)")
    p.add_argument("--threads", type=_bounded(1, validation.MAX_THREADS), default=1, help="torch threads (default 1)")
    p.add_argument("--data-root", help="a dataset's files (default $UNTUNABLE_DATA, else the reader's own search)")
    p.add_argument("--results", help="a results directory a metric is checked on")
    p.set_defaults(func=cmd_plugin_check)
    p = sub.add_parser("new", help="write a ready-to-install package for a new defense or attack")
    p.add_argument("kind", choices=("defense", "attack"))
    p.add_argument("name", help="the plugin's name, e.g. my-defense")
    p.add_argument("--dir", help="the package folder to create (default ./untunable-NAME)")
    p.set_defaults(func=cmd_new)
    p = sub.add_parser("plugins", help="list installed plugins (no torch import)")
    p.add_argument("--params", action="store_true", help="also list every parameter")
    p.set_defaults(func=cmd_plugins)
    return top


def _user_errors() -> tuple[type[BaseException], ...]:
    """What a user can cause and fix: reported as one line, exit status 2."""
    from harness.data import DatasetError
    from harness.plugins import PluginError
    from harness.store import StoreError

    return ConfigError, PluginError, DatasetError, StoreError


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.filename is not None:
        return f"{exc.filename}: {exc.strerror or exc}"
    return " ".join(str(exc).split()) or type(exc).__name__


def _internal_error(exc: BaseException) -> int:
    """A bug, not a user error: one line saying so, and the traceback kept in a file for the report."""
    handle, path = tempfile.mkstemp(prefix="untunable-error-", suffix=".txt")
    with os.fdopen(handle, "w") as out:
        out.write(f"untunable {' '.join(sys.argv[1:])}\n\n{traceback.format_exc()}")
    print(f"internal error: {type(exc).__name__}: {_one_line(exc)[:200]} (traceback stored in {path})", file=sys.stderr)
    return EXIT_INTERNAL


def main(argv=None) -> int:
    try:
        args = parser().parse_args(argv)
    except SystemExit as exc:  # a usage error (one line, already printed) or --help
        return exc.code
    try:
        return args.func(args)
    except BrokenPipeError:  # `untunable plugins | head`: the reader left; say nothing more
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        print("interrupted: finished cells are stored; run the same command again to resume", file=sys.stderr)
        return 130
    except Exception as exc:
        if isinstance(exc, _user_errors()) or (isinstance(exc, OSError) and exc.filename is not None):
            print(f"error: {_one_line(exc)}", file=sys.stderr)
            return EXIT_USAGE
        return _internal_error(exc)


if __name__ == "__main__":
    sys.exit(main())
