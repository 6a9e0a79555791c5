"""The leaderboard's figures, as PNG bytes rendered with matplotlib's Agg canvas (no pyplot, no global state).

Per attack: the restricted score against attack epochs for scratch, the original and every defense, mean over
seeds with a ± std band (the SOPHON paper's figure style). Per query ladder: the stolen copy's score against the
query budget, next to the victim's own. Per section: intactness against worst-case R.
"""

from __future__ import annotations

import hashlib
import io
import math
import re
from dataclasses import dataclass
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from harness.leaderboard import Leaderboard
from harness.leaderboard.budgets import BudgetLadder
from harness.leaderboard.present import Section

BASELINES = {"scratch": {"color": "0.35", "linestyle": "--", "marker": "s"},
             "original": {"color": "tab:blue", "linestyle": "-", "marker": "o"}}
DEFENSE_COLORS = ("tab:red", "tab:green", "tab:purple", "tab:orange", "tab:brown", "tab:pink", "tab:olive", "tab:cyan")


@dataclass
class Plot:
    name: str  # file stem, safe in paths and URLs
    section: str  # the Section's title
    title: str
    caption: str
    png: bytes


def render(board: Leaderboard) -> list[Plot]:
    curve, ladders = board.curves.by_epoch(), board.curves.by_queries()
    plots = []
    for section in board.sections:
        rows = curve[(curve.scenario == section.scenario) & (curve.suite == section.suite)]
        plots += [_curves(section, attack, rows[rows.attack == attack]) for attack in section.attacks
                  if (rows.attack == attack).any()]
        laddered = ladders[(ladders.scenario == section.scenario) & (ladders.suite == section.suite)]
        plots += [_query_ladder(section, ladder, laddered[laddered.ladder == ladder])
                  for ladder in section.query_ladders]
        scatter = _scatter(section)
        if scatter is not None:
            plots.append(scatter)
    return plots + [_budgets(ladder) for ladder in board.budgets]


def write(board: Leaderboard, out_dir: Path) -> list[Path]:
    """plots/<name>.png for every figure."""
    folder = Path(out_dir) / "plots"
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for plot in board.plots:
        path = folder / f"{plot.name}.png"
        path.write_bytes(plot.png)
        paths.append(path)
    return paths


def _style(section: Section | BudgetLadder, start: str) -> dict:
    if start in BASELINES:
        return BASELINES[start]
    defenses = [s for s in section.starts if s not in BASELINES]
    return {"color": DEFENSE_COLORS[defenses.index(start) % len(DEFENSE_COLORS)], "linestyle": "-", "marker": "^"}


def _text(value: str) -> str:
    """Plain text for matplotlib: a '$' in a user's name must not start mathtext."""
    return str(value).replace("$", r"\$")


def _slug(*parts: str) -> str:
    text = "--".join(parts)
    readable = re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-")[:60]
    return f"{readable}-{hashlib.sha1(text.encode()).hexdigest()[:8]}"


def _figure():
    figure = Figure(figsize=(5.6, 3.6), dpi=110, layout="constrained")
    FigureCanvasAgg(figure)
    return figure, figure.add_subplot()


def _png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def _curves(section: Section, attack: str, rows) -> Plot:
    scale = 100 if section.percent else 1
    stats = rows.groupby(["start", "epoch"]).value.agg(["mean", "std"]) * scale
    figure, ax = _figure()
    for start in section.starts:
        if start not in stats.index.get_level_values("start"):
            continue
        line = stats.loc[start]
        style = _style(section, start)
        spread = line["std"].fillna(0)
        ax.plot(line.index, line["mean"], label=_text(start), markersize=3, linewidth=1.4, **style)
        ax.fill_between(line.index, line["mean"] - spread, line["mean"] + spread, color=style["color"], alpha=0.18,
                        linewidth=0)
    title = f"{section.title} · {attack}"
    ax.set_title(_text(title), fontsize=9)
    ax.set_xlabel("attack epoch")
    ax.xaxis.get_major_locator().set_params(integer=True)
    better = "higher" if section.score.higher_is_better else "lower"
    ax.set_ylabel(f"restricted {section.measure}" + (" (%)" if scale == 100 else "") + f", {better} is better")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    caption = f"Restricted {section.measure} while attacking with {attack}: mean over seeds, band = ± std."
    return Plot(_slug(section.scenario, section.suite, "curve", attack), section.title, title, caption, _png(figure))


def _query_ladder(section: Section, ladder: str, rows) -> Plot:
    """A query ladder: each start's copy score against the query budget (log scale), mean ± std over seeds, and
    the victim's own score as a dotted line of the start's colour."""
    scale = 100 if section.percent else 1
    copies = rows.groupby(["start", "budget"]).value.agg(["mean", "std"]) * scale
    victims = rows.groupby(["start", "seed"]).victim.mean().groupby("start").mean() * scale
    measure = " / ".join(dict.fromkeys(rows.copy_measure))
    figure, ax = _figure()
    for start in section.starts:
        if start not in copies.index.get_level_values("start"):
            continue
        line, style = copies.loc[start], _style(section, start)
        ax.errorbar(line.index, line["mean"], yerr=line["std"].fillna(0), label=_text(start), capsize=3,
                    markersize=3, linewidth=1.4, **style)
        if math.isfinite(victims.get(start, math.nan)):
            ax.axhline(victims[start], color=style["color"], linestyle=":", linewidth=1)
    title = f"{section.title} · {ladder}"
    ax.set_title(_text(title), fontsize=9)
    ax.set_xscale("log")
    budgets = sorted(set(rows.budget))
    ax.set_xticks(budgets, [f"{b:,.0f}" for b in budgets])
    ax.minorticks_off()
    ax.set_xlabel("query budget")
    ax.set_ylabel(f"copy's restricted {_text(measure)}" + (" (%)" if scale == 100 else ""))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    caption = (f"Stolen copies of each start after {ladder} at each query budget: mean over seeds, bars ± std; "
               f"dotted: the victim's own {measure}.")
    return Plot(_slug(section.scenario, section.suite, "queries", ladder), section.title, title, caption, _png(figure))


def _scatter(section: Section) -> Plot | None:
    """Intactness against worst-case R, one point per released model (mean, error bars ± std)."""
    rows = section.rows[section.rows.attack == ""].set_index(["start", "metric"])
    figure, ax = _figure()
    shown, missing = 0, []
    for start in section.starts:
        if (start, "intactness") not in rows.index or (start, "worst_case_R") not in rows.index:
            continue
        x, y = rows.loc[(start, "intactness")], rows.loc[(start, "worst_case_R")]
        if not (math.isfinite(x["mean"]) and math.isfinite(y["mean"])):
            missing.append(start)
            continue
        color = _style(section, start)["color"]
        ax.errorbar(x["mean"], y["mean"], xerr=_finite(x["std"]), yerr=_finite(y["std"]), fmt="o", color=color,
                    capsize=3, label=_text(start))
        shown += 1
    if not shown:
        return None
    ax.axhline(1, color="0.5", linestyle="--", linewidth=0.8)
    ax.axhline(0, color="0.5", linestyle=":", linewidth=0.8)
    ax.set_xlabel("intactness O(D)/O(P)")
    ax.set_ylabel("worst-case R over the suite")
    title = f"{section.title} · intactness vs worst-case resistance"
    ax.set_title(_text(title), fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    caption = ("Up and to the right is better: R = 1 (dashed) is as hard as scratch, R = 0 (dotted) no protection."
               + (f" Not shown (R or intactness n/a): {', '.join(missing)}." if missing else ""))
    return Plot(_slug(section.scenario, section.suite, "intactness-vs-R"), section.title, title, caption, _png(figure))


def _budgets(ladder: BudgetLadder) -> Plot:
    """Per start, the suite's strongest attack's final score at each adversary budget (mean, error bars ± std)."""
    scale = 100 if ladder.percent else 1
    best = ladder.strongest()
    figure, ax = _figure()
    positions = {budget: i for i, budget in enumerate(ladder.budgets)}
    for start in ladder.starts:
        line = best[best.start == start].sort_values("budget", key=lambda b: b.map(positions))
        style = _style(ladder, start)
        ax.errorbar(line.budget.map(positions), line["mean"] * scale, yerr=line["std"].fillna(0) * scale,
                    label=_text(start), markersize=4, linewidth=1.4, capsize=3, **style)
    ax.set_xticks(range(len(ladder.budgets)), [_text(b) for b in ladder.budgets], fontsize=7)
    ax.set_xlabel("adversary's data budget")
    better = "higher" if ladder.score.higher_is_better else "lower"
    ax.set_ylabel(f"restricted {ladder.score.name}" + (" (%)" if scale == 100 else "") + f", {better} is better")
    ax.set_title(_text(ladder.title), fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    caption = ("Final restricted score of the suite's strongest attack per start (the one with the best mean), "
               "at each adversary budget: mean over seeds, bars = ± std. Where scratch meets the original, "
               "pretraining does not help the adversary and R is undefined.")
    return Plot(_slug(ladder.scenario, ladder.suite, "budgets"), ladder.title, ladder.title, caption, _png(figure))


def _finite(value: float) -> float:
    return value if math.isfinite(value) else 0.0
