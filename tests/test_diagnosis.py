"""Diagnosis: signatures, the fault-kind model, localisation over the topology, the stage, the
policy matchers on it, and the commands. The stage runs on the platform model's own telemetry
(the simulation the chaos runs use) with the shipped model: what it says is what the engine says.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO
from typer.testing import CliRunner

from engine.cli import app
from engine.diagnosis import DiagnosisStage, KindModel, Signer, shipped_model
from engine.diagnosis.localise import explains, root_of, upstream_closure
from engine.diagnosis.signature import METRICS, QUIET_Z, RECENT, RECENT_TAU_S, WARMUP_S, Baselines
from engine.errors import ConfigError, InputError
from engine.policy import PolicyHost, load_policies
from engine.records import AnomalyEvent, Decision, Diagnosis
from engine.simulation.config import load_config
from engine.simulation.faults import Fault
from engine.simulation.model import PlatformModel

T0 = 1_768_300_000.0
TOPOLOGY = {k: tuple(v) for k, v in PlatformModel(load_config()).topology.items()}
"""The simulated platform's call graph (the one rules/topology.yaml declares)."""


def z_of(**metrics: float) -> np.ndarray:
    z = np.zeros(len(METRICS))
    for name, value in metrics.items():
        z[METRICS.index(name)] = value
    return z


# ------------------------------------------------------------------------------- signature
def test_signature_is_signed_distance_from_a_learned_normal_and_a_fault_is_not_learned() -> None:
    rng = np.random.default_rng(0)
    b = Baselines()
    ts = T0
    for _ in range(int(WARMUP_S / 60) + 60):
        ts += 60
        z, _ = b.signature("svc", ts, {"latency_p99_ms": 100 + rng.normal(0, 2), "memory_util": 0.5})
    assert np.abs(z).max() < QUIET_Z
    level = b.baseline("svc", "latency_p99_ms")["level"]  # type: ignore[index]
    for _ in range(30):  # a fault: latency far up, memory unchanged
        ts += 60
        z, _ = b.signature("svc", ts, {"latency_p99_ms": 150.0, "memory_util": 0.5})
    assert z[METRICS.index("latency_p99_ms")] > 10 and z[METRICS.index("memory_util")] == 0
    assert b.baseline("svc", "latency_p99_ms")["level"] == level  # type: ignore[index]  # not absorbed
    z, _ = b.signature("svc", ts + 60, {"latency_p99_ms": 60.0})
    assert z[METRICS.index("latency_p99_ms")] < -10  # down is negative; a missing metric reads 0
    assert z[METRICS.index("memory_util")] == 0


def test_a_leak_slower_than_the_baseline_still_stands_out() -> None:
    """Memory climbing 0.5 -> 0.9 over two hours rises less than QUIET_Z spreads a minute: a
    30-minute baseline learnt it as it grew (z stayed near 3) and the leak's thrash later read as
    a slow service with normal memory."""
    rng = np.random.default_rng(2)
    b = Baselines()
    ts = T0
    for _ in range(120):  # two normal hours
        ts += 60
        b.signature("svc", ts, {"memory_util": 0.5 + rng.normal(0, 0.01)})
    for i in range(120):
        ts += 60
        z, _ = b.signature("svc", ts, {"memory_util": 0.5 + 0.4 * i / 120 + rng.normal(0, 0.01)})
    assert z[METRICS.index("memory_util")] > 10


def test_a_series_always_at_zero_reads_a_value_off_zero_as_far_out_not_as_an_error() -> None:
    """No spread learnt and no floor for request_rate: a division by zero stopped the tick."""
    b = Baselines()
    for k in range(int(WARMUP_S / 60) + 5):
        z, _ = b.signature("idle", T0 + 60 * k, {"request_rate": 0.0})
    assert not z.any()
    z, _ = b.signature("idle", T0 + WARMUP_S + 600, {"request_rate": 5.0})
    assert z[METRICS.index("request_rate")] == 1 / 0.02


def test_a_young_series_gives_no_signature() -> None:
    b = Baselines()
    assert not b.signature("svc", T0, {"error_rate": 0.01})[0].any()
    assert not b.signature("svc", T0 + WARMUP_S / 2, {"error_rate": 0.9})[0].any()


def test_recent_latency_adds_up_over_a_creep_and_fades_after_a_one_off_row() -> None:
    """The recent mean of latency's z (every row, quiet or not) is what tells a creep's first
    rows, which move latency alone, from noise: the same row's z has a different history."""
    rng = np.random.default_rng(3)
    b = Baselines()
    ts = T0
    for _ in range(int(WARMUP_S / 60) + 60):
        ts += 60
        b.signature("svc", ts, {"latency_p50_ms": 100 + rng.normal(0, 2)})
        b.signature("creep", ts, {"latency_p50_ms": 100 + rng.normal(0, 2)})
    p50 = RECENT.index("latency_p50_ms")
    z, spike = b.signature("svc", ts + 60, {"latency_p50_ms": 120.0})  # one row, far up
    assert z[METRICS.index("latency_p50_ms")] > QUIET_Z
    assert abs(spike[p50] - z[METRICS.index("latency_p50_ms")] * (1 - np.exp(-60 / RECENT_TAU_S))) < 0.5
    for i in range(30):  # latency a little higher each minute: 30 minutes of a creep
        z, creep = b.signature("creep", ts + 60 * (i + 1), {"latency_p50_ms": 100 + 0.7 * i})
    assert creep[p50] > 3 * spike[p50]
    for i in range(20):  # the spike's service back to normal: its mean fades
        _, after = b.signature("svc", ts + 60 * (i + 2), {"latency_p50_ms": 100 + rng.normal(0, 2)})
    assert abs(after[p50]) < 0.5 * spike[p50] + 0.5


def test_the_shipped_model_reads_the_same_row_by_its_history() -> None:
    """A service slow by 5 spreads now: after 20 minutes of rising latency it is a creep; as a
    one-off (its recent mean near 0) it is not. A model of the row's z alone says the same of both."""
    model = shipped_model()
    now = z_of(latency_p50_ms=5.0, latency_p99_ms=4.0)
    one_off = np.zeros(len(RECENT))
    sustained = np.array([{"latency_p50_ms": 3.0, "latency_p99_ms": 2.5}[m] for m in RECENT])
    creep = list(model.classes).index("latency_creep")
    p_sustained, p_one_off = model.proba(np.vstack([now, now]), np.vstack([sustained, one_off]))
    assert model.predict(now, sustained)[0] == "latency_creep"
    assert p_sustained[creep] > p_one_off[creep] + 0.2


# ------------------------------------------------------------------------------- model
def _toy_model() -> KindModel:
    rng = np.random.default_rng(1)
    leak = np.array([z_of(memory_util=rng.uniform(4, 20)) for _ in range(40)])
    stale = np.array([z_of(retrieval_precision=-rng.uniform(4, 20)) for _ in range(40)])
    noise = np.array([z_of(request_rate=rng.normal(0, 4)) for _ in range(40)])
    labels = ["memory_leak"] * 40 + ["stale_index"] * 40 + ["unknown"] * 40
    return KindModel.fit(np.vstack([leak, stale, noise]), np.zeros((120, len(RECENT))), np.array(labels))


def test_model_learns_kinds_and_survives_its_json(tmp_path: Path) -> None:
    model = _toy_model()
    rows = np.array([z_of(memory_util=9), z_of(retrieval_precision=-9), z_of(request_rate=1)])
    recent = np.zeros((3, len(RECENT)))
    assert model.predict(rows, recent).tolist() == ["memory_leak", "stale_index", "unknown"]
    p = model.proba(rows, recent)
    assert np.allclose(p.sum(axis=1), 1)
    again = KindModel.load(model.save(tmp_path / "m.json"))
    assert np.allclose(again.proba(rows, recent), p, atol=1e-4) and again.version == model.version
    said = dict(line.split(None, 1) for line in model.summary().splitlines()[2:])
    assert said["memory_leak"].startswith("memory_util up")
    assert "retrieval_precision down" in said["stale_index"]


def test_the_forest_says_what_scikit_learn_says_for_any_row() -> None:
    """``proba`` walks every tree at once in numpy; it must be scikit-learn's ``predict_proba``
    of the forest it was read from: for rows far from anything it was fitted on, and for inputs
    exactly on a threshold (fitted on whole numbers, some thresholds are halves: which way a row
    equal to one goes, and scikit-learn's float32 inputs, decide)."""
    from sklearn.ensemble import RandomForestClassifier

    from engine.diagnosis.model import inputs

    rng = np.random.default_rng(3)
    width = len(METRICS) + len(RECENT)
    x = rng.integers(-3, 4, (400, width)).astype(float)
    kinds = np.array(["memory_leak", "unknown", "latency_creep", "stale_index"])
    labels = kinds[(x[:, 0] > 0).astype(int) + 2 * (x[:, -1] > 1)]
    labels[rng.random(400) < 0.2] = "unknown"  # noise: leaves of mixed kinds
    clf = RandomForestClassifier(n_estimators=7, max_depth=6, min_samples_leaf=3, random_state=0).fit(
        x, labels
    )
    model = KindModel.of_sklearn(clf)
    assert model.trees == 7 and model.depth == max(e.get_depth() for e in clf.estimators_)
    assert list(model.classes) == list(clf.classes_)
    on = rng.choice(model.threshold[model.left >= 0], (2000, width))  # every input on some threshold
    near = on + rng.choice([-1e-7, 0.0, 1e-7], on.shape)
    for rows in (on, near, rng.normal(0, 10, (2000, width))):
        assert np.abs(model.proba_of_inputs(rows) - clf.predict_proba(rows)).max() < 1e-12
    z2, recent2 = rng.normal(0, 10, (500, len(METRICS))), rng.normal(0, 5, (500, len(RECENT)))
    assert np.abs(model.proba(z2, recent2) - clf.predict_proba(inputs(z2, recent2))).max() < 1e-12


def _tree_of_three(raw: dict) -> None:
    """Two trees in ``raw``: a root with two leaves, then a leaf alone."""
    raw.update(
        roots=[0, 3], feature=[0, -2, -2, -2], threshold=[0.0, -2.0, -2.0, -2.0], left=[1, -1, -1, -1],
        right=[2, -1, -1, -1], share=[1.0, 0.5, 0.5, 1.0], value=[[1 / 3] * 3] * 4,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"format": "other/1"}, "format"),
        ({"inputs": ["cpu_util"]}, "trained on inputs"),
        ({"format": "selfheal-diagnosis/1"}, "format"),  # one tree over z alone: retrain
        ({"left": [5, -1, -1, -1]}, "do not fit"),  # past the end
        ({"left": [3, -1, -1, -1]}, "do not fit"),  # into the next tree
        ({"right": [2, 1, -1, -1]}, "do not fit"),  # a leaf with a child
        ({"roots": [1, 3]}, "do not fit"),  # nodes before the first tree
        ({"roots": [0, 0]}, "do not fit"),
        ({"roots": [0, 9]}, "do not fit"),
        ({"share": [1.0, 0.5, 1.5, 1.0]}, "do not fit"),
        ({"value": [[-1, 1, 1]] * 4}, "do not fit"),
        ({"feature": [15, -2, -2, -2]}, "do not fit"),  # no such input
        ({"classes": ["memory_leak", "stale_index", "kraken"]}, "do not fit"),
        ({"threshold": "x"}, "unreadable"),
        ({"roots": None}, "unreadable"),
    ],
)
def test_a_bad_model_file_is_refused_with_a_hint(tmp_path: Path, change: dict, message: str) -> None:
    raw = _toy_model().to_dict()
    if set(change) & {"left", "right", "roots", "share", "value", "feature"}:
        _tree_of_three(raw)
    assert "do not fit" not in message or KindModel.from_dict({**raw, "info": {}})  # valid before
    raw.update(change)
    (tmp_path / "m.json").write_text(json.dumps(raw))
    with pytest.raises(ConfigError, match=message) as err:
        KindModel.load(tmp_path / "m.json")
    assert "selfheal diagnosis train" in (err.value.hint or "") and str(tmp_path / "m.json") in str(err.value)


def test_a_model_whose_nodes_share_children_loads_in_time_linear_in_its_nodes() -> None:
    """Loading walks the trees once to learn their depth: a file whose nodes both point at the
    next one (64 levels, 2^63 paths) must not make it walk every path."""
    n = 64
    raw = _toy_model().to_dict()
    raw.update(
        roots=[0], feature=[0] * (n - 1) + [-2], threshold=[0.0] * n, share=[1.0] * n,
        left=[*range(1, n), -1], right=[*range(1, n), -1], value=[[1 / 3] * 3] * n,
    )  # fmt: skip
    model = KindModel.from_dict(raw)
    assert model.depth == n - 1 and model.proba_of_inputs(np.zeros((1, len(model.inputs)))).shape == (1, 3)


def test_shipped_model_was_evaluated_on_seeds_it_was_not_fitted_on() -> None:
    model = shipped_model()
    info = model.info
    assert set(model.classes) == {
        "latency_creep",
        "memory_leak",
        "stale_index",
        "bad_deploy",
        "dependency_outage",
        "unknown",
    }
    assert info["train_seeds"] and info["eval_seeds"]
    assert not set(info["train_seeds"]) & set(info["eval_seeds"])
    assert 0.5 < info["held_out_accuracy"] <= 1.0


# ------------------------------------------------------------------------------- localisation
def test_upstream_closure_is_transitive_with_distances() -> None:
    ups = upstream_closure(TOPOLOGY)
    assert ups["gateway"] == {"inference-a": 1, "inference-b": 1, "vector-db": 2, "feature-store": 2}
    assert ups["vector-db"] == {}


def test_root_is_the_furthest_upstream_whose_kind_explains_the_symptoms() -> None:
    ups = upstream_closure(TOPOLOGY)
    outage = {
        "feature-store": ("dependency_outage", z_of(error_rate=400, latency_p99_ms=60)),
        "inference-a": ("bad_deploy", z_of(error_rate=30, response_variability=8)),  # reads like one
        "gateway": ("unknown", z_of(error_rate=25)),
    }
    assert root_of("inference-a", outage, ups) == "feature-store"
    assert root_of("gateway", outage, ups) == "feature-store"
    assert root_of("feature-store", outage, ups) == "feature-store"
    two = {
        "vector-db": ("stale_index", z_of(retrieval_precision=-14)),
        "inference-b": ("memory_leak", z_of(memory_util=12, response_variability=6)),
    }
    assert root_of("inference-b", two, ups) == "inference-b"  # a stale index does not make memory climb
    retries = {
        "vector-db": ("unknown", z_of(request_rate=6)),  # more calls: its caller retries
        "inference-a": ("bad_deploy", z_of(error_rate=50, response_variability=9)),
    }
    assert root_of("inference-a", retries, ups) == "inference-a"
    assert not explains("unknown", None) and explains("dependency_outage", None)


def test_an_upstream_explains_only_what_reaches_its_callers() -> None:
    ups = upstream_closure(TOPOLOGY)
    creep = z_of(latency_p50_ms=7, ttft_ms=6)  # inference-a slow, by its own creep
    leak = {
        "feature-store": ("memory_leak", z_of(memory_util=19)),  # leaking at normal speed
        "inference-a": ("latency_creep", creep),
    }
    assert root_of("inference-a", leak, ups) == "inference-a"
    thrashing = {**leak, "feature-store": ("memory_leak", z_of(memory_util=19, latency_p99_ms=9))}
    assert root_of("inference-a", thrashing, ups) == "feature-store"  # a slow upstream makes it slow
    down = {"vector-db": ("dependency_outage", z_of(error_rate=300)), "inference-a": ("bad_deploy", creep)}
    assert root_of("inference-a", down, ups) == "vector-db"  # a failing one too (its calls time out)
    decode = z_of(latency_p50_ms=7, tokens_per_s=-6)  # its own decode speed: nothing upstream moves it
    outage = {"vector-db": ("dependency_outage", z_of(error_rate=300, latency_p99_ms=80))}
    assert root_of("inference-a", {**outage, "inference-a": ("latency_creep", decode)}, ups) == "inference-a"
    stale = {"vector-db": ("stale_index", z_of(retrieval_precision=-14))}
    erratic = ("unknown", z_of(response_variability=8))
    assert root_of("inference-a", {**stale, "inference-a": erratic}, ups) == "vector-db"
    unclear = z_of(retrieval_precision=-2, memory_util=9)  # precision within its noise
    assert not explains("stale_index", z_of(response_variability=8), unclear)


# ------------------------------------------------------------------------------- the stage
def _run_stage(faults: list[Fault], until: float, seed: int = 3) -> DiagnosisStage:
    """Two healthy hours, then ``faults``, a row a minute per service, as the engine would."""
    model = PlatformModel(load_config(), seed=seed)
    t = np.arange(T0, until, 60.0)
    values = model.values(t, faults, np.random.default_rng(seed))
    stage, signer = DiagnosisStage(shipped_model(), TOPOLOGY), Signer(shipped_model())
    services = list(model.services)
    x = np.array([[values[s].get(m, np.full(len(t), np.nan)) for m in METRICS] for s in services])
    for i, ts in enumerate(t.tolist()):
        stage.hold(services, [ts] * len(services), signer.sign(services, [ts] * len(services), x[:, :, i]))
    return stage


def test_stage_names_the_root_and_its_victims_of_a_feature_store_outage() -> None:
    start = T0 + 2 * 3600
    stage = _run_stage([Fault("dependency_outage", "feature-store", start, magnitude=0.8)], start + 300)
    victim = stage.diagnose("inference-a", start + 240)
    assert (victim.kind, victim.root, victim.role) == ("dependency_outage", "feature-store", "victim")
    root = stage.diagnose("feature-store", start + 240)
    assert root.role == "root" and {"inference-a", "inference-b", "gateway"} <= set(root.victims)
    assert (
        root.probability >= 0.6
        and root.evidence
        and root.evidence[0][0] in {"error_rate", "latency_p50_ms", "latency_p99_ms"}
    )
    assert root.window_start is not None and root.window_start <= start + 240 == root.window_end


def test_stage_says_bad_deploy_on_the_root_even_when_the_deploy_is_strong() -> None:
    start = T0 + 2 * 3600
    stage = _run_stage([Fault("bad_deploy", "inference-b", start, magnitude=0.6)], start + 360)
    d = stage.diagnose("inference-b", start + 300)
    assert (d.kind, d.role) == ("bad_deploy", "root") and d.probability >= 0.6
    assert stage.diagnose("gateway", start + 300).role == "victim"


def test_stage_keeps_two_concurrent_roots_apart() -> None:
    start = T0 + 2 * 3600
    faults = [
        Fault("stale_index", "vector-db", start, magnitude=0.6, ramp_s=900),
        Fault("memory_leak", "inference-b", start, magnitude=1.0, ramp_s=1200, recovery_s=120),
    ]
    stage = _run_stage(faults, start + 1000)
    leak, stale = stage.diagnose("inference-b", start + 960), stage.diagnose("vector-db", start + 960)
    assert (leak.kind, leak.root) == ("memory_leak", "inference-b")
    assert (stale.kind, stale.root) == ("stale_index", "vector-db")


def test_quiet_platform_gives_no_root_a_kind() -> None:
    stage = _run_stage([], T0 + 3 * 3600)
    d = stage.diagnose("inference-a", T0 + 3 * 3600 - 60)
    assert d.role == "root" and (d.kind == "unknown" or d.probability < 0.6)


# ------------------------------------------------------------------------------- policies
POLICY = """
policy: diag
rules:
  - name: rollback
    priority: 5
    when:
      services: [inference-*]
      diagnosis: {kind: bad_deploy, min_probability: 0.8}
      role: root
    unless: {upstream_anomalous: false}
    then: {action: rollback_model}
    verify: {steady_state: {score_below: 0.5}, deadline: 10m}
  - name: restart-on-strong-errors
    when:
      services: [vector-db]
      contributing: {any: [error_rate], min_strength: 3}
    then: {action: restart}
    verify: {steady_state: {score_below: 0.5}, deadline: 10m}
  - name: short-form-still-valid
    when:
      services: [feature-store]
      contributing: [memory_util]
    then: {action: restart}
    verify: {steady_state: {score_below: 0.5}, deadline: 10m}
"""


@pytest.fixture
def host(tmp_path: Path) -> PolicyHost:
    shutil.copy(REPO / "rules" / "topology.yaml", tmp_path / "topology.yaml")
    (tmp_path / "p.yaml").write_text(POLICY)
    return PolicyHost(load_policies(tmp_path))


def event(service: str, **kw: object) -> AnomalyEvent:
    return AnomalyEvent.model_validate({"service": service, "detector": "d", "score": 0.95, "ts": T0, **kw})


def diagnosis(
    kind: str = "bad_deploy", p: float = 0.9, role: str = "root", root: str = "inference-a"
) -> Diagnosis:
    return Diagnosis(kind=kind, probability=p, root=root, role=role)  # type: ignore[arg-type]


def test_policies_match_on_the_diagnosis_kind_probability_and_role(host: PolicyHost) -> None:
    decision = host.post(event("inference-a", diagnosis=diagnosis()))
    assert decision is not None and decision.action == "rollback_model"
    assert decision.diagnosis is not None and decision.diagnosis.kind == "bad_deploy"
    assert host.post(event("inference-a", diagnosis=diagnosis(p=0.7))) is None
    assert host.post(event("inference-a", diagnosis=diagnosis(kind="dependency_outage"))) is None
    victim = diagnosis(kind="bad_deploy", role="victim", root="inference-b")
    assert host.post(event("inference-a", diagnosis=victim)) is None
    assert host.post(event("inference-b")) is None  # no diagnosis: no kind, no role


def test_contributing_min_strength(host: PolicyHost) -> None:
    weak = event("vector-db", contributing=["error_rate"], features=[["error_rate__z30", 2.0]])
    assert host.post(weak) is None  # among the contributors, but barely moved
    strong = event("vector-db", contributing=["error_rate"], features=[["error_rate__z30", -4.5]])
    decision = host.post(strong)
    assert decision is not None and decision.rule == "diag/restart-on-strong-errors"
    short = event("feature-store", contributing=["memory_util"], features=[["memory_util__raw", 0.1]])
    assert host.post(short) is not None


def test_decision_journal_row_keeps_the_diagnosis() -> None:
    d = Decision(
        id="dec-1",
        event_id="evt-1",
        service="inference-a",
        target="inference-a",
        action="rollback_model",
        params={},
        diagnosis=Diagnosis(
            kind="bad_deploy",
            probability=0.91,
            root="inference-a",
            victims=("gateway",),
            evidence=(("error_rate", 41.0),),
            window_start=T0,
            window_end=T0 + 300,
        ),
    )
    row = json.loads(json.dumps(d.to_record()))
    assert row["spec"]["diagnosis"]["victims"] == ["gateway"]
    assert Decision.from_record(row).diagnosis == d.diagnosis


# ------------------------------------------------------------------------------- commands
def test_diagnosis_show_prints_the_tree_and_train_refuses_overlapping_seeds(tmp_path: Path) -> None:
    runner = CliRunner()
    shown = runner.invoke(app, ["diagnosis", "show"])
    assert shown.exit_code == 0 and shipped_model().version in shown.stdout
    assert "50 trees" in shown.stdout and "latency_creep" in shown.stdout and " up (" in shown.stdout
    bad = runner.invoke(
        app, ["--home", str(tmp_path), "diagnosis", "train", "--train-seeds", "1,2", "--eval-seeds", "2,3"]
    )
    assert isinstance(bad.exception, InputError) and "both fitted on and held out" in str(bad.exception)


@pytest.mark.slow
def test_diagnosis_train_writes_a_model_and_logs_the_held_out_confusion_matrix(tmp_path: Path) -> None:
    import mlflow

    out = tmp_path / "m.json"
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = CliRunner().invoke(
        app,
        [
            "--home", str(tmp_path), "diagnosis", "train", "--train-seeds", "1", "--eval-seeds", "2",
            "--days", "2", "-o", str(out), "--tracking-uri", uri,
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    model = KindModel.load(out)
    assert model.info["train_seeds"] == [1] and model.info["eval_seeds"] == [2]
    assert "held out: seeds [2]" in result.stdout
    mlflow.set_tracking_uri(uri)
    (run,) = mlflow.search_runs(experiment_names=["diagnosis"], output_format="list")
    assert "held_out_accuracy" in run.data.metrics
    files = {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id, "diagnosis")}
    assert {"diagnosis/confusion_held_out.png", "diagnosis/m.json", "diagnosis/report.json"} <= files
