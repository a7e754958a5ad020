"""The distribution as a user gets it: an sdist that builds, and a wheel holding one top-level package.

The sdist is built from the checkout, the wheel from the sdist (so the sdist is complete), and the
wheel is installed into a fresh virtual environment with nothing else, where the command must run.
"""
from __future__ import annotations

import json
import subprocess
import sys
import tarfile
import venv
import zipfile
from pathlib import Path

import pytest

from .conftest import REPO

TYPO = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:GetObjekt", "Resource": "*"}]}


def run(*args: str | Path, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in args], cwd=cwd, capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    built = run(sys.executable, "setup.py", "-q", "sdist", "-d", out)
    assert built.returncode == 0, built.stderr[-3000:]
    sdist = next(out.glob("iam_evaluator-*.tar.gz"))
    with tarfile.open(sdist) as archive:
        names = archive.getnames()
    root = names[0].split("/")[0]
    for needed in ("setup.py", "pyproject.toml", "LICENSE", "MANIFEST.in", "evaluator/_engine.pyx",
                   "evaluator/_pattern.pxd", "proto/iam_evaluator/v1/iam_evaluator.proto", "cli/__init__.py"):
        assert f"{root}/{needed}" in names, f"the sdist lacks {needed}"
    built = run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", out, sdist)
    assert built.returncode == 0, built.stderr[-3000:]
    return next(out.glob("iam_evaluator-*.whl"))


def test_the_wheel_holds_one_top_level_package(wheel):
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
    top = {name.split("/")[0] for name in names}
    dist_info = next(t for t in top if t.endswith(".dist-info"))
    assert top == {"iam_evaluator", dist_info}, top
    for needed in ("iam_evaluator/py.typed", "iam_evaluator/proto/iam_evaluator/v1/iam_evaluator.proto",
                   "iam_evaluator/server/api/iam_evaluator_pb2.py", "iam_evaluator/cli/__init__.py",
                   "iam_evaluator/batch/runner.py", "iam_evaluator/__main__.py"):
        assert needed in names, f"the wheel lacks {needed}"
    for module in ("_engine", "_globtrie", "_pattern", "_conditions"):
        assert any(name.startswith(f"iam_evaluator/{module}.") and name.endswith(".so") for name in names), module
    assert not [name for name in names if name.endswith((".pyx", ".pxd", ".c"))], "sources stay in the sdist"
    assert any(name.startswith(dist_info) and name.endswith("LICENSE") for name in names)
    with zipfile.ZipFile(wheel) as archive:
        metadata = archive.read(f"{dist_info}/METADATA").decode()
    assert "License-Expression: Apache-2.0" in metadata and "Classifier: Typing :: Typed" in metadata


def test_the_installed_command_runs_alone(wheel, tmp_path):
    """In an environment holding only the wheel (no dependencies, nothing from the checkout): the command,
    ``python -m``, the version from the package's metadata, and validation with the shipped catalog."""
    home = tmp_path / "venv"
    venv.create(home, with_pip=True)
    python = home / "bin" / "python"
    installed = run(python, "-m", "pip", "install", "-q", "--no-deps", "--no-index", wheel, cwd=tmp_path)
    assert installed.returncode == 0, installed.stderr[-3000:]
    version = run(home / "bin" / "iam-eval", "--version", cwd=tmp_path)
    assert version.returncode == 0 and version.stdout.strip() == "iam-eval 0.1.0", version
    assert run(python, "-m", "iam_evaluator", "--version", cwd=tmp_path).stdout == version.stdout
    located = run(python, "-c", "import iam_evaluator, iam_evaluator._engine as e; print(e.__file__)", cwd=tmp_path)
    assert str(home) in located.stdout, "imported from the checkout, not the wheel"
    policy = tmp_path / "typo.json"
    policy.write_text(json.dumps(TYPO))
    validated = run(home / "bin" / "iam-eval", "validate", policy, cwd=tmp_path)
    assert "s3:GetObjekt" in validated.stdout + validated.stderr, validated


def test_the_pre_commit_hooks_run_real_commands():
    """Each hook's entry is an ``iam-eval`` command its parser takes (the file is read as text: no YAML
    library is needed to check it)."""
    from iam_evaluator.cli import build_parser

    entries = [line.split(":", 1)[1].strip() for line in (REPO / ".pre-commit-hooks.yaml").read_text().splitlines()
               if line.strip().startswith("entry:")]
    assert entries == ["iam-eval validate", "iam-eval test"]
    parser = build_parser()
    for entry, argument in zip(entries, ("policy.json", "cases.jsonl"), strict=True):
        program, command = entry.split()
        assert program == "iam-eval"
        assert parser.parse_args([command, argument]).command == command
