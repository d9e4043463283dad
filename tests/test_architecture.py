"""The package layout is the architecture: layers, no cycles, a cheap ``import membus``.

The contracts live in pyproject.toml (``[tool.importlinter]``); ``lint-imports`` checks them here
so that CI fails on an import that crosses a layer upwards, imports the CLI, or closes a cycle.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = sorted(p.parent.name for p in (ROOT / "membus").glob("*/__init__.py"))
# top-level modules kept only so that older import paths keep working (thin re-exports)
OLD_PATHS = {
    "membus.port": "membus.integrations.port",
    "membus.mcp_server": "membus.integrations.mcp",
    "membus.langgraph_store": "membus.integrations.langgraph",
}


def test_import_linter_contracts_are_kept() -> None:
    lint = Path(sys.executable).with_name("lint-imports")
    out = subprocess.run(
        [str(lint), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "3 kept, 0 broken" in out.stdout, out.stdout


@pytest.mark.parametrize("package", PACKAGES)
def test_every_package_says_what_it_owns_and_may_import(package: str) -> None:
    doc = ast.get_docstring(ast.parse((ROOT / "membus" / package / "__init__.py").read_text()))
    assert doc, f"membus.{package} has no docstring"
    assert "Owns:" in doc or "Owns " in doc, doc
    assert "May import" in doc, doc


def test_the_package_root_holds_no_code_but_the_public_api() -> None:
    """Everything lives in a package by concept; the root keeps the API, the error tree and
    the old paths, which only re-export."""
    top = {p.stem for p in (ROOT / "membus").glob("*.py")}
    assert top == {"__init__", "errors", *(m.split(".")[1] for m in OLD_PATHS)}
    for old in OLD_PATHS:
        tree = ast.parse((ROOT / "membus" / f"{old.split('.')[1]}.py").read_text())
        defs = [n for n in tree.body if isinstance(n, ast.FunctionDef | ast.ClassDef)]
        assert defs == [], f"{old} defines code: it must only re-export"


@pytest.mark.slow
@pytest.mark.parametrize(("old", "new"), sorted(OLD_PATHS.items()))
def test_old_module_paths_still_import_the_same_objects(old: str, new: str) -> None:
    probe = textwrap.dedent(
        f"""
        import importlib
        old, new = importlib.import_module({old!r}), importlib.import_module({new!r})
        for name in old.__all__:
            assert getattr(old, name) is getattr(new, name), name
        """
    )
    extra = {"membus.mcp_server": "mcp", "membus.langgraph_store": "langgraph"}.get(old)
    if extra:
        pytest.importorskip(extra)
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


HEAVY = ("redis", "qdrant_client", "qdrant_edge", "fastapi", "numpy", "torch", "mcp", "langgraph")


def test_import_membus_loads_none_of_the_engines() -> None:
    """``import membus`` is cheap: the public names load on first use (PEP 562)."""
    probe = f"import sys, membus; print([m for m in {HEAVY!r} if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_every_public_name_resolves() -> None:
    import membus

    for name in membus.__all__:
        assert getattr(membus, name) is not None, name
    with pytest.raises(AttributeError):
        _ = membus.no_such_name  # type: ignore[attr-defined]


def test_cli_help_loads_no_engine() -> None:
    """``membus --help`` (and a usage error) must not pay for the service, Qdrant or torch."""
    probe = textwrap.dedent(
        f"""
        import sys
        from membus.cli.app import app
        try:
            app(["--help"])
        except SystemExit:
            pass
        print([m for m in {HEAVY!r} if m in sys.modules], file=sys.stderr)
        """
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    loaded = out.stderr.strip().splitlines()[-1]
    assert all(m not in loaded for m in ("fastapi", "qdrant_client", "qdrant_edge", "torch"))


def test_membus_version_is_the_installed_one() -> None:
    from importlib.metadata import version

    from typer.testing import CliRunner

    from membus.cli.app import app

    out = CliRunner().invoke(app, ["--version"])
    assert out.exit_code == 0
    assert out.stdout.strip() == f"membus {version('membus')}"


def test_embedder_config_is_public() -> None:
    import membus
    from membus.core.config import EmbedderConfig

    assert membus.EmbedderConfig is EmbedderConfig


@pytest.mark.slow
@pytest.mark.anyio
async def test_a_custom_config_keeps_the_embedded_writer_defaults(tmp_path: Path) -> None:
    """``membus.open(path, MembusConfig(writers=2))`` used to drop the embedded default's fast
    retry and parking (WorkerConfig's server defaults instead); saying nothing of the worker
    keeps them, and an explicit worker config is kept as given."""
    import membus
    from membus.core.config import EMBEDDED_WORKER, MembusConfig, WorkerConfig

    async with membus.open(tmp_path / "a", MembusConfig(writers=2)) as bus:
        assert bus.config.worker == EMBEDDED_WORKER and bus.config.writers == 2
    mine = WorkerConfig(max_deliveries=7)
    async with membus.open(tmp_path / "b", MembusConfig(worker=mine)) as bus:
        assert bus.config.worker == mine
