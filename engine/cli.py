"""The ``selfheal`` command line.

The root app only wires things together: every command lives in the ``commands`` module of the
subpackage that owns it and is registered through ``register(app)``, the same way a plugin would
add one. This is also the one place where our errors become a clean line and exit code 2.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated

import typer

from engine import __version__
from engine.errors import EngineError, SpecError
from engine.home import Home

COMMAND_MODULES: tuple[str, ...] = (
    "engine.telemetry.commands",  # ingest
    "engine.telemetry.synth_commands",  # synth
    "engine.evaluation.commands",  # nab run, nab score
    "engine.tracking.commands",  # experiment run, promote, models, evaluate
    "engine.demo_commands",  # demo
    "engine.policy.commands",  # rules validate/test, actions list
    "engine.bundle.commands",  # bundle build/verify/inspect
    "engine.runtime.commands",  # run, pause, resume, approvals, journal
    "engine.chaos.commands",  # chaos run/validate/list/platform, replay
    "engine.diagnosis.commands",  # diagnosis train/show
)

#: Long-running servers: their normal events are logged at INFO by default.
SERVER_COMMANDS = frozenset({"run"})

app = typer.Typer(
    name="selfheal",
    help="Self-healing for AI platforms: telemetry, detectors, policies and the engine that acts.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"selfheal {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    ctx: typer.Context,
    home: Annotated[
        Path | None,
        typer.Option(
            "--home",
            envvar="SELFHEAL_HOME",
            help="Folder for all state (DuckDB, MLflow, quarantine, bundles, journals). Default ./.selfheal.",
        ),
    ] = None,
    log_level: Annotated[
        str | None,
        typer.Option(help="Logging level: DEBUG, INFO, WARNING (default: INFO for `run`, else WARNING)."),
    ] = None,
    json_logs: Annotated[bool, typer.Option("--json-logs", help="Log as JSON lines.")] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    """Self-healing for AI platforms.

    Example: selfheal --home /tmp/sh synth --days 2
    """
    configure_logging(log_level, json_logs=json_logs, server=ctx.invoked_subcommand in SERVER_COMMANDS)
    ctx.obj = {"home": Home.resolve(home)}


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is at emit time, so a replaced stream (pytest's capture,
    a notebook) never leaves the handler writing into a closed file."""

    @property  # type: ignore[override]
    def stream(self):  # type: ignore[no-untyped-def]
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # type: ignore[no-untyped-def]
        """The stream is always the current sys.stderr; assignments are ignored."""


def configure_logging(level: str | None, *, json_logs: bool = False, server: bool = False) -> None:
    """Logging is configured here and only here (library modules just get their logger).

    ``level`` (``--log-level``) applies to everything. Without it, third-party libraries log at
    WARNING, and so does selfheal except in a long-running server, whose normal events (listening,
    started, an action run) an operator expects to see at INFO.

    MLflow configures its own loggers when it is imported, at INFO unless ``MLFLOW_LOGGING_LEVEL``
    says otherwise, and draws a progress bar for every artifact download: both landed on stderr in
    the middle of our output. The two environment variables bring it in line, here and in the sweep
    workers and notebook kernels that inherit our environment; a user's own setting wins.
    """
    handler = _StderrHandler()
    if json_logs:
        from pythonjsonlogger.json import JsonFormatter

        handler.setFormatter(JsonFormatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = (level or "WARNING").upper()
    logging.basicConfig(level=root, handlers=[handler], force=True)
    logging.getLogger("engine").setLevel(root if level or not server else "INFO")
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", root)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    if "mlflow" in sys.modules:  # imported already: its loggers were configured at import
        logging.getLogger("mlflow").setLevel(os.environ["MLFLOW_LOGGING_LEVEL"].upper())


def _keep_examples_whole(typer_app: typer.Typer) -> None:
    """Help is plain click text: click re-wraps each paragraph to the terminal, so the line breaks
    of a docstring never cut a sentence (rich-formatted help kept them and wrapped again). An
    ``Example:`` paragraph is a command to copy, so it is marked verbatim (click's ``\\b``)
    rather than wrapped mid-command."""
    for info in typer_app.registered_commands:
        doc = info.help or inspect.getdoc(info.callback) or ""
        info.help = "\n\n".join(f"\b\n{p}" if p.startswith("Example") else p for p in doc.split("\n\n"))
    for group in typer_app.registered_groups:
        if group.typer_instance is not None:
            _keep_examples_whole(group.typer_instance)


for _module in COMMAND_MODULES:
    importlib.import_module(_module).register(app)
_keep_examples_whole(app)


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point: run the app, turning our errors into one line and exit code 2."""
    try:
        rv = app(args=list(argv) if argv is not None else None, prog_name="selfheal", standalone_mode=False)
    except SpecError as exc:
        typer.echo(f"selfheal: error: {exc.message}", err=True)
        if exc.hint:
            typer.echo(f"hint: {exc.hint}", err=True)
        sys.exit(2)
    except EngineError as exc:
        typer.echo(f"selfheal: error: {exc}", err=True)
        sys.exit(2)
    except typer.Abort:
        typer.echo("aborted", err=True)
        sys.exit(130)
    except typer.TyperException as exc:  # usage errors: typer vendors click, these are not click's classes
        show = getattr(exc, "show", None)
        if callable(show):
            show()
        else:
            typer.echo(f"selfheal: error: {exc}", err=True)
        sys.exit(int(getattr(exc, "exit_code", 2)))
    sys.exit(rv if isinstance(rv, int) else 0)


if __name__ == "__main__":
    main()
