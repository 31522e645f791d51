"""Small helpers shared by the command modules (kept apart from engine.cli to avoid import cycles)."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

import typer

from engine.home import Home


def home_of(ctx: typer.Context) -> Home:
    """The Home chosen by the root ``--home`` option (or SELFHEAL_HOME, or ./.selfheal)."""
    root = ctx.find_root()
    obj = root.obj if isinstance(root.obj, dict) else {}
    home = obj.get("home")
    return home if isinstance(home, Home) else Home.resolve()


class Executor(StrEnum):
    """The choices of ``--executor`` (``engine.pools``)."""

    local = "local"
    ray = "ray"


ExecutorOption = Annotated[
    Executor,
    typer.Option(
        "--executor",
        help="Where the candidates run: local (processes of this machine) or ray (Ray tasks; "
        "needs pip install 'selfheal[ray]'). MLflow runs are the same on either.",
    ),
]
AddressOption = Annotated[
    str | None,
    typer.Option(
        "--address",
        help="With --executor ray: the running Ray cluster to use (ray://HOST:10001, HOST:6379 or auto); "
        "default: start a Ray on this machine with --workers CPUs, stopped at the end.",
    ),
]
