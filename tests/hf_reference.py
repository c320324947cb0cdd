"""Random tiny `transformers` Llama / Qwen2 models: the independent reference for checkpoints.

torch and transformers are test-only dependencies; nothing in prm_jax imports them.
"""

import numpy as np
import torch
import transformers

# name -> transformers config kwargs. GQA and MHA, tied and untied, q/k/v bias (Qwen2), and
# different rope bases; head_dim != hidden/heads in one of them.
VARIANTS = {
    "llama_gqa_untied": dict(model_type="llama", num_attention_heads=4, num_key_value_heads=2,
                             tie_word_embeddings=False, rope_theta=10_000.0),
    "llama_mha_tied": dict(model_type="llama", num_attention_heads=4, num_key_value_heads=4,
                           tie_word_embeddings=True, rope_theta=500_000.0),
    "qwen2_gqa_tied": dict(model_type="qwen2", num_attention_heads=8, num_key_value_heads=2,
                           tie_word_embeddings=True, rope_theta=1_000_000.0, head_dim=12),
    "qwen2_mha_untied": dict(model_type="qwen2", num_attention_heads=4, num_key_value_heads=4,
                             tie_word_embeddings=False, rope_theta=50_000.0),
}


def tiny_hf_model(variant: str, *, seed: int = 0, token_classification: bool = False,
                  num_labels: int = 2, vocab_size: int = 96):
  """A random `*ForCausalLM` (or `*ForTokenClassification`) in fp32, eval mode.

  Norm scales and biases are perturbed away from their ones/zeros initialisation so that
  parity tests exercise them.
  """
  kwargs = dict(VARIANTS[variant])
  model_type = kwargs.pop("model_type")
  config_class = {"llama": transformers.LlamaConfig, "qwen2": transformers.Qwen2Config}[model_type]
  config = config_class(vocab_size=vocab_size, hidden_size=48, intermediate_size=80,
                        num_hidden_layers=2, max_position_embeddings=256, rms_norm_eps=1e-5,
                        num_labels=num_labels, initializer_range=0.08, attn_implementation="eager",
                        **kwargs)
  torch.manual_seed(seed)
  family = {"llama": "Llama", "qwen2": "Qwen2"}[model_type]
  head = "ForTokenClassification" if token_classification else "ForCausalLM"
  model = getattr(transformers, family + head)(config).eval()
  generator = torch.Generator().manual_seed(seed + 1)
  with torch.no_grad():
    for name, tensor in model.named_parameters():
      if name.endswith("norm.weight"):
        tensor.add_(0.1 * torch.randn(tensor.shape, generator=generator))
      elif name.endswith(".bias"):
        tensor.add_(0.05 * torch.randn(tensor.shape, generator=generator))
  return model


def left_padded(lengths, total, vocab_size, seed=0):
  """`(input_ids, attention_mask, position_ids)` numpy `[B, total]`, rows left-padded."""
  rng = np.random.default_rng(seed)
  ids = rng.integers(0, vocab_size, (len(lengths), total))
  mask = np.arange(total)[None, :] >= total - np.asarray(lengths)[:, None]
  positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0)
  return np.where(mask, ids, 0).astype(np.int32), mask, positions.astype(np.int32)


def hf_logits(model, ids, mask, positions) -> np.ndarray:
  """`[B, T, V]` (or `[B, T, C]` for token classification) fp32 logits."""
  with torch.no_grad():
    out = model(input_ids=torch.as_tensor(ids, dtype=torch.long),
                attention_mask=torch.as_tensor(mask, dtype=torch.long),
                position_ids=torch.as_tensor(positions, dtype=torch.long))
  return out.logits.float().numpy()


def hf_greedy(model, ids, mask, max_new_tokens: int) -> np.ndarray:
  """`[B, max_new_tokens]` greedy continuation of left-padded prompts (no stop token)."""
  with torch.no_grad():
    out = model.generate(input_ids=torch.as_tensor(ids, dtype=torch.long),
                         attention_mask=torch.as_tensor(mask, dtype=torch.long),
                         do_sample=False, max_new_tokens=max_new_tokens,
                         min_new_tokens=max_new_tokens, pad_token_id=0)
  return out[:, ids.shape[1]:].numpy()
