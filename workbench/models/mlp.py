"""MLP backbone for low-dimensional data: v = f(x, embed(s, t - s))."""

from __future__ import annotations

import torch
from torch import nn

from .embeddings import TimeEmbedding

_ACTIVATIONS = {"gelu": nn.GELU, "silu": nn.SiLU, "tanh": nn.Tanh, "relu": nn.ReLU}


class MLPBackbone(nn.Module):
    """Backbone interface: ``forward(x, s, dt) -> tensor of x's shape`` with s, dt of shape (batch,).

    Any module with this signature (a U-Net for images) plugs into :class:`NeuralFlowMap`.
    """

    def __init__(
        self,
        dim: int,
        hidden: int = 256,
        depth: int = 4,
        activation: str = "gelu",
        time_embedding: str = "sinusoidal",
        n_freq: int = 8,
        zero_init: bool = False,
    ) -> None:
        super().__init__()
        for name, v in (("dim", dim), ("hidden", hidden), ("depth", depth)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if activation not in _ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(_ACTIVATIONS)}, got {activation!r}")
        self.dim = dim
        self.embed = TimeEmbedding(time_embedding, n_freq=n_freq)
        layers: list[nn.Module] = []
        width = dim + self.embed.out_dim
        for _ in range(depth):
            layers += [nn.Linear(width, hidden), _ACTIVATIONS[activation]()]
            width = hidden
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(hidden, dim)
        if zero_init:
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)

    def forward(self, x: torch.Tensor, s: torch.Tensor, dt: torch.Tensor) -> torch.Tensor:
        """x (batch, dim), s and dt = t - s (batch,) -> head(body([x, embed(s, dt)])), shape of x."""
        h = torch.cat([x, self.embed(s, dt).to(x.dtype)], dim=-1)
        return self.head(self.body(h))
