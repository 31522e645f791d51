"""Chaos validation: experiments against the real engine on the simulated platform, reports.

Public face::

    from engine.chaos.api import run_experiment, run_experiments, run_game_day, ChaosReport
    from engine.chaos.experiment import load_experiment, Experiment
    from engine.chaos.replay import replay_bundle, replay        # shadow replay, no side effects
    from engine.chaos.report import write_report                 # report.html + summary.txt

The platform itself (model, faults, live state, its HTTP server, platform time) is
``engine.simulation``. Modules: ``experiment`` (typed experiment files), ``runner`` (one run:
platform + engine + method + approvals), ``timescale`` (policy durations in platform time),
``detector`` (the default pipeline when no bundle is given), ``results`` (verdicts, TTD/TTR),
``report`` (HTML/text), ``replay``, ``api``, ``commands`` (CLI).
"""
