"""Shared test helpers: where the workplace's shared material lives, and policy builders."""
from __future__ import annotations

from pathlib import Path

import pytest

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
