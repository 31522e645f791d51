"""Throw-away Redis and PostgreSQL servers on 127.0.0.1, for the tests and benchmarks of the parts
that run across machines (the shared journal, the telemetry bus).

Why real servers: what these parts promise (one execution when two engines race the same
decision, a dead consumer's entries reclaimed) lives in the servers' own semantics (unique
indexes, transactions, consumer groups), which no fake reproduces. Each server runs from Debian's
packages (``make test`` installs ``redis-server`` and ``postgresql`` when it runs as root) in a
temporary folder on a free port, without touching the machine's own services, and is removed on
``stop``.

PostgreSQL refuses to run as root: as root the cluster is created and run as the ``postgres``
system user the package creates (``subprocess``'s ``user=``), its folder in ``/tmp`` owned by
that user; as anyone else, as that user.

``missing()`` says why a server cannot run here (no binaries), so a test can skip saying so.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

__all__ = ["PostgresServer", "RedisServer"]

REDIS_HINT = "apt-get install -y redis-server (make test installs it when run as root)"
POSTGRES_HINT = "apt-get install -y postgresql (make test installs it when run as root)"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port(port: int, proc: subprocess.Popen[bytes], log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"exited with {proc.returncode}:\n{log.read_text(errors='replace')[-2000:]}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.05)
    raise RuntimeError(f"not listening on {port} after {timeout:.0f} s:\n{log.read_text()[-2000:]}")


def _stop(proc: subprocess.Popen[bytes] | None, sig: int = signal.SIGTERM) -> None:
    if proc is not None and proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


class RedisServer:
    """``redis-server`` on a free port, no persistence; ``url`` once started."""

    def __init__(self) -> None:
        self.binary = shutil.which("redis-server")
        self.proc: subprocess.Popen[bytes] | None = None
        self.dir: Path | None = None
        self.url = ""

    def missing(self) -> str | None:
        return None if self.binary else f"needs redis-server: {REDIS_HINT}"

    def start(self, timeout: float = 30.0) -> RedisServer:
        assert self.binary, self.missing()
        self.dir = Path(tempfile.mkdtemp(prefix="selfheal-redis-"))
        port = _free_port()
        log = self.dir / "redis.log"
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                [
                    *(self.binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(self.dir)),
                    *("--save", "", "--appendonly", "no", "--protected-mode", "no"),
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        _wait_port(port, self.proc, log, timeout)
        self.url = f"redis://127.0.0.1:{port}/0"
        return self

    def stop(self) -> None:
        _stop(self.proc)
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


_NOT_DURABLE = ("-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off")


def _postgres_bin() -> Path | None:
    """The newest Debian PostgreSQL's binaries, else ``initdb`` on PATH."""
    found = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]), reverse=True
    )
    if found:
        return found[0].parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


class PostgresServer:
    """A fresh PostgreSQL cluster on a free port (trust auth on 127.0.0.1; fsync off unless
    ``durable``: a test server, a benchmark's is durable); ``url`` (database ``postgres``, user
    ``selfheal``) once started; ``database()`` makes a fresh database for one test."""

    USER = "selfheal"

    def __init__(self, *, durable: bool = False) -> None:
        self.durable = durable
        self.bin = _postgres_bin()
        self.proc: subprocess.Popen[bytes] | None = None
        self.dir: Path | None = None
        self.url = ""
        self.port = 0
        self._run_as: dict[str, Any] = {}
        self._count = 0

    def missing(self) -> str | None:
        if self.bin is None:
            return f"needs PostgreSQL's server binaries: {POSTGRES_HINT}"
        if os.geteuid() == 0:
            try:
                pwd.getpwnam("postgres")
            except KeyError:
                return f"as root, needs the postgres system user (PostgreSQL refuses root): {POSTGRES_HINT}"
        return None

    def start(self, timeout: float = 60.0) -> PostgresServer:
        assert self.bin is not None, self.missing()
        self.dir = Path(tempfile.mkdtemp(prefix="selfheal-postgres-"))
        data = self.dir / "data"
        if os.geteuid() == 0:
            user = pwd.getpwnam("postgres")
            os.chown(self.dir, user.pw_uid, user.pw_gid)
            self._run_as = {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}
        env = {**os.environ, "LC_ALL": "C.UTF-8", "LANG": "C.UTF-8"}
        subprocess.run(
            [
                *(str(self.bin / "initdb"), "-D", str(data), "-U", self.USER, "-A", "trust"),
                *("--no-sync", "-E", "UTF8", "--locale", "C.UTF-8"),
            ],
            check=True,
            capture_output=True,
            env=env,
            cwd=self.dir,
            **self._run_as,
        )
        self.port = _free_port()
        self._launch(timeout)
        self.url = f"postgresql://{self.USER}@127.0.0.1:{self.port}/postgres"
        self._wait_ready(timeout)
        return self

    def restart(self, down_s: float = 0.0, timeout: float = 60.0) -> None:
        """Stop the server (fast shutdown: every client is disconnected), wait ``down_s``, start
        it again on the same data and port: what a client sees of a restart or a failover."""
        _stop(self.proc, signal.SIGINT)
        time.sleep(down_s)
        self._launch(timeout)
        self._wait_ready(timeout)

    def _launch(self, timeout: float) -> None:
        assert self.bin is not None and self.dir is not None
        data, log = self.dir / "data", self.dir / "postgres.log"
        env = {**os.environ, "LC_ALL": "C.UTF-8", "LANG": "C.UTF-8"}
        with log.open("ab") as out:
            if self._run_as:
                os.chown(log, self._run_as["user"], self._run_as["group"])
            self.proc = subprocess.Popen(
                [
                    *(str(self.bin / "postgres"), "-D", str(data), "-p", str(self.port), "-k", str(self.dir)),
                    *("-c", "listen_addresses=127.0.0.1", "-c", "max_connections=200"),
                    *(() if self.durable else _NOT_DURABLE),
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self.dir,
                **self._run_as,
            )
        _wait_port(self.port, self.proc, log, timeout)

    def _wait_ready(self, timeout: float) -> None:
        import psycopg

        deadline = time.monotonic() + timeout
        while True:
            try:
                with psycopg.connect(self.url, connect_timeout=2) as conn:
                    conn.execute("SELECT 1")
                return
            except psycopg.OperationalError:  # listening, still starting up
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def database(self, prefix: str = "t") -> str:
        """A new empty database; its URL."""
        import psycopg

        self._count += 1
        name = f"{prefix}_{os.getpid()}_{self._count}"
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url.rsplit("/", 1)[0] + f"/{name}"

    def stop(self) -> None:
        _stop(self.proc, signal.SIGINT)  # postgres' fast shutdown: clients are disconnected
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
