"""Progress of a run: a rich bar (cells done/total, current cell, ETA) on a terminal, plain lines otherwise."""

from __future__ import annotations

import sys


class PlainProgress:
    """One line per finished cell: readable in CI logs and with --quiet."""

    def __init__(self, stream=None):
        self.stream = stream or sys.stderr
        self.total = self.count = 0

    def start(self, *, total: int, reused: int) -> None:
        self.total = total
        print(f"{total} cells to run ({reused} already in the store)", file=self.stream, flush=True)

    def started(self, cell) -> None:
        """Plain output has a line per finished cell only."""

    def finished(self, cell, status: str, seconds: float) -> None:
        self.count += 1
        print(f"[{self.count}/{self.total}] {status:8s} {seconds:7.1f}s  {cell.title}", file=self.stream, flush=True)

    def stop(self) -> None:
        """Plain lines need no tear-down."""


class RichProgress(PlainProgress):
    def __init__(self, console):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, \
            TimeRemainingColumn

        super().__init__()
        self.console = console
        self.bar = Progress(TextColumn("[bold]cells"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                            TextColumn("ETA"), TimeRemainingColumn(), TextColumn("{task.description}"),
                            console=console, transient=False)
        self.task = None
        self.current: dict[str, str] = {}

    def start(self, *, total: int, reused: int) -> None:
        self.console.print(f"{total} cells to run ({reused} already in the store)")
        self.bar.start()
        self.task = self.bar.add_task("", total=total)

    def started(self, cell) -> None:
        self.current[cell.key] = cell.title
        self._describe()

    def finished(self, cell, status: str, seconds: float) -> None:
        self.current.pop(cell.key, None)
        if status not in ("done", "diverged"):
            self.bar.console.print(f"[red]{status}[/red] {cell.title}")
        self.bar.advance(self.task)
        self._describe()

    def _describe(self):
        self.bar.update(self.task, description=" | ".join(list(self.current.values())[:2]))

    def stop(self) -> None:
        self.bar.stop()


def make_progress(quiet: bool, interactive: bool, console=None):
    if quiet or not interactive:
        return PlainProgress()
    return RichProgress(console)
