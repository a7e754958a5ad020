"""Shared test helpers: where the workplace's shared material lives, and policy builders."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from iam_evaluator.cli import main

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
CONFORMANCE = SHARED / "conformance"
CORPUS = SHARED / "corpus"
EXAMPLES = REPO / "examples" / "policies"


def require(path: Path) -> Path:
    """Shared data is part of the test environment: its absence is a failure, not a skip."""
    if not path.exists():
        pytest.fail(f"{path} is missing: tests read ../shared/ beside the project checkout")
    return path


def assert_passes_under_debug_allocator(module: str, **environment: str) -> None:
    """Run a test module again (its subprocess tests left out) under ``PYTHONMALLOC=debug``, which fills freed
    memory, so that a string the engine reads after it was freed gives a wrong answer or a crash."""
    env = {**os.environ, "PYTHONMALLOC": "debug", "PYTHONFAULTHANDLER": "1", **environment}
    result = subprocess.run([sys.executable, "-m", "pytest", module, "-k", "not subprocess", "-q", "-p",
                             "no:cacheprovider"], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    output = result.stdout + result.stderr
    assert "Fatal Python error" not in output and "Segmentation fault" not in output, output[-5000:]
    assert result.returncode == 0, output[-5000:]


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    """``iam-eval`` with ``argv`` (paths and numbers as their text): its exit code, stdout and stderr."""
    code = main([str(arg) for arg in argv])
    out, err = capsys.readouterr()
    return code, out, err
