"""nandoctor: train an MLP with a from-scratch NumPy engine, record telemetry, diagnose why it failed."""

__version__ = "0.1.0"
