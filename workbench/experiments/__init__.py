"""Experiments: named presets, the command line and the benchmark (the only layer that wires
data, models, objectives and training together)."""

from .presets import Preset, get_presets

__all__ = ["Preset", "get_presets"]
