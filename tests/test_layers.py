"""Imports point one way (the layers contract in pyproject.toml, run by import-linter)."""

import shutil
import subprocess
import sys
from pathlib import Path

from conftest import need


def test_imports_follow_the_layers():
    lint = shutil.which("lint-imports") or str(Path(sys.executable).with_name("lint-imports"))
    need(Path(lint).exists(), "import-linter (pip install -e '.[test]')")
    result = subprocess.run([lint], cwd=Path(__file__).parents[1], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:]
