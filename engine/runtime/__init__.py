"""The engine process (``selfheal run``): sources, scoring loop, policy host, safeguards, approvals,
verification, journal and HTTP API.

Public face::

    EngineSettings, load_settings                    # engine.runtime.config: the settings table
    EngineComponents, register_loader, load_components  # engine.runtime.components: what runs
    assemble                                         # engine.runtime.adapters: pipeline + rules + targets
    Engine                                           # engine.runtime.process: start / ingest / stop
    build_engine, serve, serve_in_thread             # engine.runtime.server: run it behind HTTP
    Journal                                          # engine.runtime.journal: read (or write) the record

Modules import lazily what they need from the rest of the project, so ``import engine.runtime``
stays cheap.
"""
