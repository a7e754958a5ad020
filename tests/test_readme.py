"""The READMEs' runnable blocks, run as a reader would run them: a block marked ``<!-- runnable -->``
is a shell block whose every line must exit 0 (or the code its ``# exit N`` comment gives), or a Python
block that must run without an error. Each runs from a fresh folder holding the shipped examples."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import REPO

READMES = [REPO / "README.md", REPO / "examples" / "store" / "README.md"]
BLOCK = re.compile(r"^<!-- runnable -->\n```(sh|python)\n(.*?)^```$", re.MULTILINE | re.DOTALL)
EXIT = re.compile(r"#\s*exit (\d+)")


def blocks() -> list:
    found = []
    for readme in READMES:
        for number, match in enumerate(BLOCK.finditer(readme.read_text(encoding="utf-8"))):
            found.append(pytest.param(match.group(1), match.group(2), id=f"{readme.relative_to(REPO)}#{number}"))
    return found


def test_each_readme_has_a_runnable_block():
    assert {param.id.split("#")[0] for param in blocks()} == {str(p.relative_to(REPO)) for p in READMES}


@pytest.mark.parametrize("language, text", blocks())
def test_runnable_block(language, text, tmp_path):
    (tmp_path / "examples").symlink_to(REPO / "examples")
    if language == "python":
        subprocess.run([sys.executable, "-c", text], cwd=tmp_path, check=True, timeout=120)
        return
    # The iam-eval installed beside this Python: the command a reader runs.
    environment = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    for line in filter(None, (line.strip() for line in text.splitlines())):
        wanted = EXIT.search(line)
        done = subprocess.run(["bash", "-c", line], cwd=tmp_path, env=environment, capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == (int(wanted.group(1)) if wanted else 0), (line, done.stdout, done.stderr)
        assert "Traceback" not in done.stderr, (line, done.stderr)
