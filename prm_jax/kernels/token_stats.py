"""Per-token statistics of next-token logits, streamed over the vocabulary.

`token_stats(logits [..., V])` returns, per position (fp32, ids int32):

  entropy      H = -sum_v p_v log p_v  (nats), p = softmax(logits)
  logsumexp    log sum_v exp(logits_v)
  logprob      log p_token             (only when `tokens` is given)
  top1, top2   ids of the largest and second-largest logit; ties go to the lower id
  top1_prob, top2_prob   their probabilities

Streaming. The vocabulary is read in chunks of `chunk_size` columns. Each chunk is
reduced to a summary per row: the reference point `ref` (the chunk's max logit), `s = sum
exp(x - ref)`, `t = sum (x - ref) exp(x - ref)` and the top-2 (value, id) pairs. Summaries
merge like a streaming softmax (rescale both sums to the larger `ref`), so extra memory
is `O(rows * chunk)` however large V is, and bf16 logits are converted to fp32 one chunk
at a time. At the end `logsumexp = ref + log s` and `H = log s - t / s`: `s >= 1` and
`t <= 0`, so both terms are non-negative and nothing cancels, even for logits of 1e4.
(One exception on XLA:CPU: bf16 logits cost one extra copy at their own width; see
`_Columns`.)

Conventions:
  * `-inf` logits are masked vocabulary entries: probability 0, no contribution to the
    entropy. They still rank (below every finite logit), so `top2` is a zero-probability
    id when only one entry is finite; it is -1 only when V == 1.
  * Invalid positions (`mask` False), and rows whose logits are all `-inf`, give
    entropy 0, logsumexp 0, logprob 0, top ids -1 and probabilities 0.
  * `tokens` must lie in [0, V) at valid positions; invalid ones may hold anything (-100).
  * NaN and +inf logits are not supported (the result is unspecified).

Implementations (`impl=`), identical up to float rounding:
  * "reference": each chunk reduced directly with portable jnp reductions.
  * "blocked": each chunk reduced over 128-wide blocks first, then the block summaries
    merged. Reductions over a short contiguous axis are what XLA:CPU compiles into its
    vectorised (YNNPACK) reduction kernels; over a whole chunk it often falls back to a
    scalar loop that is ~6x slower. The stream keeps the two best *blocks* (by their
    max); only those 256 columns are searched for the top-2 ids, once, at the end.
  * "auto" (default): "blocked" on CPU, "reference" elsewhere (see `_auto_impl`).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

IMPLS = ("auto", "reference", "blocked")

# Width of the blocks of the "blocked" implementation: short enough for XLA:CPU's fast
# reductions, long enough that per-block summaries cost little next to the block.
BLOCK = 128
# Default chunk: as many columns as keep one fp32 chunk of all rows near this many bytes
# (an L3-sized working set on CPU), rounded to whole blocks.
_CHUNK_BYTES = 16 << 20
_LOWEST = float(np.finfo(np.float32).min)
# exp(x) is exactly 0 in fp32 below about -104; clamping x - ref there changes no value
# but keeps (x - ref) * exp(x - ref) at 0 instead of NaN for -inf logits.
_EXP_FLOOR = -128.0
_NO_ID = np.iinfo(np.int32).max


class _Summary(NamedTuple):
  """Streaming summary of some logits of each row; every field has the row shape."""
  ref: jax.Array        # max logit; the lowest fp32 instead of -inf, so shifts stay finite
  sumexp: jax.Array     # sum exp(x - ref)
  sumyexp: jax.Array    # sum (x - ref) exp(x - ref)
  top1_value: jax.Array
  top1_id: jax.Array    # int32, -1 if none
  top2_value: jax.Array
  top2_id: jax.Array    # int32, -1 if none


def _merge_sums(ref, sumexp, sumyexp):
  """Merge partial sums, each relative to its own `ref`, along the last axis."""
  new_ref = jnp.max(ref, axis=-1)
  shift = ref - new_ref[..., None]
  scale = jnp.exp(shift)
  # A part whose scale underflows contributes nothing; the `where` keeps its `shift * s`
  # (possibly -inf * 0) from turning that nothing into NaN.
  sumyexp = jnp.where(scale > 0, scale * (sumyexp + shift * sumexp), 0.0)
  return new_ref, jnp.sum(scale * sumexp, axis=-1), jnp.sum(sumyexp, axis=-1)


def _exp_sums(x, ref):
  """`sum exp(x - ref)` and `sum (x - ref) exp(x - ref)` over the last axis of fp32 `x`."""
  shifted = jnp.maximum(x - ref[..., None], _EXP_FLOOR)
  weights = jnp.exp(shifted)
  return jnp.sum(weights, axis=-1), jnp.sum(shifted * weights, axis=-1)


def _top2(values, ids, present=None):
  """Best two (value, id) pairs along the last axis: higher value first, then lower id.

  `ids` are distinct wherever `present`; absent entries are never chosen (id -1 when
  fewer than two are present).
  """
  if present is None:
    present = jnp.ones(values.shape, bool)
  present = jnp.broadcast_to(present, values.shape)

  def best(candidates):
    value = jnp.max(jnp.where(candidates, values, -jnp.inf), axis=-1)
    at_best = candidates & (values == value[..., None])
    index = jnp.min(jnp.where(at_best, ids, _NO_ID), axis=-1)
    return value, index

  value1, id1 = best(present)
  value2, id2 = best(present & (ids != id1[..., None]))
  none = lambda i: jnp.where(i == _NO_ID, -1, i).astype(jnp.int32)
  return value1, none(id1), value2, none(id2)


class _Columns:
  """Reads columns of logits `[N, V]` as fp32.

  On CPU, 16-bit floats are sliced and gathered as their uint16 bit patterns and
  converted after the move: XLA:CPU runs bf16 data movement in fp32, i.e. it would first
  convert all of the logits into an fp32 copy (hoisted out of the chunk loop). The bit
  view still costs one copy of the logits at their own width (XLA:CPU materialises the
  bitcast); GPU/TPU move bf16 natively and need neither.
  """

  def __init__(self, logits: jax.Array):
    self.dtype = logits.dtype
    self.as_bits = jnp.dtype(logits.dtype).itemsize == 2 and jax.default_backend() == "cpu"
    self.data = jax.lax.bitcast_convert_type(logits, jnp.uint16) if self.as_bits else logits
    self.rows, self.vocab = logits.shape

  def _fp32(self, data):
    if self.as_bits:
      data = jax.lax.bitcast_convert_type(data, self.dtype)
    return data.astype(jnp.float32)

  def chunk(self, start, width: int) -> jax.Array:
    """Columns `start..start+width-1`, `[N, width]`."""
    return self._fp32(jax.lax.dynamic_slice_in_dim(self.data, start, width, axis=1))

  def take(self, ids: jax.Array) -> jax.Array:
    """Values at column `ids [N, k]` (clipped into range), `[N, k]`."""
    return self._fp32(jnp.take_along_axis(self.data, jnp.clip(ids, 0, self.vocab - 1), axis=1))


def _reference_summary(x, start):
  """Summary of fp32 `x [N, w]` (columns `start..start+w-1`) with direct reductions."""
  ids = start + jnp.arange(x.shape[-1], dtype=jnp.int32)
  top = _top2(x, ids)
  ref = jnp.maximum(top[0], _LOWEST)
  return _Summary(ref, *_exp_sums(x, ref), *top)


def _top2_blocks(block_max):
  """`(values [N, 2], ids [N, 2])` of the two best blocks (ties: lower id; id -1: none).

  Built on argmax: `_top2`'s max, like `top_k`'s sort, costs far more here, as XLA folds
  a max of block maxima into a second whole-chunk reduction over its own chunk copy.
  """
  blocks = block_max.shape[-1]
  first = jnp.argmax(block_max, axis=-1)
  if blocks == 1:
    return (jnp.concatenate([block_max, jnp.full_like(block_max, -jnp.inf)], -1),
            jnp.stack([first, jnp.full_like(first, -1)], -1).astype(jnp.int32))
  is_first = jnp.arange(blocks) == first[:, None]
  second = jnp.argmax(jnp.where(is_first, -jnp.inf, block_max), axis=-1)
  # When every other block is -inf, argmax may land on `first` itself (masked to -inf
  # too): the runner-up is then the lowest other id.
  second = jnp.where(second == first, jnp.where(first == 0, 1, 0), second)
  ids = jnp.stack([first, second], -1).astype(jnp.int32)
  return jnp.take_along_axis(block_max, ids, axis=-1), ids


def _blocked_summary(x, start):
  """Summary of fp32 `x [N, w]` through per-block summaries of `BLOCK` columns.

  `start` is a multiple of BLOCK, and the top-2 ids are of whole blocks (block `k` =
  columns `k*BLOCK...`), ranked by their max: `_resolve_blocks` finds the columns later.
  """
  rows, width = x.shape
  blocks = -(-width // BLOCK)
  if blocks * BLOCK != width:  # Only the last chunk: pad its fp32 copy with -inf.
    x = jnp.pad(x, ((0, 0), (0, blocks * BLOCK - width)), constant_values=-jnp.inf)
  x = x.reshape(rows, blocks, BLOCK)
  block_max = jnp.max(x, axis=-1)
  top_values, top_blocks = _top2_blocks(block_max)
  # Both sums per block, against the block's max, then merged like chunks: summed against
  # the chunk's max, `t`'s two-level sum was folded by XLA into one whole-chunk reduction
  # (the slow kind). The two sums share no elementwise expression (the floor is applied
  # before the shift; below it exp underflows to 0 either way): a shared one, XLA
  # computes once into a chunk-sized buffer with its slow loop emitter. In the bf16
  # batch-16 decode step of SmolLM2 the statistics went from 2.7 to 1.7 ms.
  block_ref = jnp.maximum(block_max, _LOWEST)
  block_sumexp = jnp.sum(jnp.exp(x - block_ref[..., None]), axis=-1)
  shifted = jnp.maximum(x, (block_ref + _EXP_FLOOR)[..., None]) - block_ref[..., None]
  block_sumyexp = jnp.sum(shifted * jnp.exp(shifted), axis=-1)
  ref, sumexp, sumyexp = _merge_sums(block_ref, block_sumexp, block_sumyexp)
  top_blocks = jnp.where(top_blocks >= 0, start // BLOCK + top_blocks, -1)
  return _Summary(ref, sumexp, sumyexp, top_values[:, 0], top_blocks[:, 0],
                  top_values[:, 1], top_blocks[:, 1])


def _resolve_blocks(columns: _Columns, summary: _Summary) -> _Summary:
  """Turn the top-2 block ids of a `_blocked_summary` of all columns into column ids.

  The best logit lies in the best block, the second best in that block or in the
  runner-up (ties between blocks go to the lower one, as between columns).
  """
  vocab = columns.vocab
  blocks = jnp.stack([summary.top1_id, summary.top2_id], axis=-1)
  ids = (blocks[..., None] * BLOCK + jnp.arange(BLOCK, dtype=jnp.int32)).reshape(-1, 2 * BLOCK)
  present = (jnp.repeat(blocks, BLOCK, axis=-1) >= 0) & (ids < vocab)
  return summary._replace(**dict(zip(
      ("top1_value", "top1_id", "top2_value", "top2_id"),
      _top2(columns.take(ids), ids, present))))


def _merge(a: _Summary, b: _Summary) -> _Summary:
  """Summary of the union of two disjoint sets of columns."""
  stack = lambda *fields: jnp.stack(fields, axis=-1)
  sums = _merge_sums(stack(a.ref, b.ref), stack(a.sumexp, b.sumexp),
                     stack(a.sumyexp, b.sumyexp))
  ids = stack(a.top1_id, a.top2_id, b.top1_id, b.top2_id)
  top = _top2(stack(a.top1_value, a.top2_value, b.top1_value, b.top2_value), ids, ids >= 0)
  return _Summary(*sums, *top)


def _stream(columns: _Columns, summarize, width: int) -> _Summary:
  """Summary of all columns, `width` at a time."""
  full, rest = divmod(columns.vocab, width)
  chunk = lambda start, w: summarize(columns.chunk(start, w), start)
  if full == 0:
    return chunk(0, rest)
  summary = chunk(0, width)
  if full > 1:
    summary = jax.lax.fori_loop(
        1, full, lambda i, acc: _merge(acc, chunk(i * width, width)), summary)
  if rest:
    summary = _merge(summary, chunk(full * width, rest))
  return summary


def _auto_impl() -> str:
  # XLA:CPU is the backend whose whole-row reductions are slow (see module docstring);
  # GPU/TPU compilers reduce long rows well, where the simpler reference is kept.
  return "blocked" if jax.default_backend() == "cpu" else "reference"


def _default_chunk(rows: int, vocab: int) -> int:
  blocks = max(1, _CHUNK_BYTES // (4 * BLOCK * max(rows, 1)))
  return min(blocks * BLOCK, vocab)


def token_stats(logits: jax.Array, tokens: jax.Array | None = None,
                mask: jax.Array | None = None, *, chunk_size: int | None = None,
                impl: str = "auto") -> dict[str, jax.Array]:
  """Entropy, log-sum-exp, token log-prob and top-2 of `logits [..., V]` in one pass.

  Args:
    logits: `[..., V]` fp32 or bf16 (any float) logits; statistics accumulate in fp32.
    tokens: optional `[...]` int token ids whose log-probabilities to return.
    mask: optional validity of positions, broadcastable to `[...]` (False = padding).
    chunk_size: vocabulary columns read per step (default: ~16 MiB of fp32 over all rows).
    impl: "auto", "reference" or "blocked" (module docstring).

  Returns:
    dict of `[...]` arrays: `entropy`, `logsumexp`, `logprob` (if tokens), `top1_prob`,
    `top2_prob` (fp32) and `top1`, `top2` (int32); conventions in the module docstring.
  """
  logits = jnp.asarray(logits)
  if logits.ndim < 1 or logits.shape[-1] == 0:
    raise ValueError(f"logits must have a non-empty vocabulary axis, got {logits.shape}")
  if not jnp.issubdtype(logits.dtype, jnp.floating):
    raise ValueError(f"logits must be floating point, got {logits.dtype}")
  if impl not in IMPLS:
    raise ValueError(f"impl={impl!r} is not one of {IMPLS}")
  if chunk_size is not None and chunk_size < 1:
    raise ValueError(f"chunk_size must be positive, got {chunk_size}")
  shape, vocab = logits.shape[:-1], logits.shape[-1]
  columns = _Columns(logits.reshape(-1, vocab))
  impl = _auto_impl() if impl == "auto" else impl
  width = chunk_size or _default_chunk(columns.rows, vocab)
  if impl == "blocked":
    width = -(-width // BLOCK) * BLOCK  # Chunks start on block boundaries.
    summary = _resolve_blocks(columns, _stream(columns, _blocked_summary, min(width, vocab)))
  else:
    summary = _stream(columns, _reference_summary, min(width, vocab))

  valid = summary.sumexp > 0  # False only when every logit of the row is -inf.
  if mask is not None:
    valid &= jnp.broadcast_to(jnp.asarray(mask, bool), shape).reshape(-1)
  log_s = jnp.log(jnp.where(valid, summary.sumexp, 1.0))
  # log p = (x - ref) - log s: subtracting ref first keeps the precision of small log p
  # next to large logits.
  log_prob = lambda value: (value - summary.ref) - log_s
  fill = lambda value, empty: jnp.where(valid, value, empty).reshape(shape)
  stats = {
      "entropy": fill(log_s - summary.sumyexp / jnp.where(valid, summary.sumexp, 1.0), 0.0),
      "logsumexp": fill(summary.ref + log_s, 0.0),
      "top1": fill(summary.top1_id, -1),
      "top2": fill(summary.top2_id, -1),
      "top1_prob": fill(jnp.exp(log_prob(summary.top1_value)), 0.0),
      "top2_prob": fill(jnp.exp(log_prob(summary.top2_value)), 0.0),
  }
  if tokens is not None:
    ids = jnp.broadcast_to(jnp.asarray(tokens), shape).reshape(-1, 1)
    stats["logprob"] = fill(log_prob(columns.take(ids)[:, 0]), 0.0)
  return stats


def token_entropy(logits: jax.Array, mask: jax.Array | None = None) -> jax.Array:
  """Entropy `[...]` (nats, fp32) of `softmax(logits [..., V])`; see `token_stats`."""
  return token_stats(logits, mask=mask)["entropy"]
