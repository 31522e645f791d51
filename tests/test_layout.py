"""The layout DESIGN.md gives: engine/ is the only package; data folders are not packages."""

from __future__ import annotations

import subprocess
import sys

from conftest import REPO

import engine


def test_data_folders_are_not_packages() -> None:
    for folder in ("rules", "datasets", "experiments", "notebooks", "dashboards"):
        assert (REPO / folder).is_dir(), folder
        assert not list((REPO / folder).rglob("__init__.py")), f"{folder}/ must not be a package"


def test_no_files_that_shadow_packages() -> None:
    bad = [p for p in REPO.rglob("*.py") if p.name in {"engine.py", "datasets.py"} and ".venv" not in p.parts]
    assert bad == []


def test_engine_imports_from_this_repo() -> None:
    assert engine.__file__ is not None
    assert REPO / "engine" in __import__("pathlib").Path(engine.__file__).resolve().parents


def test_every_engine_module_imports() -> None:
    """A module that does not import is dead or broken; import all of them in a fresh interpreter."""
    modules = [
        ".".join(p.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
        for p in (REPO / "engine").rglob("*.py")
    ]
    code = "import importlib,sys\nfor m in sys.argv[1:]: importlib.import_module(m)"
    subprocess.run([sys.executable, "-c", code, *modules], check=True, cwd=REPO)
