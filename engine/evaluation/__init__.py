"""Evaluation of detectors: event-level metrics (``engine.evaluation.events``) and NAB scoring
(``engine.evaluation.nab``). Import the submodule you need; this package imports nothing heavy."""
