"""Llama/Qwen2-family decoder with LM, PRM and value heads (pure functions over param dicts)."""

from prm_jax.models.config import ModelConfig
from prm_jax.models.model import (abstract_params, cache_logical_axes, default_positions, forward,
                                  init_cache, init_params, param_logical_axes,
                                  transpose_kernels, unstack_layers)
from prm_jax.models.registry import MODEL_CONFIGS, get_model_config

__all__ = [
    "MODEL_CONFIGS", "ModelConfig", "abstract_params", "cache_logical_axes", "default_positions",
    "forward", "get_model_config", "init_cache", "init_params", "param_logical_axes",
    "transpose_kernels", "unstack_layers",
]
