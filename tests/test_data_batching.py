"""`collate_prm`: the exact batch layout `prm_jax.objectives.prm` reads, padding and errors."""

import jax
import numpy as np
import pytest

from prm_jax import models
from prm_jax.data import CharTokenizer, Trajectory, collate_prm, tokenize_stepwise
from prm_jax.objectives.prm import make_prm_loss

TOKENIZER = CharTokenizer()
TRAJECTORIES = [
    Trajectory("7+5*3=?", ["7+5=12", "12*3=36", "#### 36"], [1.0, 1.0, 1.0],
               meta={"source": "a.jsonl:1"}),
    Trajectory("1-9=?", ["1-9=-8", "#### 8"], [1.0, 0.0], meta={"source": "a.jsonl:2"}),
    Trajectory("2*2=?", ["2*2=4", "#### 4"], [0.75, None], meta={"source": "a.jsonl:3"}),
]


def _examples(**kwargs):
  examples = []
  for trajectory in TRAJECTORIES:
    example = tokenize_stepwise(TOKENIZER, trajectory, **kwargs)
    examples.append(dict(example, source=trajectory.meta["source"]))
  return examples


def test_layout_matches_the_prm_objective():
  examples = _examples()
  batch = collate_prm(examples, pad_id=TOKENIZER.pad_id, max_length=40, max_steps=4)
  assert {k: (v.dtype, v.shape) for k, v in batch.items()} == {
      "input_ids": (np.int32, (3, 40)), "attention_mask": (bool, (3, 40)),
      "step_positions": (np.int32, (3, 4)), "step_labels": (np.float32, (3, 4)),
      "step_mask": (bool, (3, 4))}
  for row, example in enumerate(examples):
    length = len(example["input_ids"])
    np.testing.assert_array_equal(batch["input_ids"][row, :length], example["input_ids"])
    assert (batch["input_ids"][row, length:] == TOKENIZER.pad_id).all()
    assert batch["attention_mask"][row].sum() == length and batch["attention_mask"][row, 0]
    # Every step position is the separator token that ends the step.
    ends = batch["step_positions"][row][batch["step_positions"][row] >= 0]
    assert TOKENIZER.decode(batch["input_ids"][row, ends]) == "\n" * len(ends)
  np.testing.assert_array_equal(batch["step_positions"][:, 3], -1)
  np.testing.assert_array_equal(batch["step_labels"], [[1, 1, 1, 0], [1, 0, 0, 0],
                                                       [0.75, 0, 0, 0]])
  np.testing.assert_array_equal(batch["step_mask"], [[1, 1, 1, 0], [1, 1, 0, 0], [1, 0, 0, 0]])
  assert batch["step_positions"][2, 1] >= 0  # Unknown label: scored, not trained on.


def test_batch_trains_the_tiny_prm():
  config = models.get_model_config("tiny")
  params = models.init_params(config, jax.random.key(0))
  batch = collate_prm(_examples(), pad_id=TOKENIZER.pad_id, max_length=32, max_steps=4)
  loss, metrics = jax.jit(make_prm_loss(config))(params, batch, jax.random.key(1))
  assert np.isfinite(loss) and metrics["num_steps"] == batch["step_mask"].sum() == 6
  # Random init scores p ~ 0.5: the BCE is about log 2.
  np.testing.assert_allclose(loss, np.log(2), atol=0.1)


def test_default_shapes_fit_the_batch():
  batch = collate_prm(_examples(), pad_id=0)
  assert batch["input_ids"].shape == (3, max(len(e["input_ids"]) for e in _examples()))
  assert batch["step_positions"].shape == (3, 3)


def test_too_long_or_too_many_steps_name_the_example():
  examples = _examples()
  with pytest.raises(ValueError, match=r"example 0 \(a.jsonl:1\) has 31 tokens > max_length=24"):
    collate_prm(examples, pad_id=0, max_length=24, max_steps=4)
  with pytest.raises(ValueError, match=r"example 0 \(a.jsonl:1\) has 3 steps > max_steps=2"):
    collate_prm(examples, pad_id=0, max_length=40, max_steps=2)


def test_truncation_drops_cut_steps():
  batch = collate_prm(_examples(), pad_id=0, max_length=24, max_steps=2, truncate=True)
  assert batch["attention_mask"].sum(1).max() == 24
  np.testing.assert_array_equal(batch["step_positions"][0], [14, 22])  # The third step is cut.
  np.testing.assert_array_equal(batch["step_mask"][0], [1, 1])
  # The same cut through tokenize_stepwise (TRL's max_length) gives the same batch.
  pre_cut = collate_prm(_examples(max_length=24), pad_id=0, max_length=24, max_steps=2,
                        truncate=True)
  for key in batch:
    np.testing.assert_array_equal(batch[key], pre_cut[key])
