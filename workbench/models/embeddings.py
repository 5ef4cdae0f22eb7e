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
        if n_freq < 1:
            raise ValueError(f"n_freq must be >= 1, got {n_freq}")
        self.kind = kind
        freqs = 2 * math.pi * torch.logspace(0.0, math.log10(max_freq), n_freq) if n_freq > 1 else torch.tensor([2 * math.pi])
        self.register_buffer("freqs", freqs, persistent=False)
        self.out_dim = 2 if kind == "raw" else 2 + 4 * n_freq

    def forward(self, s: torch.Tensor, dt: torch.Tensor) -> torch.Tensor:
        """s, dt: (batch,) -> (batch, out_dim)."""
        st = torch.stack([s, dt], dim=-1)
        if self.kind == "raw":
            return st
        ang = st[..., None] * self.freqs.to(st.dtype)  # (batch, 2, n_freq)
        feats = torch.cat([torch.cos(ang), torch.sin(ang)], dim=-1).flatten(1)
        return torch.cat([st, feats], dim=-1)
