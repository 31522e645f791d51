"""Experiments tracked in MLflow, the model registry gate, and the notebooks that use them.

Modules (import them directly; this package imports nothing heavy on its own):

- ``spec``: experiment specs (``experiments/*.yaml``), validated at load, every problem at once.
- ``data``: the spec's data selection from the DuckDB store, and its fingerprint.
- ``assessment``: judging a stream detector against incident windows (event metrics, NAB, AP).
- ``experiment``: ``run_experiment`` - the parallel sweep, a parent run and a child run per config.
- ``model``: the stream detector as an MLflow pyfunc returning scored rows; ``load_logged_detector``.
- ``registry``: tracking URI resolution, ``promote`` (alias ``champion``), ``rollback``, listing.
- ``notebooks``: papermill execution (``selfheal evaluate``); ``research``: what notebooks call.
- ``plots``: the figures logged with each run and shown in notebooks.
"""
