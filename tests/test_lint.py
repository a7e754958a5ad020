"""Lint runs with the tests, so style problems fail CI like any other defect."""
from __future__ import annotations

import subprocess
import sys

from .conftest import REPO


def test_ruff_is_clean():
    result = subprocess.run([sys.executable, "-m", "ruff", "check", "evaluator", "batch", "tests", "benchmarks"],
                            cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
