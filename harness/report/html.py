"""leaderboard.html: one self-contained page (inline style and script, plots and the pictures attack cells stored
as data: URIs, no network requests).

Every string from a config, the store or a plugin is HTML-escaped. The Content-Security-Policy admits only this
page's own style and script (by hash) and data: images, so even a missed escape could neither run code nor
fetch anything.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
from html import escape
from pathlib import Path

from harness.leaderboard import Leaderboard
from harness.leaderboard.present import Matrix, Section
from harness.pictures import png_size

STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2rem auto; max-width: 80rem; padding: 0 1rem; color: #222; }
table { border-collapse: collapse; margin: .5rem 0 1rem; }
th, td { padding: .25rem .6rem; border-bottom: 1px solid #ddd; text-align: right; white-space: nowrap; }
td.label, th.label { text-align: left; }
table.sortable thead th { cursor: pointer; background: #f3f3f3; user-select: none; }
thead th[aria-sort=ascending]::after { content: " \\25B2"; }
thead th[aria-sort=descending]::after { content: " \\25BC"; }
thead th[data-better=higher]::before { content: "\\2191 "; } thead th[data-better=lower]::before { content: "\\2193 "; }
td.na { color: #a60; } td.censored { color: #06a; }
.meta, .legend { margin: .2rem 0; } .legend, figcaption, .notes { color: #555; }
.plots { display: flex; flex-wrap: wrap; gap: 1rem; } figure { margin: 0; max-width: 40rem; }
figure img { max-width: 100%; } section { margin-top: 2.5rem; }
table.pictures td { vertical-align: top; text-align: center; } table.pictures img { image-rendering: pixelated; }
"""

SCRIPT = """
document.querySelectorAll("table.sortable thead th").forEach(function (th) {
  th.tabIndex = 0;
  function key(row) {
    var v = row.cells[th.cellIndex].getAttribute("data-sort");
    if (v === null || v === "") return null;
    return isNaN(Number(v)) ? v : Number(v);
  }
  function sort() {
    var table = th.closest("table"), body = table.tBodies[0];
    var ascending = th.getAttribute("aria-sort") !== "ascending";
    table.querySelectorAll("thead th").forEach(function (h) { h.removeAttribute("aria-sort"); });
    th.setAttribute("aria-sort", ascending ? "ascending" : "descending");
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = key(a), y = key(b);
      if (x === null || y === null) return (x === null) - (y === null);  // n/a and blanks last
      var c = typeof x === "number" && typeof y === "number" ? x - y : String(x).localeCompare(String(y));
      return ascending ? c : -c;
    });
    rows.forEach(function (row) { body.appendChild(row); });
  }
  th.addEventListener("click", sort);
  th.addEventListener("keydown", function (event) { if (event.key === "Enter") sort(); });
});
"""


def _hash(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


CSP = f"default-src 'none'; img-src data:; style-src {_hash(STYLE)}; script-src {_hash(SCRIPT)}"


def write(board: Leaderboard, out_dir: Path) -> list[Path]:
    path = Path(out_dir) / "leaderboard.html"
    path.write_text(render(board), encoding="utf-8")
    return [path]


def render(board: Leaderboard) -> str:
    contents = "".join(f'<li><a href="#s{i}">{escape(s.title)}</a></li>' for i, s in enumerate(board.sections))
    metrics = "".join(f"<dt>{escape(m.name)}</dt><dd>{escape(m.description)}</dd>" for m in board.metrics)
    sections = "".join(_section(i, s, board.figures(s.title), _pictures(s, board.pictures))
                       for i, s in enumerate(board.sections))
    sections += "".join(_ladder(i, ladder, board.figures(ladder.title))
                        for i, ladder in enumerate(board.budgets))
    contents += "".join(f'<li><a href="#b{i}">{escape(b.title)}</a></li>' for i, b in enumerate(board.budgets))
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f'<title>untunable leaderboard · {escape(board.results_dir.name)}</title><style>{STYLE}</style></head>\n'
            f'<body><h1>untunable leaderboard</h1>'
            f'<p class="meta">Results: <code>{escape(board.results_dir.name)}</code>'
            f' · generated {escape(board.generated)}'
            f' · hover a value for its 95 % t-interval and per-seed values; click a column header to sort.</p>'
            f'<ul>{contents}</ul><details><summary>Metrics</summary><dl>{metrics}</dl></details>'
            f'{sections}<script>{SCRIPT}</script></body></html>\n')


def _section(index: int, section: Section, figures: list, pictures: str) -> str:
    threats = "".join(f'<p class="meta"><b>Threat model.</b> {escape(t)}</p>' for t in section.threats)
    scales = "".join(f'<p class="meta"><b>Scale.</b> {escape(s)}</p>' for s in section.scales)
    notes = "".join(f"<li>{escape(where)}: {escape(note)}</li>" for where, note in section.notes())
    plugins = "".join(f"<dt>{escape(name)}</dt><dd>{_plugin(p)}</dd>" for name, p in section.plugins())
    images = _figures(figures)
    return (f'<section id="s{index}"><h2>{escape(section.title)}</h2>{threats}{scales}'
            f'<p class="legend">{escape(section.legend)}</p>'
            f'<h3>Over the suite</h3>{_table(section.matrix(False), section, f"s{index}-suite")}'
            f'<h3>Per attack</h3>{_table(section.matrix(True), section, f"s{index}-attacks")}'
            f'{_queries(index, section)}'
            + (f'<details class="notes" open><summary>Notes</summary><ul>{notes}</ul></details>' if notes else "")
            + f'<h3>Plugins</h3><dl>{plugins}</dl><div class="plots">{images}</div>{pictures}</section>\n')


def _figures(figures: list) -> str:
    return "".join(f'<figure>{_img(f.png, f.title)}<figcaption>{escape(f.caption)}</figcaption></figure>'
                   for f in figures)


def _ladder(index: int, ladder, figures: list) -> str:
    """An adversary-budget ladder: the final scores per budget, and its plot."""
    return (f'<section id="b{index}"><h2>{escape(ladder.title)}</h2><p class="legend">{escape(ladder.legend)}</p>'
            f'{_table(ladder.matrix(), ladder, f"b{index}-budgets")}<div class="plots">{_figures(figures)}</div>'
            f'</section>\n')


def _img(png: bytes, alt: str, width: int | None = None) -> str:
    size = f' width="{width}"' if width else ""
    return f'<img alt="{escape(alt)}"{size} src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def _pictures(section: Section, shown: dict) -> str:
    """Per attack, a table of the pictures each start's attacked model produced (the task's render)."""
    blocks = []
    for attack in section.attacks:
        rows = [(start, *shown[key]) for start in section.starts
                if (key := (section.scenario, section.suite, attack, start)) in shown]
        if not rows:
            continue
        labels = {p.name: p.label for _, _, pictures in rows for p in pictures}  # every name, first-seen order
        head = '<th class="label" scope="col">start</th>' + "".join(
            f'<th scope="col">{escape(label)}</th>' for label in labels.values())
        body = "".join(_picture_row(attack, start, seed, pictures, list(labels)) for start, seed, pictures in rows)
        blocks.append(f'<table class="pictures"><caption>After {escape(attack)}, final epoch</caption>'
                      f"<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
    return "<h3>Pictures</h3>" + "".join(blocks) if blocks else ""


def _picture_row(attack: str, start: str, seed: int, pictures: list, names: list[str]) -> str:
    by_name = {p.name: p for p in pictures}
    cells = "".join(f"<td>{_img(p.png, f'{attack} · {start} · {p.label}', _shown_width(p.png))}</td>"
                    if (p := by_name.get(name)) else "<td>—</td>" for name in names)
    return f'<tr><td class="label">{escape(start)}<br>seed {seed}</td>{cells}</tr>'


def _shown_width(png: bytes) -> int:
    """Small grids are scaled up by a whole factor (pixelated) so single pixels stay visible."""
    width = png_size(png)[0]
    return width * max(1, 256 // max(width, 1))


def _plugin(plugin: dict) -> str:
    params = json.dumps(plugin["params"], sort_keys=True)
    return f"<code>{escape(plugin['plugin'])}</code> <code>{escape(params)}</code> — {escape(plugin['description'])}"


def _queries(index: int, section: Section) -> str:
    """The query table, when a black-box attack ran a ladder of budgets."""
    if not section.query_ladders:
        return ""
    return (f'<h3>Against queries</h3><p class="legend">{escape(section.queries_legend)}</p>'
            f'{_table(section.queries(), section, f"s{index}-queries")}')


def _table(matrix: Matrix, section, table_id: str) -> str:
    """A sortable table; `section` (a Section or a BudgetLadder) formats the values in its unit."""
    head = "".join(f'<th class="label" scope="col">{escape(c)}</th>' for c in matrix.labels)
    head += "".join(_header(c, matrix) for c in matrix.columns)
    body = "".join("<tr>" + "".join(f'<td class="label" data-sort="{escape(label)}">{escape(label)}</td>'
                                    for label in labels)
                   + "".join(_cell(cell, section) for cell in cells) + "</tr>" for labels, cells in matrix.rows)
    return f'<table class="sortable" id="{table_id}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _header(column: str, matrix: Matrix) -> str:
    """A metric's column head; an arrow (CSS, so sorting by the name still works) shows which way is better."""
    better = matrix.better.get(column, "")
    hint = f' data-better="{better}" title="{better} is better for the defense"' if better else ""
    return f'<th scope="col"{hint}>{escape(column)}</th>'


def _cell(record: dict | None, section) -> str:
    if record is None:
        return '<td data-sort="">—</td>'
    unit = record["unit"]
    details = [f"{record['n_seeds']} seed(s)"]
    if math.isfinite(record["ci_low"]):
        details.append(f"95% CI [{section.amount(record['ci_low'], unit)}, {section.amount(record['ci_high'], unit)}]")
    details.append("per seed: " + ", ".join(f"{seed}: {section.amount(v, unit)}"
                                            for seed, v in record["per_seed"].items()))
    if record["note"]:
        details.append(record["note"])
    css = "na" if record["na"] else "censored" if record["censored"] else ""
    sort = "" if record["na"] else repr(float(record["mean"]))
    return (f'<td class="{css}" data-sort="{sort}" title="{escape(" · ".join(details))}">'
            f'{escape(record["display"])}</td>')
