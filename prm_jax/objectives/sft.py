"""Supervised fine-tuning of the policy: next-token cross-entropy on completion tokens.

Batch (from `prm_jax.data.collate_sft`): input_ids [B, T] int, attention_mask [B, T]
bool, loss_mask [B, T] bool (True on the tokens to predict: the solution and its EOS).
Token t's loss is `-log p(input_ids[t] | input_ids[<t])`, averaged over loss-mask tokens.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from prm_jax import models


def make_sft_loss(config: models.ModelConfig):
  """`loss_fn(params, batch, rng) -> (loss, metrics)`; metrics: loss, token accuracy, tokens."""

  def loss_fn(params, batch, rng):
    del rng  # Deterministic objective (no dropout).
    logits = models.forward(config, params, batch["input_ids"],
                            attention_mask=batch["attention_mask"])["logits"][:, :-1]
    targets = batch["input_ids"][:, 1:]
    mask = batch["loss_mask"][:, 1:].astype(jnp.float32)
    logprobs = jax.nn.log_softmax(logits)
    nll = -jnp.take_along_axis(logprobs, targets[..., None], axis=-1)[..., 0]
    tokens = jnp.maximum(mask.sum(), 1.0)
    loss = jnp.sum(nll * mask) / tokens
    accuracy = jnp.sum((jnp.argmax(logits, -1) == targets) * mask) / tokens
    return loss, {"loss": loss, "token_accuracy": accuracy, "tokens": mask.sum()}

  return loss_fn
