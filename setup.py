"""Packaging that pyproject.toml cannot declare: the shipped data folders inside the wheel.

``rules/``, ``experiments/``, ``datasets/`` and ``notebooks/`` stay top-level folders of the
repository (data, not packages: DESIGN.md). A wheel only carries packages, so each folder (and each
of its sub-folders) is mapped to ``engine._shipped.<folder>`` here; ``engine.shipped`` finds them
again at run time. Walking the folders keeps the repository the one source: a new policy, spec or
golden event is in the next wheel without touching this file.

The ``selfheal`` Jupyter kernel spec goes to ``<prefix>/share/jupyter/kernels/selfheal`` (where
papermill and JupyterLab look), so an installed wheel runs the notebooks. Its ``python`` is the
interpreter of the Jupyter process that launches it. Editable installs do not install data files:
``make venv`` registers the kernel with ``ipykernel install`` instead.
"""

from __future__ import annotations

from pathlib import Path

from setuptools import find_packages, setup

SHIPPED = ("rules", "experiments", "datasets", "notebooks")
DATA = ["*.yaml", "*.json", "*.ipynb", "*.md"]


def _shipped_packages() -> dict[str, str]:
    mapped = {}
    for top in SHIPPED:
        folders = [Path(top), *sorted(p for p in Path(top).rglob("*") if p.is_dir())]
        for folder in folders:
            if "__pycache__" not in folder.parts:
                mapped["engine._shipped." + ".".join(folder.parts)] = folder.as_posix()
    return mapped


MAPPED = _shipped_packages()

setup(
    packages=[*find_packages(include=["engine", "engine.*"]), *MAPPED],
    package_dir=MAPPED,
    package_data={"engine": ["py.typed", "**/*.yaml", "**/*.json", "**/*.html", "**/*.js", "**/*.css"], **dict.fromkeys(MAPPED, DATA)},
    data_files=[("share/jupyter/kernels/selfheal", ["notebooks/kernel.json"])],
)
