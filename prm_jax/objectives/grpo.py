"""The GRPO family of policy-gradient losses: one loss with documented switches.

For a prompt, G completions are sampled (a *group*). Per completion token t of row i
(completion mask m_it), with A_it its advantage:

    ratio_it = exp(logp_it - old_it)                  old: the behaviour (sampling) policy
    l_it     = -min(ratio A, clip(ratio, 1 - eps_low, 1 + eps_high) A) + kl_coef * k3_it
    k3_it    = exp(ref_it - logp_it) - (ref_it - logp_it) - 1     (KL to the reference)

Advantages (computed from the rewards before the loss, by `prm_jax.online`):
  * outcome / sequence rewards r_i: `group_advantages`, A_i = (r_i - mean_g r) /
    (std_g r + eps) for every token of row i; `scale_rewards=False` drops the division
    (Dr.GRPO);
  * step rewards (DeepSeekMath's process supervision): `process_advantages`, every step
    reward normalised by the mean and std of all steps of the group, and a token's
    advantage the sum of the normalised rewards of the steps ending at or after it.
std is the population standard deviation (ddof=0, defined for any group; TRL's
GRPOTrainer uses ddof=1, larger by sqrt(G / (G - 1))).

Switches (`GRPOConfig`; `PRESETS` holds the published recipes):
  eps_low, eps_high  the clip range; eps_high > eps_low is DAPO's clip-higher (0.2 / 0.28).
  aggregation  "sequence": mean over rows of each row's token mean (GRPO);
               "token": sum over all completion tokens of the batch / their number (DAPO);
               "constant": sum / (rows * N), N the completion width: no length
               normalisation at all (Dr.GRPO).
  kl_coef      weight of the k3 KL estimate; 0 = no KL term and no reference model kept.
  dynamic_sampling  drop groups whose rewards are all equal (zero advantage, no signal)
               and sample other prompts in their place (DAPO); `keep_groups` is the filter.

The behaviour log-probs `old` travel with the batch, so one rollout batch can serve several
optimisation epochs and minibatches: in the first, ratio = 1 up to the rounding between the
sampler's and the trainer's forward passes and the loss is the plain policy gradient; in
later ones the policy has moved and the clip acts. `old` and `ref` are log-probs under
`softmax(logits / T)` at the sampling temperature T, the distribution the tokens were
drawn from (`completion.completion_logprobs`; `prm_jax.online` says where they come from).

Batch layout (`prm_jax.objectives.completion`'s, plus):
  advantages [B, N] float32      per completion token
  old_logprobs [B, N] float32    behaviour log-probs
  ref_logprobs [B, N] float32    reference log-probs (only read when kl_coef > 0)
  tokens_per_row [B] float32     completion tokens of the whole global batch / its rows:
                                 the "token" aggregation's denominator, so that gradient
                                 accumulation's micro-batches average to the batch's loss
  stats {name: [B] float32}      rollout statistics (optional), logged as `rollout_<name>`
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from prm_jax import models
from prm_jax.objectives.completion import completion_logprobs

AGGREGATIONS = ("sequence", "token", "constant")


@dataclasses.dataclass(frozen=True)
class GRPOConfig:
  """The loss's switches (module docstring); an experiment's `config.grpo` minus `preset`.

  Attributes:
    eps_low, eps_high: clip range of the probability ratio, `[1 - eps_low, 1 + eps_high]`.
    aggregation: "sequence" (GRPO), "token" (DAPO) or "constant" (Dr.GRPO).
    kl_coef: weight of the k3 KL to the reference policy; 0 keeps no reference.
    scale_rewards: divide group-centred rewards by their std (False: Dr.GRPO).
    advantage_eps: added to the std before dividing.
    dynamic_sampling: keep only groups whose rewards differ (DAPO).
  """

  eps_low: float = 0.2
  eps_high: float = 0.2
  aggregation: str = "sequence"
  kl_coef: float = 0.0
  scale_rewards: bool = True
  advantage_eps: float = 1e-4
  dynamic_sampling: bool = False

  def __post_init__(self):
    if not 0 <= self.eps_low < 1:
      raise ValueError(f"grpo.eps_low must be in [0, 1), got {self.eps_low!r}")
    if not self.eps_high >= 0:
      raise ValueError(f"grpo.eps_high must be >= 0, got {self.eps_high!r}")
    if self.aggregation not in AGGREGATIONS:
      raise ValueError(f"grpo.aggregation={self.aggregation!r} is not one of {AGGREGATIONS}")
    if not self.kl_coef >= 0:
      raise ValueError(f"grpo.kl_coef must be >= 0, got {self.kl_coef!r}")
    if not self.advantage_eps >= 0:
      raise ValueError(f"grpo.advantage_eps must be >= 0, got {self.advantage_eps!r}")


PRESETS: dict[str, dict] = {
    # DeepSeekMath: std-normalised advantages, per-sequence token means, KL in the loss.
    "grpo": dict(eps_low=0.2, eps_high=0.2, aggregation="sequence", kl_coef=0.04,
                 scale_rewards=True, dynamic_sampling=False),
    # DAPO: clip-higher, token-level aggregation, dynamic sampling, no KL.
    "dapo": dict(eps_low=0.2, eps_high=0.28, aggregation="token", kl_coef=0.0,
                 scale_rewards=True, dynamic_sampling=True),
    # Dr.GRPO: no std and no length normalisation.
    "dr_grpo": dict(eps_low=0.2, eps_high=0.2, aggregation="constant", kl_coef=0.0,
                    scale_rewards=False, dynamic_sampling=False),
}


def _check_groups(rows: int, group_size: int) -> None:
  if not isinstance(group_size, int) or group_size < 1:
    raise ValueError(f"group_size must be a positive int, got {group_size!r}")
  if rows % group_size:
    raise ValueError(f"group_size={group_size} does not divide the batch of {rows} rows "
                     "(a batch is whole groups of group_size samples of one prompt)")


def group_advantages(rewards, group_size: int, *, scale: bool = True,
                     eps: float = 1e-4) -> jax.Array:
  """`[B]` fp32 advantages from rewards `[B]`, B = prompts x group_size (group-major rows).

  `(r - mean_g) / (std_g + eps)`, or `r - mean_g` with `scale=False` (Dr.GRPO).
  """
  rewards = jnp.asarray(rewards, jnp.float32)
  if rewards.ndim != 1:
    raise ValueError(f"rewards must be [B] (one per completion), got shape {rewards.shape}")
  _check_groups(rewards.shape[0], group_size)
  grouped = rewards.reshape(-1, group_size)
  centred = grouped - grouped.mean(axis=1, keepdims=True)
  if scale:
    centred = centred / (grouped.std(axis=1, keepdims=True) + eps)
  return centred.reshape(-1)


def process_advantages(step_rewards, step_mask, step_ends, completion_width: int,
                       group_size: int, *, scale: bool = True, eps: float = 1e-4) -> jax.Array:
  """`[B, N]` fp32 token advantages from step rewards (DeepSeekMath process supervision).

  Args:
    step_rewards: `[B, S]` reward of each step of each completion.
    step_mask: `[B, S]` bool, real steps.
    step_ends: `[B, S]` int, completion-token index (0 .. N-1) of each step's last token.
    completion_width: N.
    group_size: G; rows `g*G .. g*G + G-1` are one prompt's group.
    scale, eps: as `group_advantages`; the mean and std are over all real steps of the group.

  Token t of row i gets `sum_s norm_is [t <= step_ends_is]` over real steps s: the
  normalised rewards of the steps at or after it. Tokens after the last step's end get 0.
  """
  rewards = jnp.asarray(step_rewards, jnp.float32)
  mask = jnp.asarray(step_mask, bool)
  ends = jnp.asarray(step_ends, jnp.int32)
  if rewards.ndim != 2 or mask.shape != rewards.shape or ends.shape != rewards.shape:
    raise ValueError(f"step_rewards {rewards.shape}, step_mask {mask.shape} and step_ends "
                     f"{ends.shape} must all be [B, S]")
  rows, steps = rewards.shape
  _check_groups(rows, group_size)
  grouped = rewards.reshape(-1, group_size * steps)
  weight = mask.reshape(grouped.shape).astype(jnp.float32)
  count = jnp.maximum(weight.sum(axis=1, keepdims=True), 1.0)
  centred = grouped - jnp.sum(grouped * weight, axis=1, keepdims=True) / count
  if scale:
    std = jnp.sqrt(jnp.sum(centred ** 2 * weight, axis=1, keepdims=True) / count)
    centred = centred / (std + eps)
  normalised = (centred * weight).reshape(rows, steps)
  covers = jnp.arange(completion_width)[None, None, :] <= ends[:, :, None]  # [B, S, N]
  return jnp.sum(normalised[:, :, None] * covers, axis=1)


def keep_groups(rewards, group_size: int, mask=None) -> jax.Array:
  """`[B / G]` bool: the group's (real) rewards are not all equal (DAPO's dynamic sampling).

  rewards: `[B]` sequence rewards or `[B, S]` step rewards (with `mask [B, S]`).
  """
  rewards = jnp.asarray(rewards, jnp.float32)
  _check_groups(rewards.shape[0], group_size)
  mask = jnp.ones(rewards.shape, bool) if mask is None else jnp.asarray(mask, bool)
  grouped = rewards.reshape(rewards.shape[0] // group_size, -1)
  valid = mask.reshape(grouped.shape)
  high = jnp.max(jnp.where(valid, grouped, -jnp.inf), axis=1)
  low = jnp.min(jnp.where(valid, grouped, jnp.inf), axis=1)
  return high > low


def k3_kl(logprobs: jax.Array, ref_logprobs: jax.Array) -> jax.Array:
  """Per-token k3 estimate of KL(policy || reference): `exp(d) - d - 1`, d = ref - logp.

  Unbiased for tokens drawn from the policy, never negative, 0 (with gradient 0) where the
  two agree.
  """
  delta = ref_logprobs - logprobs
  return jnp.exp(delta) - delta - 1.0


def clipped_surrogate(logprobs, old_logprobs, advantages, eps_low: float, eps_high: float
                      ) -> tuple[jax.Array, jax.Array]:
  """(per-token loss `-min(ratio A, clip(ratio) A)` `[B, N]`, ratio `[B, N]`)."""
  ratio = jnp.exp(logprobs - old_logprobs)
  clipped = jnp.clip(ratio, 1.0 - eps_low, 1.0 + eps_high)
  return -jnp.minimum(ratio * advantages, clipped * advantages), ratio


def aggregate(values: jax.Array, mask: jax.Array, aggregation: str,
              tokens_per_row: jax.Array | None = None) -> jax.Array:
  """The batch loss from per-token losses `[B, N]` and the completion mask `[B, N]`.

  "sequence": mean over rows of `sum_t / max(tokens, 1)`; "token": sum over the batch /
  (B * mean(tokens_per_row)), which is the batch's completion token count when
  `tokens_per_row` is that count / B (default: computed from `mask`); "constant": sum /
  (B * N).
  """
  mask = mask.astype(jnp.float32)
  total = jnp.sum(values * mask)
  rows, width = values.shape
  if aggregation == "sequence":
    return jnp.mean(jnp.sum(values * mask, axis=1) / jnp.maximum(mask.sum(axis=1), 1.0))
  if aggregation == "token":
    tokens = mask.sum() if tokens_per_row is None else rows * jnp.mean(tokens_per_row)
    return total / jnp.where(tokens > 0, tokens, 1.0)
  if aggregation == "constant":
    return total / (rows * width)
  raise ValueError(f"aggregation={aggregation!r} is not one of {AGGREGATIONS}")


def _token_mean(values, mask):
  mask = mask.astype(jnp.float32)
  return jnp.sum(values * mask) / jnp.maximum(mask.sum(), 1.0)


def grpo_objective(logprobs: jax.Array, batch: dict, config: GRPOConfig
                   ) -> tuple[jax.Array, dict]:
  """(loss, metrics) of the GRPO family from the policy's completion log-probs `[B, N]`
  and a batch in the module's layout (everything `make_grpo_loss` does after the forward
  pass).

  metrics: `loss`, `ratio` (token mean), `clip_low` / `clip_high` (fraction of tokens whose
  ratio is clipped below with A < 0 / above with A > 0), `kl` (token mean of k3, when
  kl_coef > 0), `completion_tokens`, and `rollout_<name>` for every `batch["stats"]` entry.
  """
  mask = batch["completion_mask"]
  advantages = batch["advantages"]
  per_token, ratio = clipped_surrogate(logprobs, batch["old_logprobs"], advantages,
                                       config.eps_low, config.eps_high)
  metrics = {}
  if config.kl_coef:
    kl = k3_kl(logprobs, batch["ref_logprobs"])
    per_token = per_token + config.kl_coef * kl
    metrics["kl"] = _token_mean(kl, mask)
  loss = aggregate(per_token, mask, config.aggregation, batch.get("tokens_per_row"))
  metrics.update(
      loss=loss, ratio=_token_mean(ratio, mask),
      clip_low=_token_mean((ratio < 1.0 - config.eps_low) & (advantages < 0), mask),
      clip_high=_token_mean((ratio > 1.0 + config.eps_high) & (advantages > 0), mask),
      completion_tokens=jnp.sum(mask.astype(jnp.float32)))
  metrics.update({f"rollout_{name}": jnp.mean(value)
                  for name, value in batch.get("stats", {}).items()})
  return loss, metrics


def make_grpo_loss(model_config: models.ModelConfig, config: GRPOConfig, *,
                   temperature: float = 1.0):
  """`loss_fn(params, batch, rng) -> (loss, metrics)` of the GRPO family (module
  docstring; metrics: `grpo_objective`'s). temperature: the sampling temperature."""

  def loss_fn(params, batch, rng):
    del rng  # Deterministic objective (no dropout).
    logprobs = completion_logprobs(model_config, params, batch["input_ids"],
                                   batch["attention_mask"], batch["completion_mask"].shape[1],
                                   temperature)
    return grpo_objective(logprobs, batch, config)

  return loss_fn
