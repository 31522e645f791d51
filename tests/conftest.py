"""Shared fixtures. Integration tests use real parts: DuckDB files and MLflow SQLite in tmp_path."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from engine.testing.services import PostgresServer, RedisServer

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")  # Debian's; `make test` installs it
needs_chromium = pytest.mark.skipif(
    not CHROMIUM.exists(), reason="needs Debian's chromium: apt-get install -y chromium"
)


def rendered_dom(page: Path, profile: Path) -> str:
    """The DOM of a self-contained HTML page after headless Chromium ran its scripts (2 s budget)."""
    return subprocess.run(
        [
            str(CHROMIUM),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            f"--user-data-dir={profile}",
            "--virtual-time-budget=2000",
            "--dump-dom",
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout


def nab_dir() -> Path | None:
    """The NAB subset: SELFHEAL_NAB_DIR, or ../shared/data/nab beside the checkout, when present."""
    raw = os.environ.get("SELFHEAL_NAB_DIR")
    candidates = [Path(raw)] if raw else [REPO.parent / "shared" / "data" / "nab"]
    for path in candidates:
        if (path / "labels" / "combined_windows.json").is_file():
            return path
    return None


@pytest.fixture(autouse=True)
def _isolated_mlflow_env() -> object:
    """MLflow keeps the tracking URI in the environment; no test may leak it into the next one."""
    keys = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")
    saved = {key: os.environ.get(key) for key in keys}
    yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh selfheal home folder, also exported as SELFHEAL_HOME for CLI calls."""
    path = tmp_path / "home"
    monkeypatch.setenv("SELFHEAL_HOME", str(path))
    return path


@pytest.fixture
def nab_corpus() -> Path:
    path = nab_dir()
    if path is None:
        pytest.skip("NAB subset not found; set SELFHEAL_NAB_DIR")
    return path


@pytest.fixture
def browser() -> Iterator[Any]:
    """Headless Chromium (Debian's) through Playwright, for tests of the engine's web pages."""
    if not CHROMIUM.exists():
        pytest.skip("needs Debian's chromium: make browser (apt-get install -y chromium)")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox", "--disable-gpu"])
        yield b
        b.close()


def screenshot(page: Any, tmp_path: Path, name: str) -> Path:
    """A full-page screenshot in ``tmp_path`` (and in SELFHEAL_TEST_ARTEFACTS when set)."""
    path = tmp_path / f"console-{name}.png"
    page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 5_000
    artefacts = os.environ.get("SELFHEAL_TEST_ARTEFACTS")
    if artefacts:
        Path(artefacts).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(artefacts) / path.name)
    return path


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One throw-away redis-server per test process (skips, saying why, where none can run)."""
    server = RedisServer()
    if server.missing():
        pytest.skip(server.missing())
    with server:
        yield server


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The session's Redis, emptied for this test."""
    import redis

    with redis.Redis.from_url(redis_server.url) as client:
        client.flushall()
    return redis_server.url


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One throw-away PostgreSQL cluster per test process (skips, saying why, where none can run)."""
    server = PostgresServer()
    if server.missing():
        pytest.skip(server.missing())
    with server:
        yield server


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> str:
    """A fresh database of the session's PostgreSQL for this test."""
    return postgres_server.database()
