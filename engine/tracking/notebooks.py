"""Running parameterised notebooks with papermill (``selfheal evaluate``).

The executed copy is kept under the home folder with a UTC timestamp, so a scheduled evaluation
leaves an audit trail a person can open in JupyterLab. When a notebook declares an
``mlflow_run_id`` parameter, a run is created before execution and passed in: the notebook logs
its metrics into it, and the executed notebook is attached to the same run afterwards (a notebook
cannot log its own executed copy while it is still running).

Parameter values given as text (``-p window_days 2``) are read as YAML scalars, so numbers, booleans
and ``null`` arrive typed; anything else stays a string. Unknown parameter names are refused with
the list of declared ones instead of papermill's silent warning.
"""

from __future__ import annotations

import difflib
import logging
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from engine.errors import ConfigError, InputError
from engine.home import Home

logger = logging.getLogger(__name__)

KERNEL = "selfheal"
NOTEBOOK_EXPERIMENT = "notebooks"
#: Parameters filled from the command's context when a notebook declares them and the caller did not.
CONTEXT_PARAMETERS = ("home", "tracking_uri")


@dataclass
class NotebookRun:
    """papermill's verdict on one execution."""

    notebook: Path
    output: Path
    ok: bool
    seconds: float
    parameters: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    run_id: str | None = None

    def verdict(self) -> str:
        state = "succeeded" if self.ok else f"FAILED ({self.error})"
        return f"{self.notebook.name} {state} in {self.seconds:.1f}s; executed copy: {self.output}"


def coerce(value: str) -> Any:
    """A ``-p`` value as YAML scalar (int, float, bool, null), else the string itself."""
    try:
        parsed = yaml.safe_load(value)
    except yaml.YAMLError:
        return value
    return parsed if isinstance(parsed, int | float | bool | list | dict) or parsed is None else value


def declared_parameters(notebook: Path) -> dict[str, Any]:
    """The names (and papermill's inferred info) of the notebook's ``parameters`` cell.

    papermill reads that cell line by line with a pattern and skips, with a log line, what the
    pattern does not fit (a second ``=`` in a comment is enough); a skipped name then looks
    undeclared. Python's own parser says what the cell assigns, so such a cell is refused here,
    naming the lines, rather than its parameters being unusable.
    """
    import ast

    import nbformat
    import papermill

    declared = dict(papermill.inspect_notebook(str(notebook)))
    nb = nbformat.read(notebook, as_version=4)
    cell = next((c for c in nb.cells if "parameters" in c.metadata.get("tags", [])), None)
    if cell is None:
        return declared
    unread = [
        f"line {node.lineno}: {target.id}"
        for node in ast.parse(cell.source).body
        if isinstance(node, ast.Assign | ast.AnnAssign)
        for target in (node.targets if isinstance(node, ast.Assign) else [node.target])
        if isinstance(target, ast.Name) and target.id not in declared
    ]
    if unread:
        raise ConfigError(
            f"{notebook}: papermill cannot read the parameters cell's {', '.join(unread)}",
            hint="write one `name = value  # comment` per line, with no '=' inside the comment",
        )
    return declared


def run_notebook(
    notebook: str | Path,
    parameters: dict[str, Any] | None = None,
    *,
    home: Home,
    tracking_uri: str | None = None,
    kernel: str = KERNEL,
    log_to_mlflow: bool = True,
    output: str | Path | None = None,
) -> NotebookRun:
    """Execute ``notebook`` with papermill and return its verdict (never raises on a failing cell)."""
    import papermill
    from papermill.exceptions import PapermillExecutionError
    from traitlets.config import Config

    from engine.tracking import registry

    path = Path(notebook)
    if not path.is_file():
        raise InputError(f"notebook {path} not found", hint="ls notebooks/")
    params = dict(parameters or {})
    declared = declared_parameters(path)
    unknown = [k for k in params if k not in declared]
    if unknown:
        tips = []
        for k in unknown:
            close = difflib.get_close_matches(k, declared, n=1)
            tips.append(f"'{k}'" + (f" (did you mean '{close[0]}'?)" if close else ""))
        raise ConfigError(
            f"{path}: unknown parameter(s) {', '.join(tips)}",
            hint=f"the parameters cell declares: {', '.join(declared) or 'nothing'}",
        )
    uri = registry.resolve_tracking_uri(home, tracking_uri)
    context = {"home": str(home.root), "tracking_uri": uri}
    for name in CONTEXT_PARAMETERS:
        if name in declared and name not in params:
            params[name] = context[name]

    home.ensure()
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    out = Path(output) if output else home.notebooks_out / f"{path.stem}-{stamp}.ipynb"
    out.parent.mkdir(parents=True, exist_ok=True)

    client = None
    run_id = None
    if log_to_mlflow and "mlflow_run_id" in declared and "mlflow_run_id" not in params:
        client = registry.tracking_client(uri)
        experiment_id = registry.ensure_experiment(NOTEBOOK_EXPERIMENT, tracking_uri=uri, home=home)
        run = client.create_run(
            experiment_id,
            run_name=f"{path.stem} {stamp}",
            tags={"selfheal.kind": "notebook", "selfheal.notebook": path.name},
        )
        run_id = run.info.run_id
        params["mlflow_run_id"] = run_id

    started = time.perf_counter()
    error = None
    # The kernel talks to us over Unix sockets in a folder of this run that only we can enter, not
    # over TCP on 127.0.0.1, where any local user could read the traffic (ipykernel warns about it
    # on stderr). Each run gets its own folder: with the default socket names (kernel-ipc-N in the
    # working folder) two runs at once talk to each other's kernels. The kernel's own log shares our
    # stderr; it only says CRITICAL things: Jupyter interrupts every kernel it shuts down, and a
    # busy one then logs "KeyboardInterrupt caught" at ERROR. What fails a run reaches the verdict.
    try:
        with tempfile.TemporaryDirectory(prefix="selfheal-kernel-") as sockets:
            papermill.execute_notebook(
                str(path),
                str(out),
                parameters=params,
                kernel_name=kernel,
                cwd=str(path.resolve().parent),
                progress_bar=False,
                log_output=False,
                config=Config(
                    KernelManager={"transport": "ipc", "ip": f"{sockets}/kernel"},
                    NotebookClient={"extra_arguments": ["--IPKernelApp.log_level=CRITICAL"]},
                ),
            )
    except PapermillExecutionError as exc:
        error = f"{exc.ename}: {exc.evalue}"
    except Exception as exc:  # kernel missing, dead kernel, ...: still a verdict, with the reason
        error = f"{type(exc).__name__}: {exc}"
    seconds = time.perf_counter() - started
    result = NotebookRun(path, out, error is None, seconds, params, error, run_id)
    if client is not None and run_id is not None:
        if out.is_file():
            client.log_artifact(run_id, str(out), artifact_path="notebook")
        client.set_tag(run_id, "selfheal.verdict", "ok" if result.ok else (error or "failed")[:4900])
        client.set_terminated(run_id, "FINISHED" if result.ok else "FAILED")
    logger.info("%s", result.verdict())
    return result
