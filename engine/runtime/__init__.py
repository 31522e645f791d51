"""The engine process (``selfheal run``): sources, then the stages of a tick (scoring, events,
policies, deciding, executing, supervising), the journal and the HTTP API.

Public face::

    EngineSettings, load_settings                    # engine.runtime.config: the settings table
    EngineComponents, register_loader, load_components  # engine.runtime.components: what runs
    assemble                                         # engine.runtime.components: detector + rules + targets
    Engine                                           # engine.runtime.process: start / ingest / stop
    build_engine, serve, serve_in_thread             # engine.runtime.server: run it behind HTTP
    Journal                                          # engine.runtime.journal: read (or write) the record

Modules import lazily what they need from the rest of the project, so ``import engine.runtime``
stays cheap.
"""
