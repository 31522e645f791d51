"""FeatureSpec: strict validation with file, path and "did you mean" hints; deterministic names."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from engine.errors import SpecError
from engine.features import FeatureSpec, parse_duration

GOOD = {
    "interval": "10s",
    "lateness": "30s",
    "metrics": {
        "latency_p99_ms": {"transforms": ["raw", {"kind": "zscore", "window": 30}]},
        "error_rate": {
            "aggregation": "max",
            "transforms": [
                "diff",
                {"kind": "quantile", "window": 30, "q": 0.95},
                {"kind": "quantile", "window": 60, "q": 0.999},
                {"kind": "ratio", "window": 12},
                {"kind": "mean", "window": 6},
                {"kind": "std", "window": 6},
                {"kind": "diff", "lag": 6, "name": "diff_1m"},
            ],
        },
    },
}


def _problems(data: dict) -> list[str]:
    with pytest.raises(SpecError) as info:
        FeatureSpec.parse(data, source="spec.yaml")
    return [str(p) for p in info.value.problems]


def test_feature_names_are_deterministic_and_in_declaration_order() -> None:
    spec = FeatureSpec.model_validate(GOOD)
    assert spec.feature_names == [
        "latency_p99_ms__raw",
        "latency_p99_ms__zscore_30",
        "error_rate__diff_1",
        "error_rate__q95_30",
        "error_rate__q99p9_60",
        "error_rate__ratio_12",
        "error_rate__mean_6",
        "error_rate__std_6",
        "error_rate__diff_1m",
    ]
    assert spec.interval == 10.0 and spec.lateness == 30.0 and spec.interval_us == 10_000_000
    assert spec.aggregation_of("error_rate") == "max"
    assert spec.aggregation_of("latency_p99_ms") == "mean"  # the default
    assert spec.metrics["latency_p99_ms"].span == 31  # zscore looks at 30 buckets before the current


def test_dump_round_trips() -> None:
    spec = FeatureSpec.model_validate(GOOD)
    again = FeatureSpec.model_validate(spec.model_dump(mode="json"))
    assert again == spec
    assert again.feature_names == spec.feature_names


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("10s", 10.0),
        ("1m", 60.0),
        ("5min", 300.0),
        ("500ms", 0.5),
        ("1h", 3600.0),
        ("1d", 86400.0),
        (15, 15.0),
    ],
)
def test_durations(text: str | int, seconds: float) -> None:
    assert parse_duration(text) == seconds


def test_unknown_top_level_key_names_the_path_and_suggests() -> None:
    problems = _problems({**GOOD, "intervall": "10s"})
    assert problems == ["spec.yaml: unknown key 'intervall' (did you mean 'interval'?)"]


def test_unknown_transform_parameter_suggests_the_transforms_own_key() -> None:
    data = {"interval": "10s", "metrics": {"lat": {"transforms": ["raw", {"kind": "zscore", "windw": 30}]}}}
    problems = _problems(data)
    assert "spec.yaml: metrics.lat.transforms[1]: unknown key 'windw' (did you mean 'window'?)" in problems
    assert not any("missing" in p for p in problems)  # the misspelled key stands for 'window'


def test_unknown_kind_and_aggregation_suggest_close_names() -> None:
    data = {
        "interval": "10s",
        "aggregation": "maen",
        "metrics": {"lat": {"transforms": [{"kind": "zscor", "window": 3}]}},
    }
    problems = _problems(data)
    assert any(p.startswith("spec.yaml: aggregation:") and "(did you mean 'mean'?)" in p for p in problems), (
        problems
    )
    assert "spec.yaml: metrics.lat.transforms[0]: unknown kind 'zscor' (did you mean 'zscore'?)" in problems


def test_bad_duration_and_out_of_range_values() -> None:
    data = {
        "interval": "10 sec",
        "lateness": "-5s",
        "metrics": {"lat": {"transforms": [{"kind": "quantile", "window": 0, "q": 1.5}]}},
    }
    problems = _problems(data)
    joined = "\n".join(problems)
    assert "spec.yaml: interval: '10 sec' is not a duration" in joined
    assert "spec.yaml: lateness:" in joined
    assert "spec.yaml: metrics.lat.transforms[0].window: Input should be greater than or equal to 1" in joined
    assert "spec.yaml: metrics.lat.transforms[0].q: Input should be less than or equal to 1" in joined
    assert len(problems) == 4  # every problem at once, not just the first


def test_zero_interval_and_sub_microsecond_durations_fail() -> None:
    assert any("greater than 0" in p for p in _problems({**GOOD, "interval": 0}))
    assert any("microsecond" in p for p in _problems({**GOOD, "interval": 1e-7}))


def test_duplicate_feature_names_fail_with_both_places() -> None:
    data = {"interval": "10s", "metrics": {"lat": {"transforms": ["raw", {"kind": "raw"}]}}}
    (problem,) = _problems(data)
    assert (
        "metrics.lat.transforms[1] repeats feature 'lat__raw' (first at metrics.lat.transforms[0])" in problem
    )
    assert "`name`" in problem


def test_empty_metrics_and_transforms_fail() -> None:
    assert any(p.startswith("spec.yaml: metrics:") for p in _problems({"interval": "10s", "metrics": {}}))
    problems = _problems({"interval": "10s", "metrics": {"lat": {"transforms": []}}})
    assert any(p.startswith("spec.yaml: metrics.lat.transforms:") for p in problems)


def test_missing_kind_is_explained() -> None:
    (problem,) = _problems({"interval": "10s", "metrics": {"lat": {"transforms": [{"window": 3}]}}})
    assert problem.startswith(
        "spec.yaml: metrics.lat.transforms[0]: missing required key 'kind' (one of: diff, mean,"
    )


def test_prefix_places_an_embedded_spec_in_its_document() -> None:
    with pytest.raises(SpecError) as info:
        FeatureSpec.parse({**GOOD, "lateness": "soon"}, source="exp.yaml", prefix="features")
    assert str(info.value.problems[0]).startswith("exp.yaml: features.lateness: 'soon' is not a duration")


def test_model_validate_stays_pydantic() -> None:
    with pytest.raises(ValidationError):
        FeatureSpec.model_validate({"interval": "10s"})


def test_from_yaml_names_the_file(tmp_path: Path) -> None:
    good = tmp_path / "features.yaml"
    good.write_text(
        "interval: 1m\nmetrics:\n  cpu_util:\n    transforms: [raw, {kind: mean, window: 5}]\n",
        encoding="utf-8",
    )
    assert FeatureSpec.from_yaml(good).feature_names == ["cpu_util__raw", "cpu_util__mean_5"]

    bad = tmp_path / "bad.yaml"
    bad.write_text("interval: 1m\nmetrics:\n  cpu_util:\n    transfroms: [raw]\n", encoding="utf-8")
    with pytest.raises(SpecError) as info:
        FeatureSpec.from_yaml(bad)
    text = str(info.value)
    assert f"{bad}: metrics.cpu_util: unknown key 'transfroms' (did you mean 'transforms'?)" in text

    broken = tmp_path / "broken.yaml"
    broken.write_text("interval: 1m\nmetrics: [\n", encoding="utf-8")
    with pytest.raises(SpecError, match=r"broken\.yaml: line \d+, column \d+: not valid YAML"):
        FeatureSpec.from_yaml(broken)

    with pytest.raises(SpecError, match="no such file"):
        FeatureSpec.from_yaml(tmp_path / "absent.yaml")

    listing = tmp_path / "list.yaml"
    listing.write_text("- interval\n", encoding="utf-8")
    with pytest.raises(SpecError, match="expected a mapping of keys, got list"):
        FeatureSpec.from_yaml(listing)


def test_a_metric_written_as_a_bare_list_shows_the_right_shape() -> None:
    (problem,) = _problems({"interval": "10s", "metrics": {"lat": ["raw"]}})
    assert problem.startswith("spec.yaml: metrics.lat: ")
    assert "(write a mapping of aggregation, transforms)" in problem


def test_public_face_is_the_contract() -> None:
    import engine.features as features

    for name in ("FeatureSpec", "batch_features", "OnlineFeatures", "FeatureRow"):
        assert name in features.__all__ and hasattr(features, name)
    assert features.FeatureRow._fields == ("ts", "service", "values", "window_start", "window_end")


def test_spec_pickles_with_its_feature_names() -> None:
    import pickle

    spec = FeatureSpec.model_validate(GOOD)
    again = pickle.loads(pickle.dumps(spec))
    assert again == spec and again.feature_names == spec.feature_names
