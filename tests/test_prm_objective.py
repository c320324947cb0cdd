"""PRM objective and metrics against float64 NumPy: soft-label BCE, AUROC, whole-set eval."""

import jax
import numpy as np
import pytest

from prm_jax import models, parallel
from prm_jax.objectives import prm
from prm_jax.pipelines import toy_data

MODEL = models.get_model_config("tiny", max_seq_len=32)


def _reference_bce(logits, labels):
  """-(y log p + (1 - y) log(1 - p)), p = sigmoid(l), in float64 straight from the definition.

  `1 - p` is computed as sigmoid(-l), not by subtraction (which cancels for large l).
  """
  logits, labels = np.asarray(logits, np.float64), np.asarray(labels, np.float64)
  p, one_minus_p = 1.0 / (1.0 + np.exp(-logits)), 1.0 / (1.0 + np.exp(logits))
  return -(labels * np.log(p) + (1.0 - labels) * np.log(one_minus_p))


def _reference_auroc(scores, positive):
  """P(score of a positive > score of a negative) + 1/2 P(tie), over all pairs."""
  pos, neg = scores[positive][:, None], scores[~positive][None, :]
  return float(np.mean((pos > neg) + 0.5 * (pos == neg)))


def _examples(num, seed):
  return toy_data.make_examples(num, seq_len=32, max_steps=4, step_len=4, prompt_len=3,
                                vocab_size=MODEL.vocab_size, soft_labels=True, seed=seed)


def _stack(examples):
  return {k: np.stack([e[k] for e in examples]) for k in examples[0]}


@jax.jit
def _step_logits(params, batch):
  return models.forward(MODEL, params, batch["input_ids"], attention_mask=batch["attention_mask"],
                        step_positions=batch["step_positions"], lm_logits="none")["step_logits"]


def test_step_bce_matches_float64_reference_for_soft_labels():
  rng = np.random.default_rng(0)
  logits = np.concatenate([rng.normal(0, 4, 500), [-30.0, -12.5, 0.0, 12.5, 30.0]])
  labels = rng.random(logits.size)
  np.testing.assert_allclose(prm.step_bce(logits.astype(np.float32), labels.astype(np.float32)),
                             _reference_bce(logits, labels), rtol=1e-5, atol=1e-6)
  # Far beyond where float32 sigmoid saturates, the loss stays finite and linear.
  np.testing.assert_allclose(prm.step_bce(np.float32([-200.0, 200.0]), np.float32([1.0, 0.0])),
                             [200.0, 200.0], rtol=1e-6)


def test_prm_loss_is_the_masked_mean_of_soft_bce():
  batch = _stack(_examples(8, seed=1))
  params = models.init_params(MODEL, jax.random.key(0))
  params["prm_head"]["kernel"] = params["prm_head"]["kernel"] * 50  # Spread the logits.
  loss, metrics = jax.jit(prm.make_prm_loss(MODEL))(params, batch, None)
  logits = _step_logits(params, batch)
  mask = batch["step_mask"]
  expected = _reference_bce(logits, batch["step_labels"])[mask].mean()
  np.testing.assert_allclose(loss, expected, rtol=1e-5)
  accuracy = np.mean((np.asarray(logits) >= 0)[mask] == (batch["step_labels"] >= 0.5)[mask])
  np.testing.assert_allclose(metrics["step_accuracy"], accuracy, rtol=1e-6)


@pytest.mark.parametrize("levels", [None, 3, 1])  # Continuous scores, many ties, all tied.
def test_auroc_matches_pairwise_definition(levels):
  rng = np.random.default_rng(levels or 0)
  scores = rng.normal(size=301)
  positive = rng.random(301) < 0.4
  scores = scores + positive  # Informative but overlapping.
  if levels:
    scores = np.round(scores * (levels - 1) / 8) if levels > 1 else np.zeros_like(scores)
  assert prm.auroc(scores, positive) == pytest.approx(_reference_auroc(scores, positive),
                                                      abs=1e-12)
  assert np.isnan(prm.auroc(scores, np.zeros(301, bool)))


def test_evaluator_is_exact_over_the_whole_set_with_a_short_last_batch():
  mesh = parallel.make_mesh(data=2, fsdp=2, tensor=2)
  examples = _examples(20, seed=2)  # Batches of 8, 8 and a padded 4.
  batches = [_stack(examples[i:i + 8]) for i in range(0, 20, 8)]
  params = models.init_params(MODEL, jax.random.key(1))
  params["prm_head"]["kernel"] = params["prm_head"]["kernel"] * 50
  metrics = prm.make_prm_evaluator(MODEL, batches, mesh)(
      jax.device_put(params, parallel.param_shardings(MODEL, mesh)))

  everything = _stack(examples)
  logits = np.asarray(_step_logits(params, everything), np.float64)
  mask = everything["step_mask"]
  logits, labels = logits[mask], everything["step_labels"][mask].astype(np.float64)
  assert metrics["num_steps"] == mask.sum()
  np.testing.assert_allclose(metrics["loss"], _reference_bce(logits, labels).mean(), rtol=1e-5)
  assert metrics["step_accuracy"] == pytest.approx(np.mean((logits >= 0) == (labels >= 0.5)))
  assert metrics["auroc"] == pytest.approx(_reference_auroc(logits, labels >= 0.5), abs=1e-6)


def test_toy_labels_follow_the_first_error():
  for example in _examples(50, seed=3):
    ids, labels = example["input_ids"], example["step_labels"][example["step_mask"]]
    ends = example["step_positions"][example["step_mask"]]
    middle = toy_data.FIRST_TOKEN + (MODEL.vocab_size - toy_data.FIRST_TOKEN) // 2
    error_so_far = np.array([np.any(ids[:end] >= middle) for end in ends])
    np.testing.assert_array_equal(labels >= 0.5, ~error_so_far)
    assert np.all(ids[ends] == toy_data.SEP)
