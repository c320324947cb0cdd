"""Best-of-N curves and ProcessBench F1 against brute-force Python references."""

from collections import defaultdict

import numpy as np
import pytest

from prm_jax.evaluate import (Candidates, best_of_n_curves, calibrate_threshold, earliest_error,
                              first_errors, processbench_f1)


def _random_candidates(rng, problems=40, n=8, steps=5):
  answer_ids = rng.integers(-1, 4, (problems, n))  # Few distinct answers: votes matter.
  gold = rng.integers(0, 4, problems)
  step_mask = np.arange(steps) < rng.integers(1, steps + 1, (problems, n))[..., None]
  return Candidates(answer_ids=answer_ids, correct=answer_ids == gold[:, None],
                    step_scores=rng.random((problems, n, steps)), step_mask=step_mask,
                    orm_scores=rng.random((problems, n)))


def _reference(c: Candidates, method: str) -> float:
  """Python loops over the full candidate set (N = N_max): the definitions, spelled out."""
  hits = []
  for b in range(len(c.answer_ids)):
    steps = [c.step_scores[b, i][c.step_mask[b, i]] for i in range(c.answer_ids.shape[1])]
    agg = {"min": [s.min() for s in steps], "last": [s[-1] for s in steps],
           "prod": [np.prod(s.astype(np.float64)) for s in steps],
           "mean": [s.mean() for s in steps]}
    if method == "oracle":
      hits.append(c.correct[b].any())
    elif method == "random":
      hits.append(c.correct[b].mean())
    elif method in ("majority", "prm_vote"):
      totals = defaultdict(float)
      first = {}
      for i, a in enumerate(c.answer_ids[b]):
        if a < 0:
          continue
        totals[a] += 1.0 if method == "majority" else agg["min"][i]
        first.setdefault(a, i)
      if not totals:
        hits.append(False)
        continue
      best = max(totals.values())
      winner = min((first[a], a) for a, t in totals.items() if np.isclose(t, best, rtol=1e-6))[1]
      hits.append(winner in set(c.answer_ids[b][c.correct[b]]))
    else:
      scores = c.orm_scores[b] if method == "orm" else agg[method.removeprefix("prm_")]
      hits.append(c.correct[b][int(np.argmax(scores))])
  return float(np.mean(hits))


@pytest.mark.parametrize("seed", [0, 1])
def test_full_set_accuracy_equals_the_definitions(seed):
  c = _random_candidates(np.random.default_rng(seed))
  curves = best_of_n_curves(c, ns=(8,))
  for method, by_n in curves.items():
    assert by_n["8"] == pytest.approx(_reference(c, method), abs=1e-9), method


def test_subset_curves_are_ordered_and_deterministic():
  rng = np.random.default_rng(2)
  c = _random_candidates(rng, problems=60, n=16)
  curves = best_of_n_curves(c, ns=(1, 2, 4, 8, 16), draws=16, seed=3)
  assert curves == best_of_n_curves(c, ns=(1, 2, 4, 8, 16), draws=16, seed=3)
  oracle = [curves["oracle"][str(n)] for n in (1, 2, 4, 8, 16)]
  assert oracle == sorted(oracle)  # More candidates can only help the oracle.
  # At N = 1 every method picks the single candidate (or abstains if it has no answer).
  assert curves["prm_min"]["1"] == pytest.approx(curves["random"]["1"])
  assert curves["oracle"]["1"] == pytest.approx(curves["random"]["1"])
  assert curves["majority"]["1"] <= curves["random"]["1"] + 1e-12


def test_a_perfect_prm_reaches_the_oracle():
  rng = np.random.default_rng(4)
  c = _random_candidates(rng, n=16)
  c.step_scores = np.where(c.correct[..., None], 0.9, 0.1) * np.ones_like(c.step_scores)
  curves = best_of_n_curves(c, ns=(16,))
  for method in ("prm_min", "prm_prod", "prm_last", "prm_mean", "prm_vote"):
    assert curves[method]["16"] == curves["oracle"]["16"], method


def test_too_many_candidates_requested():
  c = _random_candidates(np.random.default_rng(5), n=4)
  with pytest.raises(ValueError, match="N=8 exceeds the 4 candidates"):
    best_of_n_curves(c, ns=(1, 8))


def test_earliest_error_and_f1():
  scores = np.array([[0.9, 0.4, 0.1], [0.9, 0.8, 0.7], [0.2, 0.9, 0.9], [0.9, 0.9, 0.1]])
  mask = np.array([[1, 1, 1], [1, 1, 1], [1, 1, 1], [1, 1, 0]], bool)
  predicted = earliest_error(scores, mask)
  np.testing.assert_array_equal(predicted, [1, -1, 0, -1])  # Masked low score ignored.
  truth = np.array([1, -1, 1, 2])
  result = processbench_f1(predicted, truth)
  # Erroneous samples 0, 2, 3: only sample 0 exact -> 1/3; the correct one: right -> 1.
  assert result["error_accuracy"] == pytest.approx(1 / 3)
  assert result["correct_accuracy"] == 1.0
  assert result["f1"] == pytest.approx(2 * (1 / 3) / (1 / 3 + 1))
  assert np.isnan(processbench_f1(np.array([-1]), np.array([-1]))["f1"])


def test_first_errors_of_ragged_labels():
  np.testing.assert_array_equal(first_errors([[1.0, 0.75, 0.0, 0.0], [1, 1], [0.25], []]),
                                [2, -1, 0, -1])


def test_calibrated_threshold_is_the_best_of_the_grid():
  # Value-like scores: correct steps of hard problems score ~0.3, wrong steps ~0.02.
  rng = np.random.default_rng(0)
  truth = rng.integers(-1, 4, 300)
  scores = np.where(np.arange(4) < np.where(truth < 0, 4, truth)[:, None],
                    rng.uniform(0.2, 1.0, (300, 4)), rng.uniform(0.0, 0.05, (300, 4)))
  mask = np.ones(scores.shape, bool)
  threshold, f1 = calibrate_threshold(scores, mask, truth)
  brute = {t: processbench_f1(earliest_error(scores, mask, t), truth)["f1"]
           for t in np.round(np.arange(1, 100) * 0.01, 2)}
  best = max(brute.values())
  assert f1 == best == 1.0
  assert threshold == min(t for t, v in brute.items() if v == best)  # Ties: the smallest.
  assert processbench_f1(earliest_error(scores, mask, 0.5), truth)["f1"] < 1.0
