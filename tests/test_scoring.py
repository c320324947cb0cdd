"""Best-of-N scoring against NumPy references, with hypothesis properties: permutation
equivariance, masked candidates never chosen, unit-weight vote = majority vote."""

import collections

import jax
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra import numpy as hnp
from jax.sharding import NamedSharding, PartitionSpec as P

from prm_jax import parallel
from prm_jax.kernels import AGGREGATIONS, NO_CHOICE, aggregate_step_scores, best_of_n, weighted_vote

B, N, S = 4, 6, 5
aggregate = jax.jit(aggregate_step_scores, static_argnames="method")
pick = jax.jit(best_of_n)
vote = jax.jit(weighted_vote)

# Few distinct values, so that ties are common; all sums of them are exact in fp32.
scores = hnp.arrays(np.float32, (B, N), elements=st.sampled_from([0.0, 0.25, 0.5, 0.75, 1.0]))
distinct_scores = hnp.arrays(np.float32, (B, N), unique=True,
                             elements=st.floats(0, 1, width=32, allow_subnormal=False))
masks = hnp.arrays(np.bool_, (B, N))
answers = hnp.arrays(np.int32, (B, N), elements=st.integers(0, 3))
permutations = st.permutations(range(N)).map(np.asarray)
hypothesis_settings = settings(max_examples=60, deadline=None)


def reference_aggregate(step_scores, step_mask, method):
  out = np.full(step_scores.shape[:-1], -np.inf)
  for index in np.ndindex(out.shape):
    steps = step_scores[index][step_mask[index]].astype(np.float64)
    if len(steps):
      out[index] = {"min": np.min, "last": lambda s: s[-1], "prod": np.prod,
                    "mean": np.mean}[method](steps)
  return out


def reference_best(row_scores, row_valid):
  candidates = [i for i in range(len(row_scores)) if row_valid[i]]
  if not candidates:
    return NO_CHOICE
  best = max(row_scores[i] for i in candidates)
  return min(i for i in candidates if row_scores[i] == best)


def reference_vote(row_answers, row_weights, row_valid):
  totals, first = collections.defaultdict(float), {}
  for i, (answer, weight) in enumerate(zip(row_answers, row_weights)):
    if row_valid[i]:
      totals[answer] += float(weight)
      first.setdefault(answer, i)
  if not totals:
    return NO_CHOICE
  return min(totals, key=lambda a: (-totals[a], first[a]))


def majority_vote(row_answers, row_valid):
  """Plain majority vote, written independently: Counter, ties to the first occurrence."""
  counts = collections.Counter(a for a, v in zip(row_answers, row_valid) if v)
  if not counts:
    return NO_CHOICE
  top = max(counts.values())
  return next(a for a, v in zip(row_answers, row_valid) if v and counts[a] == top)


@pytest.mark.parametrize("method", AGGREGATIONS)
@hypothesis_settings
@given(step_scores=hnp.arrays(np.float32, (B, N, S), elements=st.floats(0, 1, width=32)),
       step_mask=hnp.arrays(np.bool_, (B, N, S)))
def test_aggregate_matches_reference(method, step_scores, step_mask):
  got = aggregate(step_scores, step_mask, method)
  np.testing.assert_allclose(got, reference_aggregate(step_scores, step_mask, method),
                             rtol=1e-5, atol=1e-7)


def test_aggregate_conventions():
  step_scores = np.array([[0.9, 0.2, 0.8], [0.5, 0.5, 0.5]], np.float32)
  step_mask = np.array([[True, False, True], [False, False, False]])
  expected = {"min": 0.8, "last": 0.8, "prod": 0.72, "mean": 0.85}
  for method, value in expected.items():
    got = np.asarray(aggregate(step_scores, step_mask, method))
    np.testing.assert_allclose(got, [value, -np.inf], rtol=1e-6)
  # Products of many steps stay exact in log space instead of underflowing on the way.
  long = np.full((1, 2000), 0.99, np.float32)
  np.testing.assert_allclose(aggregate(long, None, "prod"), [0.99 ** 2000], rtol=1e-4)
  with pytest.raises(ValueError, match="method"):
    aggregate_step_scores(step_scores, step_mask, "max")


@hypothesis_settings
@given(solution_scores=scores, valid=masks)
def test_best_of_n_matches_reference_and_skips_masked(solution_scores, valid):
  got = np.asarray(pick(solution_scores, valid))
  for row in range(B):
    assert got[row] == reference_best(solution_scores[row], valid[row])
    assert got[row] == NO_CHOICE or valid[row, got[row]]


@hypothesis_settings
@given(solution_scores=distinct_scores, valid=masks, perm=permutations)
def test_best_of_n_permutation_permutes_the_choice(solution_scores, valid, perm):
  chosen = np.asarray(pick(solution_scores, valid))
  chosen_permuted = np.asarray(pick(solution_scores[:, perm], valid[:, perm]))
  for row in range(B):
    if chosen[row] == NO_CHOICE:
      assert chosen_permuted[row] == NO_CHOICE
    else:
      assert perm[chosen_permuted[row]] == chosen[row]


def test_best_of_n_ties_and_sentinels():
  solution_scores = np.array([[0.3, 0.7, 0.7, 0.1], [0.5, 0.5, 0.5, 0.5],
                              [-np.inf, -np.inf, -np.inf, np.nan], [0.9, 0.8, np.nan, 0.1]],
                             np.float32)
  valid = np.array([[True] * 4, [False, True, True, True], [True] * 4, [False, True, True, True]])
  np.testing.assert_array_equal(pick(solution_scores, valid), [1, 1, 0, 1])
  np.testing.assert_array_equal(pick(solution_scores, np.zeros((4, 4), bool)), [NO_CHOICE] * 4)
  np.testing.assert_array_equal(pick(solution_scores[:1]), [1])


@hypothesis_settings
@given(answer_ids=answers, valid=masks)
def test_unit_weight_vote_is_majority_vote(answer_ids, valid):
  unit = np.asarray(vote(answer_ids, np.ones((B, N), np.float32), valid))
  default = np.asarray(vote(answer_ids, None, valid))
  expected = [majority_vote(answer_ids[row], valid[row]) for row in range(B)]
  np.testing.assert_array_equal(unit, expected)
  np.testing.assert_array_equal(default, expected)


@hypothesis_settings
@given(answer_ids=answers, weights=scores, valid=masks, noise=answers, perm=permutations)
def test_weighted_vote_reference_masking_and_permutation(answer_ids, weights, valid, noise, perm):
  got = np.asarray(vote(answer_ids, weights, valid))
  expected = [reference_vote(answer_ids[row], weights[row], valid[row]) for row in range(B)]
  np.testing.assert_array_equal(got, expected)
  # Masked candidates carry no vote: changing their answers and weights changes nothing.
  scrambled_ids = np.where(valid, answer_ids, noise + 10)
  scrambled_weights = np.where(valid, weights, 100.0).astype(np.float32)
  np.testing.assert_array_equal(vote(scrambled_ids, scrambled_weights, valid), got)
  # Reordering candidates keeps the winner wherever it is not decided by a tie.
  permuted = np.asarray(vote(answer_ids[:, perm], weights[:, perm], valid[:, perm]))
  for row in range(B):
    totals = collections.defaultdict(float)
    for a, w, v in zip(answer_ids[row], weights[row], valid[row]):
      totals[a] += float(w) if v else 0.0
    best = sorted((t for a, t in totals.items() if any(valid[row] & (answer_ids[row] == a))),
                  reverse=True)
    if len(best) < 2 or best[0] != best[1]:
      assert permuted[row] == got[row]


def test_weighted_vote_ties_and_sentinels():
  answer_ids = np.array([[5, 3, 3, 5], [7, 2, 2, 9], [1, 1, 2, 2]], np.int32)
  weights = np.array([[1, 1, 1, 1], [0.9, 0.5, 0.5, 0.2], [0.4, 0.1, 0.3, 0.2]], np.float32)
  # Row 0: 5 and 3 tie at 2, 5 occurs first. Row 1: 2 (1.0) beats 7 (0.9). Row 2: 1 and
  # 2 tie at 0.5; 1 occurs first.
  np.testing.assert_array_equal(vote(answer_ids, weights, None), [5, 2, 1])
  valid = np.array([[False, True, True, True], [False] * 4, [True, True, True, False]])
  np.testing.assert_array_equal(vote(answer_ids, weights, valid), [3, NO_CHOICE, 1])


def test_sharded_equals_unsharded():
  mesh = parallel.make_mesh(data=4, fsdp=2, tensor=1)
  rng = np.random.default_rng(0)
  step_scores = rng.random((8, 6, 5), np.float32)
  step_mask = rng.random((8, 6, 5)) < 0.8
  answer_ids = rng.integers(0, 3, (8, 6)).astype(np.int32)
  valid = rng.random((8, 6)) < 0.8

  def score(step_scores, step_mask, answer_ids, valid):
    solution = aggregate_step_scores(step_scores, step_mask, "prod")
    return solution, best_of_n(solution, valid), weighted_vote(answer_ids, solution, valid)

  args = (step_scores, step_mask, answer_ids, valid)
  want = jax.jit(score)(*args)
  rows = lambda x: NamedSharding(mesh, P(("data", "fsdp"), *([None] * (x.ndim - 1))))
  got = jax.jit(score)(*[jax.device_put(x, rows(x)) for x in args])
  for g, w in zip(got, want):
    np.testing.assert_array_equal(g, w)
