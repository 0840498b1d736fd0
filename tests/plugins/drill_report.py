"""Figures the drills measure (failover windows, error counts, budgets), shown in a section at
the end of every test run, `make test` included, whatever pytest's output capture does."""

import pytest

_lines: list[str] = []


@pytest.fixture
def report(request):
    """report(text): one line under "drill figures", named by the test."""

    def add(text: str) -> None:
        _lines.append(f"{request.node.name}: {text.strip()}")

    return add


def pytest_terminal_summary(terminalreporter):
    if _lines:
        terminalreporter.section("drill figures")
        for line in _lines:
            terminalreporter.write_line(line)
