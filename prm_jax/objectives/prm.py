"""Step-level PRM objective: binary cross-entropy at step-end positions, hard or soft labels.

A PRM scores step t at the last token of step t (the separator), `p_t = sigmoid(l_t)`
(see `prm_jax.models.forward`). With label `y_t in [0, 1]` (hard: 0/1; soft: Monte Carlo
success fraction) the per-step loss is

    BCE(l, y) = -(y log p + (1 - y) log(1 - p)) = softplus(l) - y * l,

averaged over the real steps of the batch (`step_mask`).

Batch layout (from `prm_jax.data` batching):
  input_ids [B, T] int, attention_mask [B, T] bool, step_positions [B, S] int,
  step_labels [B, S] float in [0, 1], step_mask [B, S] bool.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from prm_jax import models


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
