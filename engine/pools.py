"""Where a sweep's candidates and their closed-loop assessments run: this machine or a Ray cluster.

One seam, three pools behind it. A caller hands a pool a *task* (a module-level function, so it
pickles by reference), one *shared* value every task needs (a sweep's features, a campaign) and the
*items* (configurations, candidates); the pool yields ``(index, result)`` pairs as tasks finish, and
relays the progress lines a task writes through its ``say`` argument to the caller's ``echo``:

    InlinePool   one worker: the tasks run here, one after the other (no process to start)
    LocalPool    spawned processes of this machine (``concurrent.futures``), ``--executor local``
    RayPool      Ray tasks, on a Ray started here or on a running cluster, ``--executor ray``

Why one seam: the parent process keeps doing everything else (reading the store, MLflow logging,
bundling, ranking) exactly as before, so a sweep on Ray logs the same runs as a sweep on this
machine; only where the fitting and the campaigns run changes. Ray is an optional extra
(``pip install 'selfheal[ray]'``) and is imported only when asked for.

Workers (processes and Ray tasks alike) limit BLAS/OpenMP pools to one thread: one task per core,
and more threads would oversubscribe them.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import queue
import socket
import subprocess
import sys
import tempfile
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from contextlib import ExitStack
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

from engine.errors import ConfigError

logger = logging.getLogger(__name__)

Kind = Literal["local", "ray"]
KINDS: tuple[str, ...] = ("local", "ray")
Say = Callable[[str], None]
#: ``task(shared, item, say) -> result``; a module-level function (tasks are pickled by reference).
Task = Callable[[Any, Any, Say], Any]

#: Object store of a Ray started here (bytes): tasks get the shared value through it once; larger
#: values spill to disk. Small, because a sweep's shared features are megabytes, not gigabytes.
RAY_OBJECT_STORE = 100 * 1024 * 1024
#: How long a local Ray may take to start (s): ~20-40 s on a busy 2-core machine.
RAY_START_S = 180.0
#: How long its head may take to stop after SIGTERM (s): it drains for up to 30 s.
RAY_STOP_S = 60.0
#: How often the parent relays progress lines while it waits for tasks (seconds).
POLL_S = 0.5
INSTALL_HINT = "pip install 'selfheal[ray]' (or run with --executor local)"


def _quiet(_line: str) -> None:
    return None


class Pool(ABC):
    """Runs one task over many items; ``workers`` tasks at once (a cluster's CPUs on Ray)."""

    kind: str = "local"
    workers: int = 1

    def __init__(self, echo: Say | None = None) -> None:
        self.echo = echo

    @abstractmethod
    def map(self, task: Task, shared: Any, items: Sequence[Any]) -> Iterator[tuple[int, Any]]:
        """``(index of the item, task's result)`` as tasks finish; a task's exception is raised here."""

    def close(self) -> None:  # noqa: B027 (a pool that starts nothing has nothing to stop)
        """Stop what the pool started (pending tasks are cancelled)."""

    def __enter__(self) -> Pool:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class InlinePool(Pool):
    """One worker: the tasks run in this process, in order (their lines go straight to ``echo``)."""

    def map(self, task: Task, shared: Any, items: Sequence[Any]) -> Iterator[tuple[int, Any]]:
        from threadpoolctl import threadpool_limits

        say = self.echo or _quiet
        for i, item in enumerate(items):
            with threadpool_limits(1):  # as in a worker: the same numerics whatever the pool
                result = task(shared, item, say)
            yield i, result


# ------------------------------------------------------------------------------------ local processes

_WORKER: dict[str, Any] = {}


def _init_local(shared: Any, lines: Any) -> None:
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)
    _WORKER.update(shared=shared, lines=lines)


def _run_local(task: Task, item: Any) -> Any:
    lines = _WORKER["lines"]
    return task(_WORKER["shared"], item, lines.put if lines is not None else _quiet)


class LocalPool(Pool):
    """Spawned processes of this machine, each given the shared value once (at start).

    spawn, never fork: polars (and BLAS) keep thread pools whose locks a forked child inherits in
    whatever state they were, and a worker then hangs on its first polars call.
    """

    def __init__(self, workers: int, echo: Say | None = None) -> None:
        super().__init__(echo)
        self.workers = workers
        self._stack = ExitStack()

    def map(self, task: Task, shared: Any, items: Sequence[Any]) -> Iterator[tuple[int, Any]]:
        context = multiprocessing.get_context("spawn")
        lines = None
        if self.echo is not None:  # a manager process only when someone reads the lines
            lines = self._stack.enter_context(context.Manager()).Queue()
        pool = ProcessPoolExecutor(
            self.workers, mp_context=context, initializer=_init_local, initargs=(shared, lines)
        )
        self._stack.callback(pool.shutdown, cancel_futures=True)
        pending: dict[Future[Any], int] = {
            pool.submit(_run_local, task, item): i for i, item in enumerate(items)
        }
        while pending:
            done, _ = wait(pending, timeout=POLL_S, return_when=FIRST_COMPLETED)
            self._relay(lines)
            for future in done:
                yield pending.pop(future), future.result()
        self._relay(lines)

    def _relay(self, lines: Any) -> None:
        while lines is not None and self.echo is not None:
            try:
                self.echo(lines.get_nowait())
            except queue.Empty:
                return

    def close(self) -> None:
        self._stack.close()


# ------------------------------------------------------------------------------------ Ray


def _run_ray(task: Task, shared: Any, item: Any, lines: Any) -> Any:
    """A Ray task: ``shared`` arrives resolved from the object store; lines go to a queue actor."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):
        return task(shared, item, lines.put if lines is not None else _quiet)


def _free_ports(n: int) -> list[int]:
    """``n`` distinct ports free on this machine now (bound together, then released)."""
    with ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(n)]
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]


def _ensure_token() -> None:
    """A token for the Ray started here, made where Ray looks for it (``~/.ray/auth_token``) unless
    one is there or given (``RAY_AUTH_TOKEN``, ``RAY_AUTH_TOKEN_PATH``).

    Why: Ray starts its clusters with token authentication, and ``ray start`` refuses to start in
    that mode without a token; only a ``ray.init()`` that starts its own Ray makes one. On a
    machine that had never run Ray, ``--executor ray`` failed with Ray's AuthenticationError.
    Ray's own command makes it (``ray get-auth-token --generate``; the token is not printed here).
    """
    given = os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH")
    if given or (Path.home() / ".ray" / "auth_token").exists():
        return
    done = subprocess.run(
        [sys.executable, "-m", "ray.scripts.scripts", "get-auth-token", "--generate"],
        capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=RAY_START_S,
        env={**os.environ, "RAY_AUTH_MODE": "token"},
    )  # fmt: skip
    if done.returncode != 0:
        raise ConfigError(
            f"could not make the token a local Ray needs: {done.stderr.strip()[-500:]}",
            hint="run `ray get-auth-token --generate` (it writes ~/.ray/auth_token), or start one with "
            "`ray start --head` and pass --address HOST:PORT; or use --executor local",
        )


def import_ray() -> Any:
    """The ``ray`` module, or a clear error saying how to install the extra.

    Token authentication (what ``ray start`` clusters use) unless ``RAY_AUTH_MODE`` says otherwise:
    Ray reads the mode once, when it is imported."""
    os.environ.setdefault("RAY_AUTH_MODE", "token")
    try:
        import ray
    except ImportError as exc:
        raise ConfigError(
            f"--executor ray needs Ray, which is not installed in this environment ({exc})",
            hint=INSTALL_HINT,
        ) from exc
    return ray


class RayPool(Pool):
    """Ray tasks (one CPU each) on a Ray started here with ``workers`` CPUs, or on the cluster at
    ``address`` (``ray://host:10001``, ``host:6379`` or ``auto``).

    The shared value is put in the object store once; every task reads it from there. A Ray started
    here is shut down on ``close``; a cluster reached at an address, or a Ray this process had already
    initialised (a notebook), is left running. On a cluster, every node needs selfheal installed (the
    same version), and a closed-loop assessment needs the home folder at the same path on each node
    (bundles are read and campaign reports written there).
    """

    kind = "ray"

    def __init__(self, workers: int, address: str | None = None, echo: Say | None = None) -> None:
        super().__init__(echo)
        self.ray = import_ray()
        self.started = False
        self._pending: list[Any] = []
        self._head: subprocess.Popen[bytes] | None = None
        self._log: Any = None
        if not self.ray.is_initialized():
            self._start(workers, address)
        self.workers = workers if address is None else int(self.ray.cluster_resources().get("CPU", workers))
        # Tasks are not retried: a rerun campaign would find its own reports and refuse to overwrite.
        self._remote = self.ray.remote(num_cpus=1, max_retries=0)(_run_ray)

    def _start(self, workers: int, address: str | None) -> None:
        """Connect to ``address``, or start a one-node Ray here (``ray start --head --block`` as a
        child process, stopped on ``close``) and connect to it.

        Why not ``ray.init()`` alone: its node manager gives the node's agent 15 s to come up and
        otherwise aborts the start ("The current node timed out during startup"); on a busy 2-core
        machine the agent's imports alone take longer. ``ray start`` with the agents' ports chosen
        up front has no such wait. Ray enables token authentication for such a cluster (the token
        in ``~/.ray/auth_token``), so this process connects in token mode too (``RAY_AUTH_MODE``,
        which Ray reads when it is imported)."""
        options: dict[str, Any] = {"logging_level": logging.WARNING}
        if address is not None:
            self.ray.init(address=address, **options)
            self.started = True
            return
        _ensure_token()
        ports = _free_ports(4)
        self._log = tempfile.NamedTemporaryFile(  # noqa: SIM115 (open until close)
            prefix="selfheal-ray-", suffix=".log", delete=False
        )
        self._head = subprocess.Popen(
            [sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--block",
             "--num-cpus", str(workers), "--include-dashboard", "false",
             "--object-store-memory", str(RAY_OBJECT_STORE), "--disable-usage-stats",
             "--node-ip-address", "127.0.0.1",
             "--port", str(ports[0]), "--dashboard-agent-grpc-port", str(ports[1]),
             "--runtime-env-agent-port", str(ports[2]), "--dashboard-agent-listen-port", str(ports[3])],
            stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env={**os.environ, "RAY_AUTH_MODE": "token"},
        )  # fmt: skip
        deadline = time.monotonic() + RAY_START_S
        while True:
            try:
                self.ray.init(address=f"127.0.0.1:{ports[0]}", _node_ip_address="127.0.0.1", **options)
                self.started = True
                return
            except (ConnectionError, RuntimeError) as exc:  # not up yet
                if self._head.poll() is None and time.monotonic() < deadline:
                    time.sleep(1.0)
                    continue
                self.close(keep_log=True)
                raise ConfigError(
                    f"a local Ray did not start in {RAY_START_S:.0f} s ({exc}); its log: {self._log.name}",
                    hint="where ray was imported before, set RAY_AUTH_MODE=token first; or start one with "
                    "`ray start --head` and pass --address HOST:PORT; or use --executor local",
                ) from exc

    def map(self, task: Task, shared: Any, items: Sequence[Any]) -> Iterator[tuple[int, Any]]:
        ray = self.ray
        lines = None
        if self.echo is not None:
            from ray.util.queue import Queue

            lines = Queue(actor_options={"num_cpus": 0})
        shared_ref = ray.put(shared)
        pending = {self._remote.remote(task, shared_ref, item, lines): i for i, item in enumerate(items)}
        self._pending = list(pending)
        try:
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1, timeout=POLL_S)
                self._relay(lines)
                for ref in done:
                    yield pending.pop(ref), ray.get(ref)
            self._relay(lines)
        finally:
            self._pending = list(pending)
            if lines is not None:
                lines.shutdown()

    def _relay(self, lines: Any) -> None:
        if lines is None or self.echo is None:
            return
        while not lines.empty():
            self.echo(lines.get_nowait())

    def close(self, keep_log: bool = False) -> None:
        for ref in self._pending:
            self.ray.cancel(ref, force=True)
        self._pending = []
        if self.started:
            self.ray.shutdown()
            self.started = False
        if self._head is not None:  # the head this pool started: SIGTERM stops its processes
            self._head.terminate()
            try:
                self._head.wait(RAY_STOP_S)
            except subprocess.TimeoutExpired:
                self._head.kill()
                self._head.wait()
            self._head = None
            self._log.close()
            if not keep_log:
                os.unlink(self._log.name)


def check(kind: str, address: str | None = None) -> None:
    """Fail before any work when ``--executor``/``--address`` cannot be honoured (Ray missing)."""
    if kind not in KINDS:
        raise ConfigError(f"unknown executor {kind!r}", hint=f"use one of: {', '.join(KINDS)}")
    if address is not None and kind != "ray":
        raise ConfigError("--address is for --executor ray", hint="add --executor ray, or drop --address")
    if kind == "ray":
        import_ray()


def open_pool(kind: str, *, workers: int, address: str | None = None, echo: Say | None = None) -> Pool:
    """The pool ``--executor`` names: ``local`` (one worker runs inline) or ``ray``."""
    check(kind, address)
    workers = max(1, workers)
    if kind == "ray":
        return RayPool(workers, address=address, echo=echo)
    return InlinePool(echo) if workers == 1 else LocalPool(workers, echo)
