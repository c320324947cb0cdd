"""Best-of-N with a PRM: aggregate step scores, pick a candidate, weighted majority vote.

Shapes: `B` problems, `N` candidate solutions each, `S` steps per solution; ragged
solutions and candidate sets are expressed with boolean masks. Leading dimensions are
free: `[B, N, S]` can be any `[..., S]`.

Conventions:
  * A solution without valid steps scores `-inf` (ranked below every real solution).
  * Ties: `best_of_n` picks the lowest candidate index; `weighted_vote` picks the answer
    whose first valid candidate comes earliest (equivalently: the lowest candidate index
    among those whose answer has the top total weight).
  * A row without valid candidates returns `NO_CHOICE` (-1) from both `best_of_n` and
    `weighted_vote` (answer ids are expected to be non-negative).
  * NaN scores / weights count as invalid candidates: they are never chosen.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

AGGREGATIONS = ("min", "last", "prod", "mean")
NO_CHOICE = -1


def _mask(mask, shape):
  return jnp.ones(shape, bool) if mask is None else jnp.broadcast_to(jnp.asarray(mask, bool), shape)


def aggregate_step_scores(step_scores: jax.Array, step_mask: jax.Array | None,
                          method: str) -> jax.Array:
  """Solution scores `[B, N]` (fp32) from step scores `[B, N, S]` in [0, 1].

  method: "min" (weakest step), "last" (last valid step), "prod" (product, taken as
  `exp(sum log p)` so no partial product underflows on the way) or "mean". Steps where `step_mask [B, N, S]` is False are ignored; a solution with none
  scores -inf. All four are on the same [0, 1] scale and can be compared.
  """
  if method not in AGGREGATIONS:
    raise ValueError(f"method={method!r} is not one of {AGGREGATIONS}")
  scores = jnp.asarray(step_scores).astype(jnp.float32)
  mask = _mask(step_mask, scores.shape)
  count = jnp.sum(mask, axis=-1)
  if method == "min":
    value = jnp.min(jnp.where(mask, scores, jnp.inf), axis=-1)
  elif method == "last":
    last = jnp.max(jnp.where(mask, jnp.arange(scores.shape[-1]), 0), axis=-1)
    value = jnp.take_along_axis(scores, last[..., None], axis=-1)[..., 0]
  elif method == "prod":
    value = jnp.exp(jnp.sum(jnp.where(mask, jnp.log(scores), 0.0), axis=-1))
  else:
    value = jnp.sum(jnp.where(mask, scores, 0.0), axis=-1) / jnp.maximum(count, 1)
  return jnp.where(count > 0, value, -jnp.inf)


def _first_best(values: jax.Array, valid: jax.Array) -> jax.Array:
  """Lowest index `[...]` (int32) of the largest valid entry along the last axis, or -1."""
  size = values.shape[-1]
  best = jnp.max(jnp.where(valid, values, -jnp.inf), axis=-1, keepdims=True)
  index = jnp.min(jnp.where(valid & (values == best), jnp.arange(size), size), axis=-1)
  return jnp.where(index == size, NO_CHOICE, index).astype(jnp.int32)


def best_of_n(solution_scores: jax.Array, valid: jax.Array | None = None) -> jax.Array:
  """Index `[B]` (int32) of the top-scoring valid candidate of `solution_scores [B, N]`.

  Ties go to the lowest index; a row without valid candidates gives -1.
  """
  scores = jnp.asarray(solution_scores).astype(jnp.float32)
  return _first_best(scores, _mask(valid, scores.shape) & ~jnp.isnan(scores))


def weighted_vote(answer_ids: jax.Array, weights: jax.Array | None = None,
                  valid: jax.Array | None = None) -> jax.Array:
  """Answer id `[B]` with the largest total weight among the valid candidates.

  Args:
    answer_ids: `[B, N]` int ids of each candidate's final answer (equal id = same answer).
    weights: `[B, N]` per-candidate weights, e.g. PRM solution scores; default 1 (plain
      majority vote).
    valid: `[B, N]` bool, default all.

  Returns `[B]` answer ids (dtype of `answer_ids`); ties go to the answer that occurs
  first, a row without valid candidates gives -1. Cost is O(N^2) per row.
  """
  answers = jnp.asarray(answer_ids)
  weights = jnp.ones(answers.shape, jnp.float32) if weights is None else (
      jnp.broadcast_to(jnp.asarray(weights), answers.shape).astype(jnp.float32))
  valid = _mask(valid, answers.shape) & ~jnp.isnan(weights)
  same = answers[..., :, None] == answers[..., None, :]  # [B, N, N]
  totals = jnp.sum(jnp.where(same & valid[..., None, :], weights[..., None, :], 0.0), axis=-1)
  winner = _first_best(totals, valid)
  answer = jnp.take_along_axis(answers, jnp.maximum(winner, 0)[..., None], axis=-1)[..., 0]
  return jnp.where(winner >= 0, answer, NO_CHOICE).astype(answers.dtype)
