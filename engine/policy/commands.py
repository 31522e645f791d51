"""CLI commands of the policy subpackage: ``rules validate``, ``rules test``, ``actions list``."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Annotated

import typer

from engine.errors import MAX_LISTED, InputError, Problem, SpecError

rules_app = typer.Typer(help="Remediation policies: validate them, test them offline.", no_args_is_help=True)
actions_app = typer.Typer(help="Actions policies can take.", no_args_is_help=True)


def _read_json(path: Path) -> object:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror})", hint="check the path") from exc
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}: not valid JSON at line {exc.lineno}: {exc.msg}") from exc


def _report(problems: list[Problem]) -> None:
    for problem in problems[:MAX_LISTED]:
        typer.echo(str(problem), err=True)
    more = f" ({len(problems) - MAX_LISTED} not shown)" if len(problems) > MAX_LISTED else ""
    typer.echo(f"{len(problems)} problem(s){more}", err=True)


@rules_app.command("validate")
def validate(
    path: Annotated[
        Path, typer.Argument(help="A policy folder (with topology.yaml) or one policy file.")
    ] = Path("rules"),
) -> None:
    """Check every policy: unknown keys, actions, parameters, services, unsatisfiable conditions.

    Prints every problem at once (file: path: message (hint)); exit 0 when clean, 2 when not.

    Example: selfheal rules validate rules/
    """
    from engine.policy import compile_policies
    from engine.policy.targets import check_folder

    policy_set, problems = check_folder(path)
    if problems:
        _report(problems)
        raise typer.Exit(2)
    assert policy_set is not None
    compiled = compile_policies(policy_set)
    typer.echo(
        f"ok: {len(policy_set.policies)} policies, {len(policy_set.rules)} rules, "
        f"{compiled.rule_count} durable-rules rules in {len(compiled.rulesets)} ruleset(s); "
        f"fingerprint {policy_set.fingerprint[:12]}"
    )


@rules_app.command("test")
def test(
    policy: Annotated[Path, typer.Argument(help="A policy file or folder.")],
    event: Annotated[Path, typer.Option("--event", help="An anomaly event JSON, or a golden case.")],
    facts: Annotated[
        Path | None, typer.Option("--facts", help="Health facts JSON: [{service, anomalous, maintenance}].")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the decision as JSON.")] = False,
) -> None:
    """Evaluate one event offline (nothing is executed) and print what would happen.

    Exit 0 when a rule matched, 1 when none did, 2 when the policy or event is invalid.

    Example: selfheal rules test rules/memory_leak.yaml --event rules/golden/memory_leak/match.json
    """
    from engine.policy.tester import evaluate, parse_facts

    try:
        health = parse_facts(_read_json(facts), str(facts)) if facts else None
        result = evaluate(policy, _read_json(event), health, file=str(event))
    except SpecError as exc:
        _report(exc.problems)
        raise typer.Exit(2) from exc
    if as_json:
        typer.echo(
            json.dumps(
                {
                    "matched": result.matched,
                    "decision": _decision_json(result.decision),
                    "reasons": result.reasons,
                    "mismatches": result.mismatches,
                },
                indent=2,
                default=str,
            )
        )
    else:
        _print(result)
    for line in result.mismatches:
        typer.echo(f"golden expectation differs: {line}", err=True)
    raise typer.Exit(0 if result.matched else 1)


def _decision_json(decision: object) -> dict | None:
    """The decision as JSON-ready data (its diagnosis, a pydantic model, as a plain mapping)."""
    if decision is None:
        return None
    out = dataclasses.asdict(decision)  # type: ignore[call-overload]
    diagnosis = getattr(decision, "diagnosis", None)
    out["diagnosis"] = None if diagnosis is None else diagnosis.model_dump(mode="json")
    return out


def bounds_text(name: str, low: float | None, high: float | None) -> str:
    """``memory_util <= 0.7``, ``0.2 <= x <= 0.8``: how an operator says a range."""
    if low is not None and high is not None:
        return f"{low} <= {name} <= {high}"
    if low is not None:
        return f"{name} >= {low}"
    return f"{name} <= {high}"


def _print(result: object) -> None:
    from engine.policy.tester import Evaluation

    assert isinstance(result, Evaluation)
    e = result.event
    typer.echo(
        f"event: {e.service} detector={e.detector} score={e.score:.3f} severity={e.severity} id={e.id}"
    )
    if e.diagnosis is not None:
        g = e.diagnosis
        victims = f"; victims: {', '.join(g.victims)}" if g.victims else ""
        evidence = ", ".join(f"{m} z {z:+g}" for m, z in g.evidence)
        typer.echo(
            f"diagnosis: {g.kind} ({g.probability:.2f}) rooted at {g.root} "
            f"({e.service} is the {g.role}){victims}"
        )
        if evidence:
            typer.echo(f"  evidence: {evidence}")
    if result.earlier_decisions:
        typer.echo(f"note: {len(result.earlier_decisions)} decision(s) fired on the history events")
    d = result.decision
    if d is None:
        typer.echo("no match")
        for reason in result.reasons:
            typer.echo(f"  - {reason}")
        return
    typer.echo(f"matched: {d.rule} (policy {d.policy} v{d.policy_version})")
    typer.echo(f"action: {d.action}({', '.join(f'{k}={v!r}' for k, v in d.params.items())}) on {d.target}")
    inverse = f"{d.inverse.action}" if d.inverse else "none"
    typer.echo(f"risk: {d.risk}; inverse: {inverse}")
    s = d.safeguards
    typer.echo(
        f"safeguards: cooldown {s.cooldown_s:.0f}s per target, max {s.max_per_hour}/h per target, "
        f"{s.max_per_hour_global}/h global, max {s.max_concurrent} concurrent, "
        f"blast radius {s.blast_radius or 1.0:.0%} of replicas"
    )
    a = d.approval
    if a.required:
        who = ", ".join(a.approvers) or "any authenticated approver"
        typer.echo(
            f"approval: REQUIRED (risk {d.risk}); ttl {a.ttl_s:.0f}s, on expiry {a.on_expiry}; "
            f"approvers: {who}"
        )
    else:
        typer.echo(f"approval: not required for risk {d.risk}; executes at once")
    v = d.verify
    if v is not None:
        steady = [f"score < {v.score_below}"] if v.score_below is not None else []
        steady += [bounds_text(m, low, high) for m, (low, high) in v.metrics.items()]
        typer.echo(
            f"verify: {' and '.join(steady)} within {v.deadline_s:.0f}s; "
            f"on failure {' and '.join(v.on_failure)}"
        )


@actions_app.command("list")
def list_actions(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON (with parameter schemas).")] = False,
) -> None:
    """List every registered action (built-ins and plugins) with parameters, risk and inverse.

    Example: selfheal actions list
    """
    from engine.actions import available_actions

    actions = available_actions()
    if as_json:
        typer.echo(
            json.dumps(
                {
                    n: {
                        "signature": a.signature_text(),
                        "risk": a.risk,
                        "inverse": a.inverse,
                        "description": a.description,
                        "module": a.module,
                        "params": a.params_model.model_json_schema(),
                    }
                    for n, a in actions.items()
                },
                indent=2,
            )
        )
        return
    for spec in actions.values():
        typer.echo(f"{spec.signature_text()}")
        typer.echo(f"    risk {spec.risk}; inverse {spec.inverse or 'none'}; from {spec.module}")
        if spec.description:
            typer.echo(f"    {spec.description}")


def register(app: typer.Typer) -> None:
    """Add this subpackage's commands to the root app."""
    app.add_typer(rules_app, name="rules")
    app.add_typer(actions_app, name="actions")
