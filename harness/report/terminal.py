"""The leaderboard as rich tables in the terminal. Every cell is a rich Text, so names from configs are never
read as console markup."""

from __future__ import annotations

from harness.leaderboard import Leaderboard, Matrix


def render(board: Leaderboard, console) -> None:
    from rich.text import Text

    for section in board.sections:
        console.rule(Text(section.title, style="bold"))
        for threat in section.threats:
            console.print(Text.assemble(("Threat model: ", "bold"), threat))
        for scale in section.scales:
            console.print(Text.assemble(("Scale: ", "bold"), scale))
        console.print(Text(section.legend, style="dim"))
        console.print(_table(section.matrix(False), "over the suite"))
        console.print(_table(section.matrix(True), "per attack"))
        for where, note in section.notes():
            console.print(Text(f"  {where}: {note}", style="dim"))


def _table(matrix: Matrix, title: str):
    from rich.table import Table
    from rich.text import Text

    table = Table(title=Text(title), title_justify="left", header_style="bold")
    for label in matrix.labels:
        table.add_column(Text(label), no_wrap=True)
    for column in matrix.columns:
        table.add_column(Text(column), justify="right")
    for labels, cells in matrix.rows:
        table.add_row(*[Text(label) for label in labels], *[_cell(cell) for cell in cells])
    return table


def _cell(record):
    from rich.text import Text

    if record is None:
        return Text("—", style="dim")
    style = "yellow" if record["na"] else "cyan" if record["censored"] else ""
    return Text(record["display"], style=style)
