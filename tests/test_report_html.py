"""The chaos report: verdicts from a run record, the text summary, and the HTML page in a real browser.

The browser test opens the page in Debian's headless Chromium (no download, no network) and reads
back what the page's own script measured after layout: timeline lanes with a drawn size and table
rows. It skips, saying why, where /usr/bin/chromium is not installed
(``apt-get install -y chromium``).
"""

from __future__ import annotations

import copy
import re
import subprocess
from pathlib import Path
from typing import Any

from conftest import CHROMIUM, needs_chromium, rendered_dom

from engine.chaos.experiment import load_experiment
from engine.chaos.report import render_html, render_text, write_report
from engine.chaos.results import analyse

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments" / "chaos"
T0 = 1_768_294_800.0


def record() -> dict[str, Any]:
    """What ChaosRun.run() returns for a memory-leak run healed by one verified restart."""
    exp = load_experiment(EXPERIMENTS / "memory_leak.yaml").model_dump(mode="json")
    ticks = [T0 - 600 + 10 * i for i in range(420)]
    memory = [[t, 0.62 + (0.3 * (t - T0 - 60) / 900 if T0 + 60 <= t < T0 + 960 else 0.0)] for t in ticks]
    ok = [{"probe": "inference-a-memory", "value": 0.63, "tolerance": "<= 0.8", "ok": True, "ts": T0}]
    return {
        "name": "memory_leak",
        "experiment": exp,
        "speed": 720.0,
        "started": T0,
        "ended": T0 + 3600,
        "before": ok,
        "after": ok,
        "aborted": None,
        "injected": {"leak": {"fault_id": "f1-memory_leak-inference-a", "at": T0 + 60}},
        "faults": [
            {
                "fault_id": "f1-memory_leak-inference-a",
                "kind": "memory_leak",
                "service": "inference-a",
                "start": T0 + 60,
                "end": T0 + 960,
                "recovery_s": 0.0,
                "cleared_by": "restart@1768295700",
            }
        ],
        "admin": [],
        "notes": [
            {"ts": T0 + 60, "kind": "fault", "name": "leak", "service": "inference-a"},
            *(
                {"ts": T0 + 300 + 60 * i, "kind": "anomaly", "service": "inference-a", "score": 0.999}
                for i in range(10)
            ),
        ],
        "journal": {
            "decisions": [
                {
                    "id": "dec-1",
                    "service": "inference-a",
                    "target": "inference-a",
                    "action": "restart",
                    "rule": "memory-leak/restart-leaking-service",
                    "risk": "medium",
                    "status": "verified",
                    "ts_pts": T0 + 880,
                }
            ],
            "executions": [
                {
                    "id": "exe-1",
                    "decision_id": "dec-1",
                    "kind": "action",
                    "action": "restart",
                    "target": "inference-a",
                    "status": "succeeded",
                    "started_ts_pts": T0 + 900,
                }
            ],
            "verifications": [{"execution_id": "exe-1", "status": "verified", "finished_ts_pts": T0 + 1100}],
            "approvals": [],
            "events": [],
        },
        "threshold": 0.995,
        "detector": "PCA",
        "bundle_version": "test",
        "series": {
            "inference-a|memory_util": memory,
            "gateway|error_rate": [[t, 0.006] for t in ticks],
        },
        "scores": {"inference-a": [[t, 0.3 if t < T0 + 300 else 0.999] for t in ticks[::6]]},
    }


def test_a_healed_fault_passes_with_its_detect_and_recover_times() -> None:
    result = analyse(record())
    assert result.passed and result.reasons == []
    (fault,) = result.faults
    assert fault.ttd_s == 240.0 and fault.ttr_s == 900.0
    assert fault.actions[0]["verification"] == "verified"
    assert result.metrics()["ttd_s.leak"] == 240.0
    text = render_text(result)
    assert text.startswith("memory_leak: PASSED") and "TTD  4.0 min  TTR 15.0 min" in text


def test_missing_unexpected_and_unverified_actions_fail_the_run() -> None:
    rec = record()
    rec["journal"]["verifications"][0]["status"] = "failed"
    extra = copy.deepcopy(rec["journal"]["decisions"][0]) | {
        "id": "dec-2",
        "target": "gateway",
        "service": "gateway",
    }
    rec["journal"]["decisions"].append(extra)
    rec["journal"]["executions"].append(
        {
            "id": "exe-2",
            "decision_id": "dec-2",
            "kind": "action",
            "action": "restart",
            "target": "gateway",
            "status": "succeeded",
            "started_ts_pts": T0 + 950,
        }
    )
    result = analyse(rec)
    assert result.verdict == "failed"
    assert "leak: restart on inference-a was not verified (failed)" in result.reasons
    assert [a["target"] for a in result.unexpected] == ["gateway"]
    rec["journal"]["executions"] = []
    assert "leak: no restart on inference-a was executed" in analyse(rec).reasons


def test_an_expectation_may_name_several_remedies_and_tells_remedied_from_verified() -> None:
    rec = record()
    rec["experiment"]["expect"][0]["action"] = ["scale", "restart"]  # any one of them is the remedy
    result = analyse(rec)
    assert result.passed, result.reasons
    (expectation,) = result.faults[0].expectations
    assert expectation["met"] and expectation["remedied"]
    rec["journal"]["verifications"][0]["status"] = "failed"
    (expectation,) = analyse(rec).faults[0].expectations
    assert not expectation["met"] and expectation["remedied"]  # the cause was acted on, not verified
    assert expectation["why"] == "restart on inference-a was not verified (failed)"
    rec["experiment"]["expect"][0]["action"] = ["scale", "refresh_index"]
    (expectation,) = analyse(rec).faults[0].expectations
    assert (
        not expectation["remedied"]
        and expectation["why"] == "no scale or refresh_index on inference-a was executed"
    )


def test_the_page_is_self_contained() -> None:
    page = render_html([analyse(record())])
    assert not re.search(r"""(src|href)=["']https?://""", page), "no CDN: the network is closed"
    assert page.count('<svg class="lane"') == 2 and 'id="faults-table"' in page


@needs_chromium
def test_timeline_and_table_render_in_headless_chromium(tmp_path: Path) -> None:
    page, _ = write_report([analyse(record())], tmp_path)
    dom = rendered_dom(page, tmp_path / "profile")
    assert 'data-lanes-rendered="2"' in dom, dom[:500]
    assert 'data-table-rows="2"' in dom  # one row in the overview, one fault row in the run's table
    assert "restart (verified)" in dom and "4.0 min" in dom
    shot = tmp_path / "report.png"
    subprocess.run(
        [
            str(CHROMIUM),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            f"--user-data-dir={tmp_path / 'profile2'}",
            f"--screenshot={shot}",
            "--window-size=1200,1600",
            page.as_uri(),
        ],
        capture_output=True,
        timeout=60,
        check=True,
    )
    assert shot.stat().st_size > 20_000  # a blank page compresses to a few kB
