"""Named model configurations with the real shapes of published checkpoints.

`get_model_config("qwen2_5_7b", dtype="bfloat16", remat="full")` returns the registered
config with overrides applied. The published shapes come from each model's `config.json`
(Hugging Face hub) or GGUF metadata; `tiny*` configs exist for tests and CPU quickstarts.
"""

from __future__ import annotations

from prm_jax.models.config import ModelConfig

MODEL_CONFIGS: dict[str, ModelConfig] = {
    # Test-sized configs: GQA (4 query heads per kv head), MHA, and Qwen2-style bias + tied.
    "tiny": ModelConfig(vocab_size=256, hidden_size=64, num_layers=2, num_heads=4,
                        num_kv_heads=2, head_dim=16, mlp_dim=128, max_seq_len=512),
    "tiny_mha": ModelConfig(vocab_size=256, hidden_size=64, num_layers=2, num_heads=4,
                            num_kv_heads=4, head_dim=16, mlp_dim=128, max_seq_len=512),
    "tiny_qwen2": ModelConfig(vocab_size=256, hidden_size=64, num_layers=2, num_heads=8,
                              num_kv_heads=2, head_dim=8, mlp_dim=96, qkv_bias=True,
                              tie_embeddings=True, rope_theta=1e6, max_seq_len=512),
    # HuggingFaceTB/SmolLM2-135M(-Instruct): Llama architecture, tied embeddings.
    "smollm2_135m": ModelConfig(vocab_size=49152, hidden_size=576, num_layers=30, num_heads=9,
                                num_kv_heads=3, head_dim=64, mlp_dim=1536, rope_theta=100_000.0,
                                norm_eps=1e-5, tie_embeddings=True, max_seq_len=8192),
    # Qwen/Qwen2.5-0.5B, -1.5B, -7B (and their -Instruct / -Math variants).
    "qwen2_5_0_5b": ModelConfig(vocab_size=151936, hidden_size=896, num_layers=24, num_heads=14,
                                num_kv_heads=2, head_dim=64, mlp_dim=4864, rope_theta=1e6,
                                qkv_bias=True, tie_embeddings=True, max_seq_len=32768),
    "qwen2_5_1_5b": ModelConfig(vocab_size=151936, hidden_size=1536, num_layers=28, num_heads=12,
                                num_kv_heads=2, head_dim=128, mlp_dim=8960, rope_theta=1e6,
                                qkv_bias=True, tie_embeddings=True, max_seq_len=32768),
    "qwen2_5_7b": ModelConfig(vocab_size=152064, hidden_size=3584, num_layers=28, num_heads=28,
                              num_kv_heads=4, head_dim=128, mlp_dim=18944, rope_theta=1e6,
                              qkv_bias=True, tie_embeddings=False, max_seq_len=32768),
    # meta-llama/Meta-Llama-3-8B.
    "llama3_8b": ModelConfig(vocab_size=128256, hidden_size=4096, num_layers=32, num_heads=32,
                             num_kv_heads=8, head_dim=128, mlp_dim=14336, rope_theta=500_000.0,
                             norm_eps=1e-5, tie_embeddings=False, max_seq_len=8192),
}


def get_model_config(name: str, **overrides) -> ModelConfig:
  """The registered config `name` with `overrides` (any `ModelConfig` field) applied."""
  if name not in MODEL_CONFIGS:
    raise ValueError(f"unknown model name {name!r}; registered: {sorted(MODEL_CONFIGS)}")
  return MODEL_CONFIGS[name].replace(**overrides)
