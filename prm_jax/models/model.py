"""The functional surface of the model: `init_params`, `init_cache`, `forward`.

Parameters are a plain nested dict of arrays (`params["layers"]` leaves carry a leading
`[L]` axis: the blocks are scanned). The KV cache is an explicit pytree:

    cache = {"k": [L, B, K, S, Dh], "v": [L, B, K, S, Dh],   # compute dtype
             "mask": [B, S] bool,    # slot holds a real (non-padding) token
             "index": [] int32}      # next slot to write (shared by the batch)

Rows are left-padded, so every row writes the same slot range; a row's own token count
is `mask.sum(-1)`, from which default positions continue. Slots may also be masked out
afterwards (the sampler drops the slots past a row's prefix): attention and positions
only ever count the slots the mask marks.

Scanned or unrolled layers. `unstack_layers(params)` splits `layers` into `layers_0` ...
`layers_{L-1}` (MaxText's `scan_layers=False`), and `forward` then runs the blocks as a
Python loop, with a cache of L per-layer buffers (`init_cache(..., unrolled=True)`:
`"k"`, `"v"` are tuples of `[B, K, S, Dh]` buffers) that each block updates in
place. Why both: scanning keeps compile time and training memory flat in L, but on
XLA:CPU every scanned step copies its layer's weights and cache slice out of the stacked
arrays, which dominates a decode step (see `prm_jax.sampling`, which decodes unrolled on
CPU). The results are the same either way.

Kernel orientation. `transpose_kernels(params)` stores every projection kernel
output-major (`q_kernel` `[D, H, Dh]` -> `q_kernel_t` `[H*Dh, D]`, ...; the MLP's gate and
up kernels as one `gate_up_kernel_t` `[2F, D]`), which `forward` applies as the left
operand of its product; the sampler's CPU decode layout is both transforms. Same results,
different speed on XLA:CPU (`transformer.project_output_major`).
"""

from __future__ import annotations

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from prm_jax.models.config import ModelConfig
from prm_jax.models.transformer import (GATE_UP, KERNEL_IN_DIMS, OUTPUT_MAJOR, Transformer,
                                         write_slots)

LM_LOGITS = ("all", "last", "none")
# A cacheless forward (training, scoring) of at most this many blocks runs them unrolled
# even from stacked parameters: on XLA:CPU each scanned step copies its layer's weights
# and saved activations in and out of the stacked arrays (a PRM grad step: 7-14%
# slower scanned), while unrolling a few blocks costs little compile time. Deeper models
# stay scanned, so compile time and memory stay flat in L.
UNROLL_MAX_LAYERS = 8


def _init_variables(config: ModelConfig, rng: jax.Array):
  ids = jnp.zeros((1, 1), jnp.int32)
  return Transformer(config).init(rng, ids, ids, jnp.ones((1, 1, 1), bool), step_positions=ids)


def init_params(config: ModelConfig, rng: jax.Array) -> dict:
  """Freshly initialised parameters as a plain nested dict (dtype `config.param_dtype`)."""
  return nn.unbox(_init_variables(config, rng))["params"]


def abstract_params(config: ModelConfig) -> dict:
  """`jax.ShapeDtypeStruct` tree of the parameters, allocating nothing."""
  return _copy_tree(_abstract_params(config))


def param_logical_axes(config: ModelConfig) -> dict:
  """Tree (same structure as the params) of `PartitionSpec`s over logical axis names."""
  return _copy_tree(_param_logical_axes(config))


# Traced once per config: every sampler call and every sharded placement asks for these,
# and tracing the model's init costs ~0.1 s of host time each time. Callers get fresh
# containers (`_copy_tree`), so editing one cannot change what the next caller sees.
@functools.lru_cache(maxsize=64)
def _abstract_params(config: ModelConfig) -> dict:
  return jax.eval_shape(functools.partial(init_params, config), jax.random.key(0))


@functools.lru_cache(maxsize=64)
def _param_logical_axes(config: ModelConfig) -> dict:
  boxed = jax.eval_shape(functools.partial(_init_variables, config), jax.random.key(0))
  return nn.get_partition_spec(boxed)["params"]


def _copy_tree(tree: dict) -> dict:
  return jax.tree.map(lambda leaf: leaf, tree, is_leaf=lambda x: isinstance(x, P))


def unstack_layers(params: dict) -> dict:
  """The same parameters with `layers` (leaves `[L, ...]`) split into `layers_0` ...
  `layers_{L-1}`: the unrolled layout (module docstring). Inside `jit` this is one copy
  of the block weights."""
  if "layers" not in params:
    raise ValueError("unstack_layers needs stacked parameters (a `layers` entry); got keys "
                     f"{sorted(params)}")
  layers = params["layers"]
  count = jax.tree.leaves(layers)[0].shape[0]
  unstacked = {name: value for name, value in params.items() if name != "layers"}
  unstacked.update({f"layers_{i}": jax.tree.map(lambda x, i=i: x[i], layers)
                    for i in range(count)})
  return unstacked


def transpose_kernels(params: dict) -> dict:
  """The same parameters with every projection kernel (the blocks' and an untied LM head's)
  stored output-major: `name` `[*in, *out]` becomes `name_t`, the `[prod(out), prod(in)]`
  matrix that `forward` then applies as the left operand (`transformer.
  project_output_major`), which XLA:CPU decodes faster (`prm_jax.sampling`). The MLP's
  gate and up kernels become one `[2F, D]` matrix `mlp/gate_up_kernel_t` (gate rows
  first): one product instead of two that XLA:CPU would run concurrently, one thread each.
  Works on stacked and unstacked blocks. Convert in a jitted call of its own, as the
  sampler does: inside the program that runs the model, XLA folds the transposition back
  into the products."""
  def convert(tree: dict, lead: int) -> dict:
    out = {}
    for name, value in tree.items():
      if isinstance(value, dict):
        out[name] = convert(value, lead)
      elif name in KERNEL_IN_DIMS:
        shape = value.shape
        matrix = value.reshape(*shape[:lead], -1, math.prod(
            shape[lead + KERNEL_IN_DIMS[name]:]))
        out[name + OUTPUT_MAJOR] = jnp.swapaxes(matrix, -1, -2)
      else:
        out[name] = value
    if set(out.get("gate", ())) == set(out.get("up", ())) == {"kernel" + OUTPUT_MAJOR}:
      out[GATE_UP + OUTPUT_MAJOR] = jnp.concatenate(
          [out.pop(part)["kernel" + OUTPUT_MAJOR] for part in ("gate", "up")], axis=-2)
    return out

  converted = {}
  for name, value in params.items():
    if name == "layers" or name.startswith("layers_"):
      converted[name] = convert(value, lead=int(name == "layers"))
    elif name == "lm_head":
      converted.update(convert({name: value}, lead=0))
    else:  # Embedding (read by rows), norms, and the fp32 PRM / value heads stay as they are.
      converted[name] = value
  return converted


def _scanned(config: ModelConfig, params: dict) -> bool:
  """Whether `params` hold stacked (scanned) or unstacked (unrolled) blocks."""
  if "layers" in params:
    return True
  if all(f"layers_{i}" in params for i in range(config.num_layers)):
    return False
  raise ValueError(f"params hold neither stacked blocks (`layers`) nor the "
                   f"{config.num_layers} unstacked `layers_i` of this config; got keys "
                   f"{sorted(params)}")


def _unrolled_cache(cache: dict) -> bool:
  """Whether `cache` holds L per-layer buffers (for unstacked parameters) or stacked ones."""
  return isinstance(cache["k"], (tuple, list))


def init_cache(config: ModelConfig, batch_size: int, max_length: int, dtype=None, *,
               unrolled: bool = False) -> dict:
  """An empty KV cache with `max_length` slots per row (see module docstring); `unrolled`:
  L per-layer buffers, for unstacked parameters."""
  if max_length > config.max_seq_len:
    raise ValueError(f"cache length {max_length} exceeds ModelConfig.max_seq_len="
                     f"{config.max_seq_len}")
  # Heads before slots: each head's keys and values are one contiguous matrix, which decode
  # attention reads ~1.7x faster on CPU than slots-major, and a slot's write is one
  # contiguous row per head (benchmarks/RESULTS.md).
  dtype = dtype or config.compute_dtype
  layer = (batch_size, config.num_kv_heads, max_length, config.head_dim)
  if unrolled:
    k = tuple(jnp.zeros(layer, dtype) for _ in range(config.num_layers))
    v = tuple(jnp.zeros(layer, dtype) for _ in range(config.num_layers))
  else:
    k = jnp.zeros((config.num_layers,) + layer, dtype)
    v = jnp.zeros((config.num_layers,) + layer, dtype)
  return {"k": k, "v": v, "mask": jnp.zeros((batch_size, max_length), bool),
          "index": jnp.zeros((), jnp.int32)}


def cache_logical_axes(cache: dict | None = None) -> dict:
  """Logical `PartitionSpec`s of a cache pytree (stacked unless `cache` is unrolled)."""
  k = v = P("batch", "kv_heads", "length", "head_dim")
  if cache is not None and _unrolled_cache(cache):
    layers = len(cache["k"])
    k, v = (k,) * layers, (v,) * layers
  else:
    k, v = P("layers", *k), P("layers", *v)
  return {"k": k, "v": v, "mask": P("batch", "length"), "index": P()}


def default_positions(attention_mask: jax.Array, offset: jax.Array | int = 0) -> jax.Array:
  """Position of each token = number of real tokens before it (+ `offset [B]`), pads at 0.

  With left padding this gives every row positions 0, 1, ... from its first real token.
  """
  mask = attention_mask.astype(jnp.int32)
  offset = jnp.asarray(offset, jnp.int32).reshape(-1, 1)
  return jnp.maximum(offset + jnp.cumsum(mask, axis=-1) - 1, 0)


def forward(config: ModelConfig, params: dict, input_ids: jax.Array, *,
            attention_mask: jax.Array | None = None, positions: jax.Array | None = None,
            step_positions: jax.Array | None = None, cache: dict | None = None,
            lm_logits: str = "all") -> dict:
  """Run the decoder and its heads. The one entry point the rest of prm_jax calls.

  Args:
    config: the model's static config.
    params: parameter tree from `init_params` / a checkpoint loader.
    input_ids: `[B, T]` int token ids.
    attention_mask: `[B, T]` (bool or 0/1), 1 for real tokens; default all ones. Padding
      must be on the left when a cache is used or positions are defaulted.
    positions: `[B, T]` int rotary positions; default: count of real tokens before each
      token (continuing from the cache), so left-padded rows start at 0.
    step_positions: `[B, S]` int indices into T of each step's last token. Entries < 0
      mark missing steps; their scores are meaningless and must be masked by the caller.
    cache: KV cache from `init_cache` / a previous call; the T new tokens are written at
      slots `cache["index"]...`. The caller must leave room (`index + T <= slots`):
      XLA clamps an out-of-range write.
    lm_logits: "all" (`[B, T, V]`), "last" (`[B, 1, V]`, for sampling) or "none".

  Returns:
    dict with `hidden [B, T, D]` (compute dtype, after the final norm), `logits` (fp32,
    unless lm_logits="none"), `step_logits`/`step_scores` `[B, S]` (fp32, score = sigmoid
    of logit = P(step correct)) when `step_positions` is given, `values [B, T]` (fp32) when
    the config has a value head, and `cache` (updated) when a cache was given.
  """
  input_ids = jnp.asarray(input_ids)
  if input_ids.ndim != 2 or not jnp.issubdtype(input_ids.dtype, jnp.integer):
    raise ValueError(f"input_ids must be a [batch, length] integer array, got shape "
                     f"{input_ids.shape} dtype {input_ids.dtype}")
  if lm_logits not in LM_LOGITS:
    raise ValueError(f"lm_logits={lm_logits!r} is not one of {LM_LOGITS}")
  batch, length = input_ids.shape
  if attention_mask is None:
    attention_mask = jnp.ones((batch, length), bool)
  attention_mask = jnp.asarray(attention_mask).astype(bool)
  if attention_mask.shape != input_ids.shape:
    raise ValueError(f"attention_mask shape {attention_mask.shape} != input_ids shape "
                     f"{input_ids.shape}")

  scan_layers = _scanned(config, params)
  if scan_layers and cache is None and config.num_layers <= UNROLL_MAX_LAYERS:
    # Unrolled inside this program: a copy of the block weights, no per-step slicing.
    params, scan_layers = unstack_layers(params), False
  causal = jnp.tril(jnp.ones((length, length), bool))
  mask = attention_mask[:, None, :] & causal[None]
  if cache is None:
    if length > config.max_seq_len:
      raise ValueError(f"sequence length {length} exceeds ModelConfig.max_seq_len="
                       f"{config.max_seq_len}")
    cache_kv, cache_mask, cache_index, offset = None, None, None, 0
  else:
    if _unrolled_cache(cache) == scan_layers:
      raise ValueError("the cache layout must match the parameters': stacked parameters take "
                       "init_cache(...), unstacked ones init_cache(..., unrolled=True)")
    slots = cache["mask"].shape[1]
    if length > slots:
      raise ValueError(f"{length} new tokens do not fit a cache of {slots} slots")
    index = cache["index"]
    # The new tokens attend the filled slots before `index`, and each other causally.
    filled = (cache["mask"] & (jnp.arange(slots) < index))[:, None, :]
    if scan_layers:
      # Written after the layer scan (one update of the whole cache, not one per layer).
      cache_kv, cache_mask, cache_index = (cache["k"], cache["v"]), filled, None
    else:
      # Each block writes its buffers at `index` first, then attends every slot: the
      # filled ones and, causally, the real new tokens.
      new = jnp.arange(slots) - index  # Slot s receives new token s - index.
      is_new = (new >= 0) & (new < length)  # [S]
      causal_new = new[None, :] <= jnp.arange(length)[:, None]  # [T, S]
      real_new = jnp.take(attention_mask, jnp.clip(new, 0, length - 1), axis=1)  # [B, S]
      cache_mask = filled | (is_new[None, None] & causal_new[None] & real_new[:, None])
      cache_kv, cache_index = tuple(zip(cache["k"], cache["v"])), index
    offset = jnp.sum(cache["mask"], axis=-1)
  if positions is None:
    positions = default_positions(attention_mask, offset)

  outputs = Transformer(config, scan_layers=scan_layers).apply(
      {"params": params}, input_ids, positions, mask, cache_kv, cache_mask, cache_index,
      step_positions=step_positions, lm_logits=lm_logits)
  new_kv = outputs.pop("cache_kv")
  if cache is not None:
    if scan_layers:
      k = write_slots(cache["k"], new_kv[0], index, axis=3)
      v = write_slots(cache["v"], new_kv[1], index, axis=3)
    else:
      k, v = tuple(k for k, _ in new_kv), tuple(v for _, v in new_kv)
    outputs["cache"] = {
        "k": k, "v": v,
        "mask": jax.lax.dynamic_update_slice(cache["mask"], attention_mask, (0, index)),
        "index": index + length}
  return outputs
