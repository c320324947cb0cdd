"""ProcessBench metric: find the earliest wrong step.

A PRM predicts the earliest step whose score falls below `threshold` (-1: all steps
correct). On the samples that do contain an error, accuracy = exact index match; on the
error-free ones, accuracy = predicting -1. F1 is the harmonic mean of the two accuracies
(ProcessBench, Zheng et al. 2024).

The threshold matters for PRMs trained on Monte Carlo *soft* labels: they estimate the
chance that a prefix still ends right (a value), not whether its last step is right, so a
correct step early in a hard problem can score well below 0.5. `calibrate_threshold` picks
the threshold on labelled data other than the test set (e.g. the PRM's own training
samples, whose first errors come from the hard Monte Carlo labels).
"""

from __future__ import annotations

import numpy as np


def earliest_error(step_scores: np.ndarray, step_mask: np.ndarray,
                   threshold: float = 0.5) -> np.ndarray:
  """Index `[B]` of the first valid step with score < threshold, -1 if none.

  Args:
    step_scores: `[B, S]` P(step correct) from the PRM.
    step_mask: `[B, S]` bool, real steps.
  """
  wrong = np.asarray(step_mask, bool) & (np.asarray(step_scores) < threshold)
  return np.where(wrong.any(axis=-1), wrong.argmax(axis=-1), -1)


def processbench_f1(predicted: np.ndarray, truth: np.ndarray) -> dict:
  """`{"error_accuracy", "correct_accuracy", "f1", "num_error", "num_correct"}`.

  predicted, truth: `[B]` earliest-error indices (-1 = no error). An accuracy over an
  empty group is NaN, and so is F1 then (a metric without evidence is not 0 or 1).
  """
  predicted, truth = np.asarray(predicted), np.asarray(truth)
  has_error = truth >= 0
  error_accuracy = float(np.mean(predicted[has_error] == truth[has_error])) if has_error.any() \
      else float("nan")
  correct_accuracy = float(np.mean(predicted[~has_error] == -1)) if (~has_error).any() \
      else float("nan")
  total = error_accuracy + correct_accuracy
  f1 = 2 * error_accuracy * correct_accuracy / total if total > 0 else (
      0.0 if total == 0 else float("nan"))
  return {"error_accuracy": error_accuracy, "correct_accuracy": correct_accuracy, "f1": f1,
          "num_error": int(has_error.sum()), "num_correct": int((~has_error).sum())}


DEFAULT_GRID = tuple(round(0.01 * i, 2) for i in range(1, 100))


def pad_steps(rows) -> tuple[np.ndarray, np.ndarray]:
  """Ragged per-step values (one list per sample) as `[B, S]` float32 and the `[B, S]` mask
  of real steps (S >= 1), the inputs of `earliest_error`."""
  values = np.zeros((len(rows), max((len(r) for r in rows), default=0) or 1), np.float32)
  mask = np.zeros(values.shape, bool)
  for index, row in enumerate(rows):
    values[index, :len(row)], mask[index, :len(row)] = row, True
  return values, mask


def first_errors(step_labels) -> np.ndarray:
  """`[B]` index of the first step labelled < 0.5 in each ragged row of labels, -1 if none."""
  return earliest_error(*pad_steps(step_labels), threshold=0.5)


def calibrate_threshold(step_scores: np.ndarray, step_mask: np.ndarray, truth: np.ndarray,
                        grid=DEFAULT_GRID) -> tuple[float, float]:
  """(threshold, its F1): the `grid` value with the highest earliest-error F1 of
  `step_scores [B, S]` against `truth [B]`; ties go to the smallest threshold."""
  best = (float(grid[0]), -1.0)
  for threshold in grid:
    f1 = processbench_f1(earliest_error(step_scores, step_mask, threshold), truth)["f1"]
    if not np.isnan(f1) and f1 > best[1]:
      best = (float(threshold), float(f1))
  return best
