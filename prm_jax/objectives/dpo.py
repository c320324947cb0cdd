"""DPO (sigmoid loss) and the pairs of online DPO.

For a preference pair (chosen y_w, rejected y_l) of one prompt, with sequence log-probs
`log pi(y) = sum_t log pi(y_t | x, y_<t)` over the completion's tokens:

    loss = -log sigmoid(beta * [(log pi(y_w) - log pi_ref(y_w)) - (log pi(y_l) - log pi_ref(y_l))])

(Rafailov et al.; TRL's `loss_type="sigmoid"`), plus optionally `sft_weight` times the
chosen completions' negative log-likelihood, averaged over their tokens (RPO, Pang et al.
2024; TRL's `loss_type=["sigmoid", "sft"]`, `loss_weights=[1, sft_weight]`), the usual
guard against DPO lowering the chosen answers' likelihood along with the rejected ones'.
Online DPO (AgentPRM's policy step): per prompt, K responses are sampled with the *current*
policy and ranked by a reward (a PRM or the verifier); the best and the worst make the pair
(`preference_pairs`; a prompt whose K rewards are all equal gives none), and the reference
pi_ref is the policy of the previous iteration (`prm_jax.pipelines.policy_rl` runs the
iterations; `prm_jax.online` samples).

Batch layout (`prm_jax.objectives.completion`'s rows, paired on a second axis):
  input_ids, attention_mask [Q, 2, P + N]     pair q: [chosen, rejected]
  completion_mask [Q, 2, N] bool
  ref_logprobs [Q, 2] float32                 sequence log-probs under the reference
  pair_weight [Q] float32                     1 / (fraction of real pairs in the global
                                              batch) for real pairs, 0 for filler, so the
                                              loss is the mean over real pairs, and stays
                                              so over gradient-accumulation micro-batches
  chosen_tokens [Q] float32                   (with sft_weight) the global batch's real
                                              chosen tokens / its pairs, every row: the
                                              NLL's token mean stays global over
                                              micro-batches (absent: this batch's count)
  stats {name: [Q] float32}                   rollout statistics (optional)
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from prm_jax import models
from prm_jax.objectives.completion import completion_logprobs


@dataclasses.dataclass(frozen=True)
class DPOConfig:
  """An experiment's `config.dpo`. beta: the inverse temperature of the implicit reward
  (larger: stay closer to the reference); sft_weight: the weight of the chosen
  completions' token-mean NLL added to the loss (0: plain DPO)."""

  beta: float = 0.1
  sft_weight: float = 0.0

  def __post_init__(self):
    if not self.beta > 0:
      raise ValueError(f"dpo.beta must be > 0, got {self.beta!r}")
    if not self.sft_weight >= 0:
      raise ValueError(f"dpo.sft_weight must be >= 0, got {self.sft_weight!r}")


def dpo_loss(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps,
             beta: float) -> jax.Array:
  """Per-pair sigmoid DPO loss `[Q]` from sequence log-probs `[Q]` (fp32)."""
  margin = (chosen_logps - ref_chosen_logps) - (rejected_logps - ref_rejected_logps)
  return -jax.nn.log_sigmoid(beta * margin)


def sequence_logprobs(token_logprobs: jax.Array, completion_mask: jax.Array) -> jax.Array:
  """`[...]` sums of the completion's token log-probs `[..., N]` over its real tokens."""
  return jnp.sum(jnp.where(completion_mask, token_logprobs, 0.0), axis=-1)


def preference_pairs(rewards, group_size: int):
  """Online DPO pairs from rewards `[B]`, B = prompts x group_size (group-major rows).

  Returns `(chosen [B/G], rejected [B/G], valid [B/G])`: row indices of each group's
  highest and lowest reward (first of equals), and whether they differ (a pair exists).
  """
  rewards = jnp.asarray(rewards, jnp.float32)
  if rewards.ndim != 1:
    raise ValueError(f"rewards must be [B] (one per completion), got shape {rewards.shape}")
  if rewards.shape[0] % group_size:
    raise ValueError(f"group_size={group_size} does not divide the batch of "
                     f"{rewards.shape[0]} rows")
  grouped = rewards.reshape(-1, group_size)
  base = jnp.arange(grouped.shape[0]) * group_size
  chosen, rejected = jnp.argmax(grouped, axis=1), jnp.argmin(grouped, axis=1)
  valid = jnp.max(grouped, axis=1) > jnp.min(grouped, axis=1)
  return base + chosen, base + rejected, valid


def dpo_objective(token_logprobs: jax.Array, batch: dict, config: DPOConfig
                  ) -> tuple[jax.Array, dict]:
  """(loss, metrics) of DPO from the policy's completion log-probs `[Q, 2, N]` and a batch
  in the module's layout (everything `make_dpo_loss` does after the forward pass).

  metrics: `loss`, `sft_nll` (with sft_weight), `reward_accuracy` (fraction of real pairs
  whose implicit reward margin is > 0), `margin` (mean beta * margin), `chosen_logratio` /
  `rejected_logratio` (mean `log pi - log pi_ref`), `pairs` (real ones), and
  `rollout_<name>` for every `batch["stats"]` entry.
  """
  logps = sequence_logprobs(token_logprobs, batch["completion_mask"])
  ref = batch["ref_logprobs"]
  losses = dpo_loss(logps[:, 0], logps[:, 1], ref[:, 0], ref[:, 1], config.beta)
  weight = batch["pair_weight"]
  real = (weight > 0).astype(jnp.float32)
  real_mean = lambda x: jnp.sum(x * real) / jnp.maximum(real.sum(), 1.0)
  logratios = logps - ref
  margin = config.beta * (logratios[:, 0] - logratios[:, 1])
  loss = jnp.mean(losses * weight)
  metrics = {}
  if config.sft_weight:
    chosen_mask = batch["completion_mask"][:, 0] & (weight > 0)[:, None]
    nll = -jnp.sum(jnp.where(chosen_mask, token_logprobs[:, 0], 0.0))
    tokens = (jnp.sum(batch["chosen_tokens"]) if "chosen_tokens" in batch
              else jnp.sum(chosen_mask))
    metrics["sft_nll"] = nll / jnp.maximum(tokens, 1.0)
    loss = loss + config.sft_weight * metrics["sft_nll"]
  metrics.update({"loss": loss, "reward_accuracy": real_mean(margin > 0),
                  "margin": real_mean(margin), "chosen_logratio": real_mean(logratios[:, 0]),
                  "rejected_logratio": real_mean(logratios[:, 1]), "pairs": real.sum()})
  metrics.update({f"rollout_{name}": jnp.mean(value)
                  for name, value in batch.get("stats", {}).items()})
  return loss, metrics


def make_dpo_loss(model_config: models.ModelConfig, config: DPOConfig):
  """`loss_fn(params, batch, rng) -> (loss, metrics)` of DPO on pairs (module docstring;
  metrics: `dpo_objective`'s). Log-probs are of the untempered policy, as DPO's are."""

  def loss_fn(params, batch, rng):
    del rng  # Deterministic objective (no dropout).
    pairs = batch["input_ids"].shape[0]
    width = batch["completion_mask"].shape[-1]
    flat = lambda x: x.reshape(2 * pairs, *x.shape[2:])
    token_logprobs = completion_logprobs(model_config, params, flat(batch["input_ids"]),
                                         flat(batch["attention_mask"]), width)
    return dpo_objective(token_logprobs.reshape(pairs, 2, width), batch, config)

  return loss_fn
