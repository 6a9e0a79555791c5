"""Executors run cells: `local` (worker processes) ships with the core; `ray` is an optional extra."""
