"""InversePRM (Choudhury 2025): a turn-level Q learned from expert demonstrations alone.

No outcome reward is used. A transition (s, a, s') is labelled y = 1 if it is the expert's
and y = 0 if it is the current (or an earlier) policy's, the two balanced. With `Q` the PRM
head's logit at the end of the action, the implied reward of a transition is

    z = Q(s, a) - gamma * Q(s', a')      (a' resampled from the current policy at s')
    z = Q(s, a)                          (terminal transitions: no s')

and Q is fitted by the classifier's BCE with logits, `softplus(z) - y * z`, averaged over the
batch: Q learns values whose one-step differences separate expert from policy behaviour (the
inverse-RL reading of a reward), then serves exactly like AgentPRM's Q (Best-of-N per turn,
ranking samples for online DPO).

Batch layout (`pair_batch`; `pair_batches` streams them, shuffled and resumable): each row holds the transition's two sequences side by side,
  input_ids [B, 2, T] int, attention_mask [B, 2, T] bool, action_end [B, 2] int (index of the
  action's last token, its separator), labels [B] float, terminal [B] bool;
sequence 0 is (s, a), sequence 1 is (s', a') (ignored, but present, when terminal).
"""

from __future__ import annotations

import functools
from typing import Sequence

import grain
import jax
import jax.numpy as jnp
import numpy as np

from prm_jax import models
from prm_jax.data.pipeline import records
from prm_jax.data.schema import Trajectory
from prm_jax.data.tokenize import tokenize_stepwise
from prm_jax.data.tokenizer import Tokenizer
from prm_jax.objectives.prm import step_bce


def transition_logits(q_sa: jax.Array, q_next: jax.Array, terminal: jax.Array,
                      gamma: float) -> jax.Array:
  """`z = Q(s,a) - gamma * Q(s',a')`, or `Q(s,a)` where `terminal`."""
  return q_sa - gamma * jnp.where(terminal, 0.0, q_next)


def make_inverse_prm_loss(config: models.ModelConfig, gamma: float):
  """`loss_fn(params, batch, rng) -> (loss, metrics)` on `pair_batch` batches.

  metrics: `loss`, `accuracy` (z >= 0 vs y >= 0.5), `expert_q` / `policy_q` (mean Q(s, a)
  of each class: how far apart the learned values sit).
  """
  if not 0 < gamma <= 1:
    raise ValueError(f"gamma must be in (0, 1], got {gamma!r}")

  def loss_fn(params, batch, rng):
    del rng
    rows, _, length = batch["input_ids"].shape
    out = models.forward(config, params, batch["input_ids"].reshape(rows * 2, length),
                         attention_mask=batch["attention_mask"].reshape(rows * 2, length),
                         step_positions=batch["action_end"].reshape(rows * 2, 1),
                         lm_logits="none")
    q = out["step_logits"].reshape(rows, 2).astype(jnp.float32)
    z = transition_logits(q[:, 0], q[:, 1], batch["terminal"], gamma)
    labels = batch["labels"].astype(jnp.float32)
    loss = jnp.mean(step_bce(z, labels))
    expert = labels >= 0.5
    count = lambda m: jnp.maximum(m.sum(), 1)
    metrics = {"loss": loss, "accuracy": jnp.mean((z >= 0) == expert),
               "expert_q": jnp.sum(q[:, 0] * expert) / count(expert),
               "policy_q": jnp.sum(q[:, 0] * ~expert) / count(~expert)}
    return loss, metrics

  return loss_fn


def pair_batch(tokenizer: Tokenizer, transitions: Sequence[dict], max_length: int) -> dict:
  """The batch of `transitions` (`{"prompt", "output", "next_prompt", "next_output", "label",
  "terminal"}`; the next pair may be None when terminal), each sequence tokenized like a
  one-step PRM example (`tokenize_stepwise`: prompt, then the output and its separator)."""
  rows = len(transitions)
  input_ids = np.full((rows, 2, max_length), tokenizer.pad_id or 0, np.int32)
  mask = np.zeros((rows, 2, max_length), bool)
  ends = np.zeros((rows, 2), np.int32)
  for row, t in enumerate(transitions):
    pairs = [(t["prompt"], t["output"])]
    pairs.append(pairs[0] if t["terminal"] else (t["next_prompt"], t["next_output"]))
    for column, (prompt, output) in enumerate(pairs):
      example = tokenize_stepwise(tokenizer, Trajectory(problem=prompt, steps=[output]))
      ids = example["input_ids"]
      if len(ids) > max_length:
        raise ValueError(f"InversePRM transition {row}: {len(ids)} tokens, more than "
                         f"max_length={max_length}")
      input_ids[row, column, :len(ids)] = ids
      mask[row, column, :len(ids)] = True
      ends[row, column] = example["step_ends"][-1]
  return {"input_ids": input_ids, "attention_mask": mask, "action_end": ends,
          "labels": np.array([float(t["label"]) for t in transitions], np.float32),
          "terminal": np.array([bool(t["terminal"]) for t in transitions])}


def pair_batches(tokenizer: Tokenizer, transitions: Sequence[dict], *, batch_size: int,
                 max_length: int, seed: int) -> grain.IterDataset:
  """`pair_batch`es of `transitions` shuffled by `seed` (every epoch anew), repeated
  forever, a final partial batch dropped; this process's shard (`data.pipeline.records`).
  Iterators have `get_state` / `set_state`, so a resumed training run sees the batches an
  uninterrupted one would."""
  ds = records(list(transitions), seed=seed, shuffle=True, num_epochs=None, shard_index=None,
               shard_count=None)
  return ds.batch(batch_size, drop_remainder=True, batch_fn=functools.partial(
      _pair_batch_of, tokenizer=tokenizer, max_length=max_length)).to_iter_dataset()


def _pair_batch_of(transitions, *, tokenizer, max_length):
  return pair_batch(tokenizer, transitions, max_length)
