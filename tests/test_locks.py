"""The committed locks agree with pyproject.toml, and every install path uses them.

A dependency added to pyproject.toml but missing from a lock would be resolved afresh (at
whatever version the index serves that day) by every install that trusts the lock: that is the
drift the locks exist to stop. ``bash locks/refresh`` rewrites them.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PROJECT = PYPROJECT["project"]

# lock file -> the extras it was resolved with
LOCKS = {
    "base.txt": (),
    "test.txt": ("test",),
    "full.txt": ("test", "semantic", "mcp", "langgraph"),
}
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==([^\s;]+)")


def pins(lock: str) -> dict[str, Version]:
    found: dict[str, Version] = {}
    for line in (ROOT / "locks" / lock).read_text().splitlines():
        m = _PIN.match(line)
        if m:
            found[canonicalize_name(m.group(1))] = Version(m.group(2))
    return found


def requirements(extras: tuple[str, ...]) -> list[Requirement]:
    reqs = [Requirement(r) for r in PROJECT["dependencies"]]
    for extra in extras:
        reqs += [Requirement(r) for r in PROJECT["optional-dependencies"][extra]]
    return reqs


@pytest.mark.parametrize("lock", sorted(LOCKS))
def test_every_pyproject_dependency_is_pinned_in_the_lock(lock: str) -> None:
    pinned = pins(lock)
    assert pinned, f"locks/{lock} pins nothing"
    problems = []
    for req in requirements(LOCKS[lock]):
        name = canonicalize_name(req.name)
        if name not in pinned:
            problems.append(f"{req.name} is in pyproject.toml but not in locks/{lock}")
        elif not req.specifier.contains(pinned[name], prereleases=True):
            problems.append(f"locks/{lock} pins {req.name}=={pinned[name]}, outside {req}")
    assert not problems, "\n".join(problems) + "\nrun `bash locks/refresh`"


def test_the_checkers_are_pinned_exactly() -> None:
    # A new mypy or ruff release finds new things to say: the tool versions are part of the lock.
    test_extra = [Requirement(r) for r in PROJECT["optional-dependencies"]["test"]]
    for tool in ("mypy", "ruff", "import-linter"):
        (req,) = [r for r in test_extra if canonicalize_name(r.name) == tool]
        assert str(req.specifier).startswith("=="), f"{tool} is not pinned exactly: {req}"


def test_the_semantic_lock_takes_the_cpu_torch() -> None:
    # An unpinned or CUDA torch pulls gigabytes of nvidia wheels.
    pinned = pins("full.txt")
    assert str(pinned["torch"]) == "2.13.0+cpu"
    assert not [n for n in pinned if n.startswith("nvidia")]


@pytest.mark.parametrize(
    ("path", "lock"),
    [
        ("README.md", "locks/test.txt"),
        (".ci/run", "locks/test.txt"),
        ("Dockerfile", "locks/base.txt"),
    ],
)
def test_installs_come_from_a_lock(path: str, lock: str) -> None:
    text = (ROOT / path).read_text()
    installs = [ln for ln in text.splitlines() if "pip install" in ln and "uv==" not in ln]
    assert installs, f"{path} installs nothing"
    assert any(lock in ln for ln in installs), f"{path} does not install from {lock}"
