"""Batched KV-cache sampling: prompts, shared prefixes, and continuations from any prefix.

    out = generate(config, params, ids, mask, max_new_tokens=64, temperature=0.7, top_p=0.95,
                   stop_tokens=(eos,), rng=jax.random.key(0), num_samples=8)
    out["tokens"] [B*8, 64]; out["logprobs"], out["entropy"] [B*8, 64]; out["lengths"] [B*8]

One jitted call per batch: a prefill of the (left-padded) prompts into an explicit KV cache,
then a single `lax.while_loop` of one-token decode steps over the `DecodeState` pytree. The
static `SamplingConfig` (like `ModelConfig`) is closed over: one compiled program serves
every call with the same shapes and settings.

Rows and prefixes. Every output row continues a *prefix*: the first `prefix_lengths[r]` real
tokens of prompt `sources[r]`. The prompts are prefilled once; rows copy their prompt's cache
(`jnp.take` over the batch axis) and mask out the slots past their prefix. So
  * `generate(..., num_samples=N)` gives each prompt N continuations (Best-of-N, GRPO groups,
    Monte Carlo rollouts) that share one prefill;
  * `continue_prefixes` continues many prefixes of the same prompts in one batch, e.g. k
    rollouts from every step boundary of many trajectories (Monte Carlo step labels), with
    an optional forced next token per row (EDU branching into the top-2 token).
The first decode step feeds the prefix's last token again (its cached copy is masked out),
so the logits of every sampled token come from a decode step, the prefill computes no LM
head, and a row's prefix may end anywhere.

Decode layout. With `decode_layout` (the default on CPU) the call first converts the
parameters, in a jitted call of its own, to the layout XLA:CPU decodes fastest, and the
sampling program runs on that copy (it lives for the call). To sample many batches with
the same weights (Best-of-N, rollouts between two policy updates), convert once with
`decode_params` and pass the result instead: calls then skip the copy. The layout:
  * blocks unstacked (`models.unstack_layers`), run as a Python loop over per-layer
    weights and per-layer KV-cache buffers, each updated in place: scanned, XLA:CPU copies
    each layer's weights and cache slice out of the stacked arrays at every step;
  * projection kernels output-major (`models.transpose_kernels`), each weight the left
    operand of its product: as the right one, XLA:CPU's matmul repacks it at every step
    (bf16 decode step -21%). It is converted outside the sampling program because inside
    it XLA would fold the transposition back into the products.
Both layouts give the same tokens (benchmarks/RESULTS.md has the measurements).

Randomness. Row r draws step t from `fold_in(row_key[r], t)`: give one key per row (`rng`
of shape [R]) and a row's tokens depend only on its key, its prefix and the model -- not on
the other rows (batch composition) nor on whether its prefix was shared. A single key gives
row r the key `fold_in(rng, r)`.

Per-token outputs are statistics of the model's own (untempered, untruncated) distribution
`softmax(logits)`: `logprobs` of the chosen token (what RL objectives need), `entropy`
(EDU anchors), `top1`/`top2` ids and probabilities. Positions after a stop token are padding
(`pad_id`, statistics 0); the stop token itself is kept and counted in `lengths`.
"""

from __future__ import annotations

import dataclasses
import functools

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from prm_jax import models, parallel
from prm_jax.kernels import token_stats
from prm_jax.models.config import ModelConfig
from prm_jax.models.transformer import constrain, move_as_bits


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
  """How tokens are chosen (static: hashable, closed over by the jitted loop).

  max_new_tokens: N, decode steps (tokens generated per row, stop tokens included).
  temperature: 0 is greedy (argmax); otherwise logits are divided by it.
  top_k: keep the k most likely tokens (None: all).
  top_p: keep the smallest set of most likely tokens whose probability reaches p (None: all);
    applied after top_k, on the tempered distribution.
  stop_tokens: ids that end a row (kept in the output; later positions are padding).
  pad_id: id written after a row has stopped.
  """

  max_new_tokens: int
  temperature: float = 0.0
  top_k: int | None = None
  top_p: float | None = None
  stop_tokens: tuple[int, ...] = ()
  pad_id: int = 0

  def __post_init__(self):
    if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
      raise ValueError(f"max_new_tokens must be a positive int, got {self.max_new_tokens!r}")
    if not self.temperature >= 0:
      raise ValueError(f"temperature must be >= 0, got {self.temperature!r}")
    if self.top_k is not None and (not isinstance(self.top_k, int) or self.top_k < 1):
      raise ValueError(f"top_k must be a positive int or None, got {self.top_k!r}")
    if self.top_p is not None and not 0 < self.top_p <= 1:
      raise ValueError(f"top_p must be in (0, 1] or None, got {self.top_p!r}")
    object.__setattr__(self, "stop_tokens", tuple(int(t) for t in self.stop_tokens))


class DecodeState(flax.struct.PyTreeNode):
  """The `lax.while_loop` carry. R rows, N = max_new_tokens.

  step: `[]` int32, tokens generated so far.
  cache: KV cache pytree (`models.init_cache` layout) with R rows.
  inputs: `[R]` int32, the token each row feeds next.
  keys: `[R]` PRNG keys, one per row.
  stopped: `[R]` bool, the row has emitted a stop token.
  lengths: `[R]` int32, tokens generated up to and including the stop token.
  tokens, top1, top2: `[R, N]` int32; logprobs, entropy, top1_prob, top2_prob: `[R, N]` fp32.
  """

  step: jax.Array
  cache: dict
  inputs: jax.Array
  keys: jax.Array
  stopped: jax.Array
  lengths: jax.Array
  tokens: jax.Array
  logprobs: jax.Array
  entropy: jax.Array
  top1: jax.Array
  top1_prob: jax.Array
  top2: jax.Array
  top2_prob: jax.Array


STAT_NAMES = ("logprobs", "entropy", "top1", "top1_prob", "top2", "top2_prob")
OUTPUT_NAMES = ("tokens", "lengths", "stopped") + STAT_NAMES


# ----------------------------------------------------------------------------- choosing


def _nucleus(logits: jax.Array, top_p: float, iterations: int = 32) -> jax.Array:
  """Mask (-inf) all but the smallest set of most likely tokens with probability >= `top_p`.

  Bisects the probability threshold `tau` (the set is `p >= tau`, ties at the boundary kept)
  instead of sorting the vocabulary: XLA:CPU sorts 50k logits in tens of milliseconds per
  row batch, while each bisection step is one masked sum. `logits` `[R, K]`, any order.
  """
  probs = jax.nn.softmax(logits, axis=-1)

  def bisect(_, bounds):
    low, high = bounds  # Invariant: mass(p >= low) >= top_p.
    mid = (low + high) / 2
    enough = jnp.sum(jnp.where(probs >= mid, probs, 0), axis=-1, keepdims=True) >= top_p
    return jnp.where(enough, mid, low), jnp.where(enough, high, mid)

  start = (jnp.zeros_like(probs[:, :1]), jnp.max(probs, axis=-1, keepdims=True))
  low, _ = jax.lax.fori_loop(0, iterations, bisect, start)
  return jnp.where(probs >= low, logits, -jnp.inf)


def _inverse_cdf(keys: jax.Array, logits: jax.Array) -> jax.Array:
  """One categorical draw per row from `logits` `[R, K]` with one uniform per row.

  `jax.random.categorical` draws K Gumbel numbers per row; on a 50k vocabulary that is
  most of a CPU decode step, while the inverse CDF needs one uniform and a cumsum.
  """
  probs = jax.nn.softmax(logits, axis=-1)
  cdf = jnp.cumsum(probs, axis=-1)
  u = jax.vmap(lambda k: jax.random.uniform(k))(keys)[:, None] * cdf[:, -1:]
  return jnp.minimum(jnp.sum(cdf <= u, axis=-1), logits.shape[-1] - 1).astype(jnp.int32)


def choose_tokens(sampling: SamplingConfig, logits: jax.Array, keys: jax.Array) -> jax.Array:
  """`[R]` int32 tokens from fp32 `logits` `[R, V]`, row r drawing with `keys[r]`."""
  if sampling.temperature == 0:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  logits = logits / sampling.temperature
  ids = None
  if sampling.top_k is not None:
    # The barrier keeps XLA:CPU's fast top-k kernel: slicing or gathering from top_k's
    # outputs otherwise turns it into a full sort of the vocabulary (~100x slower).
    logits, ids = jax.lax.optimization_barrier(
        jax.lax.top_k(logits, min(sampling.top_k, logits.shape[-1])))
  if sampling.top_p is not None:
    logits = _nucleus(logits, sampling.top_p)
  choice = _inverse_cdf(keys, logits)
  if ids is None:
    return choice
  return jnp.take_along_axis(ids, choice[:, None], axis=-1)[:, 0].astype(jnp.int32)


# ----------------------------------------------------------------------------- the loop


def _decode_step(config: ModelConfig, sampling: SamplingConfig, params, state: DecodeState
                 ) -> DecodeState:
  out = models.forward(config, params, state.inputs[:, None], cache=state.cache,
                       lm_logits="last")
  logits = out["logits"][:, 0]
  if sampling.temperature == 0:
    # Greedy: the statistics' top-1 is the argmax (ties to the lower id, like argmax), so
    # the logits are read once rather than twice.
    stats = token_stats(logits)
    tokens, stats["logprobs"] = stats["top1"], jnp.log(stats["top1_prob"])
  else:
    step_keys = jax.vmap(jax.random.fold_in, (0, None))(state.keys, state.step)
    tokens = choose_tokens(sampling, logits, step_keys)
    stats = token_stats(logits, tokens)
    stats["logprobs"] = stats.pop("logprob")
  live = ~state.stopped
  tokens = jnp.where(live, tokens, sampling.pad_id)
  stopped = state.stopped | jnp.isin(tokens, jnp.asarray(sampling.stop_tokens, jnp.int32))

  def write(buffer, value):  # Rows that had already stopped write 0.
    column = jnp.where(live, value, 0).astype(buffer.dtype)[:, None]
    return jax.lax.dynamic_update_slice_in_dim(buffer, column, state.step, axis=1)

  return state.replace(
      step=state.step + 1, cache=out["cache"], inputs=tokens, stopped=stopped,
      lengths=state.lengths + live,
      tokens=jax.lax.dynamic_update_slice_in_dim(state.tokens, tokens[:, None], state.step, 1),
      **{name: write(getattr(state, name), stats[name]) for name in STAT_NAMES})


def _sample(config: ModelConfig, sampling: SamplingConfig, params, input_ids, attention_mask,
            sources, prefix_lengths, next_tokens, key_data) -> dict:
  """Prefill the prompts `[M, T]`, then decode R rows (see module docstring); `params` in
  either layout."""
  prompts, length = input_ids.shape
  rows, steps = sources.shape[0], sampling.max_new_tokens
  # The prefill fills a cache of the prompts' T slots (so its attention reads no empty
  # slots); the rows' caches then get the `steps` slots the decode loop writes. The
  # barrier keeps XLA from constant-folding attention over the empty cache (seconds of
  # compile time for nothing).
  cache = jax.lax.optimization_barrier(models.init_cache(
      config, prompts, length, unrolled="layers" not in params))
  cache = models.forward(config, params, input_ids, attention_mask=attention_mask, cache=cache,
                         lm_logits="none")["cache"]
  # Rows copy their prompt's cache; slots past the prefix (left padding: the prefix ends
  # at slot `T - real + prefix_length`) are masked, and so is the prefix's last token,
  # which the first step feeds again unless the row has a forced next token.
  real = jnp.sum(attention_mask, axis=-1, dtype=jnp.int32)[sources]
  end = length - real + prefix_lengths
  forced = next_tokens >= 0
  keep = end - 1 + forced
  slots = jnp.arange(length + steps)

  def rows_of(x):  # `[(L,) M, K, T, Dh]` -> `[(L,) R, K, T + steps, Dh]`.
    grow = [(0, 0)] * x.ndim
    grow[-2] = (0, steps)
    # The batch axis of a key/value buffer: 0 per layer, 1 when stacked `[L, B, ...]`.
    return move_as_bits(lambda b: jnp.pad(jnp.take(b, sources, axis=x.ndim - 4), grow), x)

  row_cache = {"k": jax.tree.map(rows_of, cache["k"]), "v": jax.tree.map(rows_of, cache["v"]),
               "mask": jnp.pad(jnp.take(cache["mask"], sources, axis=0), ((0, 0), (0, steps)))
                       & (slots[None] < keep[:, None]),
               "index": cache["index"]}
  row_cache = jax.tree.map(lambda x, spec: constrain(x, tuple(spec)), row_cache,
                           models.cache_logical_axes(row_cache))
  inputs = jnp.where(forced, next_tokens, input_ids[sources, end - 1]).astype(jnp.int32)

  def buffer(dtype, fill=0):
    return jnp.full((rows, steps), fill, dtype)

  state = DecodeState(
      step=jnp.zeros((), jnp.int32), cache=row_cache, inputs=inputs,
      keys=jax.random.wrap_key_data(key_data), stopped=jnp.zeros((rows,), bool),
      lengths=jnp.zeros((rows,), jnp.int32), tokens=buffer(jnp.int32, sampling.pad_id),
      logprobs=buffer(jnp.float32), entropy=buffer(jnp.float32), top1=buffer(jnp.int32),
      top1_prob=buffer(jnp.float32), top2=buffer(jnp.int32), top2_prob=buffer(jnp.float32))
  state = jax.lax.while_loop(
      lambda s: (s.step < steps) & ~jnp.all(s.stopped),
      functools.partial(_decode_step, config, sampling, params), state)
  return {name: getattr(state, name) for name in OUTPUT_NAMES}


@jax.jit
def decode_params(params: dict) -> dict:
  """Stacked `params` in the decode layout (module docstring), materialised: convert once
  and pass the result to `generate` / `continue_prefixes` for every batch. On a mesh,
  convert parameters already placed with `parallel.param_shardings`."""
  return models.transpose_kernels(models.unstack_layers(params))


def _in_decode_layout(params: dict) -> bool:
  if "layers" in params:
    return False
  if "layers_0" in params:
    return True
  raise ValueError("params must be stacked (a `layers` entry, as loaded or trained) or in the "
                   f"decode layout (`decode_params`); got keys {sorted(params)}")


@functools.lru_cache(maxsize=64)
def _compiled(config: ModelConfig, sampling: SamplingConfig, mesh, rules, prompts_sharded: bool,
              param_shardings):
  """The sampling program; on a mesh, `param_shardings` (`(treedef, leaves)`, hashable) are
  those the parameters have, in whichever layout."""
  fn = functools.partial(_sample, config, sampling)
  if mesh is None:
    return jax.jit(fn)
  rows = parallel.batch_sharding(mesh, 1, rules)
  prompts = parallel.batch_sharding(mesh, 2, rules) if prompts_sharded else parallel.replicated(
      mesh)
  row_outputs = {name: parallel.batch_sharding(mesh, 1 if name in ("lengths", "stopped") else 2,
                                               rules) for name in OUTPUT_NAMES}
  return parallel.sharded_jit(
      fn, mesh, in_shardings=(jax.tree.unflatten(*param_shardings), prompts, prompts, rows, rows,
                              rows, parallel.batch_sharding(mesh, 2, rules)),
      out_shardings=row_outputs, rules=rules)


# ----------------------------------------------------------------------------- public API


def _row_keys(rng, rows: int) -> np.ndarray:
  """`[rows, 2]` uint32 key data: one key per row, from one key or from `[rows]` keys."""
  rng = jnp.asarray(jax.random.key(0) if rng is None else rng)
  if not jnp.issubdtype(rng.dtype, jax.dtypes.prng_key):
    rng = jax.random.wrap_key_data(jnp.asarray(rng, jnp.uint32))
  if rng.shape == ():
    rng = jax.vmap(lambda r: jax.random.fold_in(rng, r))(jnp.arange(rows))
  if rng.shape != (rows,):
    raise ValueError(f"rng must be one key or {rows} keys (one per output row), got key "
                     f"shape {rng.shape}")
  return np.asarray(jax.random.key_data(rng))


def _pad_rows(arrays: list[np.ndarray], multiple: int) -> tuple[list[np.ndarray], int]:
  """Repeat row 0 so the row count divides the batch sharding; returns (arrays, rows)."""
  rows = arrays[0].shape[0]
  extra = -rows % multiple
  if not extra:
    return arrays, rows
  return [np.concatenate([a, np.repeat(a[:1], extra, axis=0)]) for a in arrays], rows


def continue_prefixes(config: ModelConfig, params, input_ids, attention_mask=None, *,
                      sources, prefix_lengths, max_new_tokens: int, next_tokens=None,
                      temperature: float = 0.0, top_k: int | None = None,
                      top_p: float | None = None, stop_tokens=(), pad_id: int = 0, rng=None,
                      length_bucket: int = 32, decode_layout: bool | None = None, mesh=None,
                      rules=parallel.LOGICAL_AXIS_RULES) -> dict:
  """Continue R prefixes of M left-padded prompts, all in one batch.

  Args:
    config, params: the model: stacked parameters (as `init_params` and the loaders give),
      or their `decode_params` conversion.
    input_ids: `[M, T]` int prompts (trajectories), left-padded; attention_mask `[M, T]`.
    sources: `[R]` int, the prompt each row continues.
    prefix_lengths: `[R]` int, how many of that prompt's real tokens the row keeps
      (1 .. its real length): a step boundary of a trajectory, or all of a prompt.
    max_new_tokens, temperature, top_k, top_p, stop_tokens, pad_id: see `SamplingConfig`.
    next_tokens: `[R]` int, a token appended to each prefix before sampling (-1: none).
    rng: one PRNG key, or `[R]` keys (one per row; see module docstring); typed or raw
      (uint32) threefry keys. Default `jax.random.key(0)`.
    length_bucket: T is left-padded up to a multiple of this, so that prompts of nearby
      lengths reuse one compiled program.
    decode_layout: convert stacked parameters to the decode layout first (module
      docstring); None: on CPU only. Parameters already converted are used as they are.
    mesh: run data-parallel (rows over `batch`'s mesh axes) and tensor-parallel on it;
      `params` should be placed with `parallel.param_shardings`.
  Returns:
    dict of `[R, N]` arrays `tokens`, `logprobs`, `entropy`, `top1`, `top1_prob`, `top2`,
    `top2_prob`, and `[R]` `lengths`, `stopped` (see module docstring).
  """
  sampling = SamplingConfig(max_new_tokens=max_new_tokens, temperature=temperature,
                            top_k=top_k, top_p=top_p, stop_tokens=tuple(stop_tokens),
                            pad_id=pad_id)
  converted = _in_decode_layout(params)
  if converted and decode_layout is False:
    raise ValueError("decode_layout=False, but params are already in the decode layout")
  if decode_layout is None:
    device = mesh.devices.flat[0] if mesh is not None else jax.devices()[0]
    decode_layout = device.platform == "cpu"
  input_ids = np.asarray(input_ids, np.int32)
  if input_ids.ndim != 2:
    raise ValueError(f"input_ids must be [prompts, length], got shape {input_ids.shape}")
  mask = (np.ones(input_ids.shape, bool) if attention_mask is None
          else np.asarray(attention_mask, bool))
  if mask.shape != input_ids.shape:
    raise ValueError(f"attention_mask shape {mask.shape} != input_ids shape {input_ids.shape}")
  if np.any(mask[:, :-1] & ~mask[:, 1:]):
    raise ValueError("prompts must be left-padded (attention_mask 0...0 1...1 per row)")
  sources = np.asarray(sources, np.int32).reshape(-1)
  prefix_lengths = np.asarray(prefix_lengths, np.int32).reshape(-1)
  rows = sources.shape[0]
  next_tokens = np.full(rows, -1, np.int32) if next_tokens is None else np.asarray(
      next_tokens, np.int32).reshape(-1)
  if not (prefix_lengths.shape == next_tokens.shape == (rows,)):
    raise ValueError(f"sources {sources.shape}, prefix_lengths {prefix_lengths.shape} and "
                     f"next_tokens {next_tokens.shape} must all be [rows]")
  if np.any((sources < 0) | (sources >= input_ids.shape[0])):
    raise ValueError(f"sources must index the {input_ids.shape[0]} prompts")
  if np.any(next_tokens >= config.vocab_size):
    raise ValueError(f"next_tokens must be -1 or token ids < vocab_size={config.vocab_size}")
  real = mask.sum(-1)[sources]
  bad = np.flatnonzero((prefix_lengths < 1) | (prefix_lengths > real))
  if bad.size:
    r = bad[0]
    raise ValueError(f"row {r}: prefix_lengths={prefix_lengths[r]} but prompt {sources[r]} has "
                     f"{real[r]} real tokens (need 1 <= prefix_length <= real)")
  total = -(-input_ids.shape[1] // length_bucket) * length_bucket
  if total + max_new_tokens > config.max_seq_len:
    raise ValueError(f"prompt length {total} (bucketed) + max_new_tokens {max_new_tokens} "
                     f"exceeds ModelConfig.max_seq_len={config.max_seq_len}")
  pad = ((0, 0), (total - input_ids.shape[1], 0))
  input_ids, mask = np.pad(input_ids, pad), np.pad(mask, pad)
  keys = _row_keys(rng, rows)

  prompts_sharded = False
  if mesh is not None:
    parallelism = parallel.batch_parallelism(mesh, rules)
    prompts_sharded = input_ids.shape[0] % parallelism == 0
    (sources, prefix_lengths, next_tokens, keys), rows = _pad_rows(
        [sources, prefix_lengths, next_tokens, keys], parallelism)
    if not converted:
      params = jax.device_put(params, parallel.param_shardings(config, mesh, rules))
  if decode_layout and not converted:
    params = decode_params(params)
  shardings = None
  if mesh is not None:
    leaves, treedef = jax.tree.flatten(jax.tree.map(lambda x: x.sharding, params))
    shardings = (treedef, tuple(leaves))
  run = _compiled(config, sampling, mesh, tuple(rules), prompts_sharded, shardings)
  out = run(params, input_ids, mask, sources, prefix_lengths, next_tokens, keys)
  return {name: value[:rows] for name, value in out.items()}


def generate(config: ModelConfig, params, input_ids, attention_mask=None, *,
             max_new_tokens: int, temperature: float = 0.0, top_k: int | None = None,
             top_p: float | None = None, stop_tokens=(), rng=None, num_samples: int = 1,
             pad_id: int = 0, length_bucket: int = 32, decode_layout: bool | None = None,
             mesh=None, rules=parallel.LOGICAL_AXIS_RULES) -> dict:
  """Sample `num_samples` continuations of each of B left-padded prompts `[B, T]`.

  Row `b * num_samples + s` is sample s of prompt b; the samples of a prompt share its
  prefill. Arguments and outputs as `continue_prefixes` (R = B * num_samples rows).
  """
  input_ids = np.asarray(input_ids, np.int32)
  mask = (np.ones(input_ids.shape, bool) if attention_mask is None
          else np.asarray(attention_mask, bool))
  sources = np.repeat(np.arange(input_ids.shape[0]), num_samples)
  return continue_prefixes(
      config, params, input_ids, mask, sources=sources, prefix_lengths=mask.sum(-1)[sources],
      max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
      stop_tokens=stop_tokens, pad_id=pad_id, rng=rng, length_bucket=length_bucket,
      decode_layout=decode_layout, mesh=mesh, rules=rules)
