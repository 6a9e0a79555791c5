"""Pluggy markers and hook specifications.

Every `register_*` hook receives a `register` callback; a plugin calls it once per thing it offers, with
a light descriptor (name, description, version, parameter schema, and the factory as a function or a
"module:function" string), so that listing and validating never import torch: plugin modules import torch
inside the functions that run a cell. Arguments are keyword-only so hooks can grow.
"""

import pluggy

PROJECT = "untunable"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


class Specs:
    """The hooks a plugin may implement."""

    @hookspec
    def register_tasks(self, register):
        """Offer task families: `register(name=..., factory=..., measures=[Measure...], labelled=..., head=...)`.

        The factory takes the task's resolved parameters and returns a `harness.tasks.Task`."""

    @hookspec
    def register_datasets(self, register):
        """Offer datasets: `register(name, factory=read, params=[Param...], ...)` (factory may be "module:function")."""

    @hookspec
    def register_architectures(self, register):
        """Offer model architectures (factory builds an nn.Module exposing `head_path`)."""

    @hookspec
    def register_defenses(self, register):
        """Offer defenses: factory(ctx, model) -> protected model."""

    @hookspec
    def register_attacks(self, register):
        """Offer attacks: factory(ctx, model) -> attacked model; the curve goes to ctx.recorder."""

    @hookspec
    def register_suites(self, register):
        """Offer named attack suites: `register(name=..., description=..., entries=[{...}, ...])`."""

    @hookspec
    def register_metrics(self, register):
        """Offer leaderboard metrics computed from stored curves, declaring the columns they fill:
        `register(name=..., factory=..., columns=[Column(name, unit, better)...])`."""

    @hookspec
    def register_executors(self, register):
        """Offer executors that run cells (local, ray, ...)."""

    @hookspec
    def register_reporters(self, register):
        """Offer leaderboard output formats (md, csv, html, json, ...)."""

    @hookspec
    def run_started(self, experiment, cells):
        """Called once a run's plan is known, before any cell runs."""

    @hookspec
    def cell_finished(self, cell, status):
        """Called in the runner process after each cell is committed to the store."""
