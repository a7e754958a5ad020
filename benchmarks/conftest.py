"""Benchmark session helpers: a closing table of checks per second and ratios to the reference.

Each benchmark records how many checks one call makes (``extra_info["checks"]``);
the table divides the median by it and compares every contender with the
reference evaluator's benchmark of the same group, measured in the same run.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    session = getattr(config, "_benchmarksession", None)
    if session is None or not session.benchmarks:
        return
    rows = []
    by_group: dict[str, dict[str, float]] = {}
    for bench in session.benchmarks:
        checks = bench.extra_info.get("checks")
        if not checks or bench.stats is None:
            continue
        per_check = bench.stats.median / checks
        by_group.setdefault(bench.group or "", {})[bench.name] = per_check
        rows.append((bench.group or "", bench.name, per_check))
    terminalreporter.write_sep("-", "checks per second (median), ratio to the reference in the same group")
    for group, name, per_check in sorted(rows):
        reference = next((v for k, v in by_group[group].items() if "reference" in k), None)
        ratio = f"{reference / per_check:10.1f}x" if reference else " " * 11
        terminalreporter.write_line(f"{group:28} {name:52} {per_check * 1e6:12.3f} us {1 / per_check:14,.0f}/s {ratio}")
