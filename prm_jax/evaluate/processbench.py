"""ProcessBench metric: find the earliest wrong step.

A PRM predicts the earliest step whose score falls below `threshold` (-1: all steps
correct). On the samples that do contain an error, accuracy = exact index match; on the
error-free ones, accuracy = predicting -1. F1 is the harmonic mean of the two accuracies
(ProcessBench, Zheng et al. 2024).
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
