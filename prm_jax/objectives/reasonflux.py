"""ReasonFlux-PRM objective: step rewards on the thinking steps and a trajectory reward at the
end of the response, both regressed with squared error (Zou et al. 2025, arXiv 2506.18896).

Input layout. A pair (problem `x`, thinking steps `s_1..s_T`, response `y`) is laid out as
a stepwise example whose steps are the T thinking steps and then the whole response as one
last step (`reasonflux_example`): the PRM head reads step t's score `R(s_t)` at the end of
thinking step t and the trajectory score `R(x, y)` at the last token, the model's final
position (the layout of ReasonFlux-PRM-1.5B: a head on the last token). Any registry or HF
model with a PRM head scores it; the usual PRM batches (`prm_jax.data.pipeline.
prm_batches`) carry it, the trajectory target being each row's last step. Over-long pairs
raise there (no truncation), so the last step of a row is always the response's end.

Loss, per pair, with `R = sigmoid(head logit)` and targets `r_t`, `r_final` in [0, 1]
(`prm_jax.labeling.reasonflux`):

    L = lambda_step * mean_t (R(s_t) - r_t)^2 + lambda_final * (R(x, y) - r_final)^2,

averaged over the pairs of the batch (each term over the pairs that have it: a pair's
unknown targets are masked). Selection and Best-of-N use `pair_score = mean_t R(s_t) +
alpha * R(x, y)`.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from prm_jax import models
from prm_jax.data.schema import Trajectory
from prm_jax.objectives.prm import auroc

RESPONSE_JOIN = "\n\n"  # The response's steps, as one last step (its blank-line layout).


def reasonflux_example(pair: Trajectory, step_targets: Sequence[float] | None = None,
                       final_target: float | None = None) -> Trajectory:
  """The stepwise example of a thinking + response pair: the thinking steps, then the
  response as one step; labels the step targets and then the trajectory target (None:
  unknown, so only scored)."""
  if not pair.response:
    raise ValueError(f"pair {pair.meta.get('source', pair.problem[:40])!r} has no response")
  if step_targets is not None and len(step_targets) != len(pair.steps):
    raise ValueError(f"{len(step_targets)} step targets for {len(pair.steps)} thinking steps")
  labels = [None] * len(pair.steps) if step_targets is None else [float(r) for r in step_targets]
  return Trajectory(problem=pair.problem, steps=[*pair.steps, RESPONSE_JOIN.join(pair.response)],
                    labels=[*labels, None if final_target is None else float(final_target)],
                    answer=pair.answer, meta=dict(pair.meta))


def final_step_mask(step_positions: jax.Array) -> jax.Array:
  """`[B, S]` bool: each row's last step (the response's end); rows without steps: none."""
  present = step_positions >= 0
  last = jnp.sum(present, axis=-1) - 1
  return (jnp.arange(step_positions.shape[-1])[None] == last[:, None]) & present


def make_reasonflux_loss(config: models.ModelConfig, *, lambda_step: float = 1.0,
                         lambda_final: float = 1.0):
  """`loss_fn(params, batch, rng) -> (loss, metrics)` on PRM batches of `reasonflux_example`s.

  metrics: `loss`, `step_mse`, `final_mse`, `num_steps`, `num_finals`.
  """
  if lambda_step < 0 or lambda_final < 0 or lambda_step + lambda_final == 0:
    raise ValueError(f"lambda_step={lambda_step} and lambda_final={lambda_final} must be >= 0 "
                     "and not both 0")

  def loss_fn(params, batch, rng):
    del rng  # Deterministic objective.
    out = models.forward(config, params, batch["input_ids"],
                         attention_mask=batch["attention_mask"],
                         step_positions=batch["step_positions"], lm_logits="none")
    squared = (out["step_scores"] - batch["step_labels"].astype(jnp.float32)) ** 2
    final = final_step_mask(batch["step_positions"])
    steps = (batch["step_mask"] & ~final).astype(jnp.float32)
    finals = (batch["step_mask"] & final).astype(jnp.float32)
    # Per pair: the mean over its own steps; then over the pairs that have steps.
    per_pair = jnp.sum(squared * steps, -1) / jnp.maximum(steps.sum(-1), 1.0)
    pairs = (steps.sum(-1) > 0).astype(jnp.float32)
    step_mse = jnp.sum(per_pair * pairs) / jnp.maximum(pairs.sum(), 1.0)
    final_mse = jnp.sum(squared * finals) / jnp.maximum(finals.sum(), 1.0)
    loss = lambda_step * step_mse + lambda_final * final_mse
    return loss, {"loss": loss, "step_mse": step_mse, "final_mse": final_mse,
                  "num_steps": steps.sum(), "num_finals": finals.sum()}

  return loss_fn


def pair_score(scores: np.ndarray, alpha: float = 1.0) -> float:
  """`mean_t R(s_t) + alpha * R(x, y)` of one pair's scores `[T + 1]` (steps, then final)."""
  scores = np.asarray(scores, np.float64)
  if scores.size < 2:
    raise ValueError("a pair's scores need at least one thinking step and the final score")
  return float(scores[:-1].mean() + alpha * scores[-1])


def pearson(x, y) -> float:
  """Pearson correlation of two equal-length samples (NaN if either is constant)."""
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  if x.size < 2 or x.std() == 0 or y.std() == 0:
    return float("nan")
  return float(np.corrcoef(x, y)[0, 1])


def reasonflux_metrics(scores: Sequence[np.ndarray], step_truth: Sequence[Sequence[float]],
                       final_truth: Sequence[float]) -> dict[str, float]:
  """How well the scores of pairs (`[T + 1]` each: steps, then final) track ground truth:
  Pearson correlation and AUROC (truth >= 0.5 positive) of the step scores against the
  steps' true quality and of the trajectory scores against the trajectories'."""
  steps = np.concatenate([np.asarray(s, np.float64)[:-1] for s in scores])
  finals = np.array([s[-1] for s in scores], np.float64)
  truth = np.concatenate([np.asarray(t, np.float64) for t in step_truth])
  final_truth = np.asarray(final_truth, np.float64)
  if truth.shape != steps.shape or final_truth.shape != finals.shape:
    raise ValueError(f"truth for {truth.size} steps / {final_truth.size} pairs; scores for "
                     f"{steps.size} / {finals.size}")
  return {"step_pearson": pearson(steps, truth), "step_auroc": auroc(steps, truth >= 0.5),
          "final_pearson": pearson(finals, final_truth),
          "final_auroc": auroc(finals, final_truth >= 0.5)}
