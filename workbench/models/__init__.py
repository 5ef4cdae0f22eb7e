"""Neural flow maps X_{s,t}(x) = x + (t - s) v_theta(s, t, x) and the exact map of any flow."""

from .embeddings import TimeEmbedding
from .exact import ExactFlowMap
from .flow_map import NeuralFlowMap
from .mlp import MLPBackbone

__all__ = ["ExactFlowMap", "MLPBackbone", "NeuralFlowMap", "TimeEmbedding", "make_mlp_flow_map"]


def make_mlp_flow_map(dim: int, *, hidden: int = 256, depth: int = 4, activation: str = "gelu",
                      time_embedding: str = "sinusoidal", data_std: float = 1.0,
                      learned_weight: bool = False, zero_init: bool = False) -> NeuralFlowMap:
    """An MLP flow map for (batch, dim) data."""
    backbone = MLPBackbone(dim, hidden=hidden, depth=depth, activation=activation,
                           time_embedding=time_embedding, zero_init=zero_init)
    return NeuralFlowMap(backbone, dim, data_std=data_std, learned_weight=learned_weight)
