"""Bundles end to end with real parts: a detector fitted here, MLflow on SQLite in tmp, the repo's rules/.

One registry and one clean bundle are built per module (logging a pyfunc model costs ~1 s); every
test that damages a bundle works on its own copy.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest

from engine.bundle import build_bundle, load_bundle, verify_bundle
from engine.bundle.manifest import MANIFEST_NAME, sha256_bytes
from engine.bundle.signing import TRUST_ENV, generate_key, load_private_key, sign_manifest
from engine.errors import BundleError, ConfigError, SpecError
from engine.home import Home

pytestmark = pytest.mark.xdist_group("bundle")  # one registry and bundle per module, on one worker

REPO = Path(__file__).resolve().parents[1]
RULES = REPO / "rules"
MODEL = "latency"
MODEL_FILE = "detector/models/default.skops"
SPEC = {
    "interval": "10s",
    "metrics": {
        "latency_p99_ms": {"transforms": ["raw", {"kind": "zscore", "window": 6}]},
        "memory_util": {"transforms": ["raw"]},
    },
}


def _points(seed: int) -> pl.DataFrame:
    """A few hundred buckets of synthetic points for inference-a."""
    from datetime import datetime, timedelta

    rng = np.random.default_rng(seed)
    n = 400
    start = datetime(2026, 1, 1)
    ts = [start + timedelta(seconds=10 * i) for i in range(n)]
    return pl.concat(
        [
            pl.DataFrame(
                {"ts": ts, "service": "inference-a", "metric": metric, "value": rng.normal(mu, sd, n)},
                schema_overrides={"ts": pl.Datetime("us")},
            )
            for metric, mu, sd in (("latency_p99_ms", 120.0, 8.0), ("memory_util", 0.5, 0.03))
        ]
    )


def _fit(seed: int, detector: str, params: dict[str, Any]) -> Any:
    from engine.detectors.stream import StreamDetector
    from engine.detectors.stream_config import StreamConfig

    config = StreamConfig.model_validate(
        {
            "groups": [{"name": "default", "features": SPEC}],
            "model": {"class": detector, "params": params},
            "calibration": "ecdf",
            "seed": seed,
        }
    )
    points = _points(seed)
    return StreamDetector(config).fit(points), points


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Two registered versions of MODEL (IForest with 30 trees, then 20); champion -> v1."""
    import mlflow
    from mlflow import MlflowClient

    from engine.tracking.model import log_detector
    from engine.tracking.registry import ensure_experiment

    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    exp = ensure_experiment("bundle-tests", tracking_uri=uri, home=Home(root))
    pipelines, run_ids = [], []
    for seed, det, params in ((0, "IForest", {"n_estimators": 30}), (1, "IForest", {"n_estimators": 20})):
        pipeline, frame = _fit(seed, det, params)
        with mlflow.start_run(experiment_id=exp) as run:
            model_uri = log_detector(pipeline)
        mlflow.register_model(model_uri, MODEL)
        pipelines.append((pipeline, frame))
        run_ids.append(run.info.run_id)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    client.set_registered_model_alias(MODEL, "champion", "1")
    return {"uri": uri, "client": client, "pipelines": pipelines, "run_ids": run_ids, "root": root}


@pytest.fixture(scope="module", autouse=True)
def signing_key(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """This module's release key; its public key is trusted through SELFHEAL_TRUSTED_KEYS."""
    key = tmp_path_factory.mktemp("keys") / "release.key"
    public, _ = generate_key(key)
    saved = os.environ.get(TRUST_ENV)
    os.environ[TRUST_ENV] = str(public)
    yield key
    if saved is None:
        os.environ.pop(TRUST_ENV, None)
    else:
        os.environ[TRUST_ENV] = saved


def resign(folder: Path, key: Path) -> None:
    """Sign a hand-edited manifest again: what only the key holder can do."""
    sign_manifest(folder, load_private_key(key), (folder / MANIFEST_NAME).read_bytes())


@pytest.fixture(scope="module")
def built(registry: dict[str, Any], signing_key: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    out = tmp_path_factory.mktemp("bundles") / "champion"
    return build_bundle(
        f"models:/{MODEL}@champion", RULES, tracking_uri=registry["uri"], output=out, signing_key=signing_key
    )


@pytest.fixture
def copy(built: Any, tmp_path: Path) -> Path:
    """A private copy of the clean bundle, for tests that damage it."""
    return Path(shutil.copytree(built.path, tmp_path / "bundle"))


def _cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    from engine.cli import main

    with pytest.raises(SystemExit) as info:
        main(list(args))
    out = capsys.readouterr()
    return int(info.value.code or 0), out.out, out.err


# ------------------------------------------------------------------------------------------ build


def test_build_fixes_the_alias_to_a_version_and_hashes_every_file(built: Any, registry: dict) -> None:
    m = built.manifest
    assert m["model"] == m["model"] | {
        "name": MODEL,
        "version": "1",
        "alias": "champion",
        "run_id": registry["run_ids"][0],
        "requested": f"models:/{MODEL}@champion",
    }
    assert built.version == f"{MODEL}@v1+{built.digest[:8]}"
    assert built.digest == sha256_bytes((built.path / MANIFEST_NAME).read_bytes())
    for key in ("selfheal", "python", "pyod", "scikit-learn", "numpy"):
        assert m["environment"][key]
    files = set(m["files"])
    expected = {
        "detector/detector.json",
        "detector/models/default.skops",
        "compiled/policies.json",
        "rules/topology.yaml",
        "rules/targets.yaml",
        "diagnosis/kind_model.json",
    } | {f"rules/{p.name}" for p in RULES.glob("*.yaml") if p.name not in ("topology.yaml", "targets.yaml")}
    assert files == expected
    for rel, entry in m["files"].items():
        assert entry["sha256"] == sha256_bytes((built.path / rel).read_bytes())
    assert m["detector"]["name"] == "IForest" and m["detector"]["params"]["n_estimators"] == 30
    assert m["detector"]["feature_names"] == registry["pipelines"][0][0].feature_names
    compiled = json.loads((built.path / "compiled/policies.json").read_text())
    assert compiled["fingerprint"] == m["policies"]["fingerprint"]
    assert not list(built.path.parent.glob(".*building*")), "staging folder left behind"


def test_build_with_one_policy_file_and_default_output(registry: dict, tmp_path: Path) -> None:
    result = build_bundle(
        f"models:/{MODEL}/2",
        RULES / "memory_leak.yaml",
        tracking_uri=registry["uri"],
        bundles_dir=tmp_path / "bundles",
    )
    assert result.path == (tmp_path / "bundles" / f"{MODEL}-v2").resolve()
    assert result.manifest["model"]["alias"] is None
    assert sorted(p["name"] for p in result.manifest["policies"]["policies"]) == ["memory-leak"]
    assert {"rules/memory_leak.yaml", "rules/topology.yaml"} <= set(result.manifest["files"])
    with pytest.raises(BundleError, match="already exists"):
        build_bundle(
            f"models:/{MODEL}/2", RULES, tracking_uri=registry["uri"], bundles_dir=tmp_path / "bundles"
        )


def test_build_refuses_invalid_policies_and_bad_uris(registry: dict, tmp_path: Path) -> None:
    bad = tmp_path / "rules"
    shutil.copytree(RULES, bad)
    text = (bad / "memory_leak.yaml").read_text().replace("action: restart", "action: restrat", 1)
    (bad / "memory_leak.yaml").write_text(text)
    with pytest.raises(SpecError, match="restrat"):
        build_bundle(f"models:/{MODEL}@champion", bad, tracking_uri=registry["uri"], output=tmp_path / "b")
    with pytest.raises(BundleError, match="registry URI"):
        build_bundle("runs:/abc/model", RULES, tracking_uri=registry["uri"], output=tmp_path / "b")
    assert not (tmp_path / "b").exists()


def test_alias_moved_after_build_keeps_the_fixed_version(built: Any, registry: dict, tmp_path: Path) -> None:
    client = registry["client"]
    client.set_registered_model_alias(MODEL, "champion", "2")
    try:
        bundle = load_bundle(built.path)
        assert bundle.model_version == "1" and bundle.detector.config.model.params["n_estimators"] == 30
        v1, points = registry["pipelines"][0]
        assert bundle.detector.score_history(points).equals(v1.score_history(points))
        rebuilt = build_bundle(
            f"models:/{MODEL}@champion", RULES, tracking_uri=registry["uri"], output=tmp_path / "new"
        )
        assert rebuilt.manifest["model"]["version"] == "2"
        assert rebuilt.manifest["detector"]["params"]["n_estimators"] == 20
    finally:
        client.set_registered_model_alias(MODEL, "champion", "1")


# ----------------------------------------------------------------------------------- load, verify


def test_load_scores_like_the_fitted_detector(built: Any, registry: dict) -> None:
    bundle = load_bundle(built.path)
    fitted, points = registry["pipelines"][0]
    assert bundle.detector.score_history(points).equals(fitted.score_history(points))
    assert bundle.detector.threshold_ == fitted.threshold_
    assert bundle.version == built.version
    assert bundle.detector_version == f"{MODEL}/v1"
    assert bundle.policies.fingerprint == built.manifest["policies"]["fingerprint"]
    assert bundle.compiled.to_json() == (built.path / "compiled/policies.json").read_text()
    assert set(bundle.topology.services) >= {"gateway", "inference-a", "vector-db"}
    assert bundle.targets is not None


def test_verify_ok_and_digest_pinning(built: Any, capsys: pytest.CaptureFixture[str]) -> None:
    report = verify_bundle(built.path, strict=True)
    assert report.ok and report.errors == [] and report.warnings == []
    code, out, _ = _cli(capsys, "bundle", "verify", str(built.path), "--digest", built.digest, "--load")
    assert code == 0, out
    assert "verify: OK" in out and "probe scores reproduced" in out
    code, _, err = _cli(capsys, "bundle", "verify", str(built.path), "--digest", "0" * 64)
    assert code == 2
    assert "is not the pinned" in err


@pytest.mark.parametrize(
    "rel",
    [
        "detector/models/default.skops",
        "detector/detector.json",
        "rules/memory_leak.yaml",
        "compiled/policies.json",
    ],
)
def test_one_flipped_byte_fails_verify_and_load(
    copy: Path, rel: str, capsys: pytest.CaptureFixture[str]
) -> None:
    data = bytearray((copy / rel).read_bytes())
    data[len(data) // 2] ^= 0x01
    (copy / rel).write_bytes(bytes(data))
    code, _, err = _cli(capsys, "bundle", "verify", str(copy))
    assert code == 2
    assert f"error: {rel}: sha256 mismatch" in err
    with pytest.raises(BundleError, match=rel):
        load_bundle(copy)


def test_tampered_model_is_never_loaded(copy: Path, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    evil = pickle.dumps(_Evil(str(marker)))
    (copy / MODEL_FILE).write_bytes(evil)
    with pytest.raises(
        BundleError, match=r"refusing to load.*detector/models/default\.skops: sha256 mismatch"
    ):
        load_bundle(copy)
    assert not marker.exists()
    # the test's own evil pickle does run when unpickled: the absence above is meaningful
    pickle.loads(evil)
    assert marker.exists()


def test_a_code_running_model_with_rehashed_manifest_runs_no_code(
    copy: Path, tmp_path: Path, signing_key: Path
) -> None:
    """Even with the manifest rewritten to match and signed by a trusted key (a stolen key, no
    digest pinned), the model file is read as skops: a pickle is not a skops archive, and a skops
    archive naming other types is refused before anything is built."""
    import skops.io as sio

    marker = tmp_path / "pwned"
    manifest = json.loads((copy / MANIFEST_NAME).read_text())
    for payload, message in (
        (pickle.dumps(_Evil(str(marker))), "cannot be read as a saved detector"),
        (
            sio.dumps({"format": "selfheal-detector", "detector": _Evil(str(marker))}),
            "refusing to load types",
        ),
    ):
        (copy / MODEL_FILE).write_bytes(payload)
        _rehash(copy, manifest, MODEL_FILE)
        resign(copy, signing_key)
        assert verify_bundle(copy).ok  # the hashes match: only the loader stands in the way
        with pytest.raises(BundleError, match=message):
            load_bundle(copy)
        assert not marker.exists()


def test_every_file_is_covered_one_flipped_byte_at_a_time(copy: Path) -> None:
    listed = json.loads((copy / MANIFEST_NAME).read_text())["files"]
    for rel in listed:
        original = (copy / rel).read_bytes()
        damaged = bytearray(original)
        damaged[-1] ^= 0x20
        (copy / rel).write_bytes(bytes(damaged))
        assert verify_bundle(copy).errors == [f"{rel}: sha256 mismatch (modified since the bundle was built)"]
        (copy / rel).write_bytes(original)
    assert verify_bundle(copy).ok


def _rehash(folder: Path, manifest: dict[str, Any], *files: str) -> None:
    """What an attacker with write access does: recompute the hashes of what they changed."""
    for rel in files:
        data = (folder / rel).read_bytes()
        manifest["files"][rel] = {"sha256": sha256_bytes(data), "size": len(data)}
    (folder / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2, sort_keys=True))


def test_a_code_running_pickle_with_hashes_recomputed_is_refused_before_it_runs(
    copy: Path, built: Any, tmp_path: Path, signing_key: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Hashes alone cannot catch someone who also rewrites the manifest; the signature does."""
    marker = tmp_path / "pwned"
    evil = pickle.dumps(_Evil(str(marker)))
    (copy / MODEL_FILE).write_bytes(evil)
    _rehash(copy, json.loads((copy / MANIFEST_NAME).read_text()), MODEL_FILE)
    with pytest.raises(BundleError, match=r"does not match manifest\.json.*refusing to load"):
        load_bundle(copy)
    code, _, err = _cli(capsys, "bundle", "verify", str(copy), "--load")
    assert code == 2 and "changed after signing" in err
    (copy / "manifest.sig").unlink()  # unsigned
    with pytest.raises(BundleError, match="the bundle is not signed; refusing"):
        load_bundle(copy)
    other = tmp_path / "other.key"
    generate_key(other)
    resign(copy, other)  # signed, by a key nobody pinned
    with pytest.raises(BundleError, match="which is not trusted here"):
        load_bundle(copy)
    resign(copy, signing_key)  # signed by a trusted key: only the pinned digest stops it now
    with pytest.raises(BundleError, match="is not the pinned"):
        load_bundle(copy, digest=built.digest)
    assert not marker.exists()
    pickle.loads(evil)  # the pickle does run code when unpickled: the absence above is meaningful
    assert marker.exists()


def test_a_rules_rewrite_that_drops_an_approval_fails_verification(copy: Path, built: Any) -> None:
    from engine.policy import compile_policies, load_policies

    rules = copy / "rules" / "bad_deploy.yaml"
    text = rules.read_text()
    assert "risk: high" in text
    rules.write_text(text.replace("risk: high", "risk: low"))
    lowered = load_policies(copy / "rules")
    assert not any(r.requires_approval for r in lowered.rules if r.policy.policy == "bad-deploy")
    (copy / "compiled/policies.json").write_text(compile_policies(lowered).to_json())
    manifest = json.loads((copy / MANIFEST_NAME).read_text())
    manifest["policies"]["fingerprint"] = lowered.fingerprint
    for policy in manifest["policies"]["policies"]:
        for rule in policy["rules"]:
            rule["risk"], rule["approval"] = "low", False
    _rehash(copy, manifest, "rules/bad_deploy.yaml", "compiled/policies.json")
    report = verify_bundle(copy)
    assert [e for e in report.errors if "manifest.sig" in e] == report.errors != []
    with pytest.raises(BundleError, match="changed after signing"):
        load_bundle(copy)


@pytest.mark.parametrize(
    ("section", "key", "value"),
    [("detector", "threshold", 0.999999), ("model", "name", "impostor"), ("environment", "pyod", "9.9")],
)
def test_the_signature_covers_the_manifests_metadata(copy: Path, section: str, key: str, value: Any) -> None:
    manifest = json.loads((copy / MANIFEST_NAME).read_text())
    manifest[section][key] = value
    (copy / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2, sort_keys=True))
    with pytest.raises(BundleError, match="changed after signing"):
        load_bundle(copy)


def test_the_engine_trusts_configured_keys_and_runs_unsigned_bundles_only_when_allowed(
    built: Any,
    copy: Path,
    signing_key: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from engine.bundle.runtime import load_bundle_components
    from engine.bundle.signing import Trust, public_path
    from engine.runtime.config import EngineSettings

    monkeypatch.delenv(TRUST_ENV)  # nothing trusted: even the genuine bundle is refused
    with pytest.raises(BundleError, match="which is not trusted here"):
        load_bundle_components(str(built.path), EngineSettings())
    trusted = EngineSettings(trusted_keys=[public_path(signing_key)])
    assert load_bundle_components(str(built.path), trusted).bundle_version == built.version
    (copy / "manifest.sig").unlink()
    with pytest.raises(BundleError, match="not signed"):
        load_bundle(copy, trust=Trust())
    with caplog.at_level("WARNING"):
        components = load_bundle_components(str(copy), EngineSettings(allow_unsigned=True))
    assert components.bundle_version == built.version
    assert any("UNTRUSTED BUNDLE LOADED" in r.getMessage() for r in caplog.records)


class _Evil:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (Path(self.path),))


def test_extra_missing_and_symlinked_files_fail(copy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (copy / "rules" / "extra.yaml").write_text("policy: sneaky\n")
    (copy / "rules" / "targets.yaml").unlink()
    os.symlink(copy / "rules" / "topology.yaml", copy / "detector" / "link.yaml")
    report = verify_bundle(copy)
    assert not report.ok
    text = "\n".join(report.errors)
    assert "rules/extra.yaml: not listed in the manifest" in text
    assert "rules/targets.yaml: missing" in text
    assert "detector/link.yaml: not listed in the manifest" in text
    code, _, err = _cli(capsys, "bundle", "verify", str(copy))
    assert code == 2 and "rules/extra.yaml" in err
    with pytest.raises(BundleError):
        load_bundle(copy)


def test_manifest_paths_cannot_escape_the_bundle(copy: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside.txt"
    outside.write_text("x")
    manifest = json.loads((copy / MANIFEST_NAME).read_text())
    manifest["files"]["../outside.txt"] = {"sha256": sha256_bytes(b"x"), "size": 1}
    (copy / MANIFEST_NAME).write_text(json.dumps(manifest))
    report = verify_bundle(copy)
    assert any("../outside.txt: path not allowed" in e for e in report.errors)


def test_environment_rules(copy: Path, signing_key: Path) -> None:
    manifest = json.loads((copy / MANIFEST_NAME).read_text())
    env = manifest["environment"]
    env["scikit-learn"] = "0.0.1"
    (copy / MANIFEST_NAME).write_text(json.dumps(manifest))
    resign(copy, signing_key)
    report = verify_bundle(copy)
    assert report.ok and any("scikit-learn 0.0.1 built this bundle" in w for w in report.warnings)
    assert not verify_bundle(copy, strict=True).ok
    env["python"] = "3.9.1"
    env["numpy"] = "0.9.0"
    (copy / MANIFEST_NAME).write_text(json.dumps(manifest))
    resign(copy, signing_key)
    errors = "\n".join(verify_bundle(copy).errors)
    assert "Python 3.9.1 built this bundle" in errors and "numpy 0.9.0" in errors
    with pytest.raises(BundleError, match=r"Python 3\.9\.1"):
        load_bundle(copy)


def test_probe_mismatch_refuses_a_detector_that_scores_differently(copy: Path, signing_key: Path) -> None:
    manifest = json.loads((copy / MANIFEST_NAME).read_text())
    manifest["detector"]["probe"]["default"]["raw"][3] += 0.5
    (copy / MANIFEST_NAME).write_text(json.dumps(manifest))
    resign(copy, signing_key)
    assert verify_bundle(copy).ok  # static checks cannot see it
    with pytest.raises(BundleError, match="probe rows differ"):
        load_bundle(copy)


@pytest.mark.slow  # a fresh interpreter importing pyod, sklearn, polars and durable-rules
def test_bundle_loads_and_scores_without_mlflow(built: Any, registry: dict) -> None:
    fitted, _ = registry["pipelines"][0]
    row = [[130.0, 1.5, 0.52]]
    expected = float(fitted.model_scores("default", np.array(row))[1][0])
    script = textwrap.dedent(
        f"""
        import sys
        sys.modules["mlflow"] = None  # any `import mlflow` now raises ImportError
        from engine.bundle import load_bundle
        import engine.bundle.runtime  # the engine's loader must not need MLflow either
        b = load_bundle({str(built.path)!r})
        print(repr(float(b.detector.model_scores("default", {row!r})[1][0])))
        assert not any(m == "mlflow" or m.startswith("mlflow.") for m in sys.modules if sys.modules[m])
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert float(done.stdout.strip().splitlines()[-1]) == pytest.approx(expected, abs=1e-12)


def test_runtime_loader_builds_engine_components(built: Any) -> None:
    from engine.runtime.components import load_components

    components = load_components(str(built.path), None)
    assert components.bundle_version == built.version
    assert components.detector_version == f"{MODEL}/v1"
    assert components.replicas("inference-a") == 4
    assert components.policies.version == built.manifest["policies"]["fingerprint"][:12]
    assert components.diagnosis.version == built.manifest["diagnosis"]["version"]


def test_the_engine_diagnoses_with_the_bundles_model(
    registry: dict, signing_key: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from engine.diagnosis import KindModel, shipped_model, shipped_model_path
    from engine.runtime.components import load_components

    raw = json.loads(shipped_model_path().read_text())
    raw["threshold"][0] += 0.25  # another model: its first question moves
    retrained = tmp_path / "retrained.json"
    retrained.write_text(json.dumps(raw))
    mine = KindModel.load(retrained).version
    assert mine != shipped_model().version
    result = build_bundle(
        f"models:/{MODEL}/1",
        RULES,
        tracking_uri=registry["uri"],
        output=tmp_path / "b",
        signing_key=signing_key,
        diagnosis=retrained,
    )
    assert result.manifest["diagnosis"]["version"] == mine
    assert load_components(str(result.path), None).diagnosis.version == mine
    code, out, _ = _cli(capsys, "bundle", "inspect", str(result.path))
    assert code == 0 and f"diagnosis   {mine} (diagnosis/kind_model.json)" in out
    raw["left"] = raw["left"][:-1]  # a model whose arrays do not fit: the build refuses it
    retrained.write_text(json.dumps(raw))
    with pytest.raises(ConfigError, match="arrays do not fit"):
        build_bundle(
            f"models:/{MODEL}/1",
            RULES,
            tracking_uri=registry["uri"],
            output=tmp_path / "c",
            diagnosis=retrained,
        )


def test_a_bundle_without_a_diagnosis_model_runs_the_shipped_one_and_says_so(
    copy: Path, signing_key: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from engine.diagnosis import shipped_model

    manifest = json.loads((copy / MANIFEST_NAME).read_text())
    del manifest["diagnosis"], manifest["files"]["diagnosis/kind_model.json"]
    shutil.rmtree(copy / "diagnosis")
    (copy / MANIFEST_NAME).write_text(json.dumps(manifest))
    resign(copy, signing_key)
    with caplog.at_level("WARNING", logger="engine.bundle.load"):
        bundle = load_bundle(copy)
    assert bundle.diagnosis is shipped_model()
    assert any("built before bundles carried their diagnosis model" in w for w in bundle.warnings)
    assert "shipped model" in caplog.text


def test_a_bundle_whose_diagnosis_model_is_of_an_older_format_is_refused_with_the_fix(
    copy: Path, signing_key: Path
) -> None:
    """A bundle built before the forest carries a one-tree model (format 1): loading it fails and
    says to rebuild the bundle, rather than diagnosing with a model it cannot read."""
    old = {"format": "selfheal-diagnosis/1", "classes": ["unknown"], "metrics": [], "feature": [-2]}
    data = json.dumps(old).encode()
    (copy / "diagnosis" / "kind_model.json").write_bytes(data)
    manifest = json.loads((copy / MANIFEST_NAME).read_text())
    manifest["files"]["diagnosis/kind_model.json"] = {"sha256": sha256_bytes(data), "size": len(data)}
    (copy / MANIFEST_NAME).write_text(json.dumps(manifest))
    resign(copy, signing_key)
    with pytest.raises(BundleError, match="selfheal-diagnosis/1") as caught:
        load_bundle(copy)
    assert "selfheal bundle build" in caught.value.hint


# ---------------------------------------------------------------------------------------- inspect


def test_inspect_prints_what_is_inside(built: Any, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _cli(capsys, "bundle", "inspect", str(built.path))
    assert code == 0
    assert f"bundle      {built.version}" in out
    assert "integrity   OK" in out
    assert f"resolved from models:/{MODEL}@champion" in out
    assert "detector    IForest" in out and "threshold   " in out
    assert "latency_p99_ms__zscore_6" in out
    assert "memory-leak v" in out and "- memory-leak/" in out
    assert "targets     rules/targets.yaml" in out
    assert "scikit-learn" in out and "pyod" in out
    code, out, _ = _cli(capsys, "bundle", "inspect", str(built.path), "--json")
    doc = json.loads(out)
    assert doc["ok"] is True and doc["manifest"]["model"]["version"] == "1"


def test_cli_build_default_folder_under_home(
    registry: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    home = tmp_path / "home"
    args = ["--home", str(home), "bundle", "build", "--model", f"models:/{MODEL}@champion"]
    args += ["--rules", str(RULES), "--tracking-uri", registry["uri"]]
    code, out, err = _cli(capsys, *args)
    assert code == 0, err
    assert (home / "bundles" / f"{MODEL}-v1" / MANIFEST_NAME).is_file()
    assert "digest" in out and "(alias champion)" in out
    code, _, err = _cli(capsys, *args)
    assert code == 2 and "already exists" in err


def test_force_replaces_only_bundles(registry: dict, built: Any, tmp_path: Path, signing_key: Path) -> None:
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    with pytest.raises(BundleError, match="not a bundle"):
        build_bundle(f"models:/{MODEL}/1", RULES, tracking_uri=registry["uri"], output=precious, force=True)
    assert (precious / "notes.txt").read_text() == "keep me"
    again = Path(shutil.copytree(built.path, tmp_path / "again"))
    (again / "stale.txt").write_text("old")
    result = build_bundle(
        f"models:/{MODEL}/1",
        RULES,
        tracking_uri=registry["uri"],
        output=again,
        force=True,
        signing_key=signing_key,
    )
    assert not (again / "stale.txt").exists() and verify_bundle(result.path).ok


def test_model_uri_parsing_and_credentials_redaction() -> None:
    from engine.bundle.build import ModelRef, redact_uri

    assert ModelRef.parse("models:/m@champion") == ModelRef("m", "champion", None)
    assert ModelRef.parse("models:/m/12") == ModelRef("m", None, "12")
    for bad in ("models:/m", "models:/m/latest", "runs:/x/model", "models:/@x"):
        with pytest.raises(BundleError, match="registry URI"):
            ModelRef.parse(bad)
    assert redact_uri("https://bob:s3cret@mlflow.example/") == "https://***@mlflow.example/"
    assert redact_uri("sqlite:////tmp/m.db") == "sqlite:////tmp/m.db"


def test_not_a_bundle(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _cli(capsys, "bundle", "verify", str(tmp_path))
    assert code == 2 and "no manifest" in err


# ------------------------------------------------------------------ malformed manifests, read once


@pytest.mark.parametrize(
    ("section", "key", "value", "field"),
    [
        ("environment", "python", 3.11, "environment.python"),
        ("environment", "numpy", None, "environment.numpy"),
        ("detector", "threshold", "high", "detector.threshold"),
        ("detector", "feature_names", "a,b", "detector.feature_names"),
        ("model", "name", ["x"], "model.name"),
        ("files", "detector/detector.json", "deadbeef", "files.detector/detector.json"),
        ("policies", "policies", {"a": 1}, "policies.policies"),
    ],
)
def test_a_malformed_manifest_is_a_bundle_error_naming_the_field(
    copy: Path, section: str, key: str, value: Any, field: str, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = json.loads((copy / MANIFEST_NAME).read_text())
    manifest[section][key] = value
    (copy / MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=f"malformed manifest: {re.escape(field)}: "):
        verify_bundle(copy)
    for command in ("verify", "inspect"):
        code, _, err = _cli(capsys, "bundle", command, str(copy))
        assert code == 2 and f"{field}: " in err and "Traceback" not in err, err


def test_load_parses_policies_and_targets_from_the_verified_bytes(built: Any) -> None:
    """Every bundle file is opened once (to hash it): nothing is re-read after verification."""
    opened: list[str] = []

    def audit(event: str, args: tuple[Any, ...]) -> None:
        if event == "open" and watching and isinstance(args[0], str | Path):
            opened.append(str(args[0]))

    watching = False
    sys.addaudithook(audit)  # audit hooks cannot be removed; `watching` scopes this one
    watching = True
    try:
        bundle = load_bundle(built.path)
    finally:
        watching = False
    root = str(built.path)
    for rel in ("rules/targets.yaml", "rules/topology.yaml", "rules/memory_leak.yaml"):
        assert opened.count(f"{root}/{rel}") == 1, (rel, [p for p in opened if p.startswith(root)])
    assert bundle.targets is not None and bundle.targets.defaults.backend == "simulator"
    assert bundle.policies.fingerprint == built.manifest["policies"]["fingerprint"]


def test_keygen_sign_verify_and_pin_from_the_command_line(
    copy: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    home = tmp_path / "home"
    (copy / "manifest.sig").unlink()
    code, _, err = _cli(capsys, "--home", str(home), "bundle", "verify", str(copy))
    assert code == 2 and "not signed" in err and "bundle sign" in err
    code, out, _ = _cli(capsys, "--home", str(home), "bundle", "keygen")
    key = home / "keys" / "bundle-signing.key"
    assert code == 0 and key.stat().st_mode & 0o077 == 0 and "pin it" in out
    code, _, err = _cli(capsys, "--home", str(home), "bundle", "keygen")
    assert code == 2 and "already exists" in err  # never silently replaced
    code, out, _ = _cli(capsys, "--home", str(home), "bundle", "sign", str(copy))
    assert code == 0 and "signed" in out
    code, _, err = _cli(capsys, "--home", str(home), "bundle", "verify", str(copy))
    assert code == 2 and "not trusted here" in err
    pub = f"{key}.pub"
    code, out, _ = _cli(capsys, "--home", str(home), "bundle", "verify", str(copy), "--trusted-key", pub)
    assert code == 0 and "signed by trusted key" in out
    (home / "keys" / "trusted").mkdir()
    shutil.copy(pub, home / "keys" / "trusted" / "release.pub")  # pinned in the home
    code, out, _ = _cli(capsys, "--home", str(home), "bundle", "inspect", str(copy))
    assert code == 0 and "signature   trusted" in out
    (copy / "rules" / "topology.yaml").write_text("services: {}\n")
    code, _, err = _cli(capsys, "--home", str(home), "bundle", "sign", str(copy))
    assert code == 2 and "sign: refused" in err  # a damaged bundle is never signed


def test_a_campaign_trusts_the_bundles_its_home_trusts(
    copy: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`chaos campaign --bundle` verifies against the home's pinned keys, as `chaos run` does: a
    bundle signed by a key only the home trusts was refused ("not trusted here") before."""
    from engine.bundle.signing import trust_key

    home, stranger = tmp_path / "home", tmp_path / "stranger"
    public, _ = generate_key(tmp_path / "team.key")
    resign(copy, tmp_path / "team.key")
    trust_key(public, Home.resolve(home))
    args = ["chaos", "campaign", "--n", "2", "--seed", "3", "--dry-run", "--bundle", str(copy)]
    code, out, err = _cli(capsys, "--home", str(home), *args, "--out", str(tmp_path / "c1"))
    assert code == 0 and "2 experiments written and valid" in out, err
    code, _, err = _cli(capsys, "--home", str(stranger), *args, "--out", str(tmp_path / "c2"))
    assert code == 2 and "not trusted" in err
