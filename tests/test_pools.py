"""Where candidates run (engine.pools): this machine's processes or Ray tasks, with the same outcome.

The Ray tests start a real Ray on this machine (2 CPUs, no dashboard, a 100 MB object store) and
stop it; they skip, saying why, where Ray is not installed (``make test`` installs it from the lock).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from mlflow import MlflowClient
from test_tracking_support import make_home, small_spec, write_spec

from engine.pools import InlinePool, LocalPool, Pool, open_pool
from engine.testing.pools import square
from engine.tracking import registry
from engine.tracking.experiment import TAG_EXECUTOR

#: The Ray tests run on one worker, one after the other: two local Rays starting at once on two busy
#: cores were seen to time out.
on_one_ray = pytest.mark.xdist_group("ray")
needs_ray = pytest.mark.skipif(
    __import__("importlib").util.find_spec("ray") is None,
    reason="needs Ray: pip install 'selfheal[ray]' (make venv installs it from requirements.lock)",
)
#: Timings differ from run to run whatever ran them; every other figure must be identical.
TIMINGS = {"fit_seconds", "score_seconds", "best_fit_seconds", "best_score_seconds"}


EXPECTED = ({0: 10, 1: 40, 2: 90}, ["item 1", "item 2", "item 3"])


def _check(pool: Pool) -> None:
    """Results keyed by the item's index, every line relayed, a task's error raised; then closed."""
    lines: list[str] = []
    pool.echo = lines.append
    with pool:
        assert (dict(pool.map(square, 10, [1, 2, 3])), sorted(lines)) == EXPECTED
        with pytest.raises(ValueError, match="negative item -1"):
            list(pool.map(square, 10, [1, -1]))


def test_inline_and_process_pools_give_the_same_results_and_lines() -> None:
    _check(InlinePool())
    _check(LocalPool(2))


def test_address_without_ray_and_unknown_executors_are_refused() -> None:
    from engine.errors import ConfigError

    with pytest.raises(ConfigError, match="--address is for --executor ray"):
        open_pool("local", workers=2, address="auto")
    with pytest.raises(ConfigError, match="unknown executor 'dask'"):
        open_pool("dask", workers=2)


@pytest.mark.parametrize("command", ["experiment", "assess"])
def test_executor_ray_without_ray_says_how_to_install_it(command: str, tmp_path: Path) -> None:
    """Ray missing (an import that fails, as in an environment without the extra): a clear error
    before any work, naming the extra."""
    spec = write_spec(tmp_path / "sweep.yaml", small_spec())
    args = {
        "experiment": ["experiment", "run", str(spec)],
        "assess": ["chaos", "assess", "0123abcd"],
    }[command]
    code = "import sys; sys.modules['ray'] = None; from engine.cli import main; main(sys.argv[1:])"
    proc = subprocess.run(
        [sys.executable, "-c", code, "--home", str(tmp_path / "home"), *args, "--executor", "ray"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "--executor ray needs Ray" in proc.stderr
    assert "pip install 'selfheal[ray]'" in proc.stderr
    assert not (tmp_path / "home" / "mlflow.db").exists()  # failed before any work


@needs_ray
@on_one_ray
@pytest.mark.slow
def test_ray_pool_relays_lines_and_raises_the_tasks_error() -> None:
    from engine.pools import RayPool

    pool = RayPool(2)  # before this process imports ray: it sets the mode ray reads at import
    import ray

    _check(pool)
    assert not ray.is_initialized() and pool._head is None  # the Ray it started is stopped


@needs_ray
@on_one_ray
@pytest.mark.slow
def test_a_local_ray_starts_on_a_machine_that_never_ran_ray(tmp_path: Path) -> None:
    """A home with no ``~/.ray``: ``ray start`` refuses to start without a token, and failed
    ``--executor ray`` on a fresh machine (Ray's AuthenticationError) until the pool made one."""
    code = (
        "from engine.pools import RayPool\n"
        "from engine.testing.pools import square\n"
        "with RayPool(1) as pool:\n"
        "    print(sorted(pool.map(square, 10, [1, 2])))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH_TOKEN")}
    done = subprocess.run(
        [sys.executable, "-c", code], env={**env, "HOME": str(tmp_path)},
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "[(0, 10), (1, 40)]"
    assert (tmp_path / ".ray" / "auth_token").stat().st_size > 0


def _runs(uri: str, experiment: str) -> tuple[Any, dict[str, Any]]:
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id])
    parent = next(r for r in runs if r.data.tags.get(registry.TAG_KIND) == "sweep")
    children = {r.data.params["config_index"]: r for r in runs if r is not parent}
    return parent, children


def _figures(run: Any) -> dict[str, float]:
    return {k: v for k, v in run.data.metrics.items() if k not in TIMINGS}


def _sweep(home: Path, spec: Path, uri: str, *executor: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "engine.cli", "--home", str(home), "experiment", "run", str(spec),
         "--workers", "2", "--tracking-uri", uri, "--no-progress", *executor],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "best by f1" in proc.stdout


@needs_ray
@on_one_ray
@pytest.mark.slow
def test_a_sweep_on_ray_logs_the_same_runs_as_on_local_processes(tmp_path: Path) -> None:
    home = make_home(tmp_path / "home", days=3)
    spec = write_spec(tmp_path / "sweep.yaml", small_spec(tracking={"experiment": "pools"}))
    local, ray = f"sqlite:///{tmp_path / 'local.db'}", f"sqlite:///{tmp_path / 'ray.db'}"
    _sweep(home.root, spec, local)
    _sweep(home.root, spec, ray, "--executor", "ray")

    (local_parent, local_children), (ray_parent, ray_children) = _runs(local, "pools"), _runs(ray, "pools")
    assert local_parent.data.tags[TAG_EXECUTOR] == "local" and ray_parent.data.tags[TAG_EXECUTOR] == "ray"
    assert ray_parent.data.params == local_parent.data.params
    assert _figures(ray_parent) == _figures(local_parent)
    assert sorted(ray_children) == sorted(local_children) == ["0", "1"]  # two candidates
    for index, child in ray_children.items():
        twin = local_children[index]
        assert child.info.status == twin.info.status == "FINISHED"
        assert child.data.params == twin.data.params
        assert _figures(child) == _figures(twin)
        assert {"f1", "precision", "recall", "nab_score"} <= set(_figures(child))
        artifacts = [
            sorted(a.path for a in MlflowClient(uri).list_artifacts(run.info.run_id, "plots"))
            for uri, run in ((ray, child), (local, twin))
        ]
        assert artifacts[0] == artifacts[1] == ["plots/precision_recall.png", "plots/scores.png"]
        per_series = [
            Path(MlflowClient(uri).download_artifacts(run.info.run_id, "metrics_per_series.json")).read_text()
            for uri, run in ((ray, child), (local, twin))
        ]
        assert per_series[0] == per_series[1]
