"""Best-of-N accuracy curves: how often each selection method picks a correct solution.

For every problem the policy produced `N_max` candidates. Accuracy at `N <= N_max` is the
mean over `draws` random size-N subsets of the candidates (without replacement, the same
subsets for every method, so methods are compared on identical candidate sets).

Methods (`BON_METHODS`):
  majority   plain majority vote over final answers
  prm_vote   PRM-weighted vote: each candidate's answer gets its PRM solution score
  prm_min / prm_prod / prm_last / prm_mean
             Best-of-N by the PRM's step scores aggregated by min / product / last / mean
  orm        Best-of-N by an outcome reward model's score
  oracle     any candidate is correct (upper bound)
  random     one candidate at random (its expected accuracy: the subset's mean)
Candidates without a final answer never win a vote, but can be picked by a score (and
are then wrong).
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np

from prm_jax import kernels

BON_METHODS = ("majority", "prm_vote", "prm_min", "prm_prod", "prm_last", "prm_mean", "orm",
               "oracle", "random")


@dataclasses.dataclass
class Candidates:
  """Everything the selection methods read, for `B` problems x `N` candidates.

  Attributes:
    answer_ids: `[B, N]` int, equal ids = equal final answers; -1 = no final answer.
    correct: `[B, N]` bool, the final answer is the gold one.
    step_scores: `[B, N, S]` PRM P(step correct).
    step_mask: `[B, N, S]` bool, real steps.
    orm_scores: `[B, N]` outcome-model scores, or None (then `orm` is not reported).
  """

  answer_ids: np.ndarray
  correct: np.ndarray
  step_scores: np.ndarray
  step_mask: np.ndarray
  orm_scores: np.ndarray | None = None


def _take_steps(x: np.ndarray, index: np.ndarray) -> jnp.ndarray:
  """Rows `index [B, n]` of per-candidate step arrays `[B, N, S]`."""
  return jnp.asarray(np.take_along_axis(x, index[:, :, None], axis=1))


def _select(method: str, c: Candidates, index: np.ndarray, vote_aggregation: str) -> np.ndarray:
  """`[B]`: whether the method's choice among candidates `index [B, n]` is correct."""
  take = lambda x: np.take_along_axis(x, index, axis=1)
  answers, correct = take(c.answer_ids), take(c.correct)
  if method == "oracle":
    return correct.any(axis=1)
  if method == "random":
    return correct.mean(axis=1)
  if method in ("majority", "prm_vote"):
    weights = None
    if method == "prm_vote":
      weights = kernels.aggregate_step_scores(
          _take_steps(c.step_scores, index), _take_steps(c.step_mask, index), vote_aggregation)
    winner = np.asarray(kernels.weighted_vote(answers, weights, answers >= 0))
    return (winner >= 0) & np.any((answers == winner[:, None]) & correct, axis=1)
  if method == "orm":
    scores = take(c.orm_scores)
  else:
    scores = kernels.aggregate_step_scores(_take_steps(c.step_scores, index),
                                           _take_steps(c.step_mask, index),
                                           method.removeprefix("prm_"))
  chosen = np.asarray(kernels.best_of_n(scores))
  return (chosen >= 0) & np.take_along_axis(correct, np.maximum(chosen, 0)[:, None], 1)[:, 0]


def best_of_n_curves(candidates: Candidates, ns=(1, 2, 4, 8, 16), *, draws: int = 32,
                     seed: int = 0, methods=BON_METHODS,
                     vote_aggregation: str = "min") -> dict[str, dict[str, float]]:
  """`{method: {str(N): accuracy}}` averaged over `draws` random subsets per N.

  With `N == N_max` every draw is the full set, so it is used once, in candidate order
  (exact; vote ties then go to the earliest-sampled answer).
  """
  num_problems, n_max = candidates.answer_ids.shape
  if max(ns) > n_max:
    raise ValueError(f"N={max(ns)} exceeds the {n_max} candidates per problem")
  methods = [m for m in methods if m != "orm" or candidates.orm_scores is not None]
  rng = np.random.default_rng(seed)
  curves = {m: {} for m in methods}
  for n in ns:
    hits = {m: [] for m in methods}
    for _ in range(1 if n == n_max else draws):
      if n == n_max:
        index = np.broadcast_to(np.arange(n_max), (num_problems, n_max))
      else:
        index = np.argsort(rng.random((num_problems, n_max)), axis=1)[:, :n]
      for method in methods:
        hits[method].append(_select(method, candidates, index, vote_aggregation))
    for method in methods:
      curves[method][str(n)] = float(np.mean(hits[method]))
  return curves
