"""Typed for our users: `mypy --strict` on a user's module passes through durable's py.typed
marker, and a wrong params type and a misused step are rejected (issue: types users lean on)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent.parent / "typing"

pytestmark = pytest.mark.slow


def _mypy(module: Path, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """mypy --strict on ``module`` copied out of the repository, so that durable is found as an
    installed package (through its py.typed marker), not as the checkout's folder."""
    target = tmp_path / "user_module.py"
    shutil.copy(module, target)
    return subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", str(target)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_a_users_module_type_checks_under_strict(tmp_path: Path) -> None:
    done = _mypy(HERE / "user_app.py", tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "py.typed" not in done.stdout


def test_a_wrong_params_type_and_a_misused_step_are_rejected(tmp_path: Path) -> None:
    done = _mypy(HERE / "bad_user_app.txt", tmp_path)
    assert done.returncode == 1, done.stdout + done.stderr
    errors = [line for line in done.stdout.splitlines() if ": error:" in line]
    lines = (HERE / "bad_user_app.txt").read_text().splitlines()
    mistakes = {n + 1 for n, line in enumerate(lines) if "# MISTAKE" in line}
    flagged = {int(line.split(":")[1]) for line in errors}
    assert mistakes <= flagged, done.stdout
    assert 'incompatible type "str"; expected "Greeting"' in done.stdout
    assert 'No overload variant of "step" of "TaskContext"' in done.stdout
