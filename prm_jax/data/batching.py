"""Padding tokenized stepwise examples into the PRM batch layout.

`collate_prm` produces exactly the batch `prm_jax.objectives.prm` reads:

    input_ids      [B, T] int32    right-padded with `pad_id`
    attention_mask [B, T] bool     True on real tokens
    step_positions [B, S] int32    index in T of each step's label token; -1 = no step
    step_labels    [B, S] float32  the step's label in [0, 1]; 0 where unlabelled
    step_mask      [B, S] bool     True on steps with a known label (the loss averages these)

A step with an unknown label (or one masked by `train_on_last_step_only`) keeps its
position, so the same batch serves scoring, but is left out of `step_mask`. Right padding
suits training (the model derives positions from the attention mask); the sampler pads on
the left on its own. Pass `max_length` / `max_steps` to get fixed shapes (no recompiles).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from prm_jax.data.tokenize import IGNORE_INDEX


def _describe(index: int, example: Mapping[str, Any]) -> str:
  source = example.get("source")
  return f"example {index}" + (f" ({source})" if source else "")


def collate_prm(examples: Sequence[Mapping[str, Any]], *, pad_id: int,
                max_length: int | None = None, max_steps: int | None = None,
                truncate: bool = False) -> dict[str, np.ndarray]:
  """Pad `tokenize_stepwise` outputs into one PRM batch (see module docstring).

  Args:
    examples: dicts with `input_ids`, `labels` and `step_ends` (from `tokenize_stepwise`);
      an optional `source` string names the example in errors.
    pad_id: id written on padding tokens (never attended to, never labelled).
    max_length: T; default the longest example.
    max_steps: S; default the most steps of any example (at least 1).
    truncate: cut examples to T tokens / S steps instead of raising.

  Raises:
    ValueError: an example is longer than `max_length` or has more steps than `max_steps`
      (and `truncate` is False), naming the example.
  """
  if not examples:
    raise ValueError("cannot collate an empty list of examples")
  length = max(len(e["input_ids"]) for e in examples) if max_length is None else max_length
  steps = max(1, *(len(e["step_ends"]) for e in examples)) if max_steps is None else max_steps
  batch = len(examples)
  input_ids = np.full((batch, length), pad_id, np.int32)
  attention_mask = np.zeros((batch, length), bool)
  step_positions = np.full((batch, steps), -1, np.int32)
  step_labels = np.zeros((batch, steps), np.float32)
  step_mask = np.zeros((batch, steps), bool)
  for row, example in enumerate(examples):
    ids, ends = list(example["input_ids"]), list(example["step_ends"])
    if len(ids) > length:
      if not truncate:
        raise ValueError(f"{_describe(row, example)} has {len(ids)} tokens > max_length="
                         f"{length}; tokenize with a max_length or pass truncate=True")
      ids, ends = ids[:length], [end for end in ends if end < length]
    if len(ends) > steps:
      if not truncate:
        raise ValueError(f"{_describe(row, example)} has {len(ends)} steps > max_steps="
                         f"{steps}; pass a larger max_steps or truncate=True")
      ends = ends[:steps]
    input_ids[row, :len(ids)] = ids
    attention_mask[row, :len(ids)] = True
    labels = np.asarray([example["labels"][end] for end in ends], np.float32)
    known = labels != IGNORE_INDEX
    step_positions[row, :len(ends)] = ends
    step_labels[row, :len(ends)] = np.where(known, labels, 0.0)
    step_mask[row, :len(ends)] = known
  return {"input_ids": input_ids, "attention_mask": attention_mask,
          "step_positions": step_positions, "step_labels": step_labels, "step_mask": step_mask}
