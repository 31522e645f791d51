"""One duration grammar: engine.durations, and the policy and feature-spec fields that use it."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from engine.durations import parse_duration
from engine.features import FeatureSpec
from engine.features import parse_duration as feature_duration
from engine.policy._util import parse_duration as policy_duration
from engine.policy.model import Verify


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90", 90.0),
        (90, 90.0),
        (1.5, 1.5),
        ("30s", 30.0),
        ("15m", 900.0),
        ("5min", 300.0),
        ("2h", 7200.0),
        ("1d", 86400.0),
        ("500ms", 0.5),
        ("250us", 0.00025),
        ("1h30m", 5400.0),
        ("2m30s", 150.0),
        ("1d 12h", 129600.0),
        (" 1h 0m 5s ", 3605.0),
        (".5s", 0.5),
    ],
)
def test_accepted_forms(text: str | float, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("inf", "not finite"),
        (float("inf"), "not finite"),
        (float("nan"), "not finite"),
        ("nan", "not finite"),
        ("9" * 400, "not finite"),
        ("-5s", "negative"),
        (-1, "negative"),
        ("30m1h", "largest first"),
        ("1h1h", "largest first"),
        ("1x", "not a duration"),
        ("", "not a duration"),
        ("s", "not a duration"),
        (True, "not a duration"),
        (None, "not a duration"),
        ([1], "not a duration"),
    ],
)
def test_refused_forms_say_why(value: object, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        parse_duration(value)


def test_zero_is_refused_only_when_the_caller_says_so() -> None:
    assert parse_duration("0s") == 0.0
    with pytest.raises(ValueError, match="deadline '0s' is zero; it must be greater than 0"):
        parse_duration("0s", allow_zero=False, what="deadline")


def test_policies_and_feature_specs_share_the_grammar() -> None:
    # before: policies refused '1d' and '10', feature specs refused '1h30m'
    for text in ("1d", "10", "1h30m", "500ms"):
        assert policy_duration(text) == feature_duration(text) == parse_duration(text)
    assert Verify.model_validate(
        {"steady_state": {"score_below": 0.5}, "deadline": "1h30m"}
    ).deadline == pytest.approx(5400.0)
    assert Verify.model_validate({"steady_state": {"score_below": 0.5}, "deadline": "1d"}).deadline == 86400.0
    spec = FeatureSpec.model_validate({"interval": "1m30s", "metrics": {"m": {"transforms": ["raw"]}}})
    assert spec.interval == 90.0


def test_policy_durations_refuse_zero_and_infinity_feature_lateness_allows_zero() -> None:
    for bad in ("0s", "inf", float("inf"), "-1m"):
        with pytest.raises(ValidationError):
            Verify.model_validate({"steady_state": {"score_below": 0.5}, "deadline": bad})
    spec = FeatureSpec.model_validate(
        {"interval": "10s", "lateness": "0s", "metrics": {"m": {"transforms": ["raw"]}}}
    )
    assert spec.lateness == 0.0
    with pytest.raises(ValueError, match="not finite"):
        feature_duration("inf")


@given(
    st.integers(min_value=0, max_value=30),
    st.integers(min_value=0, max_value=23),
    st.integers(min_value=0, max_value=59),
    st.integers(min_value=0, max_value=59),
)
def test_compound_forms_add_up(d: int, h: int, m: int, s: int) -> None:
    text = f"{d}d{h}h{m}m{s}s"
    seconds = parse_duration(text)
    assert math.isclose(seconds, d * 86400 + h * 3600 + m * 60 + s)
    assert parse_duration(str(int(seconds))) == seconds
