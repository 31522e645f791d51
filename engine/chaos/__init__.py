"""Chaos validation: a simulated AI platform, chaos experiments against the real engine, reports.

Public face::

    from engine.chaos.api import run_experiment, run_experiments, run_game_day, ChaosReport
    from engine.chaos.experiment import load_experiment, Experiment
    from engine.chaos.platform import SimulatedPlatform          # state, faults, remediations
    from engine.chaos.server import PlatformServer               # /metrics + the admin API
    from engine.chaos.clock import ScaledClock, ManualClock      # platform time
    from engine.chaos.replay import replay_bundle, replay        # shadow replay, no side effects
    from engine.chaos.report import write_report                 # report.html + summary.txt

Modules: ``platform`` (the synthetic platform's signal model run live), ``server`` (its HTTP
face: the contract of ``engine.actions.simulator``), ``clock``, ``experiment`` (typed experiment
files), ``runner`` (one run: platform + engine + method + approvals), ``timescale`` (policy
durations in platform time), ``detector`` (the default pipeline when no bundle is given),
``results`` (verdicts, TTD/TTR), ``report`` (HTML/text), ``replay``, ``api``, ``commands`` (CLI).
"""
