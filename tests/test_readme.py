"""The README is part of the product: its opening example runs and CI runs its test command."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


@pytest.mark.slow
def test_opening_example_runs_and_is_short(tmp_path: Path) -> None:
    """The first code block is a complete program of at most ~20 lines that works as written."""
    block = re.search(r"```python\n(.*?)```", README, re.S)
    assert block is not None
    code = block.group(1)
    assert len(code.strip().splitlines()) <= 20
    env = {**os.environ, "CI": "true"}
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    assert out.returncode == 0, out.stderr
    assert "customer prefers email" in out.stdout
    assert "upsert The customer prefers email" in out.stdout


def test_python_blocks_are_as_ruff_formats_them() -> None:
    """ruff decides layout in the README's code as in the package's: each Python block
    (dedented where it sits in a list) is left unchanged by ``ruff format``."""
    blocks = [textwrap.dedent(b) for b in re.findall(r"```python\n(.*?)```", README, re.S)]
    assert blocks
    for block in blocks:
        out = subprocess.run(
            [sys.executable, "-m", "ruff", "format", "--config", str(ROOT / "pyproject.toml"), "-"],
            input=block,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 0, out.stderr
        assert out.stdout == block, f"ruff formats this block differently:\n{block}"


@pytest.mark.slow
def test_the_manage_memories_example_runs(tmp_path: Path) -> None:
    """The quickstart's second block: list, get, history and export, as written."""
    blocks = re.findall(r"```python\n(.*?)```", README, re.S)
    [code] = [b for b in blocks if "crm.export()" in b]
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env={**os.environ, "CI": "true"},
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith("Customer 42 is on the gold tier.")
    assert lines[1].startswith("Customer 42 is on the silver tier.")
    exported = (tmp_path / "acme.jsonl").read_text().splitlines()
    assert len(exported) == 2


def test_ci_runs_exactly_the_readme_test_command() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    test_cmd = next(line for line in ci.splitlines() if "pytest" in line)
    assert test_cmd.strip() in README
