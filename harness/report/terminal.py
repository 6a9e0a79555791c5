"""The leaderboard as rich tables in the terminal. Every cell is a rich Text, so names from configs are never
read as console markup."""

from __future__ import annotations

from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

from harness.leaderboard import Leaderboard
from harness.leaderboard.present import Matrix


def render(board: Leaderboard, console) -> None:
    for section in board.sections:
        console.rule(Text(section.title, style="bold"))
        for threat in section.threats:
            console.print(Text.assemble(("Threat model: ", "bold"), threat))
        for scale in section.scales:
            console.print(Text.assemble(("Scale: ", "bold"), scale))
        console.print(Text(section.legend, style="dim"))
        for table in (_table(section.matrix(False), "over the suite"), _table(section.matrix(True), "per attack")):
            print_unwrapped(console, table)
        if section.query_ladders:
            console.print(Text(section.queries_legend, style="dim"))
            print_unwrapped(console, _table(section.queries(), "against queries"))
        for where, note in section.notes():
            console.print(Text(f"  {where}: {note}", style="dim"))
    for ladder in board.budgets:
        console.rule(Text(ladder.title, style="bold"))
        console.print(Text(ladder.legend, style="dim"))
        print_unwrapped(console, _table(ladder.matrix(), "final score per adversary budget"))


def print_unwrapped(console, table) -> None:
    """In a log (not a terminal) print the table at its natural width: wrapped numbers are unreadable there."""
    width = console.width
    if not console.is_terminal:
        console.width = max(width, Measurement.get(console, console.options.update_width(1000), table).maximum)
    try:
        console.print(table)
    finally:
        console.width = width


def _table(matrix: Matrix, title: str) -> Table:
    table = Table(title=Text(title), title_justify="left", header_style="bold")
    for label in matrix.labels:
        table.add_column(Text(label), no_wrap=True)
    for column in matrix.columns:
        table.add_column(Text(column), justify="right")
    for labels, cells in matrix.rows:
        table.add_row(*[Text(label) for label in labels], *[_cell(cell) for cell in cells])
    return table


def _cell(record: dict | None) -> Text:
    if record is None:
        return Text("—", style="dim")
    style = "yellow" if record["na"] else "cyan" if record["censored"] else ""
    return Text(record["display"], style=style)
