"""The simulated AI platform, in one place: its config, signal model, faults, live state and HTTP face.

One model serves two callers: ``selfheal synth`` (``engine.telemetry.synth``) evaluates it over weeks
of history at once, and chaos runs (``engine.chaos``) evaluate it tick by tick while faults are
injected and remediated, so the history detectors learn from and the platform experiments break
are the same platform. The package depends on nothing of the engine but ``engine.errors``: the
generator, the chaos runner and the policies (which share its metric names) all sit above it.

Modules, lowest first::

    config   datasets/synth_platform.yaml as typed models; the incident kinds and where they happen
    faults   Fault, and each kind's signature as knobs of one service (a narrow view of the model)
    model    PlatformModel: metrics as a closed-form function of time, faults and controls
    clock    platform time (ScaledClock, ManualClock)
    live     SimulatedPlatform: the model run live, with state and the remediations' effects
    server   PlatformServer: Prometheus /metrics and the admin API the ``simulator`` actions call

The ``simulator`` actuator stays in ``engine.actions.simulator``: it is one of the engine's action
backends (a client of the admin API served here, as the Kubernetes backend is a client of the
Kubernetes API), and a production engine must not import a simulated platform to restart a service.
"""
