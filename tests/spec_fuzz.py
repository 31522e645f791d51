"""Structure-aware fuzzing of spec files, shared by the fuzz tests and the fuzz benchmark.

Inputs start from the real, valid files we ship (policies, topology, targets, sweep and chaos
experiments) and an engine config, and are broken the ways people and attackers break them:
structurally (a key deleted, misspelled or added, a value replaced by a hostile one: NaN, a
300-digit integer, a list where a number goes, a deep structure) and as text (a line duplicated,
the file cut short, bytes flipped, an alias bomb, deep nesting, a code-running tag spliced in).

``attempt`` loads one input and checks the contract of every loader: the input is accepted, or
refused with an ``EngineError`` whose problems name the file and a line or field; never another
exception, never more than ``LIMIT_S`` seconds.
"""

from __future__ import annotations

import copy
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from hypothesis import strategies as st

from engine.errors import EngineError, SpecError

REPO = Path(__file__).resolve().parents[1]
RULES = REPO / "rules"
LIMIT_S = 20.0  # a hang guard (an unguarded input ran for minutes), not a speed target: the
# benchmark bench_fuzz_specs measures speed; a shared, loaded CI machine must not fail on it

ENGINE_CONFIG: dict[str, Any] = {
    "host": "127.0.0.1",
    "port": 8787,
    "tick_s": 0.05,
    "workers": 0,
    "approver_tokens": {"alice": "alice-token-123"},
    "sources": {"http": True, "files": ["-"], "prometheus": []},
    "limits": {"max_actions_per_hour": 30, "max_failures_per_hour": 5, "max_concurrent": 4},
    "maintenance": [
        {"services": ["vector-db"], "start": "2026-01-01T00:00:00", "end": "2026-01-01T01:00:00"}
    ],
    "approval_ttl_s": 900,
    "trusted_keys": [],
}


def _docs(paths: list[Path]) -> list[Any]:
    return [yaml.safe_load(p.read_text()) for p in paths]


def seeds() -> dict[str, list[Any]]:
    """Valid documents of every kind, the starting points of the mutations."""
    return {
        "policy": _docs(
            sorted(p for p in RULES.glob("*.yaml") if p.name not in ("topology.yaml", "targets.yaml"))
        ),
        "topology": _docs([RULES / "topology.yaml"]),
        "targets": _docs([RULES / "targets.yaml"]),
        "experiment": _docs(sorted((REPO / "experiments").glob("*.yaml"))),
        "chaos": _docs(sorted((REPO / "experiments" / "chaos").glob("*.yaml"))),
        "engine-config": [ENGINE_CONFIG],
    }


# ------------------------------------------------------------------------------------ strategies

HOSTILE_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**6), max_value=10**6),
    st.sampled_from([10**400, -(10**20), 2**63, 0, -1]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([1e308, -1e308, 1e-320, 0.0]),
    st.text(st.characters(exclude_categories=("Cs",)), max_size=20),
    st.sampled_from(["", "${service}", "${nope}", "10m", "-5s", "nan", "inf", "1e999", "*", "x" * 300]),
)
HOSTILE_VALUES = st.one_of(
    st.recursive(
        HOSTILE_SCALARS,
        lambda inner: st.one_of(
            st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
        ),
        max_leaves=12,
    ),
    # wide: a few keys of long lists (a sweep grid whose product is astronomically large)
    st.dictionaries(
        st.text(min_size=1, max_size=8),
        st.lists(st.integers(1, 99), min_size=20, max_size=40),
        min_size=6,
        max_size=8,
    ),
)

SPLICES = [
    "a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
    "c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]\n"
    "e: [*d, *d, *d, *d, *d, *d, *d, *d, *d]\n",
    "deep: " + "[" * 3000 + "]" * 3000 + "\n",
    "x: !!python/object/apply:os.system [touch /tmp/selfheal-fuzz-pwned]\n",
    "x: &r [*r]\n",
    "<<: {policy: other}\n",
    "\t- tab\n",
    "x: .nan\n",
    "x: " + "9" * 5000 + "\n",
    "x: 'unterminated\n",
    "? [a, b]\n: c\n",
    "--- \n---\n",
]


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, (*prefix, i))
    return out


def _parent(doc: Any, path: tuple[Any, ...]) -> Any:
    for part in path[:-1]:
        doc = doc[part]
    return doc


@st.composite
def mutated_doc(draw: st.DrawFn, doc: Any) -> Any:
    """``doc`` with one to three structural mutations at random places."""
    doc = copy.deepcopy(doc)
    for _ in range(draw(st.integers(1, 3))):
        paths = _paths(doc)
        path = draw(st.sampled_from(paths))
        op = draw(st.sampled_from(["replace", "delete", "rename", "add"]))
        if not path:
            if op == "replace":
                doc = draw(HOSTILE_VALUES)
            continue
        parent, key = _parent(doc, path), path[-1]
        if op == "replace":
            parent[key] = draw(HOSTILE_VALUES)
        elif op == "delete":
            del parent[key]
        elif op == "rename" and isinstance(parent, dict):
            name = str(key)
            i = draw(st.integers(0, max(0, len(name) - 1)))
            parent[name[:i] + name[i + 1 :] or "x"] = parent.pop(key)  # a typo: one letter dropped
        elif op == "add" and isinstance(parent, dict):
            parent[draw(st.text(max_size=10))] = draw(HOSTILE_VALUES)
        elif op == "add" and isinstance(parent, list):
            parent.insert(draw(st.integers(0, len(parent))), draw(HOSTILE_VALUES))
    return doc


def dump(doc: Any) -> bytes:
    return yaml.safe_dump(doc, sort_keys=False, allow_unicode=True).encode("utf-8", "surrogatepass")


@st.composite
def mutated_text(draw: st.DrawFn, doc: Any) -> bytes:
    """The document as YAML text, then broken as text."""
    data = dump(doc)
    op = draw(st.sampled_from(["splice", "duplicate-line", "truncate", "flip", "none"]))
    lines = data.split(b"\n")
    at = draw(st.integers(0, len(lines)))
    if op == "splice":
        lines.insert(at, draw(st.sampled_from(SPLICES)).encode().rstrip(b"\n"))
    elif op == "duplicate-line" and lines:
        lines.insert(at, lines[min(at, len(lines) - 1)])
    elif op == "truncate":
        return data[: draw(st.integers(0, len(data)))]
    elif op == "flip" and data:
        i = draw(st.integers(0, len(data) - 1))
        return data[:i] + bytes([data[i] ^ draw(st.sampled_from([0x80, 0xFF, 0x20, 0x01]))]) + data[i + 1 :]
    return b"\n".join(lines)


def spec_input(kind: str) -> st.SearchStrategy[bytes]:
    """Broken files of ``kind``: structural mutations, then (sometimes) text mutations."""
    docs = seeds()[kind]
    return (
        st.sampled_from(docs)
        .flatmap(mutated_doc)
        .flatmap(lambda doc: st.one_of(st.just(dump(doc)), mutated_text(doc)))
    )


# ------------------------------------------------------------------------------------- loaders


def _policy_folder(folder: Path, files: dict[str, bytes]) -> Callable[[], Any]:
    from engine.policy.targets import check_folder

    def load() -> Any:
        policy_set, problems = check_folder(folder)
        if problems:
            raise SpecError(problems)
        return policy_set

    return load


def loader(kind: str, folder: Path, data: bytes) -> tuple[Callable[[], Any], list[Path]]:
    """The load call for one input of ``kind`` written under ``folder``, and the files it may blame."""
    from engine.chaos.experiment import load_experiment
    from engine.runtime.config import load_settings
    from engine.tracking.spec import load_spec

    if kind in ("policy", "topology", "targets"):
        files = {
            "topology.yaml": (RULES / "topology.yaml").read_bytes(),
            "memory_leak.yaml": (RULES / "memory_leak.yaml").read_bytes(),
            "targets.yaml": (RULES / "targets.yaml").read_bytes(),
        }
        files[
            {"policy": "memory_leak.yaml", "topology": "topology.yaml", "targets": "targets.yaml"}[kind]
        ] = data
        for name, content in files.items():
            (folder / name).write_bytes(content)
        return _policy_folder(folder, files), [folder / name for name in files] + [folder]
    path = folder / "spec.yaml"
    path.write_bytes(data)
    load = {
        "experiment": lambda: load_spec(path),
        "chaos": lambda: load_experiment(path),
        "engine-config": lambda: load_settings(path, environ={}),
    }[kind]
    return load, [path]


# ---------------------------------------------------------------------------------- the contract


@dataclass
class Outcome:
    accepted: bool
    seconds: float
    problems: list[str]


def _whole_file(message: str) -> bool:
    """Problems that are about the whole file (no line or field to name)."""
    return message.startswith(("expected a mapping", "larger than", "no policy files", "cannot read"))


def attempt(kind: str, folder: Path, data: bytes) -> Outcome:
    """Load one input and check the loaders' contract (module docstring); AssertionError if broken."""
    load, blamable = loader(kind, folder, data)
    started = time.perf_counter()
    try:
        load()
    except SpecError as exc:
        problems = exc.problems
    except EngineError as exc:
        seconds = time.perf_counter() - started
        assert any(str(p) in exc.message for p in blamable), f"{kind}: {exc} names no file"
        return Outcome(False, seconds, [str(exc)])
    except Exception:
        raise AssertionError(f"{kind}: a traceback instead of a problem:\n{traceback.format_exc()}") from None
    else:
        seconds = time.perf_counter() - started
        assert seconds < LIMIT_S, f"{kind}: {seconds:.1f} s to accept one file"
        return Outcome(True, seconds, [])
    seconds = time.perf_counter() - started
    assert seconds < LIMIT_S, f"{kind}: {seconds:.1f} s to refuse one file"
    assert problems, f"{kind}: SpecError without problems"
    names = {str(p) for p in blamable}
    for p in problems:
        assert p.file in names, f"{kind}: {p} blames {p.file!r}, not a file of the input"
        assert p.path or "'" in p.message or _whole_file(p.message), f"{kind}: {p} names no line or field"
        assert len(str(p)) < 1_200, f"{kind}: a problem of {len(str(p))} characters"
    return Outcome(False, seconds, [str(p) for p in problems])


KINDS = ("policy", "topology", "targets", "experiment", "chaos", "engine-config")


def warm_up(kind: str, folder: Path) -> None:
    """Load one valid file first: the first load imports the libraries behind a loader (pyod for
    experiment specs: seconds), which is start-up time, not the cost of a hostile input."""
    loader(kind, folder, dump(seeds()[kind][0]))[0]()
