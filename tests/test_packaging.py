"""The installable package: what ``pip install .`` (not editable) ships must be every package of the source tree."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_source_package_is_listed_for_the_wheel():
    """``[tool.setuptools] packages`` is an explicit list: a package missing from it imports in the editable
    checkout and fails only after a real install (``rlprune.quant`` once did). Each listed package maps onto a
    folder with an ``__init__.py`` (through ``package-dir``), and every such folder is listed."""
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    dirs = cfg["package-dir"]

    def folder(pkg: str) -> Path:
        top = max((p for p in dirs if pkg == p or pkg.startswith(p + ".")), key=len)
        return ROOT / dirs[top] / Path(*pkg[len(top):].strip(".").split(".") if pkg != top else ())

    listed = set(cfg["packages"])
    assert all((folder(p) / "__init__.py").is_file() for p in listed), sorted(listed)
    found = set()
    for top, rel in dirs.items():
        for init in (ROOT / rel).rglob("__init__.py"):
            parts = init.parent.relative_to(ROOT / rel).parts
            found.add(".".join((top, *parts)))
    assert found - listed == set(), f"add to pyproject.toml's packages: {sorted(found - listed)}"


def test_every_dependency_is_pinned_by_the_constraints_file():
    """``scripts/setup.sh`` installs with ``-c constraints.txt``; a dependency added to pyproject.toml without a
    pin there would float to whatever the registry serves that day, so CI and a user's setup could differ."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = [Requirement(r) for r in (*project["dependencies"], *project["optional-dependencies"]["test"])]
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version, f"constraints.txt: {line!r} is not an exact pin (name==version)"
            pins[canonicalize_name(name)] = version
    unpinned = [str(r) for r in wanted if canonicalize_name(r.name) not in pins]
    assert not unpinned, f"pin these in constraints.txt: {unpinned}"
    outside = [f"{r.name}=={pins[canonicalize_name(r.name)]}" for r in wanted
               if not r.specifier.contains(pins[canonicalize_name(r.name)], prereleases=True)]
    assert not outside, f"constraints.txt pins outside pyproject.toml's ranges: {outside}"
    assert "-c constraints.txt" in (ROOT / "scripts" / "setup.sh").read_text()
