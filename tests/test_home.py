"""The home folder's run folders: one per run, never shared."""

from __future__ import annotations

from pathlib import Path

from engine.home import Home


def test_runs_started_in_the_same_second_get_folders_of_their_own(tmp_path: Path) -> None:
    home = Home(tmp_path / "home")
    folders = [home.new_run("chaos", "game-day") for _ in range(3)]
    assert len(set(folders)) == 3 and all(f.is_dir() and not any(f.iterdir()) for f in folders)
    assert {f.parent for f in folders} == {home.root / "chaos" / "game-day"}
