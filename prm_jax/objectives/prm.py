"""Step-level PRM objective: binary cross-entropy at step-end positions, hard or soft labels.

A PRM scores step t at the last token of step t (the separator), `p_t = sigmoid(l_t)`
(see `prm_jax.models.forward`). With label `y_t in [0, 1]` (hard: 0/1; soft: Monte Carlo
success fraction) the per-step loss is

    BCE(l, y) = -(y log p + (1 - y) log(1 - p)) = softplus(l) - y * l,

averaged over the real steps of the batch (`step_mask`). Evaluation
(`make_prm_evaluator`) reports the same loss, step accuracy and the AUROC of the step
scores, each exact over the whole evaluation set.

Batch layout (from `prm_jax.data` batching):
  input_ids [B, T] int, attention_mask [B, T] bool, step_positions [B, S] int,
  step_labels [B, S] float in [0, 1], step_mask [B, S] bool.
"""

from __future__ import annotations

from typing import Iterable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from prm_jax import models, parallel


def step_bce(step_logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Per-step BCE-with-logits `[...]` in fp32, numerically stable for any logit."""
  logits = step_logits.astype(jnp.float32)
  return jax.nn.softplus(logits) - labels.astype(jnp.float32) * logits


def make_prm_loss(config: models.ModelConfig):
  """`loss_fn(params, batch, rng) -> (loss, metrics)` for step-level PRM training.

  metrics: `loss`, `step_accuracy` (prediction p >= 0.5 vs label >= 0.5) and `num_steps`.
  """

  def loss_fn(params, batch, rng):
    del rng  # Deterministic objective (no dropout).
    out = models.forward(config, params, batch["input_ids"],
                         attention_mask=batch["attention_mask"],
                         step_positions=batch["step_positions"], lm_logits="none")
    mask = batch["step_mask"].astype(jnp.float32)
    num_steps = jnp.maximum(mask.sum(), 1.0)
    loss = jnp.sum(step_bce(out["step_logits"], batch["step_labels"]) * mask) / num_steps
    correct = (out["step_logits"] >= 0) == (batch["step_labels"] >= 0.5)
    accuracy = jnp.sum(correct * mask) / num_steps
    return loss, {"loss": loss, "step_accuracy": accuracy, "num_steps": mask.sum()}

  return loss_fn


def auroc(scores: np.ndarray, positive: np.ndarray) -> float:
  """Area under the ROC curve, exact: the Mann-Whitney U statistic over all pairs.

  AUROC = P(score of a random positive > score of a random negative), ties counting
  1/2, computed from average ranks in O(n log n): `(R_pos - n_pos (n_pos + 1) / 2) /
  (n_pos n_neg)` with `R_pos` the sum of the positives' ranks. NaN if a class is empty.

  Args:
    scores: `[N]` scores (any monotone transform, e.g. logits, gives the same value).
    positive: `[N]` bool, the positive class.
  """
  scores = np.asarray(scores, np.float64).ravel()
  positive = np.asarray(positive, bool).ravel()
  num_pos = int(positive.sum())
  num_neg = positive.size - num_pos
  if num_pos == 0 or num_neg == 0:
    return float("nan")
  order = np.argsort(scores, kind="stable")
  sorted_scores = scores[order]
  # Tied scores share the mean of the ranks they span (1-based).
  starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
  ends = np.r_[starts[1:], scores.size]
  ranks = np.empty(scores.size)
  ranks[order] = np.repeat((starts + ends + 1) / 2.0, ends - starts)
  return float((ranks[positive].sum() - num_pos * (num_pos + 1) / 2.0) / (num_pos * num_neg))


def step_metrics(step_logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
  """Loss, step accuracy and AUROC of real steps (flat `[N]` logits and labels in [0, 1]).

  A step is positive (correct) when its label is >= 0.5, so soft labels are scored
  against their rounded value; the loss uses the soft label itself.
  """
  logits = np.asarray(step_logits, np.float64)
  labels = np.asarray(labels, np.float64)
  positive = labels >= 0.5
  bce = np.logaddexp(0.0, logits) - labels * logits
  return {"loss": float(bce.mean()), "step_accuracy": float(np.mean((logits >= 0) == positive)),
          "auroc": auroc(logits, positive), "num_steps": int(labels.size)}


def make_prm_evaluator(config: models.ModelConfig, batches: Iterable[dict], mesh: Mesh,
                       rules=parallel.LOGICAL_AXIS_RULES):
  """`evaluate(params) -> step_metrics` over every real step of `batches`.

  `batches`: re-iterable (a list, a grain `MapDataset`) of this process's rows of each
  evaluation batch, in the PRM layout. A short final batch is padded with masked rows
  to the first batch's size, so the forward pass compiles once.
  """

  def step_outputs(params, batch):
    out = models.forward(config, params, batch["input_ids"],
                         attention_mask=batch["attention_mask"],
                         step_positions=batch["step_positions"], lm_logits="none")
    return {"logits": out["step_logits"], "labels": batch["step_labels"],
            "mask": batch["step_mask"]}

  # Replicated outputs: every process sees all rows and computes the same metrics.
  forward = parallel.sharded_jit(step_outputs, mesh, in_shardings=None,
                                 out_shardings=parallel.replicated(mesh), rules=rules)

  def evaluate(params) -> dict[str, float]:
    logits, labels, rows = [], [], None
    for local in batches:
      rows = rows or len(local["input_ids"])
      out = parallel.fetch_replicated(forward(params, parallel.make_global_batch(
          _pad_rows(local, rows), mesh, rules)))
      mask = np.asarray(out["mask"], bool)
      logits.append(out["logits"][mask])
      labels.append(out["labels"][mask])
    return step_metrics(np.concatenate(logits), np.concatenate(labels))

  return evaluate


def _pad_rows(batch: dict, rows: int) -> dict:
  """Zero rows appended up to `rows` (zero `step_mask`: they count for nothing)."""
  missing = rows - len(batch["input_ids"])
  if missing == 0:
    return batch
  return {k: np.concatenate([v, np.zeros((missing, *v.shape[1:]), v.dtype)])
          for k, v in batch.items()}
