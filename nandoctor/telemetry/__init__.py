"""Telemetry: what a run did, recorded into a run directory (config.yaml + telemetry.sqlite)."""
