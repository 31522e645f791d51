"""The one spec loader and the one validation-error translator (engine.specs), for every spec kind."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal

import pytest
from conftest import REPO
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from engine.errors import MAX_PROBLEM_TEXT, Problem, SpecError
from engine.specs import MAX_ALIAS_NODES, MAX_DEPTH, echo, problems_from, read_yaml

# A hang guard, not a speed target: unguarded, these inputs expand for minutes or exhaust memory;
# a loaded CI machine must not fail a refusal that took a second.
HANG_S = 20.0

# ------------------------------------------------------------------------------------- the loader


def _problem(text: str | bytes, name: str = "spec.yaml") -> Problem:
    data, problems = read_yaml(name, text.encode() if isinstance(text, str) else text)
    assert data is None and len(problems) == 1, (data, problems)
    return problems[0]


def bomb(levels: int = 9, width: int = 9) -> str:
    """The classic "billion laughs": each level lists the previous one ``width`` times."""
    lines = ["l0: &l0 [" + ", ".join(["lol"] * width) + "]"]
    for i in range(1, levels):
        lines.append(f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * width) + "]")
    return "\n".join(lines) + "\n"


def test_plain_yaml_and_merge_keys_load() -> None:
    data, problems = read_yaml("x.yaml", b"base: &b {x: 1, y: 2}\nc: {<<: *b, x: 3}\nd: [*b]\n")
    assert problems == [] and data == {
        "base": {"x": 1, "y": 2},
        "c": {"x": 3, "y": 2},
        "d": [{"x": 1, "y": 2}],
    }


def test_duplicate_keys_are_refused_naming_both_lines() -> None:
    p = _problem("a: 1\nb:\n  c: 2\n  d: 3\n  c: 4\n")
    assert p.path == "line 5, column 3"
    assert p.message == "duplicate key 'c' (first on line 3, again on line 5)"


def test_an_alias_bomb_is_refused_at_once_and_briefly() -> None:
    started = time.perf_counter()
    p = _problem(bomb())  # 9**9 = 387 million values once expanded
    assert time.perf_counter() - started < HANG_S
    assert "aliases expand this value" in p.message and f"{MAX_ALIAS_NODES:,}" in p.message
    assert len(str(p)) < 400


def test_aliases_within_the_budget_still_work() -> None:
    data, problems = read_yaml("x.yaml", bomb(levels=3, width=9).encode())  # 9**3 values
    assert problems == [] and len(data["l2"]) == 9 and data["l2"][0][0] == ["lol"] * 9


def test_a_recursive_alias_is_refused() -> None:
    assert "refers to a node that contains it" in _problem("a: &a [1, *a]\n").message


@pytest.mark.parametrize("opening", ["[", "{a: ", "- "])
def test_deep_nesting_is_refused_not_a_recursion_error(opening: str) -> None:
    if opening == "- ":
        text = "- " * 1200 + "1\n"  # block sequences nested on one line
    else:
        text = opening * 1200 + "1" + ("]" if opening == "[" else "}") * 1200
    p = _problem(text)
    assert f"nested deeper than {MAX_DEPTH} levels" in p.message and p.path.startswith("line ")


def test_invalid_utf8_names_the_line() -> None:
    p = _problem(b"a: 1\nb: caf\xe9\n")
    assert (p.path, p.message) == ("line 2", "not UTF-8 text (byte 0xe9 at offset 11)")


@pytest.mark.parametrize("value", [".nan", ".NaN", ".inf", "-.inf", "+.Inf"])
def test_non_finite_numbers_are_refused(value: str) -> None:
    p = _problem(f"x:\n  max: {value}\n")
    assert p.path == "line 2, column 8" and "is not a finite number" in p.message


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("a: " + "9" * 5000 + "\n", "cannot read this value"),
        ("a: \x00\n", "control character #x0000"),
        ("a: !!python/object/apply:os.system [true]\n", "could not determine a constructor"),
        ("a: 1\n---\nb: 2\n", "expected a single document"),
        ("a: [1\n", "not valid YAML"),
    ],
)
def test_unreadable_values_are_problems_with_a_line(text: str, needle: str) -> None:
    p = _problem(text)
    assert needle in p.message and p.path.startswith("line "), p


def test_files_over_the_size_cap_are_refused_unread(tmp_path: Path) -> None:
    big = tmp_path / "big.yaml"
    big.write_bytes(b"# " + b"x" * (2 << 20))
    assert "larger than 1 MiB" in _problem(big.read_bytes(), str(big)).message
    _, problems = read_yaml(big)
    assert "larger than 1 MiB" in problems[0].message


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ('{"a": 1, "a": 2}', "duplicate key 'a'"),
        ('{"a": NaN}', "NaN is not a finite number"),
        ('{"a": 1e400}', "1e400 is not a finite number"),
        ("[" * 1000 + "]" * 1000, f"nested deeper than {MAX_DEPTH} levels"),
        ('{"a": ', "not valid JSON"),
    ],
)
def test_json_files_follow_the_same_rules(text: str, needle: str) -> None:
    assert needle in _problem(text, "spec.json").message


def test_json_is_read_as_json() -> None:
    data, problems = read_yaml("spec.json", b'{\n\t"a": 1e5,\n\t"b": "x\\/y"\n}')
    assert problems == [] and data == {"a": 100000.0, "b": "x/y"}


# ---------------------------------------------------------------------------------- the translator


class Leaf(BaseModel):
    model_config = ConfigDict(extra="forbid")
    window: int = Field(gt=0)
    how: Literal["mean", "max"] = "mean"


class Fault(BaseModel):
    model_config = ConfigDict(extra="forbid")
    fault: Leaf


class Pause(BaseModel):
    model_config = ConfigDict(extra="forbid")
    pause: float


class Raw(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["raw"]


class Zscore(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["zscore"]
    window: int


class Doc(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    leaves: dict[str, Leaf] = {}
    steps: list[Fault | Pause] = []
    transforms: list[Annotated[Raw | Zscore, Field(discriminator="kind")]] = []
    params: dict[str, Any] = {}


def _lines(data: Any, prefix: str = "") -> list[str]:
    with pytest.raises(ValidationError) as info:
        Doc.model_validate(data)
    return [str(p) for p in problems_from(info.value, file="f.yaml", model=Doc, prefix=prefix)]


def test_unknown_keys_are_named_at_their_mapping_with_the_keys_valid_there() -> None:
    assert _lines({"name": "n", "leaves": {"a": {"widow": 3}}}) == [
        "f.yaml: leaves.a: unknown key 'widow' (did you mean 'window'?)"
    ]
    assert _lines({"name": "n", "zzz": 1}) == [
        "f.yaml: unknown key 'zzz' (allowed here: name, leaves, steps, transforms, params)"
    ]


def test_missing_keys_and_prefixes() -> None:
    assert _lines({"leaves": {"a": {}}}, prefix="doc") == [
        "f.yaml: doc: missing required key 'name'",
        "f.yaml: doc.leaves.a: missing required key 'window'",
    ]


def test_union_arms_report_only_the_arm_that_was_meant() -> None:
    assert _lines({"name": "n", "steps": [{"fault": {"window": 0}}, {"pause": "soon"}]}) == [
        "f.yaml: steps[0].fault.window: Input should be greater than 0 (got 0)",
        "f.yaml: steps[1].pause: Input should be a valid number, unable to parse string as a number"
        " (got 'soon')",
    ]
    # a misspelled key stands for the missing one: no "missing 'fault'", no noise from the pause arm
    assert _lines({"name": "n", "steps": [{"falt": {"window": 1}}]}) == [
        "f.yaml: steps[0]: unknown key 'falt' (did you mean 'fault'?)"
    ]


def test_discriminated_unions_name_the_tag() -> None:
    assert _lines({"name": "n", "transforms": [{"kind": "zscor"}, {"window": 3}, {"kind": "zscore"}]}) == [
        "f.yaml: transforms[0]: unknown kind 'zscor' (did you mean 'zscore'?)",
        "f.yaml: transforms[1]: missing required key 'kind' (one of: raw, zscore)",
        "f.yaml: transforms[2]: missing required key 'window'",
    ]


def test_literals_get_a_did_you_mean_and_values_are_echoed_capped() -> None:
    assert _lines({"name": "n", "leaves": {"a": {"window": 1, "how": "maxx"}}}) == [
        "f.yaml: leaves.a.how: Input should be 'mean' or 'max' (got 'maxx') (did you mean 'max'?)"
    ]
    (line,) = _lines({"name": ["x" * 10_000] * 10_000})
    assert line.startswith("f.yaml: name: Input should be a valid string (got [") and len(line) < 200


def test_free_form_values_keep_their_path() -> None:
    class Strict(BaseModel):
        model_config = ConfigDict(extra="forbid")
        params: dict[str, dict[str, int]]

    with pytest.raises(ValidationError) as info:
        Strict.model_validate({"params": {"a": {"b": "x"}}})
    (p,) = problems_from(info.value, file="f", model=Strict)
    assert p.path == "params.a.b"


def test_every_problem_is_capped_whatever_built_it() -> None:
    p = Problem("f", "x" * 10_000, "y" * 10_000, "z" * 10_000)
    assert max(len(p.path), len(p.message), len(p.hint or "")) <= MAX_PROBLEM_TEXT
    assert "10,000 characters" in p.message
    many = SpecError([Problem("f", str(i), "m") for i in range(500)])
    assert len(many.problems) == 500 and "... and 450 more" in many.message


def test_echo_never_walks_a_whole_structure() -> None:
    shared: list[Any] = ["x" * 100] * 100
    for _ in range(30):
        shared = [shared] * 100  # 100**30 leaves if walked
    assert len(echo(shared)) <= 80


# -------------------------------------------------------------------- every spec kind, one loader


def _policy(folder: Path, text: str) -> Callable[[], Any]:
    from engine.policy import load_policies

    shutil.copy(REPO / "rules" / "topology.yaml", folder / "topology.yaml")
    (folder / "p.yaml").write_bytes(text.encode("utf-8", "surrogateescape"))
    return lambda: load_policies(folder)


def _topology(folder: Path, text: str) -> Callable[[], Any]:
    from engine.policy import load_policies

    shutil.copy(REPO / "rules" / "memory_leak.yaml", folder / "memory_leak.yaml")
    (folder / "topology.yaml").write_bytes(text.encode("utf-8", "surrogateescape"))
    return lambda: load_policies(folder)


def _file(loader: Callable[[Path], Any], name: str = "spec.yaml") -> Callable[[Path, str], Callable[[], Any]]:
    def make(folder: Path, text: str) -> Callable[[], Any]:
        path = folder / name
        path.write_bytes(text.encode("utf-8", "surrogateescape"))
        return lambda: loader(path)

    return make


def _kinds() -> dict[str, Callable[[Path, str], Callable[[], Any]]]:
    from engine.actions.targets import load_targets
    from engine.chaos.experiment import load_experiment
    from engine.evaluation.families_spec import load_comparison_spec
    from engine.evaluation.streaming import load_detector_spec
    from engine.features import FeatureSpec
    from engine.runtime.config import load_settings
    from engine.runtime.sources import PromMapping
    from engine.simulation.config import load_config
    from engine.tracking.spec import load_spec

    return {
        "policy": _policy,
        "topology": _topology,
        "targets": _file(load_targets, "targets.yaml"),
        "experiment": _file(load_spec),
        "chaos": _file(load_experiment),
        "engine-config": _file(lambda p: load_settings(p, environ={})),
        "synth-config": _file(load_config),
        "detector-spec": _file(load_detector_spec),
        "detector-spec-json": _file(load_detector_spec, "spec.json"),
        "feature-spec": _file(FeatureSpec.from_yaml),
        "families": _file(load_comparison_spec),
        "prometheus-mapping": _file(PromMapping.from_yaml),
    }


HOSTILE = {
    "duplicate-key": ("a: 1\nb: 2\na: 3\n", '{"a": 1, "b": 2, "a": 3}', "duplicate key 'a'"),
    "alias-bomb": (bomb(), None, "aliases expand"),
    "deep": ("a: " + "[" * 1200 + "]" * 1200 + "\n", "[" * 1200 + "]" * 1200, "nested deeper"),
    "nan": ("a: {max: .nan}\n", '{"a": NaN}', "not a finite number"),
    "bad-utf8": ("a: caf\udce9\n", '{"a": "caf\udce9"}', "not UTF-8 text"),
}


@pytest.mark.parametrize("hostile", sorted(HOSTILE))
@pytest.mark.parametrize("kind", sorted(_kinds()))
def test_every_spec_kind_refuses_hostile_yaml_naming_file_and_line(
    tmp_path: Path, kind: str, hostile: str
) -> None:
    yaml_text, json_text, needle = HOSTILE[hostile]
    text = json_text if kind.endswith("-json") else yaml_text
    if text is None:
        pytest.skip("JSON has no aliases")
    load = _kinds()[kind](tmp_path, text)
    started = time.perf_counter()
    with pytest.raises(SpecError) as info:
        load()
    assert time.perf_counter() - started < HANG_S
    hits = [p for p in info.value.problems if needle in p.message]
    assert hits, info.value.problems
    assert Path(hits[0].file).parent == tmp_path
    assert hits[0].path.startswith("line ") or kind.endswith("-json"), hits[0]
    assert len(str(info.value)) < 2_000
