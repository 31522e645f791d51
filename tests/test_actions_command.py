"""The ``command`` action: absolute allowlist, minimal child environment, literal argv."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pytest
from conftest import REPO

from engine.actions import TargetsConfig, execute, load_targets
from engine.errors import ActionError, SpecError
from engine.policy import load_policies

ALLOWED_ENV = {"PATH", "LANG", "SELFHEAL_HOME", "SELFHEAL_IDEMPOTENCY_KEY", "SELFHEAL_TARGET"}
LOCALE_COERCION = {"LC_CTYPE"}  # CPython may add it in the child (PEP 538); it is not inherited


def test_the_child_gets_path_lang_and_non_secret_selfheal_variables_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The caller's own SELFHEAL_* variables (e.g. SELFHEAL_NAB_DIR) would pass, rightly: not this test's.
    for name in [n for n in os.environ if n.startswith("SELFHEAL_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("KUBE_TOKEN", "k8s-secret")
    monkeypatch.setenv("SELFHEAL_ENGINE_TOKEN", "engine-secret")
    monkeypatch.setenv("SELFHEAL_ADMIN_CRED", "named-by-token-env")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "cloud-secret")
    monkeypatch.setenv("SELFHEAL_HOME", str(tmp_path))
    monkeypatch.setenv("LANG", "C.UTF-8")
    settings = TargetsConfig.model_validate(
        {
            "services": {
                "vector-db": {
                    "backend": "http",
                    "http": {"url": "http://x", "token_env": "SELFHEAL_ADMIN_CRED"},
                }
            },
            "commands": {"allow": [sys.executable]},
        }
    )
    out = tmp_path / "env.json"
    code = f"import json, os; open({str(out)!r}, 'w').write(json.dumps(dict(os.environ)))"
    execute("command", {"argv": [sys.executable, "-c", code]}, "gateway", "c-9", settings=settings)
    env = json.loads(out.read_text())
    assert set(env) - LOCALE_COERCION <= ALLOWED_ENV, sorted(env)
    assert not any("secret" in value or "named-by" in value for value in env.values())
    assert (env["SELFHEAL_TARGET"], env["SELFHEAL_IDEMPOTENCY_KEY"]) == ("gateway", "c-9")
    assert env["SELFHEAL_HOME"] == str(tmp_path) and env["LANG"] == "C.UTF-8" and env["PATH"]


def test_the_allowlist_takes_absolute_paths_only(tmp_path: Path) -> None:
    bad = tmp_path / "targets.yaml"
    bad.write_text("commands:\n  allow: [/usr/bin/true, flush-cache]\n")
    with pytest.raises(SpecError) as info:
        load_targets(bad)
    (problem,) = info.value.problems
    assert problem.path.startswith("commands.allow")
    assert "'flush-cache' is not an absolute path" in problem.message
    assert "/usr/local/bin/flush-cache" in str(problem)
    assert load_targets(REPO / "rules" / "targets.yaml").commands.allow == []


def test_a_relative_argv0_is_refused_before_any_path_lookup() -> None:
    settings = TargetsConfig.model_validate({"commands": {"allow": [sys.executable]}})
    name = Path(sys.executable).name
    with pytest.raises(ActionError, match=f"'{name}' is not an absolute path; write the full path"):
        execute("command", {"argv": [name, "-c", "pass"]}, "gateway", "c-10", settings=settings)


POLICY = """
policy: flush
rules:
  - name: flush-cache
    when: {services: [vector-db]}
    then:
      action: command
      params: {argv: [/usr/local/bin/flush-cache, "${service}"]}
    verify: {steady_state: {score_below: 0.5}, deadline: 10m}
"""


def test_templates_inside_argv_are_refused_at_policy_load(tmp_path: Path) -> None:
    shutil.copy(REPO / "rules" / "topology.yaml", tmp_path / "topology.yaml")
    (tmp_path / "flush.yaml").write_text(POLICY)
    with pytest.raises(SpecError) as info:
        load_policies(tmp_path)
    lines = [str(p) for p in info.value.problems]
    assert any("then.params.argv" in line and "must be literal" in line for line in lines), lines
    (tmp_path / "flush.yaml").write_text(POLICY.replace(', "${service}"', ""))
    assert load_policies(tmp_path).rules[0].rule.then.action == "command"
