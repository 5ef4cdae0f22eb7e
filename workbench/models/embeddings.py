"""Time embeddings of the pair (s, t - s).

* ``raw``: the two numbers themselves (as in B25's checkerboard MLP).
* ``sinusoidal``: [cos(w_k tau), sin(w_k tau)] with geometric frequencies w_k = 2 pi f_k,
  f_k from 1 to ``max_freq`` (low frequencies only: high-frequency time features inflate
  d/dt of the map, the time-oscillation pathology of sCM).
"""

from __future__ import annotations

import math

import torch
from torch import nn


class TimeEmbedding(nn.Module):
    """Embed (s, dt) with dt = t - s into a feature vector of size ``out_dim``."""

    def __init__(self, kind: str = "sinusoidal", n_freq: int = 8, max_freq: float = 16.0) -> None:
        super().__init__()
        if kind not in ("raw", "sinusoidal"):
            raise ValueError(f"kind must be 'raw' or 'sinusoidal', got {kind!r}")
        if isinstance(n_freq, bool) or not isinstance(n_freq, int) or n_freq < 1:
            raise ValueError(f"n_freq must be a positive int, got {n_freq!r}")
        if isinstance(max_freq, bool) or not isinstance(max_freq, (int, float)) or not (math.isfinite(max_freq) and max_freq >= 1):
            raise ValueError(f"max_freq must be a finite number >= 1 (cycles per unit time), got {max_freq!r}")
        self.kind = kind
        # f_k = max_freq^(k / (n_freq - 1)), k = 0..n_freq-1 (just f_0 = 1 for one frequency)
        freqs = 2 * math.pi * torch.logspace(0.0, math.log10(max_freq), n_freq, dtype=torch.float64)
        self.register_buffer("freqs", freqs, persistent=False)
        self.out_dim = 2 if kind == "raw" else 2 + 4 * n_freq

    def forward(self, s: torch.Tensor, dt: torch.Tensor) -> torch.Tensor:
        """s, dt: (batch,) -> (batch, out_dim): [s, dt] (raw), or [s, dt, cos(w_k s)_k, sin(w_k s)_k,
        cos(w_k dt)_k, sin(w_k dt)_k] (sinusoidal)."""
        st = torch.stack([s, dt], dim=-1)
        if self.kind == "raw":
            return st
        ang = st[..., None] * self.freqs.to(st.dtype)  # (batch, 2, n_freq)
        feats = torch.cat([torch.cos(ang), torch.sin(ang)], dim=-1).flatten(1)
        return torch.cat([st, feats], dim=-1)
