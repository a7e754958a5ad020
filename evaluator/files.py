"""Policy files named on a command line: files as given, folders walked for ``*.json``.

Shared by ``iam-eval validate`` and the batch jobs' policy sources, so that a folder means the same files to both.
"""
from __future__ import annotations

from pathlib import Path


def policy_files(paths: list[str]) -> list[str]:
    """The files named, and every ``*.json`` below each folder named, in name order; a folder without one is an
    error (``ValueError``), not an empty policy set."""
    files = []
    for path in paths:
        if Path(path).is_dir():
            found = sorted(str(file) for file in Path(path).rglob("*.json") if file.is_file())
            if not found:
                raise ValueError(f"no *.json file below {path}")
            files += found
        else:
            files.append(path)
    return files
