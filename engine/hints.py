"""Commands printed for a person to run next (hints, "next:" lines, "open them:" lists).

A printed command must work when pasted into the user's shell: it names the home it is about
(without ``--home`` it would act on ./.selfheal, not the folder the user chose), quotes what needs
quoting, and calls this installation's scripts by a name the shell finds. Library code raises
errors whose hints use it too, so it imports nothing of the CLI.
"""

from __future__ import annotations

import shlex
import shutil
import sys
from pathlib import Path

from engine.home import Home


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
