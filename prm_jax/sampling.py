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
row r the key `fold_in(rng, r)`. With `key_offsets` row r draws step t from
`fold_in(row_key[r], key_offsets[r] + t)`: a row decoded over several calls (`resume`), each
offset by the tokens it has so far, draws as if decoded in one.

Per-token outputs are statistics of the model's own (untempered, untruncated) distribution
`softmax(logits)`: `logprobs` of the chosen token (what RL objectives need), `entropy`
(EDU anchors), `top1`/`top2` ids and probabilities. Positions after a stop token are padding
(`pad_id`, statistics 0); the stop token itself is kept and counted in `lengths`.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Protocol

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


class TokenRule(Protocol):
  """A per-step hook of the decode loop (static: hashable, closed over like `SamplingConfig`).

  Called once per decode step on every row, after the sampler chose `tokens [R]` and
  computed the statistics `stats` (`[R]` arrays: `entropy`, `top1`, `top1_prob`, `top2`,
  `top2_prob`, `logprobs`) of the untempered distribution, with `carry`, the rule's own
  pytree of per-row state (`[R, ...]` leaves; given by the caller, carried by the loop).
  Returns `(tokens, halt, mark, carry)`: the tokens to emit (a rule may replace the
  choice); `halt [R]` bool -- rows that stop *before* emitting this step's token (its
  statistics and the chosen token are still recorded at the row's position `lengths[r]`,
  which is not advanced); `mark [R]` bool, recorded per step in the output `marks` (what
  the rule noticed there); and the new carry. EDU branching (`prm_jax.labeling.edu`)
  marks high-entropy tokens, where its driver later forks the rows (`resume` with `keep`).
  """

  def __call__(self, tokens: jax.Array, stats: dict, carry: Any) -> tuple[
      jax.Array, jax.Array, jax.Array, Any]:
    ...


class DecodeState(flax.struct.PyTreeNode):
  """The `lax.while_loop` carry. R rows, N = max_new_tokens.

  step: `[]` int32, decode steps run so far.
  cache: KV cache pytree (`models.init_cache` layout) with R rows.
  inputs: `[R]` int32, the token each row feeds next.
  keys: `[R]` PRNG keys, one per row.
  offsets: `[R]` int32, row r draws step t from `fold_in(keys[r], offsets[r] + t)`.
  limits: `[R]` int32, the most tokens a row may emit (<= N).
  done: `[R]` bool, the row decodes no more (stop token, limit, or halt).
  stopped: `[R]` bool, the row has emitted a stop token.
  halted: `[R]` bool, a `TokenRule` halted the row.
  lengths: `[R]` int32, tokens emitted, up to and including the stop token.
  tokens, top1, top2: `[R, N]` int32; logprobs, entropy, top1_prob, top2_prob: `[R, N]` fp32.
  marks: `[R, N]` bool, the `TokenRule`'s marks (False without a rule).
  rule_carry: the `TokenRule`'s per-row state (`()` without a rule).
  """

  step: jax.Array
  cache: dict
  inputs: jax.Array
  keys: jax.Array
  offsets: jax.Array
  limits: jax.Array
  done: jax.Array
  stopped: jax.Array
  halted: jax.Array
  lengths: jax.Array
  tokens: jax.Array
  logprobs: jax.Array
  entropy: jax.Array
  top1: jax.Array
  top1_prob: jax.Array
  top2: jax.Array
  top2_prob: jax.Array
  marks: jax.Array
  rule_carry: Any = ()


STAT_NAMES = ("logprobs", "entropy", "top1", "top1_prob", "top2", "top2_prob", "marks")
OUTPUT_NAMES = ("tokens", "lengths", "stopped", "halted") + STAT_NAMES


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


def _decode_step(config: ModelConfig, sampling: SamplingConfig, rule: TokenRule | None, params,
                 state: DecodeState) -> DecodeState:
  out = models.forward(config, params, state.inputs[:, None], cache=state.cache,
                       lm_logits="last")
  logits = out["logits"][:, 0]
  if sampling.temperature == 0:
    # Greedy: the statistics' top-1 is the argmax (ties to the lower id, like argmax), so
    # the logits are read once rather than twice.
    stats = token_stats(logits)
    tokens, stats["logprobs"] = stats["top1"], jnp.log(stats["top1_prob"])
  else:
    step_keys = jax.vmap(jax.random.fold_in)(state.keys, state.offsets + state.step)
    tokens = choose_tokens(sampling, logits, step_keys)
    stats = token_stats(logits, tokens)
    stats["logprobs"] = stats.pop("logprob")
  halt, carry = jnp.zeros_like(state.stopped), state.rule_carry
  stats["marks"] = halt
  if rule is not None:
    tokens, halt, stats["marks"], carry = rule(tokens, stats, carry)
  live = ~state.done  # Rows that record this step (a halting row records, but emits nothing).
  emit = live & ~halt
  tokens = jnp.where(live, tokens, sampling.pad_id)
  lengths = state.lengths + emit
  stop = emit & jnp.isin(tokens, jnp.asarray(sampling.stop_tokens, jnp.int32))

  def write(buffer, value):  # Rows that had already stopped write 0.
    column = jnp.where(live, value, 0).astype(buffer.dtype)[:, None]
    return jax.lax.dynamic_update_slice_in_dim(buffer, column, state.step, axis=1)

  return state.replace(
      step=state.step + 1, cache=out["cache"], inputs=tokens, stopped=state.stopped | stop,
      halted=state.halted | (live & halt), lengths=lengths, rule_carry=carry,
      done=state.done | halt | stop | (lengths >= state.limits),
      tokens=jax.lax.dynamic_update_slice_in_dim(state.tokens, tokens[:, None], state.step, 1),
      **{name: write(getattr(state, name), stats[name]) for name in STAT_NAMES})


def _decode(config: ModelConfig, sampling: SamplingConfig, rule: TokenRule | None, params,
            cache: dict, inputs, key_data, offsets, limits, rule_carry) -> DecodeState:
  """Up to N decode steps of R rows from their caches (the first step feeds `inputs [R]`)."""
  rows, steps = inputs.shape[0], sampling.max_new_tokens

  def buffer(dtype, fill=0):
    return jnp.full((rows, steps), fill, dtype)

  state = DecodeState(
      step=jnp.zeros((), jnp.int32), cache=cache, inputs=inputs.astype(jnp.int32),
      keys=jax.random.wrap_key_data(key_data), offsets=offsets, limits=limits,
      done=limits <= 0,
      stopped=jnp.zeros((rows,), bool), halted=jnp.zeros((rows,), bool),
      lengths=jnp.zeros((rows,), jnp.int32),
      tokens=buffer(jnp.int32, sampling.pad_id), logprobs=buffer(jnp.float32),
      entropy=buffer(jnp.float32), top1=buffer(jnp.int32), top1_prob=buffer(jnp.float32),
      top2=buffer(jnp.int32), top2_prob=buffer(jnp.float32), marks=buffer(bool),
      rule_carry=rule_carry)
  return jax.lax.while_loop(
      lambda s: (s.step < steps) & ~jnp.all(s.done),
      functools.partial(_decode_step, config, sampling, rule, params), state)


def _map_cache_rows(cache: dict, move) -> dict:
  """`cache` with `move(buffer, batch_axis)` applied to every key/value buffer (stacked
  `[L, B, ...]` or per-layer `[B, ...]`) through `move_as_bits`."""
  def apply(x):  # The batch axis of a key/value buffer: 0 per layer, 1 when stacked.
    return move_as_bits(lambda b: move(b, x.ndim - 4), x)
  return {**cache, "k": jax.tree.map(apply, cache["k"]), "v": jax.tree.map(apply, cache["v"])}


def _constrain_cache(cache: dict) -> dict:
  return jax.tree.map(lambda x, spec: constrain(x, tuple(spec)), cache,
                      models.cache_logical_axes(cache))


def _compact(cache: dict, start, ends, fed) -> dict:
  """Row r's `fed[r]` slots written from the shared `start` moved to `[ends[r], ends[r] +
  fed[r])`, every later slot masked out: each row's tokens then fill `[0, ends + fed)` (with
  masked holes only where they were before), the invariant `resume` relies on. A row's
  meaningful slots are the first input it fed and every token it emitted before halting;
  after it stopped the loop fed padding, which this masks. `ends [R]`, `fed [R]` int."""
  slots = cache["mask"].shape[1]
  offset = jnp.arange(slots)[None, :] - ends[:, None]  # [R, S]
  new = offset >= 0
  source = jnp.clip(jnp.where(new, start + offset, jnp.arange(slots)[None, :]), 0, slots - 1)

  def move(buffer, batch_axis):  # Gather along the slot axis (-2), per row.
    shape = [1] * buffer.ndim
    shape[batch_axis], shape[-2] = source.shape
    return jnp.take_along_axis(buffer, source.reshape(shape), axis=-2)

  cache = _map_cache_rows(cache, move)
  cache["mask"] = jnp.where(new, offset < fed[:, None], cache["mask"])
  return _constrain_cache(cache)


def _fed(state: DecodeState) -> jax.Array:
  """`[R]` slots a row filled with meaningful tokens: its first input and every emitted
  token but the last (a halted row fed that one too: its halt step read its logits)."""
  return state.lengths + state.halted


def _sample(config: ModelConfig, sampling: SamplingConfig, rule: TokenRule | None,
            room: int | None, params, input_ids, attention_mask, sources, prefix_lengths,
            next_tokens, key_data, offsets, limits, rule_carry) -> dict:
  """Prefill the prompts `[M, T]`, then decode R rows (see module docstring); `params` in
  either layout. With `room` (not None), also the rows' compacted caches (`room` free slots
  after each row's tokens) and `ends` (`_compact`)."""
  prompts, length = input_ids.shape
  steps = sampling.max_new_tokens
  # The prefill fills a cache of the prompts' T slots (so its attention reads no empty
  # slots); the rows' caches then get the slots the decode loop writes (and `room` more to
  # be resumable: a resumed row writes after every row's tokens, then is compacted). The
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
  grow = steps + (room or 0)
  slots = jnp.arange(length + grow)

  def rows_of(buffer, batch_axis):  # `[(L,) M, K, T, Dh]` -> `[(L,) R, K, T + grow, Dh]`.
    pad = [(0, 0)] * buffer.ndim
    pad[-2] = (0, grow)
    return jnp.pad(jnp.take(buffer, sources, axis=batch_axis), pad)

  row_cache = _map_cache_rows(cache, rows_of)
  row_cache["mask"] = (jnp.pad(jnp.take(cache["mask"], sources, axis=0), ((0, 0), (0, grow)))
                       & (slots[None] < keep[:, None]))
  row_cache = _constrain_cache(row_cache)
  inputs = jnp.where(forced, next_tokens, input_ids[sources, end - 1])
  state = _decode(config, sampling, rule, params, row_cache, inputs, key_data, offsets, limits,
                  rule_carry)
  out = {name: getattr(state, name) for name in OUTPUT_NAMES}
  if room is not None:
    ends = jnp.full(sources.shape, length, jnp.int32)
    out["cache"] = _compact(state.cache, length, ends, _fed(state))
    out["ends"] = ends + _fed(state)
  return out


def _resume(config: ModelConfig, sampling: SamplingConfig, rule: TokenRule | None,
            in_place: bool, params, store: dict, store_ends, sources, keep, next_tokens,
            key_data, offsets, limits, rule_carry, dest) -> dict:
  """Continue rows `sources [R]` of a kept cache (any row any number of times: forks), each
  from its first `keep [R]` slots, first feeding `next_tokens [R]`; returns the outputs and
  the new rows' caches and `ends` -- or, `in_place`, the kept cache with row `dest[r]`
  replaced by result row r (`dest[r] < 0`: discarded)."""
  cache = _map_cache_rows(store, lambda b, axis: jnp.take(b, sources, axis=axis))
  if jax.tree.leaves(cache["k"])[0].dtype == jnp.uint16:  # A store's bits (`with_rows`).
    cache = _kv_as(cache, config.compute_dtype)
  ends = jnp.minimum(store_ends[sources], keep)
  slots = jnp.arange(cache["mask"].shape[1])
  cache["mask"] = jnp.take(cache["mask"], sources, axis=0) & (slots[None] < ends[:, None])
  start = jnp.max(ends)  # Every row writes from here: after all rows' tokens.
  cache["index"] = start
  state = _decode(config, sampling, rule, params, _constrain_cache(cache), next_tokens,
                  key_data, offsets, limits, rule_carry)
  out = {name: getattr(state, name) for name in OUTPUT_NAMES}
  out["cache"] = _compact(state.cache, start, ends, _fed(state))
  out["ends"] = ends + _fed(state)
  if in_place:
    out["cache"] = _constrain_cache(_scatter_rows(store, out["cache"], dest))
    out["ends"] = store_ends.at[jnp.where(dest < 0, store_ends.shape[0], dest)].set(
        out["ends"], mode="drop")
  return out


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
def _compiled(config: ModelConfig, sampling: SamplingConfig, rule: TokenRule | None,
              room: int | None, resume: bool, in_place: bool, mesh, rules,
              prompts_sharded: bool, shardings):
  """The sampling (`resume=False`; `room`: see `_sample`) or resuming program (`in_place`:
  see `_resume`; the kept cache is donated, so its rows are replaced without a copy). On a
  mesh, `shardings` holds, as hashable `(treedef, leaves)` pairs, those of the parameters
  (in whichever layout), of the rule's carry, and of the caches read and written; rows are
  split over the batch axes."""
  if resume:
    fn = functools.partial(_resume, config, sampling, rule, in_place)
  else:
    fn = functools.partial(_sample, config, sampling, rule, room)
  donate = (1,) if in_place else ()
  if mesh is None:
    return jax.jit(fn, donate_argnums=donate)
  params, carry, cache_in, cache_out = (None if x is None else jax.tree.unflatten(*x)
                                        for x in shardings)
  rows = parallel.batch_sharding(mesh, 1, rules)
  keys = parallel.batch_sharding(mesh, 2, rules)
  outputs = {name: parallel.batch_sharding(mesh, 1 if name in ("lengths", "stopped", "halted")
                                           else 2, rules) for name in OUTPUT_NAMES}
  if cache_out is not None:
    outputs.update(cache=cache_out, ends=rows)
  if resume:
    in_shardings = (params, cache_in, rows, rows, rows, rows, keys, rows, rows, carry, rows)
  else:
    prompts = parallel.batch_sharding(mesh, 2, rules) if prompts_sharded else (
        parallel.replicated(mesh))
    in_shardings = (params, prompts, prompts, rows, rows, rows, keys, rows, rows, carry)
  return parallel.sharded_jit(fn, mesh, in_shardings=in_shardings, out_shardings=outputs,
                              donate_argnums=donate, rules=rules)


def _hashable(tree) -> tuple:
  leaves, treedef = jax.tree.flatten(tree)
  return treedef, tuple(leaves)


def _cache_shardings(config: ModelConfig, unrolled: bool, rows: int, slots: int, mesh,
                     rules) -> tuple:
  """Hashable shardings of a KV cache of `rows` x `slots` (per-layer buffers if `unrolled`)."""
  layer = jax.ShapeDtypeStruct((rows, config.num_kv_heads, slots, config.head_dim),
                               config.compute_dtype)
  kv = (tuple([layer] * config.num_layers) if unrolled
        else jax.ShapeDtypeStruct((config.num_layers,) + layer.shape, layer.dtype))
  abstract = {"k": kv, "v": kv, "mask": jax.ShapeDtypeStruct((rows, slots), bool),
              "index": jax.ShapeDtypeStruct((), jnp.int32)}
  return _hashable(parallel.cache_shardings(abstract, mesh, rules))


# ----------------------------------------------------------------------------- public API


def as_key(rng) -> jax.Array:
  """`rng` as a typed key array (`jax.random.key`): typed keys pass through; raw uint32 key
  data (`jax.random.PRNGKey`, `key_data`; any leading shape) is wrapped."""
  rng = jnp.asarray(rng)
  if jnp.issubdtype(rng.dtype, jax.dtypes.prng_key):
    return rng
  return jax.random.wrap_key_data(jnp.asarray(rng, jnp.uint32))


def _row_keys(rng, rows: int) -> np.ndarray:
  """`[rows, 2]` uint32 key data: one key per row, from one key or from `[rows]` keys."""
  rng = as_key(jax.random.key(0) if rng is None else rng)
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


def _pad_row_state(limits: np.ndarray, rule_carry, rows: int):
  """Limits and rule carry padded to `rows` (as `_pad_rows` pads the rest): padded rows
  emit nothing (limit 0)."""
  extra = rows - len(limits)
  pad = lambda x: np.concatenate([x, np.repeat(x[:1], extra, axis=0)])
  return np.pad(limits, (0, extra)), jax.tree.map(pad, rule_carry)


def _carry_shardings(rule_carry, mesh, rules) -> tuple:
  return _hashable(jax.tree.map(lambda x: parallel.batch_sharding(mesh, x.ndim, rules),
                                rule_carry))


@dataclasses.dataclass
class RowCache:
  """The rows' KV caches after a call with `keep_cache=True`, to `resume` any of them.

  cache: the KV-cache pytree (on device; the decode layout's per-layer buffers when the
    call used it), one row per output row (plus any rows padded for a mesh).
  ends: `[rows]` int, slots holding each row's tokens: every row's tokens lie in
    `[0, ends[r])` (masked holes included) and its slots after that are free.
  first: the slot of the first token a row fed (the prompt's last token, fed again):
    a row started without a forced token keeps its i-th generated token at slot
    `first + 1 + i`, and so does every row resumed from it (the token it is resumed with
    is its next one). Resuming from the first `first + 1 + i` slots continues a row after
    its i-th token (`resume(keep=...)`).
  """

  cache: dict
  ends: np.ndarray
  first: int

  @property
  def slots(self) -> int:
    """Slots per row: a resume writes after its rows' tokens, so it may decode
    `slots - max(ends of the rows it continues)` tokens (`continue_prefixes`' `room`)."""
    return self.cache["mask"].shape[1]


def with_rows(config: ModelConfig, row_cache: RowCache, rows: int, *, mesh=None,
              rules=parallel.LOGICAL_AXIS_RULES) -> RowCache:
  """`row_cache` grown to `rows` rows: its own first, then empty ones (no tokens), to be
  filled by `resume(..., dest=...)`. On a mesh `rows` must divide over its batch axes.

  Keys and values in a 2-byte float are kept as their bits (uint16; `resume` reads them
  back): XLA:CPU moves bf16 through fp32 (`move_as_bits`), and a bit view of a donated
  buffer is a copy of it, so a write of a few rows in place would copy the whole cache
  (1.6 s for 128 rows of SmolLM2-135M, against 3 ms as bits)."""
  extra = rows - len(row_cache.ends)
  if extra < 0:
    raise ValueError(f"rows={rows} is fewer than the cache's {len(row_cache.ends)}")
  shardings = None
  if mesh is not None:
    unrolled = isinstance(row_cache.cache["k"], (tuple, list))
    shardings = _cache_shardings(config, unrolled, rows, row_cache.slots, mesh, rules)
  cache = _grow_rows(row_cache.cache, extra, shardings)
  ends = np.concatenate([row_cache.ends, np.zeros(extra, row_cache.ends.dtype)])
  return RowCache(cache, ends, row_cache.first)


def put_rows(row_cache: RowCache, rows: RowCache, dest) -> RowCache:
  """`row_cache` with its row `dest[i]` replaced by row i of `rows` (`dest[i] < 0`: not
  kept), in place: `row_cache`'s buffers are donated and must not be used again. Both
  caches must come from prompts of the same (bucketed) length: a scheduler prefills new
  prompts (`continue_prefixes(..., keep_cache=True)`) into the free rows of a grown cache
  (`with_rows`)."""
  dest = np.asarray(dest, np.int32).reshape(-1)
  if rows.first != row_cache.first or rows.slots != row_cache.slots:
    raise ValueError(f"rows of {rows.slots} slots (prompts end at {rows.first}) do not fit a "
                     f"cache of {row_cache.slots} slots (prompts end at {row_cache.first})")
  if dest.shape != (len(rows.ends),) or np.any(dest >= len(row_cache.ends)):
    raise ValueError(f"dest must be [{len(rows.ends)}] row indices < {len(row_cache.ends)}")
  shardings = _hashable(jax.tree.map(lambda x: x.sharding, row_cache.cache))
  cache = _put_rows(row_cache.cache, rows.cache, dest, shardings)
  ends = np.array(row_cache.ends)
  ends[dest[dest >= 0]] = rows.ends[dest >= 0]
  return RowCache(cache, ends, row_cache.first)


@functools.partial(jax.jit, static_argnums=3, donate_argnums=0)
def _put_rows(store: dict, new: dict, dest, shardings) -> dict:
  return jax.lax.with_sharding_constraint(_scatter_rows(store, new, dest),
                                          jax.tree.unflatten(*shardings))


def _scatter_rows(store: dict, new: dict, dest) -> dict:
  """`store` with row `dest[i]` replaced by row i of the cache `new` (`dest[i] < 0`:
  dropped by the scatter). A store holding 2-byte floats as their bits (`with_rows`) gets
  them as bits: a native scatter, in place when the store is donated."""
  rows = jnp.where(dest < 0, store["mask"].shape[0], dest)
  new = _kv_as(new, jax.tree.leaves(store["k"])[0].dtype)
  def put(buffer, update):
    return buffer.at[(slice(None),) * (buffer.ndim - 4) + (rows,)].set(update, mode="drop")
  return {**store, "mask": store["mask"].at[rows].set(new["mask"], mode="drop"),
          **{name: jax.tree.map(put, store[name], new[name]) for name in ("k", "v")}}


@functools.partial(jax.jit, static_argnums=(1, 2))
def _grow_rows(cache: dict, extra: int, shardings) -> dict:
  def grow(buffer, batch_axis):
    pad = [(0, 0)] * buffer.ndim
    pad[batch_axis] = (0, extra)
    return jnp.pad(buffer, pad)
  cache = {**_map_cache_rows(cache, grow), "mask": jnp.pad(cache["mask"], ((0, extra), (0, 0)))}
  cache = _kv_as(cache, jnp.uint16 if jax.tree.leaves(cache["k"])[0].dtype.itemsize == 2
                 else jax.tree.leaves(cache["k"])[0].dtype)
  if shardings is None:
    return cache
  return jax.lax.with_sharding_constraint(cache, jax.tree.unflatten(*shardings))


def _kv_as(cache: dict, dtype) -> dict:
  """`cache` with its keys and values viewed as `dtype` (a bit view: 2-byte floats <->
  uint16; a no-op when they already are)."""
  def view(x):
    return x if x.dtype == dtype else jax.lax.bitcast_convert_type(x, dtype)
  return {**cache, "k": jax.tree.map(view, cache["k"]), "v": jax.tree.map(view, cache["v"])}


def _sampling_config(max_new_tokens, temperature, top_k, top_p, stop_tokens, pad_id):
  return SamplingConfig(max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k,
                        top_p=top_p, stop_tokens=tuple(stop_tokens), pad_id=pad_id)


def prepare_params(config: ModelConfig, params, *, decode_layout: bool | None = None,
                   mesh=None, rules=parallel.LOGICAL_AXIS_RULES):
  """`params` as every sampling call would run them: placed on `mesh` and converted to the
  decode layout when `decode_layout` says so (None: on CPU). Call once before many calls
  with the same weights (tree rounds, rollouts between updates)."""
  return _prepare_params(config, params, decode_layout, mesh, rules)[0]


def _prepare_params(config, params, decode_layout, mesh, rules):
  """(params in the layout to run, their shardings as a hashable or None)."""
  converted = _in_decode_layout(params)
  if converted and decode_layout is False:
    raise ValueError("decode_layout=False, but params are already in the decode layout")
  if decode_layout is None:
    device = mesh.devices.flat[0] if mesh is not None else jax.devices()[0]
    decode_layout = device.platform == "cpu"
  if mesh is not None and not converted:
    params = jax.device_put(params, parallel.param_shardings(config, mesh, rules))
  if decode_layout and not converted:
    params = decode_params(params)
  if mesh is None:
    return params, None
  return params, _hashable(jax.tree.map(lambda x: x.sharding, params))


def _row_arrays(rows: int, max_new_tokens: int, limits, key_offsets, rule_carry):
  """`[rows]` int32 limits (default `max_new_tokens`) and key offsets (default 0), and the
  rule carry as arrays, checked."""
  limits = np.full(rows, max_new_tokens, np.int32) if limits is None else np.asarray(
      limits, np.int32).reshape(-1)
  if limits.shape != (rows,):
    raise ValueError(f"limits must be [rows] = [{rows}], got shape {limits.shape}")
  if np.any(limits > max_new_tokens):
    raise ValueError(f"limits must be <= max_new_tokens={max_new_tokens}")
  offsets = np.zeros(rows, np.int32) if key_offsets is None else np.asarray(
      key_offsets, np.int32).reshape(-1)
  if offsets.shape != (rows,) or np.any(offsets < 0):
    raise ValueError(f"key_offsets must be [rows] = [{rows}] ints >= 0, got shape "
                     f"{offsets.shape}")
  rule_carry = jax.tree.map(np.asarray, () if rule_carry is None else rule_carry)
  for leaf in jax.tree.leaves(rule_carry):
    if leaf.shape[:1] != (rows,):
      raise ValueError(f"every rule_carry leaf must be [rows, ...] = [{rows}, ...], got shape "
                       f"{leaf.shape}")
  return limits, offsets, rule_carry


def continue_prefixes(config: ModelConfig, params, input_ids, attention_mask=None, *,
                      sources, prefix_lengths, max_new_tokens: int, next_tokens=None,
                      temperature: float = 0.0, top_k: int | None = None,
                      top_p: float | None = None, stop_tokens=(), pad_id: int = 0, rng=None,
                      limits=None, key_offsets=None, rule: TokenRule | None = None,
                      rule_carry=None, keep_cache: bool = False, room: int | None = None,
                      length_bucket: int = 32,
                      decode_layout: bool | None = None, mesh=None,
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
    limits: `[R]` int, the most tokens each row emits (default `max_new_tokens`).
    key_offsets: `[R]` int, added to the step a row draws with (module docstring; default 0).
    rule, rule_carry: a `TokenRule` run at every step, and its initial per-row state
      (a pytree of `[R, ...]` arrays).
    keep_cache: also return `row_cache`, a `RowCache` of the rows' caches to `resume`.
    room: with `keep_cache`, the free slots the kept cache has after each row's tokens,
      i.e. the most tokens a `resume` may decode (default `max_new_tokens`).
    length_bucket: T is left-padded up to a multiple of this, so that prompts of nearby
      lengths reuse one compiled program.
    decode_layout: convert stacked parameters to the decode layout first (module
      docstring); None: on CPU only. Parameters already converted are used as they are.
    mesh: run data-parallel (rows over `batch`'s mesh axes) and tensor-parallel on it;
      `params` should be placed with `parallel.param_shardings`.
  Returns:
    dict of `[R, N]` arrays `tokens`, `logprobs`, `entropy`, `top1`, `top1_prob`, `top2`,
    `top2_prob`, and `[R]` `lengths`, `stopped`, `halted` (see module docstring); with
    `keep_cache`, `row_cache`.
  """
  sampling = _sampling_config(max_new_tokens, temperature, top_k, top_p, stop_tokens, pad_id)
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
  limits, offsets, rule_carry = _row_arrays(rows, max_new_tokens, limits, key_offsets,
                                            rule_carry)
  room = (max_new_tokens if room is None else room) if keep_cache else None
  if room is not None and (not isinstance(room, int) or room < 1):
    raise ValueError(f"room must be a positive int, got {room!r}")

  params, param_shardings = _prepare_params(config, params, decode_layout, mesh, rules)
  prompts_sharded, shardings = False, None
  if mesh is not None:
    parallelism = parallel.batch_parallelism(mesh, rules)
    prompts_sharded = input_ids.shape[0] % parallelism == 0
    (sources, prefix_lengths, next_tokens, keys, offsets), _ = _pad_rows(
        [sources, prefix_lengths, next_tokens, keys, offsets], parallelism)
    limits, rule_carry = _pad_row_state(limits, rule_carry, len(sources))
    cache_out = _cache_shardings(config, "layers" not in params, len(sources),
                                 total + max_new_tokens + room, mesh, rules) if keep_cache else None
    shardings = (param_shardings, _carry_shardings(rule_carry, mesh, rules), None, cache_out)
  run = _compiled(config, sampling, rule, room, False, False, mesh, tuple(rules),
                  prompts_sharded, shardings)
  out = run(params, input_ids, mask, sources, prefix_lengths, next_tokens, keys, offsets,
            limits, rule_carry)
  return _finish(out, rows, total)


def _finish(out: dict, rows: int, first: int) -> dict:
  """The real rows' outputs, and the `RowCache` (all rows, padded ones included)."""
  result = {name: out[name][:rows] for name in OUTPUT_NAMES}
  if "cache" in out:
    result["row_cache"] = RowCache(out["cache"], np.asarray(out["ends"]), first)
  return result


def resume(config: ModelConfig, params, row_cache: RowCache, *, sources, next_tokens,
           max_new_tokens: int, keep=None, temperature: float = 0.0,
           top_k: int | None = None, top_p: float | None = None, stop_tokens=(),
           pad_id: int = 0, rng=None, limits=None, key_offsets=None,
           rule: TokenRule | None = None, rule_carry=None, dest=None,
           decode_layout: bool | None = None, mesh=None,
           rules=parallel.LOGICAL_AXIS_RULES) -> dict:
  """Continue rows of a `RowCache` where they stopped, or from any earlier token, without
  recomputing their caches.

  Row r of the result continues row `sources[r]` of `row_cache` (a row may be continued by
  several result rows: it forks), first feeding `next_tokens[r]`: the token the row takes
  at the position where it halted (a `TokenRule` halt records the distribution there and
  emits nothing), or, with `keep[r]` (slots of the source kept; `RowCache.first` tells
  which hold which tokens), at the position after its kept tokens: a branch from an
  earlier token. Each result row copies its source's cache; nothing is prefilled again.
  Returns what `continue_prefixes(..., keep_cache=True)` returns, so a result can be
  resumed in turn. `params` must be in the layout that made the cache (pass the same
  `decode_params` conversion, or the same `decode_layout` setting). Other arguments as
  `continue_prefixes`; every row continued must have `max_new_tokens` free slots after its
  kept ones (`RowCache.slots`).

  With `dest` (`[R]` int), the result is written in place instead: the returned
  `row_cache` is `row_cache` with its row `dest[r]` replaced by result row r (`dest[r] <
  0`: not kept), and the other rows as they were. Its buffers are donated: `row_cache`
  must not be used again. A scheduler keeps every path of a search in one such cache and
  advances any subset of them, a few steps at a time, each in its own row
  (`prm_jax.labeling.edu`).
  """
  sampling = _sampling_config(max_new_tokens, temperature, top_k, top_p, stop_tokens, pad_id)
  sources = np.asarray(sources, np.int32).reshape(-1)
  next_tokens = np.asarray(next_tokens, np.int32).reshape(-1)
  rows = sources.shape[0]
  if next_tokens.shape != (rows,):
    raise ValueError(f"next_tokens {next_tokens.shape} must be [rows] like sources {(rows,)}")
  if np.any((sources < 0) | (sources >= len(row_cache.ends))):
    raise ValueError(f"sources must index the {len(row_cache.ends)} rows of the cache")
  keep = row_cache.ends[sources] if keep is None else np.asarray(keep, np.int32).reshape(-1)
  if keep.shape != (rows,) or np.any((keep <= row_cache.first) | (keep > row_cache.ends[sources])):
    raise ValueError(f"keep must be [rows] slots in ({row_cache.first}, the source's end]: "
                     "a row keeps at least its prompt and first fed token")
  if np.any((next_tokens < 0) | (next_tokens >= config.vocab_size)):
    raise ValueError(f"next_tokens must be token ids in [0, vocab_size={config.vocab_size})")
  if np.max(keep, initial=0) + max_new_tokens > row_cache.slots:
    raise ValueError(f"max_new_tokens={max_new_tokens} does not fit: a row continued keeps "
                     f"{np.max(keep)} of the cache's {row_cache.slots} slots (make the cache "
                     "with more room: continue_prefixes(room=...))")
  in_place = dest is not None
  dest = np.full(rows, -1, np.int32) if dest is None else np.asarray(dest, np.int32).reshape(-1)
  if dest.shape != (rows,) or np.any(dest >= len(row_cache.ends)):
    raise ValueError(f"dest must be [rows] = [{rows}] row indices < {len(row_cache.ends)} "
                     "(or < 0: not kept)")
  if in_place and len(set(dest[dest >= 0].tolist())) < np.sum(dest >= 0):
    raise ValueError("dest must not repeat a row")
  keys = _row_keys(rng, rows)
  limits, offsets, rule_carry = _row_arrays(rows, max_new_tokens, limits, key_offsets,
                                            rule_carry)
  params, param_shardings = _prepare_params(config, params, decode_layout, mesh, rules)
  unrolled = "layers" not in params
  if unrolled != isinstance(row_cache.cache["k"], (tuple, list)):
    raise ValueError("params and row_cache are in different layouts: resume with the params "
                     "layout (decode_layout) that made the cache")
  shardings = None
  if mesh is not None:
    parallelism = parallel.batch_parallelism(mesh, rules)
    (sources, keep, next_tokens, keys, offsets), _ = _pad_rows(
        [sources, keep, next_tokens, keys, offsets], parallelism)
    dest = np.pad(dest, (0, len(sources) - rows), constant_values=-1)  # Padding: not kept.
    limits, rule_carry = _pad_row_state(limits, rule_carry, len(sources))
    cache_in = _hashable(jax.tree.map(lambda x: x.sharding, row_cache.cache))
    cache_out = cache_in if in_place else _cache_shardings(
        config, unrolled, len(sources), row_cache.slots, mesh, rules)
    shardings = (param_shardings, _carry_shardings(rule_carry, mesh, rules), cache_in,
                 cache_out)
  run = _compiled(config, sampling, rule, None, True, in_place, mesh, tuple(rules), False,
                  shardings)
  out = run(params, row_cache.cache, row_cache.ends.astype(np.int32), sources,
            keep.astype(np.int32), next_tokens, keys, offsets, limits, rule_carry, dest)
  return _finish(out, rows, row_cache.first)


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
