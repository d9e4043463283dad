"""House rules CI enforces: mypy --strict and ruff over the package, modules of one concept."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MAX_MODULE_LINES = 400


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=600
    )


@pytest.mark.slow
def test_mypy_strict_is_clean() -> None:
    out = run("mypy", "membus")
    assert out.returncode == 0, out.stdout + out.stderr


def test_ruff_lint_and_format_are_clean() -> None:
    lint = run("ruff", "check", "membus", "tests", "agents")
    assert lint.returncode == 0, lint.stdout
    fmt = run("ruff", "format", "--check", "membus", "tests", "agents")
    assert fmt.returncode == 0, fmt.stdout


def test_modules_stay_small() -> None:
    """One concept per module: past ~400 lines a module is holding two."""
    big = {
        p.name: n
        for p in (ROOT / "membus").glob("*.py")
        if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES
    }
    assert big == {}
