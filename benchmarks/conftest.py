"""Benchmarks report their headline numbers in the run's closing summary (pytest captures what tests print)."""

import pytest

SUMMARY = pytest.StashKey[list]()


@pytest.fixture
def report(request):
    """`report(line)` adds a line to the closing summary."""
    return request.config.stash.setdefault(SUMMARY, []).append


def pytest_terminal_summary(terminalreporter, config):
    for line in config.stash.get(SUMMARY, []):
        terminalreporter.write_line(line)
