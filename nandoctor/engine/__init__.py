"""The from-scratch NumPy training engine: layers, losses, optimizers, schedules and the loop."""
