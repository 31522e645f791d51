"""Where the shipped defaults live: the policies, experiment specs, dataset configs and notebooks.

One source: the repository's top-level ``rules/``, ``experiments/``, ``datasets/`` and
``notebooks/`` folders (data, not packages). A checkout, and the editable install ``make`` makes,
reads them in place. A wheel cannot reach outside its packages, so ``setup.py`` maps the same
folders into it as ``engine/_shipped/<folder>/`` at build time; an installed wheel reads those.
That is what lets ``pip install selfheal && selfheal demo`` work outside a checkout.

The packaged copy wins when it exists: beside an installed ``engine`` (site-packages) there may be
unrelated top-level folders of the same names (HuggingFace installs ``datasets``).
"""

from __future__ import annotations

from pathlib import Path

FOLDERS = ("rules", "experiments", "datasets", "notebooks")
_PACKAGED = Path(__file__).resolve().parent / "_shipped"
_CHECKOUT = Path(__file__).resolve().parents[1]


def shipped(folder: str) -> Path:
    """The shipped ``rules``, ``experiments``, ``datasets`` or ``notebooks`` folder of this install."""
    if folder not in FOLDERS:
        raise ValueError(f"{folder!r} is not a shipped folder ({', '.join(FOLDERS)})")
    packaged = _PACKAGED / folder
    return packaged if packaged.is_dir() else _CHECKOUT / folder
