"""House rules CI enforces: mypy --strict, ruff lint and format, layout left to the formatter."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


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


def test_the_formatter_decides_layout() -> None:
    """No ``# fmt: skip``: code is never squeezed past the formatter to save lines."""
    skips = [
        f"{p.relative_to(ROOT)}:{n}"
        for p in sorted((ROOT / "membus").rglob("*.py"))
        for n, line in enumerate(p.read_text().splitlines(), 1)
        if "fmt: skip" in line or "fmt: off" in line
    ]
    assert skips == []
