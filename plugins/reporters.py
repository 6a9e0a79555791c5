"""Built-in leaderboard output formats, registered exactly as a third-party reporter would be.

A reporter's factory takes (leaderboard, out_dir) and returns the paths it wrote.
"""

from harness import hookimpl


@hookimpl
def register_reporters(register):
    register("md", factory="harness.report.markdown:write", version="1",
             description="leaderboard.md: tables per scenario × suite under threat model and scale; PNG plots")
    register("csv", factory="harness.report.tidy:write_csv", version="1",
             description="leaderboard.csv: tidy, one row per start × attack × metric, with per-seed values")
    register("json", factory="harness.report.tidy:write_json", version="1",
             description="leaderboard.json: the tables with their threat model, scale and plugins")
    register("html", factory="harness.report.html:write", version="1",
             description="leaderboard.html: self-contained, sortable tables and embedded plots, no network requests")
    register("png", factory="harness.report.plots:write", version="1",
             description="plots/*.png: score curves per attack with seed bands; intactness vs worst-case R")
