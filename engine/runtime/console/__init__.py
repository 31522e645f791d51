"""The operator's console, served by the engine on its own port: services, approvals with their
evidence, incident timelines, journal search, the kill switch and the autonomy ladder
(``engine.runtime.console.pages``), live over server-sent events (``engine.runtime.console.live``)."""
