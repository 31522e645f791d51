"""engine.plugins.load_entry_points: built-ins first, then entry points; a broken plugin is skipped."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import pytest

from engine.plugins import load_entry_points

GROUP = "selfheal.test_plugins"


def _distribution(root: Path) -> None:
    """A real installed-looking distribution (dist-info on sys.path) declaring two entry points."""
    info = root / "selfheal_test_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: selfheal-test-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        f"[{GROUP}]\ngood = selfheal_test_plugin_good\nbroken = selfheal_test_plugin_broken\n"
    )
    (root / "selfheal_test_plugin_good.py").write_text("LOADED = True\n")
    (root / "selfheal_test_plugin_broken.py").write_text("raise RuntimeError('plugin bug')\n")


def test_a_broken_plugin_is_logged_and_skipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    _distribution(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    log = logging.getLogger("test.plugins")
    with caplog.at_level(logging.ERROR, logger="test.plugins"):
        failed = load_entry_points(GROUP, log, ["engine.actions.builtin"])
    assert failed == ["broken"]
    assert "selfheal_test_plugin_good" in sys.modules
    assert any("broken" in r.getMessage() and r.exc_info for r in caplog.records)
    monkeypatch.delitem(sys.modules, "selfheal_test_plugin_good")


def test_a_broken_builtin_is_not_swallowed() -> None:
    with pytest.raises(ModuleNotFoundError):
        load_entry_points(GROUP, logging.getLogger("test.plugins"), ["engine.no_such_builtin"])
