"""Llama/Qwen2-family decoder in Flax linen: the modules behind `prm_jax.models.forward`.

Modules here are an implementation detail; everything else calls `forward()` (model.py).

Shapes: B batch, T new tokens, S key slots (T without a cache, cache length with one),
D hidden, H query heads, K key/value heads, G = H // K, Dh head dim, F MLP dim, V vocab,
L layers. Every parameter and key activation carries logical axis names
(`prm_jax.parallel.LOGICAL_AXIS_RULES` maps them to mesh axes); without an active rule
table the constraints are no-ops, so the same code runs unsharded.
"""

from __future__ import annotations

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from prm_jax.models.config import ModelConfig

# A large finite negative instead of -inf: fully masked rows (left padding) then give a
# uniform, finite softmax instead of NaN; such rows are padding and never read.
MASK_VALUE = -0.7 * float(np.finfo(np.float32).max)

REMAT_POLICIES = {
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def constrain(x: jax.Array, logical_axes: tuple) -> jax.Array:
  """Sharding constraint by logical axis names (no-op outside a rule-table context)."""
  return nn.with_logical_constraint(x, logical_axes)


def _init(config: ModelConfig, axes: tuple):
  return nn.with_logical_partitioning(nn.initializers.normal(config.init_std), axes)


class RMSNorm(nn.Module):
  """y = x / rms(x) * scale, computed in fp32 and returned in the compute dtype."""

  config: ModelConfig

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c = self.config
    scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones, ("norm",)),
                       (c.hidden_size,), c.params_dtype)
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + c.norm_eps)
    return (y * scale.astype(jnp.float32)).astype(c.compute_dtype)


def rotary_angles(positions: jax.Array, head_dim: int, theta: float):
  """`(sin, cos)` of the rotary angles, each fp32 `[B, T, 1, Dh/2]`, for `apply_rotary`.

  Computed once per forward and shared by every layer. Each table leaves through a
  product with the identity (exact: one nonzero term per output) because XLA fuses
  elementwise producers into their consumers, duplicating them: it would evaluate sin and
  cos again for every element of every layer's queries and keys (9 query heads x 30
  layers for SmolLM2; 0.15 s of a 0.6 s batch-16 prefill, 2 ms of a 40 ms decode step on
  the CPU of benchmarks/RESULTS.md) and it never fuses a dot. (An optimization barrier
  does not stop it: XLA removes barriers before fusing.)
  """
  inv_freq = 1.0 / theta ** (np.arange(head_dim // 2, dtype=np.float32) * 2.0 / head_dim)
  angles = positions.astype(jnp.float32)[..., None, None] * jnp.asarray(inv_freq)
  identity = jnp.eye(head_dim // 2, dtype=jnp.float32)
  materialise = lambda table: jnp.dot(table, identity, precision=jax.lax.Precision.HIGHEST)
  return materialise(jnp.sin(angles)), materialise(jnp.cos(angles))


def apply_rotary(x: jax.Array, rotary) -> jax.Array:
  """Rotary position embedding, half-split ("rotate_half") layout of Llama/Qwen2 in HF.

  Args:
    x: `[B, T, N, Dh]` queries or keys.
    rotary: `(sin, cos)` from `rotary_angles` of the `[B, T]` integer positions
      (explicit, so left padding is exact).
  Returns:
    `[B, T, N, Dh]` in the dtype of `x`; the rotation is computed in fp32.
  """
  sin, cos = rotary
  x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
  return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1).astype(x.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def project(x: jax.Array, w: jax.Array, out_dtype=None) -> jax.Array:
  """`x [..., K] @ w [K, M] -> [..., M]` (`out_dtype`: accumulate/return dtype, e.g. fp32).

  Differentiates like the plain product, except that the weight gradient is formed as
  `x^T @ dy` over the flattened rows. Why: from autodiff's form, XLA:CPU transposes the
  (wider) output cotangent inside the elementwise fusion producing it, a strided loop
  that took ~45% of a PRM train step on CPU; transposing the input is a plain copy
  (benchmarks/RESULTS.md). The math, and other backends' performance, are unchanged.
  """
  # Accumulate in fp32 and round once: the same numbers as a bf16 dot on GPU/TPU, and on
  # XLA:CPU the form that keeps its native bf16 matmul (a bf16-output dot is computed by
  # converting both operands to fp32 first, ~3x slower on CPUs with AMX).
  out = jnp.einsum("...k,km->...m", x, w, preferred_element_type=jnp.float32)
  return out.astype(out_dtype or jnp.result_type(x, w))


def _project_fwd(x, w, out_dtype):
  return project(x, w, out_dtype), (x, w)


def _project_bwd(out_dtype, residuals, dy):
  del out_dtype
  x, w = residuals
  dy = dy.astype(x.dtype)
  dx = jnp.einsum("...m,km->...k", dy, w, preferred_element_type=jnp.float32)
  rows = x.reshape(-1, x.shape[-1])
  dw = jnp.matmul(rows.T, dy.reshape(-1, dy.shape[-1]), preferred_element_type=jnp.float32)
  return dx.astype(x.dtype), dw.astype(w.dtype)


project.defvjp(_project_fwd, _project_bwd)


# Up to this many rows `project_output_major` computes `W x^T`; beyond, `x W^T`: with many
# rows (prefill, batch-64 decode) the transposed result costs more than the weight's
# repacking (fp32 batch-64 decode step 184 -> 210 ms as `W x^T`; bf16 unchanged).
OUTPUT_MAJOR_MAX_ROWS = 32


def project_output_major(x: jax.Array, w: jax.Array, out_dtype=None) -> jax.Array:
  """`x [..., K] @ w[M, K]^T -> [..., M]`: the weight stored output-major and, for up to
  OUTPUT_MAJOR_MAX_ROWS rows of `x`, taken as the left operand of the product (`W x^T`,
  the small `[M, rows]` result then transposed).

  The decode layout's product (`prm_jax.models.transpose_kernels`); same numbers as
  `project`. Why: XLA:CPU's matmul (YNNPACK) repacks its right operand at every call, so
  as the right operand a weight was copied at every decode step before it was read; as
  the left one it streams once (bf16 batch-16 decode step 41 -> 32 ms, benchmarks/
  RESULTS.md). The barrier keeps XLA's simplifier from turning `transpose(W x^T)` back
  into `x W^T`. `w` should be a materialised array (e.g. a jit argument): a transposition
  in the same program is folded back into the product likewise.
  """
  if math.prod(x.shape[:-1]) > OUTPUT_MAJOR_MAX_ROWS:
    out = jnp.einsum("...k,mk->...m", x, w, preferred_element_type=jnp.float32)
  else:
    out = jnp.einsum("mk,...k->m...", w, x, preferred_element_type=jnp.float32)
    out = jnp.moveaxis(jax.lax.optimization_barrier(out), 0, -1)
  return out.astype(out_dtype or jnp.result_type(x, w))


# The projection kernels, by parameter name, and how many leading (input) dimensions each
# is declared with: `[*in_dims, *out_dims]`, applied as a `[prod(in), prod(out)]` matrix.
# A kernel may instead be given output-major under `name + OUTPUT_MAJOR`, as the
# `[prod(out), prod(in)]` matrix (the decode layout, `prm_jax.models.transpose_kernels`);
# `_kernel` takes whichever the parameters hold.
KERNEL_IN_DIMS = {"q_kernel": 1, "k_kernel": 1, "v_kernel": 1, "o_kernel": 2, "kernel": 1,
                  "lm_head": 1}
OUTPUT_MAJOR = "_t"
# The MLP's gate and up kernels fused, output-major only: `[2F, D]`, gate rows first.
GATE_UP = "gate_up_kernel"


def _kernel(module: nn.Module, name: str, shape: tuple, axes: tuple):
  """`(matmul, w)`: the module's kernel `name` as a 2-D matrix in the compute dtype and the
  product that applies it (`matmul(x, w, out_dtype=None)`), in either layout."""
  c = module.config
  if module.has_variable("params", name + OUTPUT_MAJOR):
    w = module.get_variable("params", name + OUTPUT_MAJOR)
    return project_output_major, w.astype(c.compute_dtype)
  w = module.param(name, _init(c, axes), shape, c.params_dtype)
  return project, w.reshape(math.prod(shape[:KERNEL_IN_DIMS[name]]), -1).astype(
      c.compute_dtype)


# Queries per block of `causal_attention`: with causal masking, a block only needs the keys
# up to its own end, so blocks skip a fraction 1/2 - QUERY_BLOCK / 2T of the score matrix.
QUERY_BLOCK = 128


def move_as_bits(move, *arrays: jax.Array) -> jax.Array:
  """`move(*arrays)` for a pure data movement `move` (a gather, a slot write) of arrays of
  one dtype, done on same-width unsigned-integer views when that dtype is a two-byte float.

  XLA:CPU has no bf16 data movement: it moves bf16 through fp32, converting each whole
  operand there and back -- at every KV-cache write a full copy of the cache instead of a
  few bytes, at every embedding lookup an fp32 copy of the table. The view is free on
  every backend. Not differentiable (the view has no derivative); see `embed`.
  """
  dtype = arrays[0].dtype
  if not (jnp.issubdtype(dtype, jnp.floating) and dtype.itemsize == 2):
    return move(*arrays)
  moved = move(*(jax.lax.bitcast_convert_type(a, jnp.uint16) for a in arrays))
  return jax.lax.bitcast_convert_type(moved, dtype)


def write_slots(buffer: jax.Array, update: jax.Array, index, axis: int) -> jax.Array:
  """`buffer` with `update` written at `index` along `axis` (a KV-cache write), in place."""
  return move_as_bits(lambda b, u: jax.lax.dynamic_update_slice_in_dim(b, u, index, axis),
                      buffer, update.astype(buffer.dtype))


@jax.custom_jvp
def embed(table: jax.Array, ids: jax.Array) -> jax.Array:
  """Rows `ids [...]` of `table [V, D]` -> `[..., D]`, gathered through `move_as_bits`
  (differentiable: the derivative is the same gather of the table's tangent)."""
  return move_as_bits(lambda t: jnp.take(t, ids, axis=0), table)


@embed.defjvp
def _embed_jvp(primals, tangents):
  table, ids = primals
  return embed(table, ids), jnp.take(tangents[0], ids, axis=0)


def _masked_scores(q, k, mask):
  """fp32 scaled scores `[B, K, G, T, S]`, MASK_VALUE where `mask [B, T, S]` is False.

  q `[B, K, G, T, Dh]`, k `[B, K, S, Dh]`. Heads-major: every product is a plain batched
  matrix product, with no transposes of the `[T, S]` matrices.
  """
  scores = jnp.einsum("bkgtd,bksd->bkgts", q, k, preferred_element_type=jnp.float32)
  return jnp.where(mask[:, None, None], scores / math.sqrt(q.shape[-1]), MASK_VALUE)


def _heads_major(x: jax.Array) -> jax.Array:
  """`[B, T, ..., Dh] -> [B, ..., T, Dh]`."""
  return jnp.moveaxis(x, 1, -2)


def attend(q: jax.Array, key_blocks) -> jax.Array:
  """Grouped-query softmax attention over one or more blocks of keys (the KV-cache path;
  without a cache, `causal_attention`).

  Args:
    q: `[B, T, H, Dh]`.
    key_blocks: sequence of `(k, v, mask)` in the cache layout: k, v `[B, K, S_i, Dh]`,
      with `H % K == 0`; mask `[B, T or 1, S_i]`
      bool, True where query t may attend key s. The softmax runs over all blocks
      together: with a KV cache, the cached keys and the new tokens' keys are two blocks,
      so the cache is read as it is and written once after the layer scan (see
      `prm_jax.models.forward`) instead of being rewritten inside every layer.
  Returns:
    `[B, T, H, Dh]` in the dtype of the values.
  """
  b, t, h, dh = q.shape
  kv_heads = key_blocks[0][0].shape[1]
  q = _heads_major(q.reshape(b, t, kv_heads, h // kv_heads, dh))
  scores = [_masked_scores(q, k.astype(q.dtype), mask) for k, _, mask in key_blocks]
  probs = jax.nn.softmax(jnp.concatenate(scores, axis=-1), axis=-1)
  splits = np.cumsum([v.shape[2] for _, v, _ in key_blocks])[:-1]
  out = sum(jnp.einsum("bkgts,bksd->bkgtd", p.astype(q.dtype), v.astype(q.dtype),
                       preferred_element_type=jnp.float32)
            for p, (_, v, _) in zip(jnp.split(probs, splits, axis=-1), key_blocks))
  return jnp.moveaxis(out, -2, 1).reshape(b, t, h, dh).astype(key_blocks[0][1].dtype)


def _block_attention_fwd(q, k, v, mask):
  scores = _masked_scores(q, k, mask)
  peak = jnp.max(scores, axis=-1, keepdims=True)
  weights = jnp.exp(scores - peak)
  total = jnp.sum(weights, axis=-1, keepdims=True)
  # Normalise the [T, Dh] output rather than the [T, S] weights: one pass fewer.
  out = jnp.einsum("bkgts,bksd->bkgtd", weights.astype(v.dtype), v,
                   preferred_element_type=jnp.float32) / total
  out = out.astype(v.dtype)
  return out, (q, k, v, mask, out, peak + jnp.log(total))


def _block_attention_bwd(residuals, d_out):
  q, k, v, mask, out, logsumexp = residuals
  scores = _masked_scores(q, k, mask)
  probs = jnp.exp(scores - logsumexp)  # Recomputed: nothing of size [T, S] was saved.
  d_out = d_out.astype(v.dtype)
  d_v = jnp.einsum("bkgts,bkgtd->bksd", probs.astype(v.dtype), d_out,
                   preferred_element_type=jnp.float32)
  d_probs = jnp.einsum("bkgtd,bksd->bkgts", d_out, v, preferred_element_type=jnp.float32)
  row_dot = jnp.sum(d_out.astype(jnp.float32) * out.astype(jnp.float32), axis=-1,
                    keepdims=True)
  # Softmax backward; masked scores are constants (no gradient), as in autodiff's `where`.
  d_scores = jnp.where(mask[:, None, None], probs * (d_probs - row_dot), 0.0)
  d_scores = (d_scores / math.sqrt(q.shape[-1])).astype(q.dtype)
  d_q = jnp.einsum("bkgts,bksd->bkgtd", d_scores, k, preferred_element_type=jnp.float32)
  d_k = jnp.einsum("bkgts,bkgtd->bksd", d_scores, q, preferred_element_type=jnp.float32)
  return d_q.astype(q.dtype), d_k.astype(k.dtype), d_v.astype(v.dtype), None


@jax.custom_vjp
def _block_attention(q, k, v, mask):
  """Softmax attention, heads-major: q `[B, K, G, T, Dh]`, k, v `[B, K, S, Dh]`, mask
  `[B, T, S]` -> `[B, K, G, T, Dh]`.

  Custom VJP (flash-attention style): saves the output and the row log-sum-exp and
  recomputes the probabilities in the backward pass. Autodiff would save the fp32
  probabilities of every layer (`[L, B, H, T, T]`: 1.1 GB for SmolLM2 at 4 x 512) and,
  on XLA:CPU, transpose them inside elementwise fusions (benchmarks/RESULTS.md).
  """
  return _block_attention_fwd(q, k, v, mask)[0]


_block_attention.defvjp(_block_attention_fwd, _block_attention_bwd)


def causal_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array) -> jax.Array:
  """Grouped-query softmax attention without a cache, in blocks of QUERY_BLOCK queries.

  Args:
    q: `[B, T, H, Dh]`; k, v: `[B, T, K, Dh]` with `H % K == 0`.
    mask: `[B, T, T]` bool, True where query t may attend key s; must be causal (False
      for s > t), which is what lets query block i skip the keys after its end.
  Returns:
    `[B, T, H, Dh]` in the dtype of the values. Rows with nothing to attend (left
    padding) get a uniform average over their block's keys: finite, and never read.
  """
  b, t, h, dh = q.shape
  kv_heads = k.shape[2]
  q = _heads_major(q.reshape(b, t, kv_heads, h // kv_heads, dh))
  k, v = _heads_major(k), _heads_major(v)
  outs = []
  for start in range(0, t, QUERY_BLOCK):
    end = min(start + QUERY_BLOCK, t)
    outs.append(_block_attention(q[..., start:end, :], k[..., :end, :], v[..., :end, :],
                                 mask[:, start:end, :end]))
  out = jnp.concatenate(outs, axis=-2) if len(outs) > 1 else outs[0]
  return jnp.moveaxis(out, -2, 1).reshape(b, t, h, dh)


class Attention(nn.Module):
  """Grouped-query self-attention with rotary embeddings and an optional KV cache."""

  config: ModelConfig

  def _heads_in(self, name: str, x: jax.Array, num_heads: int, heads_axis: str) -> jax.Array:
    """`[B, T, D] -> [B, T, N, Dh]` projection (+ bias for Qwen2)."""
    c = self.config
    matmul, kernel = _kernel(self, f"{name}_kernel", (c.hidden_size, num_heads, c.head_dim),
                             ("embed", heads_axis, "head_dim"))
    y = matmul(x, kernel)
    y = y.reshape(*y.shape[:-1], num_heads, c.head_dim)
    if c.qkv_bias:
      bias = self.param(f"{name}_bias", nn.with_logical_partitioning(
          nn.initializers.zeros, (heads_axis, "head_dim")), (num_heads, c.head_dim),
                        c.params_dtype)
      y = y + bias.astype(c.compute_dtype)
    return y

  @nn.compact
  def __call__(self, x, rotary, mask, layer_cache, cache_mask, cache_index):
    """x `[B, T, D]`, rotary `(sin, cos)` from `rotary_angles`, mask `[B, T, T]` among the
    new tokens.

    layer_cache: None, or this layer's cache `(k, v)`, each `[B, K, S, Dh]`, used
      one of two ways:
      * cache_index None (scanned layers): the cache is read only, cache_mask `[B, 1, S]`
        marks the slots the new tokens may attend, and the new tokens' `(k, v)`, each
        `[B, K, T, Dh]`, are returned for `forward` to write after the layer scan (a
        scan that wrote them would carry, and copy, the whole stacked cache);
      * cache_index `[]` int (unrolled layers, each owning its buffers): the new keys are
        written in place at slots `cache_index...` first, then the queries attend the
        whole buffer under cache_mask `[B, T, S]`; the updated buffers are returned.
    Returns the output `[B, T, D]` and the cache part above (None without a cache).
    """
    c = self.config
    q = self._heads_in("q", x, c.num_heads, "heads")
    k = self._heads_in("k", x, c.num_kv_heads, "kv_heads")
    v = self._heads_in("v", x, c.num_kv_heads, "kv_heads")
    q = constrain(apply_rotary(q, rotary),
                  ("batch", "length", "heads", "head_dim"))
    k = constrain(apply_rotary(k, rotary),
                  ("batch", "length", "kv_heads", "head_dim"))
    v = constrain(v, ("batch", "length", "kv_heads", "head_dim"))
    if layer_cache is None:
      out, new_cache = causal_attention(q, k, v, mask), None
    else:
      cache_k, cache_v = layer_cache
      new_k = _heads_major(k).astype(cache_k.dtype)
      new_v = _heads_major(v).astype(cache_v.dtype)
      if cache_index is None:
        new_cache = (new_k, new_v)
        out = attend(q, [(cache_k, cache_v, cache_mask), (new_k, new_v, mask)])
      else:
        new_cache = (write_slots(cache_k, new_k, cache_index, axis=2),
                     write_slots(cache_v, new_v, cache_index, axis=2))
        out = attend(q, [new_cache + (cache_mask,)])
    matmul, o_kernel = _kernel(self, "o_kernel", (c.num_heads, c.head_dim, c.hidden_size),
                               ("heads", "head_dim", "embed"))
    return matmul(out.reshape(*out.shape[:-2], -1), o_kernel), new_cache


class Linear(nn.Module):
  """`[..., K] -> [..., features]` through `project`, kernel `[K, features]` named `kernel`
  (the layout of `nn.Dense(use_bias=False)`; or `kernel_t`, see `_kernel`), computed in the
  compute dtype."""

  config: ModelConfig
  features: int
  axes: tuple
  out_dtype: jnp.dtype | None = None  # None: the compute dtype.

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c = self.config
    matmul, kernel = _kernel(self, "kernel", (x.shape[-1], self.features), self.axes)
    return matmul(x.astype(c.compute_dtype), kernel, self.out_dtype)


class MLP(nn.Module):
  """SwiGLU: down(silu(gate(x)) * up(x)), the activation computed in fp32.

  fp32 because the products accumulate in fp32 anyway: `h` is rounded once, not after
  each step of the silu (XLA:CPU has no bf16 arithmetic and rounds every bf16
  intermediate; that made the bf16 prefill's activation 3x slower, benchmarks/RESULTS.md).
  """

  config: ModelConfig

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c = self.config
    if self.has_variable("params", GATE_UP + OUTPUT_MAJOR):  # The decode layout.
      w = self.get_variable("params", GATE_UP + OUTPUT_MAJOR).astype(c.compute_dtype)
      gate, up = jnp.split(project_output_major(x.astype(c.compute_dtype), w, jnp.float32), 2,
                           axis=-1)
    else:
      gate = Linear(c, c.mlp_dim, ("embed", "mlp"), jnp.float32, name="gate")(x)
      up = Linear(c, c.mlp_dim, ("embed", "mlp"), jnp.float32, name="up")(x)
    h = constrain((nn.silu(gate) * up).astype(c.compute_dtype), ("batch", "length", "mlp"))
    return Linear(c, c.hidden_size, ("mlp", "embed"), name="down")(h)


class Block(nn.Module):
  """Pre-norm decoder block; the signature is `nn.scan`'s `(carry, *xs) -> (carry, ys)`."""

  config: ModelConfig

  @nn.compact
  def __call__(self, x, layer_cache, rotary, mask, cache_mask, cache_index):
    h, new_cache = Attention(self.config, name="attn")(
        RMSNorm(self.config, name="attn_norm")(x), rotary, mask, layer_cache, cache_mask,
        cache_index)
    x = x + h
    x = x + MLP(self.config, name="mlp")(RMSNorm(self.config, name="mlp_norm")(x))
    return constrain(x, ("batch", "length", "embed")), new_cache


class Transformer(nn.Module):
  """Embedding -> L blocks -> final norm -> LM / PRM / value heads.

  The blocks are scanned (`scan_layers`, parameters `layers` with `[L, ...]` leaves) or
  unrolled into a Python loop (parameters `layers_0` ... `layers_{L-1}`, KV cache as L
  per-layer buffers); `prm_jax.models.forward` picks the form from the parameters.
  Called only through `forward`, which builds `positions` and the masks.
  """

  config: ModelConfig
  scan_layers: bool = True

  @nn.compact
  def __call__(self, input_ids, positions, mask, cache_kv=None, cache_mask=None,
               cache_index=None, step_positions=None, lm_logits="all"):
    c = self.config
    embedding = self.param("embedding", _init(c, ("vocab", "embed")),
                           (c.vocab_size, c.hidden_size), c.params_dtype)
    x = embed(embedding, input_ids).astype(c.compute_dtype)
    x = constrain(x, ("batch", "length", "embed"))
    rotary = rotary_angles(positions, c.head_dim, c.rope_theta)

    block = Block
    if c.remat != "none":
      block = nn.remat(Block, policy=REMAT_POLICIES[c.remat], prevent_cse=False)
    if self.scan_layers:
      layers = nn.scan(block, variable_axes={"params": 0}, split_rngs={"params": True},
                       in_axes=(0, nn.broadcast, nn.broadcast, nn.broadcast, nn.broadcast),
                       length=c.num_layers, metadata_params={nn.PARTITION_NAME: "layers"})
      x, new_cache_kv = layers(c, name="layers")(x, cache_kv, rotary, mask, cache_mask,
                                                 cache_index)
    else:
      new_cache_kv = []
      for i in range(c.num_layers):
        x, layer_kv = block(c, name=f"layers_{i}")(
            x, None if cache_kv is None else cache_kv[i], rotary, mask, cache_mask,
            cache_index)
        new_cache_kv.append(layer_kv)
    hidden = RMSNorm(c, name="final_norm")(x)
    outputs = {"hidden": hidden, "cache_kv": new_cache_kv}

    # Heads. `init` passes dummy step positions so that every head's parameters exist.
    if c.tie_embeddings:
      # The embedding `[V, D]` is the head, output-major: the decode layout when decoding
      # (one row per sequence), the trained `h @ E^T` otherwise.
      lm_matmul = project_output_major if lm_logits == "last" else project
      lm_kernel = embedding.astype(c.compute_dtype)
      lm_kernel = lm_kernel if lm_logits == "last" else lm_kernel.T
    else:
      lm_matmul, lm_kernel = _kernel(self, "lm_head", (c.hidden_size, c.vocab_size),
                                     ("embed", "vocab"))
    if lm_logits != "none":
      h = hidden[:, -1:] if lm_logits == "last" else hidden
      logits = lm_matmul(h, lm_kernel, jnp.float32)
      outputs["logits"] = constrain(logits, ("batch", "length", "vocab"))
    if step_positions is not None:
      # Hidden state at each step's last token, then the head in fp32.
      index = jnp.clip(step_positions, 0, hidden.shape[1] - 1)[..., None]
      h_steps = jnp.take_along_axis(hidden, index, axis=1)
      if c.prm_head_hidden:
        h_steps = jax.nn.relu(self._fp32_head("prm_hidden", c.prm_head_hidden)(h_steps))
      head = self._fp32_head("prm_head", c.num_prm_logits,
                             None if c.prm_head_hidden else "embed")(h_steps)
      # Both head kinds reduce to one logit with p = sigmoid(logit): for two classes
      # softmax([l0, l1])[1] == sigmoid(l1 - l0).
      step_logits = head[..., 1] - head[..., 0] if c.prm_head == "two_class" else head[..., 0]
      outputs["step_logits"] = step_logits
      outputs["step_scores"] = jax.nn.sigmoid(step_logits)
    if c.value_head:
      outputs["values"] = self._fp32_head("value_head", 1)(hidden)[..., 0]
    return outputs

  def _fp32_head(self, name: str, features: int, in_axis: str | None = "embed") -> nn.Dense:
    c = self.config
    return nn.Dense(features, dtype=jnp.float32, param_dtype=c.params_dtype,
                    kernel_init=_init(c, (in_axis, None)),
                    bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (None,)),
                    name=name)
