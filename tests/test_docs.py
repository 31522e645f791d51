"""Docs that are tested: every CLI command is in the README, and every example in the README runs.

How the README's examples run (``test_readme_example_runs``, one test per fenced block):

- ```bash blocks: every line runs with bash, in order, as a user would type it, in a copy of a
  prepared workspace (``workspace``): copies of the repository's ``rules/``, ``experiments/``,
  ``datasets/`` and ``notebooks/`` (an example that writes there, as retraining the shipped
  diagnosis model does, never writes into the repository: the test checks); ``../shared/data/nab``
  when the corpus is present (lines naming it are skipped when it is not); the sample input files
  the examples name (``_write_samples``); and the default home ``.selfheal/`` with four days of
  synthetic telemetry from 2026-01-05, a champion ``selfheal-detector`` version 1 and its bundle
  ``.selfheal/bundles/selfheal-detector-v1``, signed with ``.selfheal/keys/bundle-signing.key``,
  which the home trusts.
  Every line must exit 0 (``EXIT`` lists the documented exceptions) without a traceback.
  Before a line runs, the test only:
  - drops optional parts, written ``[--option VALUE]``;
  - maps ``/tmp/`` into its own temporary folder and ``--port N`` to a free port (``selfheal run``
    without ``--port`` gets that port from ``SELFHEAL_ENGINE_PORT``; the operator commands find the
    engine through ``SELFHEAL_ENGINE_URL``);
  - fills placeholders (``PLACEHOLDERS``: ``RUN_ID``, ``apr-<16 hex>``, ``<8 hex>...``) with what an
    earlier line of the same block printed, as a user would copy it;
  - appends the options of ``FAST`` (smaller data; click lets a later option win).
  ``export NAME=VALUE`` lines set the environment of the block's later lines. Servers (``SERVERS``)
  start in the background, must come up on their port, and are stopped (their signal, exit 0) by the
  next server line or at the end of the block. ``BEFORE`` prepares what a line needs from a running
  engine (a waiting approval). Lines that cannot run in a test are in ``SKIP_COMMANDS`` with why.
- ```python blocks run with ``exec`` in a namespace holding ``PYTHON_NAMES`` (``spec``, ``X_train``,
  ``X_live``: a feature spec and two feature matrices).
- ```yaml blocks are an engine config (every key a setting of ``selfheal run``: loaded as the
  engine loads it) or parts of an experiment spec: a detector entry (it has ``class``), the
  detector part of a spec (it has ``detectors``) or a feature spec; the test puts the block into a
  minimal spec and validates it as ``experiment validate`` does.
- Any other block must be in ``SKIP_BLOCKS`` with the reason. A block that is neither run nor
  skipped fails ``test_every_readme_block_is_run_or_skipped``.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from conftest import REPO, nab_dir
from test_runtime_support import AdminServer, push_anomaly, write_rules
from test_tracking_support import SMALL_FEATURES, make_home
from typer.main import get_command

from engine import cli
from engine.shipped import FOLDERS

README = REPO / "README.md"

# ------------------------------------------------------------------------------ the tables

#: Lines that do not run here, by how they start, and why.
SKIP_COMMANDS = {
    "make demo": "tests/test_demo.py runs `selfheal demo` end to end, twice, with the game day",
    "make test": "it is this test suite",
    "pip install ": "tests/test_demo.py builds the wheel, installs it outside the checkout and runs the demo",
}
#: Blocks that are not bash, python or yaml, by their first line, and why.
SKIP_BLOCKS = {
    "0 6 * * *": "a crontab entry; the `selfheal evaluate` it schedules runs in the research-loop block",
    "NOT PROMOTED:": "output of `selfheal promote`; tests/test_promote.py checks the table's lines",
    "flowchart LR": "a mermaid picture of the engine's stages",
}
#: Options appended to a command (its path in the CLI), and why.
FAST: dict[tuple[str, ...], tuple[list[str], str]] = {
    ("demo",): (["--days", "2", "--no-game-day", "--workers", "1"], "the demo test runs the game day"),
    ("synth",): (["--days", "1"], "one day takes the same path as fourteen"),
    ("experiment", "run"): (["--workers", "1"], "on two shared cores, spawning workers costs more"),
    ("nab", "run"): (["--category", "artificialWithAnomaly"], "the whole subset takes ~30 s a run"),
    ("chaos", "campaign"): (["--n", "2", "--workers", "1"], "two experiments take the path of fifty"),
    ("chaos", "assess"): (["--n", "1", "--top", "1", "--workers", "1"], "one candidate, one experiment"),
    ("diagnosis", "train"): (["--days", "1"], "a day a seed takes the path of seven"),
}
#: Commands that make their block slow (more than a few seconds), or `alone` (an engine racing a
#: simulated clock, see `make test`).
SLOW = {("demo",), ("experiment", "run"), ("evaluate",), ("nab", "run"), ("nab", "score"), ("run",),
        ("bundle", "build"), ("chaos", "run"), ("chaos", "campaign"), ("chaos", "assess")}  # fmt: skip
ALONE = {("chaos", "run"), ("chaos", "campaign"), ("chaos", "assess"), ("demo",)}  # demo: it assesses
#: Long-running commands: started in the background, stopped with this signal (exit 0 expected).
SERVERS = {("run",): signal.SIGTERM, ("chaos", "platform"): signal.SIGINT}
#: Documented exit codes other than 0, by the README line (without its comment).
EXIT = {
    "selfheal promote RUN_ID --name selfheal-detector": {0, 1},  # 1: the gate kept the champion
}
#: (placeholder in a README line, where an earlier line of the block printed its value, meaning).
PLACEHOLDERS = (
    (r"\bRUN_ID\b", r"sweep run ([0-9a-f]{32})", "a sweep's run id, printed by `selfheal experiment run`"),
    (
        r"\bapr-[0-9a-f]{28}\b",
        r"\b(apr-[0-9a-f]{28})\b",
        "a waiting approval, from `selfheal approvals list`",
    ),
    (
        r"\bevt-[0-9a-f]{28}\b",
        r"\b(evt-[0-9a-f]{28})\b",
        "an anomaly event, from `selfheal journal --kind events`",
    ),
    (
        r"\b[0-9a-f]{8}\.\.\.",
        r"digest\s+([0-9a-f]{64})",
        "a bundle digest, printed by `selfheal bundle build`",
    ),
)
#: The policy of the engine that `engine.yaml` runs: any vector-db or feature-store anomaly asks
#: for a (high-risk) rollback, so the operator commands have approvals to list, approve and reject.
ENGINE_POLICY = """
policy: docs
version: 1
rules:
  - name: rollback-on-anomaly
    when: {services: [vector-db, feature-store]}
    then: {action: rollback_model}
    safeguards: {cooldown: 1h, max_concurrent: 4}
    verify: {steady_state: {score_below: 0.95}, deadline: 60s}
    approval: {ttl: 10m}
"""

# ------------------------------------------------------------------------------ the README


@dataclass
class Block:
    line: int  # of the opening fence
    lang: str
    text: str

    @property
    def first(self) -> str:
        return next((x.strip() for x in self.text.splitlines() if x.strip()), "")

    def commands(self) -> Iterator[tuple[int, str]]:
        """(README line, command) for each command, continuation lines joined, comments dropped."""
        pending, start = "", 0
        for offset, raw in enumerate(self.text.splitlines(), start=self.line + 1):
            if not pending:
                start = offset
            if raw.rstrip().endswith("\\"):
                pending += raw.rstrip()[:-1] + " "
                continue
            command = _uncomment(pending + raw).strip()
            pending = ""
            if command:
                yield start, " ".join(command.split())

    def paths(self) -> set[tuple[str, ...]]:
        return {_path(command) for _, command in self.commands()} if self.lang == "bash" else set()


def _blocks() -> list[Block]:
    text = README.read_text()
    return [
        Block(text[: m.start()].count("\n") + 1, m.group(1), m.group(2))
        for m in re.finditer(r"^```(\w*)\n(.*?)^```", text, re.M | re.S)
    ]


def _uncomment(line: str) -> str:
    """The line without its shell comment (a # after a blank, outside quotes)."""
    quote = None
    for i, char in enumerate(line):
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i]
    return line


def _argv(command: str) -> list[str]:
    """The words after leading VAR=value assignments."""
    words = shlex.split(command)
    while words and re.match(r"^[A-Za-z_]\w*=", words[0]):
        words.pop(0)
    return words


def _path(command: str) -> tuple[str, ...]:
    """The CLI command a `selfheal ...` line runs, e.g. ('chaos', 'run'); () for anything else."""
    words = _argv(command)
    if not words or words[0] != "selfheal":
        return ()
    group: Any = get_command(cli.app)
    path: list[str] = []
    i = 1
    while i < len(words):
        word = words[i]
        if word.startswith("-"):
            i += 2 if not path and word in ("--home", "--log-level") else 1
            continue
        sub = getattr(group, "commands", {}).get(word)
        if sub is None:
            break
        path.append(word)
        group, i = sub, i + 1
    return tuple(path)


def _skip_reason(command: str) -> str | None:
    return next((why for prefix, why in SKIP_COMMANDS.items() if command.startswith(prefix)), None)


def _params() -> list[Any]:
    out = []
    for block in _blocks():
        if block.lang not in ("bash", "python", "yaml"):
            continue
        paths = block.paths()
        marks = [pytest.mark.slow] if paths & SLOW else []
        marks += [pytest.mark.alone] if paths & ALONE else []
        out.append(pytest.param(block, marks=marks, id=f"README.md:{block.line}:{block.lang}"))
    return out


# --------------------------------------------------------------------------- the workspace


@pytest.fixture(scope="module")
def admin() -> Iterator[AdminServer]:
    """The admin API the engine of `engine.yaml` acts on."""
    with AdminServer() as server:
        yield server


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory, admin: AdminServer) -> Path:
    """The folder the examples run in (see the module docstring); blocks run in copies of it."""
    root = tmp_path_factory.mktemp("readme")
    ws = root / "selfheal"
    ws.mkdir()
    for name in FOLDERS:  # copies: an example that writes there (`-o experiments/...`) writes here
        shutil.copytree(REPO / name, ws / name)
    corpus = nab_dir()
    if corpus is not None:
        (root / "shared" / "data").mkdir(parents=True)
        (root / "shared" / "data" / "nab").symlink_to(corpus)
    _write_samples(ws, root / "engine-rules", admin.url)
    make_home(ws / ".selfheal", days=4)
    return ws


@pytest.fixture(scope="module")
def workspace_with_champion(workspace: Path) -> Path:
    """The workspace plus a champion `selfheal-detector` v1 (one configuration of the demo's sweep)
    and its bundle in the default place, signed with the home's key, which the home trusts."""
    from engine.bundle import build_bundle
    from engine.bundle.signing import KEY_FILE, generate_key, trust_key
    from engine.home import Home
    from engine.tracking import registry
    from engine.tracking.experiment import run_experiment

    home = Home.resolve(workspace / ".selfheal")
    spec = yaml.safe_load((REPO / "experiments" / "demo_quick.yaml").read_text())
    spec["detectors"] = [{"class": "HBOS", "params": {"n_bins": 10}}]
    (workspace.parent / "champion.yaml").write_text(yaml.safe_dump(spec))
    sweep = run_experiment(workspace.parent / "champion.yaml", home=home, workers=1, progress=False)
    assert sweep.best_run_id
    registry.promote(sweep.best_run_id, registry.DEFAULT_MODEL, tracking_uri=home.tracking_uri)
    public, _ = generate_key(home.keys / KEY_FILE)
    trust_key(public, home)
    built = build_bundle(
        f"models:/{registry.DEFAULT_MODEL}@{registry.CHAMPION}",
        REPO / "rules",
        tracking_uri=home.tracking_uri,
        bundles_dir=home.bundles,
        signing_key=home.keys / KEY_FILE,
    )
    assert built.path == home.bundles / "selfheal-detector-v1"
    return workspace


def _write_samples(ws: Path, engine_rules: Path, admin_url: str) -> None:
    """The files the examples name: small telemetry in each format `selfheal ingest` reads
    (metrics.csv, points.parquet, app.jsonl, scrape.prom, drop/), prod-targets.yaml, and the
    engine.yaml the engine examples run (the tests' components factory, on ENGINE_POLICY)."""
    import polars as pl
    from test_tracking_support import START

    rows = [
        (START.replace(minute=m), s, "latency_p99_ms", 100.0 + m)
        for m in range(10)
        for s in ("gateway", "vector-db")
    ]
    frame = pl.DataFrame(rows, schema=["ts", "service", "metric", "value"], orient="row")
    frame.write_csv(ws / "metrics.csv")
    frame.write_parquet(ws / "points.parquet")
    frame.with_columns(pl.col("ts").dt.strftime("%Y-%m-%dT%H:%M:%S")).write_ndjson(ws / "app.jsonl")
    (ws / "drop").mkdir()
    frame.write_csv(ws / "drop" / "batch-1.csv")
    (ws / "scrape.prom").write_text(
        '# TYPE latency_p99_ms gauge\nlatency_p99_ms{service="gateway"} 120.5\n'
        'latency_p99_ms{service="vector-db"} 80.25\n'
    )
    shutil.copy2(REPO / "rules" / "targets.yaml", ws / "prod-targets.yaml")
    write_rules(engine_rules, admin_url)
    (engine_rules / "platform.yaml").write_text(ENGINE_POLICY)
    factory = REPO / "tests" / "test_runtime_support.py"
    (ws / "engine.yaml").write_text(f"components: {factory}:build_components\ntick_s: 0.02\n")


# ------------------------------------------------------------------------------ a block's shell


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Shell:
    """One block's session: its folder, environment, outputs so far, and the server it runs."""

    cwd: Path
    tmp: Path
    env: dict[str, str]
    port: int
    outputs: list[str] = field(default_factory=list)
    filled: dict[str, str] = field(default_factory=dict)
    server: tuple[subprocess.Popen[bytes], signal.Signals, Path] | None = None

    def prepare(self, where: str, command: str) -> str:
        command = re.sub(r"\s\[-[^\]]*\]", "", command)
        command = command.replace("/tmp/", f"{self.tmp}/")
        command = re.sub(r"--port \d+", f"--port {self.port}", command)
        for pattern, source, meaning in PLACEHOLDERS:
            for literal in dict.fromkeys(re.findall(pattern, command)):
                if literal not in self.filled:
                    used = set(self.filled.values())
                    found = [
                        v for out in self.outputs for v in re.findall(source, out, re.M) if v not in used
                    ]
                    assert found, f"{where}: {literal} stands for {meaning}, but no earlier line printed one"
                    self.filled[literal] = found[0]
                command = command.replace(literal, self.filled[literal])
        extra, _ = FAST.get(_path(command), ([], ""))
        return " ".join([command, *map(shlex.quote, extra)])

    def run(self, where: str, original: str) -> None:
        if original.startswith("export "):
            name, _, value = shlex.split(original)[1].partition("=")
            self.env[name] = value
            return
        path = _path(original)
        assert path, f"{where}: not a selfheal command; run it or add it to SKIP_COMMANDS: {original}"
        if "../shared/data/nab" in original and nab_dir() is None:
            return  # as every NAB test: the corpus is not here
        for prefix, prepare in BEFORE.items():
            if path[: len(prefix)] == prefix:
                prepare(self)
        command = self.prepare(where, original)
        if path in SERVERS:
            self.stop()
            self.start(where, command, SERVERS[path])
            return
        done = subprocess.run(
            ["bash", "-c", command], cwd=self.cwd, env=self.env, capture_output=True, text=True, timeout=900
        )
        shown = f"{where}: {command}\nexit {done.returncode}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        assert done.returncode in EXIT.get(original, {0}), shown
        assert "Traceback" not in done.stderr, shown
        self.outputs.append(done.stdout + done.stderr)

    def start(self, where: str, command: str, stop_with: signal.Signals) -> None:
        log = self.tmp / f"server-{len(self.outputs)}.log"
        with log.open("wb") as sink:
            # exec: the signal reaches the server itself; assignments stay in front (VAR=x exec cmd)
            execd = re.sub(r"^((?:[A-Za-z_]\w*=\S*\s+)*)", r"\1exec ", command)
            proc = subprocess.Popen(["bash", "-c", execd], cwd=self.cwd, env=self.env,
                                    stdout=sink, stderr=subprocess.STDOUT)  # fmt: skip
        self.server = (proc, stop_with, log)
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, f"{where}: {command} exited {proc.returncode}:\n{log.read_text()}"
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            assert time.monotonic() < deadline, f"{where}: {command} did not listen:\n{log.read_text()}"
            time.sleep(0.1)

    def stop(self) -> None:
        if self.server is None:
            return
        proc, stop_with, log = self.server
        self.server = None
        proc.send_signal(stop_with)
        try:
            code = proc.wait(timeout=90)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
        text = log.read_text()
        assert code == 0 and "Traceback" not in text, f"stopped with exit {code}:\n{text[-3000:]}"
        self.outputs.append(text)


def _two_waiting_approvals(shell: Shell) -> None:
    """Before `selfheal approvals list`: the engine waits on approvals, as an operator's would (the
    ids listed are the ones approve and reject then use). Anomalies on vector-db and feature-store
    make the `engine.yaml` policy ask for two."""
    url = shell.env["SELFHEAL_ENGINE_URL"]
    if len(httpx.get(f"{url}/v1/approvals").json()) >= 2:
        return
    push_anomaly(url, vector_db=True, feature_store=True)
    deadline = time.monotonic() + 30
    while len(httpx.get(f"{url}/v1/approvals").json()) < 2:
        decisions = httpx.get(f"{url}/v1/decisions").text
        assert time.monotonic() < deadline, f"the engine of engine.yaml asked for no approvals: {decisions}"
        time.sleep(0.05)


#: What a line needs from a running engine, prepared before it runs (by command path prefix).
BEFORE: dict[tuple[str, ...], Callable[[Shell], None]] = {("approvals", "list"): _two_waiting_approvals}

#: Names the python examples may use without defining them.
PYTHON_NAMES = ("spec", "X_train", "X_live")


def _python_names() -> dict[str, Any]:
    from test_tracking_support import feature_frame

    spec, frame = feature_frame(n=600)
    matrix = frame.select(spec.feature_names).drop_nulls().to_numpy()
    return dict(zip(PYTHON_NAMES, (spec, matrix[:400], matrix[400:]), strict=True))


# ------------------------------------------------------------------------------------ tests


def _command_paths() -> list[str]:
    paths: list[str] = []

    def walk(cmd, prefix):  # type: ignore[no-untyped-def]
        sub = getattr(cmd, "commands", None)
        if sub:
            for name, child in sub.items():
                walk(child, [*prefix, name])
        else:
            paths.append(" ".join(prefix))

    walk(get_command(cli.app), [])
    return paths


def test_every_command_is_documented_in_the_readme() -> None:
    readme = README.read_text()
    missing = [p for p in _command_paths() if f"selfheal {p}" not in readme]
    assert missing == [], f"commands missing from README.md: {missing}"


def test_readme_names_the_two_setup_commands() -> None:
    readme = README.read_text()
    assert "make demo" in readme and "make test" in readme


def test_ci_runs_exactly_the_readme_test_command() -> None:
    ci = (REPO / ".ci" / "run").read_text().splitlines()
    commands = [
        line.strip() for line in ci if line.strip() and not line.lstrip().startswith(("#", "set ", "cd "))
    ]
    assert commands == ["make test"]


def test_every_readme_block_is_run_or_skipped() -> None:
    unhandled = []
    for block in _blocks():
        if block.lang in ("python", "yaml"):
            continue
        if block.lang != "bash":
            if not any(block.first.startswith(prefix) for prefix in SKIP_BLOCKS):
                unhandled.append(
                    f"README.md:{block.line}: a ```{block.lang} block; tag it or add to SKIP_BLOCKS"
                )
            continue
        for line, command in block.commands():
            if not (command.startswith("export ") or _skip_reason(command) or _path(command)):
                unhandled.append(f"README.md:{line}: {command}")
    assert unhandled == [], "neither run nor skipped:\n" + "\n".join(unhandled)


@pytest.mark.parametrize("block", _params())
def test_readme_example_runs(block: Block, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    if block.lang == "python":
        namespace = _python_names()
        exec(compile(block.text, f"README.md:{block.line}", "exec"), namespace)
        return
    if block.lang == "yaml":
        _validate_yaml(block, tmp_path)
        return
    needs_model = any(p[:1] in {("promote",), ("models",), ("evaluate",), ("bundle",), ("run",), ("replay",)}
                      for p in block.paths())  # fmt: skip
    template = request.getfixturevalue("workspace_with_champion" if needs_model else "workspace")
    copy = tmp_path / "ws"
    shutil.copytree(template.parent, copy, symlinks=True)
    (tmp_path / "tmp").mkdir()
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SELFHEAL_", "MLFLOW_"))}
    env.update(
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        SELFHEAL_ENGINE_PORT=str(port),
        SELFHEAL_ENGINE_URL=f"http://127.0.0.1:{port}",
        SELFHEAL_TEST_RULES=str(copy / "engine-rules"),
    )
    shell = Shell(copy / template.name, tmp_path / "tmp", env, port)
    before = _repository_files()
    try:
        for line, command in block.commands():
            if _skip_reason(command) is None:
                shell.run(f"README.md:{line}", command)
    finally:
        shell.stop()
    assert _repository_files() == before, "an example wrote into the repository's folders"


def _repository_files() -> dict[Path, tuple[int, int]]:
    """Each file of the repository's shipped folders with its size and modification time (an
    example that rewrote the shipped diagnosis model with the same bytes still changed its time)."""
    return {
        path: (path.stat().st_size, path.stat().st_mtime_ns)
        for name in FOLDERS
        for path in (REPO / name).rglob("*")
        if path.is_file()
    }


def _validate_yaml(block: Block, tmp_path: Path) -> None:
    from engine.runtime.config import EngineSettings, load_settings
    from engine.tracking.spec import load_spec

    part = yaml.safe_load(block.text)
    if set(part) <= set(EngineSettings.model_fields):  # an engine config (`selfheal run engine.yaml`)
        path = tmp_path / "engine.yaml"
        path.write_text(block.text)
        load_settings(path, environ={})
        return
    spec: dict[str, Any] = {"name": "readme", "features": SMALL_FEATURES, "detectors": [{"class": "HBOS"}]}
    if "class" in part:
        spec["detectors"] = [part]
    elif "detectors" in part:  # the detector part of a spec: features, groups, model, post-processing
        spec.update(part)
    else:
        spec["features"] = part
    path = tmp_path / "readme-spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    load_spec(path)
