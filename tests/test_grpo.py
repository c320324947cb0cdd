"""The GRPO family against float64 NumPy written from the definitions: advantages (group,
Dr.GRPO, process-supervised), the dynamic-sampling filter, every loss variant and its
gradient, the completion log-probs, and bad input."""

import dataclasses

import jax
import numpy as np
import pytest

from prm_jax import models
from prm_jax.objectives import grpo
from prm_jax.objectives.completion import completion_logprobs
from tests.numpy_reference import reference_forward


def _reference_group_advantages(rewards, group_size, scale, eps):
  out = np.empty(len(rewards))
  for start in range(0, len(rewards), group_size):
    group = np.asarray(rewards[start:start + group_size], np.float64)
    mean = sum(group) / group_size
    std = np.sqrt(sum((r - mean) ** 2 for r in group) / group_size)
    for i, r in enumerate(group):
      out[start + i] = (r - mean) / (std + eps) if scale else r - mean
  return out


def _reference_process_advantages(rewards, mask, ends, width, group_size, scale, eps):
  rows, steps = rewards.shape
  out = np.zeros((rows, width))
  for start in range(0, rows, group_size):
    values = [rewards[i, s] for i in range(start, start + group_size) for s in range(steps)
              if mask[i, s]]
    mean = np.mean(values) if values else 0.0
    std = np.sqrt(np.mean([(v - mean) ** 2 for v in values])) if values else 0.0
    for i in range(start, start + group_size):
      for s in range(steps):
        if not mask[i, s]:
          continue
        normalised = (rewards[i, s] - mean) / (std + eps) if scale else rewards[i, s] - mean
        for t in range(width):
          if t <= ends[i, s]:
            out[i, t] += normalised
  return out


def _reference_loss_and_grad(logp, old, adv, mask, ref, config: grpo.GRPOConfig):
  """Loss and d loss / d logp `[B, N]`, token by token in float64."""
  rows, width = logp.shape
  lengths = mask.sum(axis=1)
  total_tokens = mask.sum()
  loss, grad = 0.0, np.zeros((rows, width))
  for i in range(rows):
    for t in range(width):
      if not mask[i, t]:
        continue
      if config.aggregation == "sequence":
        weight = 1.0 / (rows * max(lengths[i], 1))
      elif config.aggregation == "token":
        weight = 1.0 / total_tokens
      else:
        weight = 1.0 / (rows * width)
      ratio = np.exp(logp[i, t] - old[i, t])
      clipped = min(max(ratio, 1 - config.eps_low), 1 + config.eps_high)
      unclipped_active = ratio * adv[i, t] <= clipped * adv[i, t]
      term = -min(ratio * adv[i, t], clipped * adv[i, t])
      d_term = -adv[i, t] * ratio if unclipped_active else 0.0
      if config.kl_coef:
        delta = ref[i, t] - logp[i, t]
        term += config.kl_coef * (np.exp(delta) - delta - 1)
        d_term += config.kl_coef * (1 - np.exp(delta))
      loss += weight * term
      grad[i, t] = weight * d_term
  return loss, grad


def _random_batch(seed, rows=8, width=7):
  rng = np.random.default_rng(seed)
  logp = -rng.uniform(0.05, 3.0, (rows, width))
  lengths = rng.integers(1, width + 1, rows)
  lengths[0] = 0  # An empty completion (stopped at once) counts as a row with no tokens.
  mask = np.arange(width)[None] < lengths[:, None]
  batch = {"completion_mask": mask,
           "old_logprobs": (logp + rng.normal(0, 0.35, logp.shape)).astype(np.float32),
           "advantages": rng.normal(0, 1, (rows, 1)).repeat(width, 1).astype(np.float32),
           "ref_logprobs": (logp + rng.normal(0, 0.5, logp.shape)).astype(np.float32)}
  batch["advantages"][:, 3:] += rng.normal(0, 0.5, (rows, width - 3)).astype(np.float32)
  return logp.astype(np.float32), batch


VARIANTS = {
    "grpo_sequence": grpo.GRPOConfig(aggregation="sequence"),
    "dapo_token_clip_higher": grpo.GRPOConfig(eps_high=0.28, aggregation="token"),
    "dr_grpo_constant": grpo.GRPOConfig(aggregation="constant", scale_rewards=False),
    "k3_kl_sequence": grpo.GRPOConfig(aggregation="sequence", kl_coef=0.05),
    "k3_kl_token": grpo.GRPOConfig(eps_low=0.1, eps_high=0.3, aggregation="token", kl_coef=0.2),
    "k3_kl_constant": grpo.GRPOConfig(aggregation="constant", kl_coef=0.5),
}


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_loss_variant_and_gradient_match_float64_numpy(name):
  config = VARIANTS[name]
  logp, batch = _random_batch(seed=sorted(VARIANTS).index(name))
  value_and_grad = jax.value_and_grad(lambda x: grpo.grpo_objective(x, batch, config)[0])
  loss, grad = value_and_grad(logp)
  ref_loss, ref_grad = _reference_loss_and_grad(
      logp.astype(np.float64), batch["old_logprobs"].astype(np.float64),
      batch["advantages"].astype(np.float64), batch["completion_mask"],
      batch["ref_logprobs"].astype(np.float64), config)
  np.testing.assert_allclose(float(loss), ref_loss, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(np.asarray(grad), ref_grad, rtol=1e-4, atol=1e-7)
  # The random ratios put tokens on both sides of the clip range: both branches are tested.
  ratio = np.exp(logp - batch["old_logprobs"])[batch["completion_mask"]]
  assert (ratio < 1 - config.eps_low).any() and (ratio > 1 + config.eps_high).any()
  assert np.any(ref_grad == 0) and np.any(ref_grad != 0)


@pytest.mark.parametrize("aggregation", grpo.AGGREGATIONS)
def test_micro_batches_average_to_the_batch_loss(aggregation):
  """Gradient accumulation: with `tokens_per_row` from the whole batch, the mean of the
  halves' losses is the batch's loss (the token aggregation too)."""
  config = grpo.GRPOConfig(aggregation=aggregation, kl_coef=0.1)
  logp, batch = _random_batch(seed=7)
  batch["tokens_per_row"] = np.full(8, batch["completion_mask"].sum() / 8, np.float32)
  whole = grpo.grpo_objective(logp, batch, config)[0]
  halves = [grpo.grpo_objective(logp[i::2], jax.tree.map(lambda x, i=i: x[i::2], batch),
                                config)[0] for i in (0, 1)]
  np.testing.assert_allclose(float(whole), np.mean(halves), rtol=1e-6)
  without = {k: v for k, v in batch.items() if k != "tokens_per_row"}
  np.testing.assert_allclose(float(grpo.grpo_objective(logp, without, config)[0]),
                             float(whole), rtol=1e-6)


def test_kl_term_is_zero_with_zero_gradient_when_policy_equals_reference():
  logp, batch = _random_batch(seed=3)
  batch["ref_logprobs"] = logp
  with_kl = grpo.GRPOConfig(kl_coef=0.5)
  without = dataclasses.replace(with_kl, kl_coef=0.0)
  assert np.all(np.asarray(grpo.k3_kl(logp, logp)) == 0)
  kl_grad = jax.grad(lambda x: grpo.k3_kl(x, logp).sum())(logp)
  assert np.all(np.asarray(kl_grad) == 0)
  loss, metrics = grpo.grpo_objective(logp, batch, with_kl)
  assert float(metrics["kl"]) == 0.0
  assert float(loss) == float(grpo.grpo_objective(logp, batch, without)[0])


@pytest.mark.parametrize("scale", [True, False])
def test_group_advantages_match_numpy(scale):
  rewards = np.random.default_rng(0).uniform(0, 1, 24).round(1)
  rewards[4:8] = 0.5  # An all-equal group: advantage 0, not NaN.
  got = grpo.group_advantages(rewards, 4, scale=scale, eps=1e-4)
  np.testing.assert_allclose(np.asarray(got),
                             _reference_group_advantages(rewards, 4, scale, 1e-4),
                             rtol=1e-5, atol=1e-6)
  assert np.all(np.asarray(got)[4:8] == 0)


def test_process_advantages_on_a_hand_built_example():
  """Group of 2: row 0 has steps ending at tokens 2 and 5 with rewards 1, 0; row 1 one step
  ending at token 3 with reward 1. The group's three step rewards {1, 0, 1} have mean 2/3
  and std sqrt(2)/3, so they normalise to 1/sqrt(2), -sqrt(2), 1/sqrt(2)."""
  rewards = np.array([[1.0, 0.0], [1.0, 0.0]])
  mask = np.array([[True, True], [True, False]])
  ends = np.array([[2, 5], [3, 0]])
  got = np.asarray(grpo.process_advantages(rewards, mask, ends, 7, 2, eps=0.0))
  h, s = 1 / np.sqrt(2), np.sqrt(2)
  expected = np.array([[h - s, h - s, h - s, -s, -s, -s, 0],   # steps at or after token t
                       [h, h, h, h, 0, 0, 0]])
  np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)
  # Unscaled (Dr.GRPO): only the mean is removed: 1/3, -2/3, 1/3.
  got = np.asarray(grpo.process_advantages(rewards, mask, ends, 7, 2, scale=False))
  np.testing.assert_allclose(got[0, :3], [-1 / 3] * 3, rtol=1e-6)
  np.testing.assert_allclose(got[1, :4], [1 / 3] * 4, rtol=1e-6)


def test_process_advantages_match_numpy_on_random_groups():
  rng = np.random.default_rng(1)
  rows, steps, width = 12, 5, 20
  rewards = rng.uniform(0, 1, (rows, steps))
  counts = rng.integers(0, steps + 1, rows)
  mask = np.arange(steps)[None] < counts[:, None]
  ends = np.sort(rng.integers(0, width, (rows, steps)), axis=1)
  got = grpo.process_advantages(rewards, mask, ends, width, 4)
  np.testing.assert_allclose(np.asarray(got), _reference_process_advantages(
      rewards, mask, ends, width, 4, True, 1e-4), rtol=1e-4, atol=1e-5)


def test_dynamic_sampling_keeps_groups_whose_rewards_differ():
  rewards = np.array([1, 1, 1, 0, 0, 0, 0.5, 0.5, 0.5, 1, 0, 1], np.float32)
  np.testing.assert_array_equal(grpo.keep_groups(rewards, 3), [False, False, False, True])
  steps = np.array([[0.3, 0.9], [0.3, 0.1], [0.2, 0.4], [0.2, 0.2]])
  mask = np.array([[True, False], [True, False], [True, True], [True, True]])
  np.testing.assert_array_equal(grpo.keep_groups(steps, 2, mask), [False, True])
  rng = np.random.default_rng(2)
  random = rng.integers(0, 2, 40).astype(np.float32)
  expected = [len(set(random[i:i + 4])) > 1 for i in range(0, 40, 4)]
  np.testing.assert_array_equal(grpo.keep_groups(random, 4), expected)


def test_completion_logprobs_match_the_float64_numpy_decoder():
  config = models.get_model_config("tiny")
  params = models.init_params(config, jax.random.key(0))
  params = jax.tree.map(lambda x: x * 3 if x.ndim > 1 else x, params)  # Peaked logits.
  rng = np.random.default_rng(0)
  prompt_lengths, width, temperature = [5, 2, 4], 6, 0.7
  prompt_width = max(prompt_lengths)
  ids = rng.integers(3, config.vocab_size, (3, prompt_width + width)).astype(np.int32)
  mask = np.ones(ids.shape, bool)
  for row, length in enumerate(prompt_lengths):
    ids[row, :prompt_width - length] = 0
    mask[row, :prompt_width - length] = False
  got = np.asarray(completion_logprobs(config, params, ids, mask, width, temperature))
  for row in range(3):
    tokens = ids[row][mask[row]]
    logits, _ = reference_forward(config, params, tokens)
    logits = logits[-width - 1:-1] / temperature
    logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)
                           ) - logits.max(-1, keepdims=True)
    expected = np.take_along_axis(logp, tokens[-width:, None], -1)[:, 0]
    np.testing.assert_allclose(got[row], expected, rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("call,message", [
    (lambda: grpo.group_advantages(np.zeros(8), 3),
     "group_size=3 does not divide the batch of 8 rows"),
    (lambda: grpo.group_advantages(np.zeros((4, 2)), 2),
     r"rewards must be \[B\] \(one per completion\), got shape \(4, 2\)"),
    (lambda: grpo.process_advantages(np.zeros((6, 2)), np.ones((6, 2)), np.zeros((6, 2)), 4, 4),
     "group_size=4 does not divide the batch of 6 rows"),
    (lambda: grpo.process_advantages(np.zeros((4, 2)), np.ones((4, 3)), np.zeros((4, 2)), 4, 2),
     r"step_rewards \(4, 2\), step_mask \(4, 3\) and step_ends \(4, 2\) must all be \[B, S\]"),
    (lambda: grpo.GRPOConfig(aggregation="mean"),
     "grpo.aggregation='mean' is not one of"),
    (lambda: grpo.GRPOConfig(eps_low=1.0), r"grpo.eps_low must be in \[0, 1\), got 1.0"),
    (lambda: grpo.GRPOConfig(kl_coef=-0.1), "grpo.kl_coef must be >= 0, got -0.1"),
])
def test_bad_input_names_the_field(call, message):
  with pytest.raises(ValueError, match=message):
    call()
