"""Test helpers shipped in the library: conformance suites every implementation must pass
(``engine.testing.detectors`` for the Detector protocol)."""
