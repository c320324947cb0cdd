"""Stepwise tokenization with the semantics of TRL's `PRMTrainer.tokenize_row` (TRL 1.13).

For a prompt and steps `s_1..s_n` with labels `y_1..y_n`:

  * the prompt and every step are tokenized on their own, without special tokens;
  * the separator's tokens are appended to every step, the last one included, and step t's
    label sits on the last token of `s_t + separator`; every other token gets -100;
  * BOS is prepended to the prompt when the tokenizer has one;
  * the completion is cut to `max_completion_length` tokens (keeping the head), then the
    whole sequence to `max_length` (keeping the head).

Extensions beyond TRL 1.13: `max_prompt_length` keeps the last tokens of the BOS-prefixed
prompt (as TRL 0.19 did; 1.13 dropped the option); labels may be soft (floats in [0, 1],
returned as floats; hard 0/1 labels are returned as ints like TRL's) or unknown (None ->
-100: the step is scored but not trained on); and the result also lists `step_ends`, the
token index of every step whose last token survived truncation, labelled or not, which is
what the PRM head reads (see `prm_jax.data.batching.collate_prm`).
"""

from __future__ import annotations

from typing import Any, Mapping

from prm_jax.data.schema import Trajectory
from prm_jax.data.tokenizer import Tokenizer

IGNORE_INDEX = -100


def _fields(example: Trajectory | Mapping[str, Any]) -> tuple[str, list[str], list]:
  """(prompt, steps, labels) of a `Trajectory` or a TRL row `{prompt, completions, labels}`."""
  if isinstance(example, Trajectory):
    return example.problem, example.steps, example.labels or [None] * len(example.steps)
  labels = example["labels"]
  if len(labels) != len(example["completions"]):
    raise ValueError(f"{len(labels)} labels for {len(example['completions'])} completions")
  return example["prompt"], list(example["completions"]), list(labels)


def _label_value(label: Any) -> int | float:
  if label is None:
    return IGNORE_INDEX
  if not isinstance(label, (bool, int, float)):
    raise ValueError(f"step label {label!r} is not a number")
  if label in (0, 1):  # Hard labels (bools too) stay ints, as TRL writes them.
    return int(label)
  if not 0.0 <= label <= 1.0:
    raise ValueError(f"step label {label!r} is outside [0, 1]")
  return float(label)


def _check_length(name: str, value: int | None):
  if value is not None and (not isinstance(value, int) or value < 0):
    raise ValueError(f"{name} must be a non-negative int or None, got {value!r}")


def tokenize_stepwise(tokenizer: Tokenizer, example: Trajectory | Mapping[str, Any], *,
                      step_separator: str = "\n", max_length: int | None = None,
                      max_prompt_length: int | None = None,
                      max_completion_length: int | None = None,
                      train_on_last_step_only: bool = False) -> dict[str, list]:
  """Token ids and per-token labels of one stepwise example (see module docstring).

  Args:
    tokenizer: any `prm_jax.data.tokenizer.Tokenizer`.
    example: a `Trajectory` (prompt = problem, completions = steps; `response` is not
      tokenized) or a TRL row `{"prompt", "completions", "labels"}`.
    step_separator: text appended to every step; its tokens carry the step's label.
    max_length: keep the first this-many tokens of the whole sequence.
    max_prompt_length: keep the last this-many tokens of the BOS-prefixed prompt.
    max_completion_length: keep the first this-many tokens of the completion.
    train_on_last_step_only: every label but the last step's becomes -100.

  Returns:
    `{"input_ids": [L] ints, "labels": [L] (-100 or the step label), "step_ends": [S] ints}`;
    `input_ids` and `labels` equal TRL 1.13's `tokenize_row` output for hard labels.

  Raises:
    ValueError: on a label outside [0, 1], a labels/steps count mismatch, a negative length,
      or a step that has no token to carry its label (empty step and empty separator).
  """
  for name, value in (("max_length", max_length), ("max_prompt_length", max_prompt_length),
                      ("max_completion_length", max_completion_length)):
    _check_length(name, value)
  prompt, steps, labels = _fields(example)
  labels = [_label_value(label) for label in labels]
  if train_on_last_step_only and labels:
    labels = [IGNORE_INDEX] * (len(labels) - 1) + labels[-1:]

  prompt_ids = tokenizer.encode(prompt)
  if tokenizer.bos_id is not None:
    prompt_ids = [tokenizer.bos_id] + prompt_ids
  if max_prompt_length is not None:
    prompt_ids = prompt_ids[max(len(prompt_ids) - max_prompt_length, 0):]

  separator_ids = tokenizer.encode(step_separator)
  completion_ids, completion_labels, ends = [], [], []
  for index, (step, label) in enumerate(zip(steps, labels)):
    step_ids = tokenizer.encode(step) + separator_ids
    if not step_ids:
      raise ValueError(f"step {index} is empty and so is the separator {step_separator!r}: "
                       "no token can carry its label")
    completion_ids += step_ids
    completion_labels += [IGNORE_INDEX] * (len(step_ids) - 1) + [label]
    ends.append(len(completion_ids) - 1)

  if max_completion_length is not None:
    completion_ids = completion_ids[:max_completion_length]
    completion_labels = completion_labels[:max_completion_length]
  input_ids = prompt_ids + completion_ids
  token_labels = [IGNORE_INDEX] * len(prompt_ids) + completion_labels
  if max_length is not None:
    input_ids, token_labels = input_ids[:max_length], token_labels[:max_length]
  step_ends = [len(prompt_ids) + end for end in ends
               if end < len(completion_ids) and len(prompt_ids) + end < len(input_ids)]
  return {"input_ids": input_ids, "labels": token_labels, "step_ends": step_ends}
