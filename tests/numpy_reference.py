"""Float64 NumPy decoder: an independent reference for `prm_jax.models.forward`.

Written directly from the Llama/Qwen2 equations, one token row at a time, without any
of the JAX code paths (no masking tricks, no caches, no scan).
"""

import numpy as np


def _rms_norm(x, scale, eps):
  return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * scale


def _rotary(x, positions, theta):
  """x [T, N, Dh], positions [T]."""
  half = x.shape[-1] // 2
  inv_freq = 1.0 / theta ** (np.arange(half) * 2.0 / x.shape[-1])
  angles = positions[:, None, None] * inv_freq  # [T, 1, half]
  x1, x2 = x[..., :half], x[..., half:]
  return np.concatenate([x1 * np.cos(angles) - x2 * np.sin(angles),
                         x2 * np.cos(angles) + x1 * np.sin(angles)], axis=-1)


def reference_forward(config, params, tokens):
  """Logits `[T, V]`, hidden `[T, D]` of one unpadded sequence, positions 0..T-1."""
  f64 = lambda a: np.asarray(a, np.float64)
  x = f64(params["embedding"])[np.asarray(tokens)]
  t = x.shape[0]
  positions = np.arange(t, dtype=np.float64)
  layers = params["layers"]
  group = config.num_heads // config.num_kv_heads
  for i in range(config.num_layers):
    layer = lambda *keys: f64(_get(layers, keys)[i])
    h = _rms_norm(x, layer("attn_norm", "scale"), config.norm_eps)
    proj = {}
    for name in "qkv":
      y = np.einsum("td,dnh->tnh", h, layer("attn", f"{name}_kernel"))
      if config.qkv_bias:
        y = y + layer("attn", f"{name}_bias")
      proj[name] = y
    q = _rotary(proj["q"], positions, config.rope_theta)
    k = _rotary(proj["k"], positions, config.rope_theta)
    v = proj["v"]
    out = np.zeros_like(q)
    for head in range(config.num_heads):
      kv = head // group
      scores = q[:, head] @ k[:, kv].T / np.sqrt(config.head_dim)
      scores = np.where(np.tril(np.ones((t, t), bool)), scores, -np.inf)
      probs = np.exp(scores - scores.max(-1, keepdims=True))
      probs /= probs.sum(-1, keepdims=True)
      out[:, head] = probs @ v[:, kv]
    x = x + np.einsum("tnh,nhd->td", out, layer("attn", "o_kernel"))
    h = _rms_norm(x, layer("mlp_norm", "scale"), config.norm_eps)
    gate = h @ layer("mlp", "gate", "kernel")
    up = h @ layer("mlp", "up", "kernel")
    x = x + (gate / (1 + np.exp(-gate)) * up) @ layer("mlp", "down", "kernel")
  hidden = _rms_norm(x, f64(params["final_norm"]["scale"]), config.norm_eps)
  lm = f64(params["embedding"]).T if config.tie_embeddings else f64(params["lm_head"])
  return hidden @ lm, hidden


def _get(tree, keys):
  for key in keys:
    tree = tree[key]
  return np.asarray(tree)
