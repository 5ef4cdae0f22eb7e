"""Randomness is an input: seeds are set once at an entry point and recorded."""

from __future__ import annotations

import random

import numpy as np
import torch

from .validation import check_device


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, numpy and torch (all devices); return a CPU generator seeded with ``seed``."""
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    return make_generator(seed)


def make_generator(seed: int, device: str | torch.device = "cpu") -> torch.Generator:
    """A torch.Generator on ``device`` (checked: ValueError for a device this machine lacks) seeded with ``seed``."""
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    g = torch.Generator(device=check_device(device))
    g.manual_seed(seed)
    return g


def generator_device(generator: torch.Generator | None, default: torch.device) -> torch.device:
    return default if generator is None else torch.device(generator.device)


def choose_device(device: str | None = None) -> torch.device:
    """Entry points only: ``cuda`` when available unless told otherwise."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return check_device(device)
