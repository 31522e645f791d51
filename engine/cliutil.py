"""Small helpers shared by the command modules (kept apart from engine.cli to avoid import cycles)."""

from __future__ import annotations

import shlex
import shutil
import sys
from pathlib import Path

import typer

from engine.home import Home


def home_of(ctx: typer.Context) -> Home:
    """The Home chosen by the root ``--home`` option (or SELFHEAL_HOME, or ./.selfheal)."""
    root = ctx.find_root()
    obj = root.obj if isinstance(root.obj, dict) else {}
    home = obj.get("home")
    return home if isinstance(home, Home) else Home.resolve()


def program(name: str) -> str:
    """How to call this installation's console script ``name`` (selfheal, mlflow, jupyter) from the
    user's shell: the bare name when PATH finds this very script, else its absolute path (after
    ``make demo`` the scripts sit in ``.venv/bin``, which is not on PATH; a relative path would
    only work from the folder the command ran in)."""
    here = Path(sys.executable).parent / name
    if not here.is_file():
        return name
    found = shutil.which(name)
    return name if found and Path(found).resolve() == here.resolve() else str(here)


def selfheal_command(home: Home, *args: str) -> str:
    """A ``selfheal`` command line to print as a hint: copy-paste correct, so it names the home it
    worked on (a hint without ``--home`` would act on another folder) and quotes what needs it."""
    return shlex.join([program("selfheal"), "--home", str(home.root), *args])
