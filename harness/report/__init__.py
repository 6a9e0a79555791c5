"""Leaderboard outputs, one job per module, each the factory of a reporter plugin (plugins/reporters.py).

A reporter takes a `harness.leaderboard.Leaderboard` and an output directory and returns the paths it wrote:
markdown (leaderboard.md + plots), tidy (leaderboard.csv, leaderboard.json), html (leaderboard.html) and
plots (PNG figures). terminal prints rich tables and writes nothing.
"""
