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
