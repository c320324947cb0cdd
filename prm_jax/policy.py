"""The policy as text: problems in, sampled solutions out.

A policy's format is the stepwise layout of `prm_jax.data.tokenize` (`prompt_ids(problem)`,
then `step + separator` pieces, then EOS), so a sampled solution splits into steps on the
separator and re-tokenizes into exactly what a PRM scores.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import jax
import numpy as np

from prm_jax import sampling
from prm_jax.data.tokenize import prompt_ids
from prm_jax.data.tokenizer import Tokenizer
from prm_jax.models import ModelConfig


@dataclasses.dataclass
class Solutions:
  """`texts[p][s]`: sample s of problem p, decoded up to (not including) EOS;
  `finished[p][s]`: it ended with EOS within the token budget; `lengths[p][s]`: its tokens
  (EOS included); `generated_tokens`: all tokens sampled."""

  texts: list[list[str]]
  finished: list[list[bool]]
  lengths: list[list[int]]
  generated_tokens: int


def sample_solutions(config: ModelConfig, params, tokenizer: Tokenizer,
                     problems: Sequence[str], *, num_samples: int, max_new_tokens: int,
                     rng: jax.Array, temperature: float = 1.0, top_p: float | None = None,
                     prompts_per_batch: int = 32, prompt_width: int | None = None, mesh=None,
                     progress: Callable[[int, int], None] | None = None) -> Solutions:
  """`num_samples` solutions of every problem; each prompt is prefilled once per batch.

  Prompts are left-padded to the longest one, or to `prompt_width` tokens when given (a
  caller sampling many small sets, like an agent turn by turn, keeps one shape: one
  compilation; a longer prompt is an error naming it).

  Sample s of problem p draws from key `fold_in(fold_in(rng, p), s)`, so the solutions do
  not depend on `prompts_per_batch` (which fixes the batch shape: one compilation).
  """
  if tokenizer.eos_id is None:
    raise ValueError("sampling solutions needs a tokenizer with an EOS token")
  rng = sampling.as_key(rng)
  prompts = [prompt_ids(tokenizer, problem) for problem in problems]
  length = max((len(p) for p in prompts), default=1)
  if prompt_width is not None:
    if length > prompt_width:
      longest = max(range(len(prompts)), key=lambda i: len(prompts[i]))
      raise ValueError(f"prompt {longest} ({problems[longest][:60]!r}...) has {length} tokens, "
                       f"more than prompt_width={prompt_width}")
    length = prompt_width
  pad = tokenizer.pad_id if tokenizer.pad_id is not None else tokenizer.eos_id
  texts, finished, sample_lengths, generated = [], [], [], 0
  for start in range(0, len(prompts), prompts_per_batch):
    chunk = list(range(start, min(start + prompts_per_batch, len(prompts))))
    members = chunk + [chunk[0]] * (prompts_per_batch - len(chunk))  # Fixed shape.
    ids = np.full((prompts_per_batch, length), pad, np.int32)
    mask = np.zeros(ids.shape, bool)
    for row, p in enumerate(members):
      ids[row, length - len(prompts[p]):] = prompts[p]
      mask[row, length - len(prompts[p]):] = True
    keys = jax.vmap(lambda p: jax.vmap(lambda s: jax.random.key_data(
        jax.random.fold_in(jax.random.fold_in(rng, p), s)))(np.arange(num_samples)))(
            np.asarray(members))
    out = sampling.generate(
        config, params, ids, mask, max_new_tokens=max_new_tokens, temperature=temperature,
        top_p=top_p, stop_tokens=(tokenizer.eos_id,), pad_id=pad, num_samples=num_samples,
        rng=np.asarray(keys).reshape(-1, keys.shape[-1]), mesh=mesh)
    tokens, lengths = np.asarray(out["tokens"]), np.asarray(out["lengths"])
    stopped = np.asarray(out["stopped"])
    for i in range(len(chunk)):
      rows = range(i * num_samples, (i + 1) * num_samples)
      texts.append([tokenizer.decode([int(t) for t in tokens[r, :lengths[r]]
                                      if t != tokenizer.eos_id]) for r in rows])
      finished.append([bool(stopped[r]) for r in rows])
      sample_lengths.append([int(lengths[r]) for r in rows])
      generated += int(lengths[list(rows)].sum())
    if progress is not None:
      progress(chunk[-1] + 1, len(prompts))
  return Solutions(texts, finished, sample_lengths, generated)
