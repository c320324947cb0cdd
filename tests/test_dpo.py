"""DPO against TRL 1.13's own DPO loss (`DPOTrainer._compute_loss`, sigmoid, and sigmoid +
the chosen completions' NLL) on the same logits: loss and gradient; online DPO's pairs; bad
input."""

import collections
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from trl import DPOTrainer

from prm_jax.objectives import dpo
from prm_jax.objectives.completion import token_logprobs


def _trl_dpo_loss(logits: torch.Tensor, input_ids, completion_mask, ref_chosen, ref_rejected,
                  beta: float, sft_weight: float = 0.0) -> torch.Tensor:
  """TRL's `_compute_loss` on a "model" that returns `logits`: chosen rows then rejected
  rows, reference log-probs precomputed (TRL's `precompute_ref_log_probs=True` path)."""
  trainer = object.__new__(DPOTrainer)  # Only the attributes the loss reads, no training setup.
  model = types.SimpleNamespace(training=True)
  accelerator = types.SimpleNamespace(device=torch.device("cpu"), gather=lambda x: x,
                                      gather_for_metrics=lambda x: x)
  trainer.__dict__.update(
      model=model, accelerator=accelerator, beta=beta, precompute_ref_logps=True,
      ld_alpha=None, f_divergence_type="reverse_kl",
      loss_types=["sigmoid", "sft"] if sft_weight else ["sigmoid"],
      loss_weights=[1.0, sft_weight] if sft_weight else [1.0], label_smoothing=0.0,
      use_weighting=False, aux_loss_enabled=False,
      _metrics={"train": collections.defaultdict(list)}, _total_train_tokens=0,
      _tp_size=1)
  inputs = {"input_ids": torch.as_tensor(input_ids),
            "attention_mask": torch.ones(input_ids.shape, dtype=torch.long),
            "completion_mask": torch.as_tensor(completion_mask, dtype=torch.long),
            "ref_chosen_logps": torch.as_tensor(ref_chosen),
            "ref_rejected_logps": torch.as_tensor(ref_rejected)}
  return trainer._compute_loss(lambda **kwargs: types.SimpleNamespace(logits=logits), inputs,
                               return_outputs=False)


@pytest.mark.parametrize("beta,sft_weight", [(0.1, 0.0), (0.5, 0.0), (0.1, 0.7)])
def test_dpo_loss_and_gradient_equal_trl(beta, sft_weight):
  rng = np.random.default_rng(int(beta * 10))
  pairs, prompt, width, vocab = 4, 3, 6, 11
  length = prompt + width
  ids = rng.integers(0, vocab, (2 * pairs, length)).astype(np.int64)  # [chosen; rejected]
  logits = rng.normal(0, 2, (2 * pairs, length, vocab)).astype(np.float32)
  lengths = rng.integers(1, width + 1, 2 * pairs)
  completion = np.arange(width)[None] < lengths[:, None]  # [2Q, N]
  trl_mask = np.concatenate([np.zeros((2 * pairs, prompt), bool), completion], axis=1)
  ref = rng.normal(-8, 2, (2, pairs)).astype(np.float32)

  torch_logits = torch.tensor(logits, requires_grad=True)
  trl_loss = _trl_dpo_loss(torch_logits, ids, trl_mask, ref[0], ref[1], beta, sft_weight)
  trl_loss.backward()

  as_pairs = lambda x: jnp.stack([x[:pairs], x[pairs:]], axis=1)  # [Q, 2, ...]
  batch = {"completion_mask": as_pairs(completion), "ref_logprobs": ref.T,
           "pair_weight": np.ones(pairs, np.float32)}

  def ours(flat_logits):
    token_logps = token_logprobs(flat_logits, ids.astype(np.int32), width)  # [2Q, N]
    config = dpo.DPOConfig(beta=beta, sft_weight=sft_weight)
    return dpo.dpo_objective(as_pairs(token_logps), batch, config)[0]

  loss, grad = jax.value_and_grad(ours)(logits)
  np.testing.assert_allclose(float(loss), trl_loss.item(), rtol=1e-6)
  np.testing.assert_allclose(np.asarray(grad), torch_logits.grad.numpy(), rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("sft_weight", [0.0, 0.5])
def test_filler_pairs_do_not_count(sft_weight):
  """A pair with weight 0 (a prompt without a preference) changes neither loss nor gradient;
  real pairs are weighted 1 / (their fraction), so the loss stays their mean."""
  rng = np.random.default_rng(0)
  token_logps = rng.normal(-1, 0.5, (3, 2, 5)).astype(np.float32)
  batch = {"completion_mask": np.ones((3, 2, 5), bool),
           "ref_logprobs": rng.normal(-5, 1, (3, 2)).astype(np.float32),
           "pair_weight": np.array([1.5, 1.5, 0.0], np.float32)}
  config = dpo.DPOConfig(beta=0.2, sft_weight=sft_weight)
  loss, metrics = dpo.dpo_objective(token_logps, batch, config)
  real = {"completion_mask": batch["completion_mask"][:2],
          "ref_logprobs": batch["ref_logprobs"][:2], "pair_weight": np.ones(2, np.float32)}
  np.testing.assert_allclose(float(loss), float(dpo.dpo_objective(token_logps[:2], real,
                                                                  config)[0]), rtol=1e-6)
  assert float(metrics["pairs"]) == 2
  grad = jax.grad(lambda x: dpo.dpo_objective(x, batch, config)[0])(token_logps)
  assert np.all(np.asarray(grad)[2] == 0)


def test_sft_term_is_the_global_token_mean_over_micro_batches():
  """With `chosen_tokens` (the global batch's real chosen tokens per pair), the mean of the
  micro-batches' losses is the whole batch's loss: its NLL is one token mean."""
  rng = np.random.default_rng(1)
  token_logps = rng.normal(-1, 0.5, (4, 2, 6)).astype(np.float32)
  mask = np.arange(6)[None, None] < rng.integers(1, 7, (4, 2))[..., None]
  batch = {"completion_mask": mask, "ref_logprobs": rng.normal(-5, 1, (4, 2)).astype(np.float32),
           "pair_weight": np.ones(4, np.float32)}
  config = dpo.DPOConfig(beta=0.3, sft_weight=2.0)
  whole, metrics = dpo.dpo_objective(token_logps, batch, config)
  expected_nll = -token_logps[:, 0][mask[:, 0]].mean()
  np.testing.assert_allclose(float(metrics["sft_nll"]), expected_nll, rtol=1e-6)
  batch["chosen_tokens"] = np.full(4, mask[:, 0].sum() / 4, np.float32)
  halves = [dpo.dpo_objective(token_logps[s], {k: v[s] for k, v in batch.items()}, config)[0]
            for s in (slice(0, 2), slice(2, 4))]
  np.testing.assert_allclose(float(np.mean(halves)), float(whole), rtol=1e-6)


def test_preference_pairs_take_each_groups_best_and_worst():
  rewards = np.array([0.2, 0.9, 0.1, 0.9,   0.5, 0.5, 0.5, 0.5,   0.0, 1.0, 1.0, 0.3])
  chosen, rejected, valid = dpo.preference_pairs(rewards, 4)
  np.testing.assert_array_equal(chosen, [1, 4, 9])  # First of equal best.
  np.testing.assert_array_equal(rejected, [2, 4, 8])
  np.testing.assert_array_equal(valid, [True, False, True])


@pytest.mark.parametrize("call,message", [
    (lambda: dpo.DPOConfig(beta=0.0), "dpo.beta must be > 0, got 0.0"),
    (lambda: dpo.DPOConfig(sft_weight=-1.0), "dpo.sft_weight must be >= 0, got -1.0"),
    (lambda: dpo.preference_pairs(np.zeros(6), 4), "group_size=4 does not divide the batch of 6"),
    (lambda: dpo.preference_pairs(np.zeros((6, 1)), 3), r"rewards must be \[B\]"),
])
def test_bad_input_names_the_field(call, message):
  with pytest.raises(ValueError, match=message):
    call()
