"""Data for a run: generated, built-in or read from CSV/NPZ, then corrupted, split, imputed, scaled, profiled."""

from nandoctor.data.dataset import Dataset, load_dataset

__all__ = ["Dataset", "load_dataset"]
