"""A tiny, separable step-labelled set: PRM runs that finish in seconds on a CPU.

Each example is `BOS, prompt, step_1, SEP, ..., step_n, SEP, PAD...` (right-padded to
`seq_len`, 1 <= n <= max_steps). Token ids: 0 PAD, 1 BOS, 2 SEP; the rest of the
vocabulary is split in half: *ok* tokens (prompts, correct steps) and *error* tokens. A
step is wrong when it contains an error token, and, as with Math-Shepherd labels, every
step from the first wrong one on is labelled 0: the label of step t is 1 iff no error
token occurs up to its SEP. A causal model can read that off the prefix exactly, so a
good PRM reaches ~100% step accuracy. Soft labels stand in for Monte Carlo estimates:
uniform in [0.7, 1] for correct steps and in [0, 0.3] for wrong ones (the same 0.5
threshold separates them).

Examples are dicts in the PRM batch layout of `prm_jax.objectives.prm` (one row each).
"""

from __future__ import annotations

import numpy as np

PAD, BOS, SEP = 0, 1, 2
FIRST_TOKEN = 3


def make_examples(num: int, *, seq_len: int, max_steps: int, step_len: int, prompt_len: int,
                  vocab_size: int, soft_labels: bool, seed: int) -> list[dict]:
  """`num` examples; half of them are all correct, the rest go wrong at a random step."""
  needed = 1 + prompt_len + max_steps * (step_len + 1)
  if needed > seq_len:
    raise ValueError(f"data.seq_len={seq_len} is too short for {max_steps} steps of "
                     f"{step_len} tokens after a {prompt_len}-token prompt ({needed} needed)")
  middle = FIRST_TOKEN + (vocab_size - FIRST_TOKEN) // 2
  if middle - FIRST_TOKEN < 2 or vocab_size - middle < 2:
    raise ValueError(f"vocab_size={vocab_size} leaves too few ok/error tokens")
  rng = np.random.default_rng(seed)
  examples = []
  for _ in range(num):
    num_steps = int(rng.integers(1, max_steps + 1))
    first_error = int(rng.integers(0, num_steps)) if rng.random() < 0.5 else num_steps
    tokens = [BOS, *rng.integers(FIRST_TOKEN, middle, prompt_len)]
    positions, correct = [], []
    for t in range(num_steps):
      step = rng.integers(FIRST_TOKEN, middle, step_len)
      # The first wrong step surely has an error token; later ones may or may not.
      if t == first_error or (t > first_error and rng.random() < 0.5):
        step[rng.integers(0, step_len)] = rng.integers(middle, vocab_size)
      tokens += [*step, SEP]
      positions.append(len(tokens) - 1)
      correct.append(t < first_error)
    correct = np.array(correct, bool)
    labels = correct.astype(np.float32)
    if soft_labels:
      labels = np.where(correct, rng.uniform(0.7, 1.0, num_steps),
                        rng.uniform(0.0, 0.3, num_steps)).astype(np.float32)
    examples.append(_pack(tokens, positions, labels, seq_len, max_steps))
  return examples


def _pack(tokens, positions, labels, seq_len, max_steps) -> dict:
  input_ids = np.full(seq_len, PAD, np.int32)
  input_ids[:len(tokens)] = tokens
  attention_mask = np.arange(seq_len) < len(tokens)
  step_positions = np.zeros(max_steps, np.int32)
  step_positions[:len(positions)] = positions
  step_labels = np.zeros(max_steps, np.float32)
  step_labels[:len(labels)] = labels
  return {"input_ids": input_ids, "attention_mask": attention_mask,
          "step_positions": step_positions, "step_labels": step_labels,
          "step_mask": np.arange(max_steps) < len(positions)}
