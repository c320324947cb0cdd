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

`benchmark_f1` is the benchmark as published: F1 per subset and its average over subsets,
at the official 0.5 and at a threshold calibrated without the subset it is reported on.
"""

from __future__ import annotations

from typing import Mapping, Sequence

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


def benchmark_f1(scores: Mapping[str, Sequence[np.ndarray]], truth: Mapping[str, Sequence[int]],
                 *, threshold: float = 0.5, calibration=None, grid=DEFAULT_GRID) -> dict:
  """ProcessBench as published: `processbench_f1` per subset and the average F1 over them,
  at the official `threshold` and at a calibrated one.

  Args:
    scores: `{subset: [[S_i] step scores of sample i]}`.
    truth: `{subset: [B] earliest-error labels}` (-1: no error).
    calibration: None: each subset's threshold is `calibrate_threshold` on every *other*
      subset pooled (leave one subset out). Or `(scores, truth)`: ragged step scores
      `[N][S_i]` and labels `[N]` of samples apart from the benchmark, whose best threshold
      serves every subset.
  Returns:
    `{"subsets": {name: {"n", "num_error", "num_correct", "official", "calibrated"}},
    "average_f1": {"official", "calibrated"}}`: `official` holds `error_accuracy`,
    `correct_accuracy` and `f1`; `calibrated` the same and its `threshold`, or is None when
    no threshold can be calibrated (no other subset, or calibration samples lacking
    erroneous or correct ones). An average with an undefined member is NaN.
  """
  subsets = {}
  for name in scores:
    if calibration is None:
      others = [other for other in scores if other != name]
      held_out = ([s for o in others for s in scores[o]], [t for o in others for t in truth[o]])
    else:
      held_out = calibration
    values, mask = pad_steps(scores[name])
    labels = np.asarray(truth[name])

    def metrics(at: float) -> dict:
      result = processbench_f1(earliest_error(values, mask, at), labels)
      return {k: result[k] for k in ("error_accuracy", "correct_accuracy", "f1")}

    calibrated = None
    if len(held_out[1]):
      chosen, best = calibrate_threshold(*pad_steps(held_out[0]), np.asarray(held_out[1]), grid)
      # best < 0: F1 is undefined at every threshold (a group missing from the held-out set).
      calibrated = {"threshold": chosen, **metrics(chosen)} if best >= 0 else None
    subsets[name] = {"n": len(labels), "num_error": int(np.sum(labels >= 0)),
                     "num_correct": int(np.sum(labels < 0)), "official": metrics(threshold),
                     "calibrated": calibrated}

  def average(kind: str) -> float:
    values = [s[kind]["f1"] if s[kind] else float("nan") for s in subsets.values()]
    return float(np.mean(values)) if values else float("nan")

  return {"subsets": subsets,
          "average_f1": {"official": average("official"), "calibrated": average("calibrated")}}
