"""Hostile policy folders: `selfheal rules validate` answers exit 2 with one clean line per problem.

Each case here was once accepted, or cost a traceback, minutes or gigabytes.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO

from engine.errors import SpecError
from engine.policy import load_policies

RULES = REPO / "rules"

POLICY = """\
policy: p
rules:
  - name: r
    when: {{services: [memory-x], score: {{min: 0.5}}}}
    then: {{action: {action}, params: {params}}}
    verify: {{steady_state: {verify}, deadline: 5m}}
"""


def folder(tmp_path: Path, policy: str | bytes | None = None, topology: bytes | None = None) -> Path:
    """A policy folder with the shipped topology (or ``topology``) and one policy file."""
    (tmp_path / "topology.yaml").write_bytes(topology or (RULES / "topology.yaml").read_bytes())
    if policy is None:
        shutil.copy(RULES / "memory_leak.yaml", tmp_path / "memory_leak.yaml")
    else:
        (tmp_path / "p.yaml").write_bytes(policy.encode() if isinstance(policy, str) else policy)
    return tmp_path


def policy(
    action: str = "restart", params: str = "{}", verify: str = "{score_below: 0.5}", service: str = "gateway"
) -> str:
    return POLICY.format(action=action, params=params, verify=verify).replace("memory-x", service)


def validate(path: Path, timeout: float = 30.0) -> tuple[int, str, float]:
    """`selfheal rules validate PATH` as a user runs it: exit code, stderr+stdout, seconds."""
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "engine.cli", "rules", "validate", str(path)],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    return proc.returncode, proc.stderr + proc.stdout, time.perf_counter() - started


def test_the_shipped_policies_still_validate(tmp_path: Path) -> None:
    code, out, _ = validate(RULES)
    assert code == 0, out


# ------------------------------------------------------------------------- item 8: no tracebacks


def test_invalid_utf8_in_the_topology_is_exit_2_naming_the_file(tmp_path: Path) -> None:
    topo = (RULES / "topology.yaml").read_bytes().replace(b"gateway:", b"gatew\xff\xfe:", 1)
    code, out, _ = validate(folder(tmp_path, topology=topo))
    assert code == 2 and "Traceback" not in out, out
    assert f"{tmp_path / 'topology.yaml'}: line " in out and "not UTF-8 text" in out


def test_yaml_nested_thousands_of_levels_is_exit_2(tmp_path: Path) -> None:
    deep = policy(params="{x: " + "[" * 5000 + "]" * 5000 + "}")
    code, out, _ = validate(folder(tmp_path, deep))
    assert code == 2 and "Traceback" not in out, out
    assert f"{tmp_path / 'p.yaml'}: line 5" in out and "nested deeper than" in out


def test_a_deep_topology_is_exit_2(tmp_path: Path) -> None:
    code, out, _ = validate(folder(tmp_path, topology=b"services: " + b"{a: " * 3000 + b"1" + b"}" * 3000))
    assert code == 2 and "Traceback" not in out and "nested deeper than" in out, out


# --------------------------------------------------------------------------- item 9: alias bombs


@pytest.mark.parametrize("levels", [5, 9])
def test_an_alias_bomb_in_params_is_refused_fast_and_briefly(tmp_path: Path, levels: int) -> None:
    anchors = "\n".join(
        f"x{i}: &x{i} [" + ", ".join([f"*x{i - 1}" if i else "lol"] * 9) + "]" for i in range(levels)
    )
    text = policy(params=f"{{blob: *x{levels - 1}}}").replace("rules:\n", f"{anchors}\nrules:\n")
    path = folder(tmp_path, text)
    code, out, seconds = validate(path)
    assert code == 2 and "Traceback" not in out, out[:2000]
    assert "aliases expand this value" in out and f"{tmp_path / 'p.yaml'}: line " in out
    assert len(out) < 4_000 and seconds < 15


# ---------------------------------------------------------------------- item 10: invalid policies


def problems_of(path: Path) -> list[str]:
    with pytest.raises(SpecError) as info:
        load_policies(path)
    return [str(p) for p in info.value.problems]


@pytest.mark.parametrize("bound", [".nan", ".inf", "-.inf", "1e308", "1.0e308", "'nan'", "'-inf'", "1e16"])
@pytest.mark.parametrize("where", ["verify", "when"])
def test_non_finite_or_absurd_bounds_are_refused(tmp_path: Path, bound: str, where: str) -> None:
    bounds = f"{{memory_util: {{max: {bound}}}}}"
    if where == "when":
        text = policy().replace("score: {min: 0.5}", f"metrics: {bounds}")
    else:
        text = policy(verify=f"{{metrics: {bounds}}}")
    (line,) = problems_of(folder(tmp_path, text))
    path = (
        "when.metrics.memory_util.max" if where == "when" else "verify.steady_state.metrics.memory_util.max"
    )
    assert f"rules[0].{path}: " in line or f"line {4 if where == 'when' else 6}" in line, line
    assert "finite" in line or "beyond" in line, line


@pytest.mark.parametrize("bound", ["5e-05", "0.00009", "-1e-7"])
def test_bounds_finer_than_the_rules_engine_reads_are_refused(tmp_path: Path, bound: str) -> None:
    """durable-rules reads no exponent: such a bound made compiling the rules fail with its raw
    "error code 204" (a traceback from `selfheal run`), not a line naming the bound."""
    text = policy().replace("score: {min: 0.5}", f"metrics: {{error_rate: {{min: {bound}}}}}")
    (line,) = problems_of(folder(tmp_path, text))
    assert "rules[0].when.metrics.error_rate.min: " in line and "finer than 0.0001" in line, line
    assert "round it to 0 or to 0.0001" in line


def test_events_with_tiny_huge_or_infinite_values_get_their_decision(tmp_path: Path) -> None:
    """Python writes 1e-05 and 1e+20 with an exponent, which durable-rules' parser refuses: an event
    of a service with an error rate of 0.00001 raised durable-rules' raw error and got no
    decision. Values are now read as plain numbers that compare with every bound as they do: a
    3e-05 error rate is below 0.001, an infinite latency is above any bound."""
    from engine.policy import PolicyHost
    from engine.records import AnomalyEvent

    text = policy(service="inference-b").replace(
        "score: {min: 0.5}", "metrics: {error_rate: {min: 0.001}, latency_p99_ms: {max: 1000000000000000}}"
    )
    host = PolicyHost(load_policies(folder(tmp_path, text)), tick_seconds=60)

    def post(**metrics: float) -> object:
        return host.post(
            AnomalyEvent(
                service="inference-b", detector="PCA", score=1e-05, threshold=1e-06, ts=1.7e9,
                metrics={"error_rate": 0.5, "latency_p99_ms": 200.0, **metrics},
                features=(("error_rate__raw", 3e-05), ("latency_p99_ms__raw", 1e20)),
            )
        )  # fmt: skip

    assert post() is not None  # tiny score, threshold and strengths: decided
    assert post(error_rate=0.00003) is None  # below min 0.001: no decision, and no error
    assert post(error_rate=1e20) is not None
    assert post(latency_p99_ms=float("inf")) is None  # above the max
    assert post(error_rate=float("inf"), latency_p99_ms=-1e-9) is not None
    assert host.stats.errors == 0


def test_duplicate_keys_in_a_policy_are_refused_naming_both_lines(tmp_path: Path) -> None:
    text = policy().replace("    verify:", "    then: {action: scale, params: {delta: 1}}\n    verify:")
    (line,) = problems_of(folder(tmp_path, text))
    assert line.startswith(f"{tmp_path / 'p.yaml'}: line 6, column 5: duplicate key 'then'")
    assert "(first on line 5, again on line 6)" in line


def _targets(path: Path, allow: list[str]) -> None:
    (path / "targets.yaml").write_text(f"commands: {{allow: [{', '.join(allow)}]}}\n")


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        ("[]", "argv is empty"),
        ("[flush-cache, now]", "'flush-cache' is not an absolute path"),
        ("['', x]", "'' is not an absolute path"),
        ("[/usr/bin/rm, -rf, /]", "'/usr/bin/rm' is not in commands.allow"),
    ],
)
def test_command_actions_outside_the_allowlist_fail_at_validate(
    tmp_path: Path, argv: str, needle: str
) -> None:
    path = folder(tmp_path, policy(action="command", params=f"{{argv: {argv}}}"))
    _targets(path, ["/usr/local/bin/flush-cache"])
    code, out, _ = validate(path)
    assert code == 2 and "Traceback" not in out, out
    assert f"{tmp_path / 'p.yaml'}: rules[0].then.params.argv" in out and needle in out, out


def test_an_allowlisted_command_validates_and_no_targets_file_means_no_commands(tmp_path: Path) -> None:
    path = folder(tmp_path, policy(action="command", params="{argv: [/usr/local/bin/flush-cache, now]}"))
    code, out, _ = validate(path)
    assert code == 2 and "is not in commands.allow" in out and "targets.yaml" in out, out
    _targets(path, ["/usr/local/bin/flush-cache"])
    code, out, _ = validate(path)
    assert code == 0, out


def test_a_bundle_is_not_built_around_a_command_outside_the_allowlist(tmp_path: Path) -> None:
    from engine.bundle import build_bundle

    path = folder(tmp_path, policy(action="command", params="{argv: [/usr/local/bin/flush-cache]}"))
    with pytest.raises(SpecError, match=r"is not in commands\.allow"):  # before any registry lookup
        build_bundle(
            "models:/absent@champion", path, tracking_uri="sqlite:///absent.db", output=tmp_path / "b"
        )
    assert not (tmp_path / "b").exists()
