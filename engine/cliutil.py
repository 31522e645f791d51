"""Small helpers shared by the command modules (kept apart from engine.cli to avoid import cycles)."""

from __future__ import annotations

import typer

from engine.home import Home


def home_of(ctx: typer.Context) -> Home:
    """The Home chosen by the root ``--home`` option (or SELFHEAL_HOME, or ./.selfheal)."""
    root = ctx.find_root()
    obj = root.obj if isinstance(root.obj, dict) else {}
    home = obj.get("home")
    return home if isinstance(home, Home) else Home.resolve()
