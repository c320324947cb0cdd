"""The completion layout the policy-optimisation objectives (GRPO, DPO) share.

A row is a left-padded prompt followed by a sampled completion of N tokens:

    input_ids       [B, P + N] int   prompt (P columns, left-padded) | completion (N columns)
    attention_mask  [B, P + N] bool  real prompt tokens and the completion up to its end
    completion_mask [B, N] bool      the completion's real tokens (its stop token included)

Completion token j sits at column P + j and is predicted by the logits at column P + j - 1,
so the last N + 1 logits are the only ones a loss reads.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from prm_jax import models


def completion_logprobs(config: models.ModelConfig, params, input_ids: jax.Array,
                        attention_mask: jax.Array, completion_width: int,
                        temperature: float = 1.0) -> jax.Array:
  """`[B, N]` fp32 log-probs of the completion tokens under `softmax(logits / temperature)`.

  The temperature is the sampler's: a policy sampled at temperature T draws token j from
  `softmax(logits / T)`, and that tempered distribution is the policy whose probability
  ratios and KL the GRPO loss takes (as TRL's GRPOTrainer does). Positions past a row's end
  hold padding and arbitrary values: mask them with `completion_mask`.
  """
  logits = models.forward(config, params, input_ids, attention_mask=attention_mask)["logits"]
  return token_logprobs(logits, input_ids, completion_width, temperature)


def token_logprobs(logits: jax.Array, input_ids: jax.Array, completion_width: int,
                   temperature: float = 1.0) -> jax.Array:
  """`[B, N]` fp32 log-probs of the last N tokens of `input_ids [B, T]` from the model's
  logits `[B, T, V]` (the logits at column c predict the token at c + 1)."""
  if not temperature > 0:
    raise ValueError(f"temperature must be > 0, got {temperature!r}")
  logits = logits[:, -completion_width - 1:-1].astype(jnp.float32) / temperature
  tokens = input_ids[:, -completion_width:]
  chosen = jnp.take_along_axis(logits, tokens[..., None], axis=-1)[..., 0]
  return chosen - jax.nn.logsumexp(logits, axis=-1)
