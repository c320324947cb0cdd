"""Policy format and SFT objective: layout shared with the PRM, loss vs float64 NumPy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prm_jax import models
from prm_jax.data import (CharTokenizer, Trajectory, collate_sft, prompt_ids, tokenize_sft,
                          tokenize_stepwise)
from prm_jax.objectives.sft import make_sft_loss

TOKENIZER = CharTokenizer()
EXAMPLE = Trajectory(problem="7+5*3=?", steps=["7+5=12", "12*3=36", "#### 36"],
                     labels=[1.0, 1.0, 1.0], answer="36")


def test_sft_sequence_is_the_prm_layout_plus_eos():
  sft = tokenize_sft(TOKENIZER, EXAMPLE)
  prm = tokenize_stepwise(TOKENIZER, EXAMPLE)
  assert sft["input_ids"] == prm["input_ids"] + [TOKENIZER.eos_id]
  assert TOKENIZER.decode(sft["input_ids"][1:-1]) == "7+5*3=?7+5=12\n12*3=36\n#### 36\n"
  prompt = len(prompt_ids(TOKENIZER, EXAMPLE.problem))
  assert sft["loss_mask"] == [False] * prompt + [True] * (len(sft["input_ids"]) - prompt)
  # Each step boundary is a prefix of the same sequence (what rollouts continue).
  for end in prm["step_ends"]:
    assert TOKENIZER.decode(sft["input_ids"][end:end + 1]) == "\n"


def test_collate_sft_pads_right_and_rejects_overlong():
  short = Trajectory(problem="7+5=?", steps=["7+5=12", "#### 12"], answer="12")
  rows = [tokenize_sft(TOKENIZER, EXAMPLE), tokenize_sft(TOKENIZER, short)]
  batch = collate_sft(rows, pad_id=TOKENIZER.pad_id, max_length=40)
  assert batch["input_ids"].shape == (2, 40)
  assert batch["attention_mask"].sum(1).tolist() == [len(r["input_ids"]) for r in rows]
  assert not batch["loss_mask"][~batch["attention_mask"]].any()
  with pytest.raises(ValueError, match="example 0 has 32 tokens > max_length=10"):
    collate_sft(rows, pad_id=0, max_length=10)


def test_sft_loss_matches_float64_numpy():
  config = models.get_model_config("tiny", vocab_size=TOKENIZER.vocab_size)
  params = models.init_params(config, jax.random.key(0))
  batch = collate_sft([tokenize_sft(TOKENIZER, EXAMPLE)] * 2, pad_id=TOKENIZER.pad_id,
                      max_length=36)
  loss, metrics = make_sft_loss(config)(params, batch, None)
  logits = np.asarray(models.forward(config, params, batch["input_ids"],
                                     attention_mask=batch["attention_mask"])["logits"],
                      np.float64)
  logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)
                         ) - logits.max(-1, keepdims=True)
  nll = -np.take_along_axis(logp[:, :-1], batch["input_ids"][:, 1:, None], -1)[..., 0]
  mask = batch["loss_mask"][:, 1:]
  np.testing.assert_allclose(loss, nll[mask].mean(), rtol=1e-5)
  assert int(metrics["tokens"]) == mask.sum()
  assert jnp.isfinite(jax.grad(lambda p: make_sft_loss(config)(p, batch, None)[0])(
      params)["embedding"]).all()


def test_sft_batches_are_resumable_and_cover_the_shard():
  from prm_jax.data.pipeline import sft_batches
  source = [Trajectory(problem=f"{a}+{a}=?", steps=[f"{a}+{a}={2 * a}", f"#### {2 * a}"],
                       answer=str(2 * a)) for a in range(10)]
  ds = sft_batches(source, TOKENIZER, batch_size=4, max_length=24, seed=3, num_epochs=2,
                   shard_index=0, shard_count=1)
  it = iter(ds)
  first = next(it)
  state = it.get_state()
  rest = [b["input_ids"] for b in it]
  resumed = iter(ds)
  resumed.set_state(state)
  np.testing.assert_array_equal(np.stack(rest), np.stack([b["input_ids"] for b in resumed]))
  assert first["input_ids"].shape == (4, 24) and len(rest) == 4  # 20 examples -> 5 batches.
  seen = sorted(TOKENIZER.decode(row[1:row.tolist().index(TOKENIZER.eos_id)]).split("=")[0]
                for b in [first["input_ids"], *rest] for row in b)
  assert seen == sorted(2 * [f"{a}+{a}" for a in range(10)])


def test_bucketed_sft_batches_pad_to_the_shortest_fitting_bucket_and_resume():
  from prm_jax.data.pipeline import sft_batches
  source = [Trajectory(problem=f"{a}+{'1' * (a % 7)}=?", steps=[f"#### {a}"], answer=str(a))
            for a in range(24)]
  kwargs = dict(batch_size=4, max_length=32, seed=3, num_epochs=2, shard_index=0,
                shard_count=1, bucket_lengths=(16, 24), bucket_window=3)
  batches = list(sft_batches(source, TOKENIZER, **kwargs))
  assert len(batches) == 12 and len({b["input_ids"].shape for b in batches}) > 1
  for batch in batches:  # Each batch gets the shortest bucket that fits it.
    longest = batch["attention_mask"].sum(1).max()
    assert batch["input_ids"].shape[1] == min(n for n in (16, 24, 32) if n >= longest)
    assert (batch["loss_mask"] <= batch["attention_mask"]).all()
  seen = sorted(TOKENIZER.decode(row[1:row.tolist().index(TOKENIZER.eos_id)]).split("=")[0]
                for b in batches for row in b["input_ids"])
  assert seen == sorted(2 * [t.problem.split("=")[0] for t in source])
  it = iter(sft_batches(source, TOKENIZER, **kwargs))
  for _ in range(5):
    next(it)
  resumed = iter(sft_batches(source, TOKENIZER, **kwargs))
  resumed.set_state(it.get_state())
  for expected, got in zip(batches[5:], resumed):
    np.testing.assert_array_equal(expected["input_ids"], got["input_ids"])
