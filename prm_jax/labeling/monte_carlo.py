"""Monte Carlo step labels (Math-Shepherd, Wang et al. 2024).

For every step t of a trajectory, `k` completions are sampled by the policy from the
prefix that ends with step t (its separator included). With `c_t` of them reaching the
gold answer:

    soft label  y_t = c_t / k          (the estimated value of the prefix)
    hard label  y_t = 1[c_t > 0]       (some completion still succeeds)

The last step states the final answer, so nothing follows it: its label is the
correctness of the trajectory itself (no rollouts). The labeling cost is counted as the
number of rollouts and of tokens they generate.

Rollouts run through `prm_jax.sampling.continue_prefixes` in fixed-size batches: every
trajectory of a batch is prefilled once and its k x steps rollouts share that prefill.
Rollout (m, t, j) -- trajectory m, step t, sample j -- draws from its own key
`fold_in(fold_in(fold_in(rng, m), t), j)`, so labels do not depend on how rows are batched.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import jax
import numpy as np

from prm_jax import sampling
from prm_jax.data.schema import Trajectory
from prm_jax.data.tokenize import tokenize_stepwise
from prm_jax.data.tokenizer import Tokenizer
from prm_jax.models import ModelConfig


@dataclasses.dataclass
class MonteCarloLabels:
  """Per trajectory, per step: `soft` and `hard` labels and `successes` (c_t) out of
  `rollouts_per_step`; `rollouts` and `generated_tokens` are the total labeling cost.
  `outcomes[m][t][j]` and `rollout_tokens[m][t][j]` are rollout j's success and length
  (empty for the final step, which has no rollouts): the labels and cost of any smaller
  budget (the first k' rollouts of the first M' trajectories) are read off them."""

  soft: list[list[float]]
  hard: list[list[float]]
  successes: list[list[int]]
  rollouts_per_step: int
  rollouts: int
  generated_tokens: int
  outcomes: list[list[list[bool]]]
  rollout_tokens: list[list[list[int]]]


def _row_keys(rng: jax.Array, rows: np.ndarray) -> np.ndarray:
  """`[R, 2]` uint32 key data for rows given as `[R, 3]` (trajectory, step, sample)."""
  def key(row):
    k = rng
    for part in row:
      k = jax.random.fold_in(k, part)
    return jax.random.key_data(k)
  return np.asarray(jax.vmap(key)(rows))


def monte_carlo_labels(config: ModelConfig, params, tokenizer: Tokenizer,
                       trajectories: Sequence[Trajectory],
                       is_correct: Callable[[int, str], bool], *, rollouts_per_step: int,
                       max_new_tokens: int, rng: jax.Array, temperature: float = 1.0,
                       top_p: float | None = None, step_separator: str = "\n",
                       rows_per_batch: int = 512, mesh=None,
                       progress: Callable[[int, int], None] | None = None) -> MonteCarloLabels:
  """Label every step of `trajectories` by k = `rollouts_per_step` policy completions.

  Args:
    config, params: the policy.
    tokenizer: the policy's tokenizer (needs `eos_id`: rollouts stop there).
    trajectories: problems with steps; the last step is the final answer.
    is_correct: `(trajectory index, full solution text) -> bool`, the outcome verifier;
      the text is the steps, each followed by `step_separator`, then the rollout.
    max_new_tokens: longest rollout.
    rng: PRNG key (typed or raw).
    temperature, top_p: rollout sampling (the policy's own distribution by default).
    rows_per_batch: rollouts per sampler call (a multiple of k; fixed, so one compile).
    mesh: run the sampler sharded on this mesh.
    progress: called with (rollouts done, rollouts total) after each batch.
  """
  k = rollouts_per_step
  if k < 1 or rows_per_batch % k:
    raise ValueError(f"rows_per_batch={rows_per_batch} must be a positive multiple of "
                     f"rollouts_per_step={k}")
  if tokenizer.eos_id is None:
    raise ValueError("Monte Carlo rollouts need a tokenizer with an EOS token")
  rng = sampling.as_key(rng)
  encoded = [tokenize_stepwise(tokenizer, t, step_separator=step_separator)
             for t in trajectories]
  texts = [[step + step_separator for step in t.steps] for t in trajectories]
  successes = [[0] * len(t.steps) for t in trajectories]
  outcomes = [[[] for _ in t.steps] for t in trajectories]
  rollout_tokens = [[[] for _ in t.steps] for t in trajectories]
  for m, t in enumerate(trajectories):
    if t.steps:  # The final answer step: the trajectory's own outcome.
      successes[m][-1] = k * bool(is_correct(m, "".join(texts[m])))

  # Rollout rows (trajectory, step, sample) for every step before the last.
  rows = np.array([(m, s, j) for m, e in enumerate(encoded) for s in range(len(e["step_ends"]))
                   if s < len(trajectories[m].steps) - 1 for j in range(k)],
                  np.int64).reshape(-1, 3)
  length = max((len(e["input_ids"]) for e in encoded), default=1)
  generated = 0
  for start in range(0, len(rows), rows_per_batch):
    chunk = rows[start:start + rows_per_batch]
    members = np.unique(chunk[:, 0])
    # Fixed shapes: rows_per_batch rows over rows_per_batch // k prompts (left-padded).
    prompts = np.full((rows_per_batch // k, length), tokenizer.pad_id or 0, np.int32)
    mask = np.zeros(prompts.shape, bool)
    for i, m in enumerate(members):
      ids = encoded[m]["input_ids"]
      prompts[i, length - len(ids):], mask[i, length - len(ids):] = ids, True
    prompts[len(members):], mask[len(members):] = prompts[0], mask[0]
    sources = np.searchsorted(members, chunk[:, 0])
    prefix = np.array([encoded[m]["step_ends"][s] + 1 for m, s, _ in chunk])
    padding = rows_per_batch - len(chunk)
    keys = _row_keys(rng, np.concatenate([chunk, np.repeat(chunk[:1], padding, 0)]))
    out = sampling.continue_prefixes(
        config, params, prompts, mask, sources=np.pad(sources, (0, padding)),
        prefix_lengths=np.pad(prefix, (0, padding), constant_values=prefix[0]),
        max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
        stop_tokens=(tokenizer.eos_id,), pad_id=tokenizer.pad_id or 0, rng=keys, mesh=mesh)
    tokens, lengths = np.asarray(out["tokens"]), np.asarray(out["lengths"])
    for r, (m, s, _) in enumerate(chunk):
      rollout = [int(x) for x in tokens[r, :lengths[r]] if x != tokenizer.eos_id]
      text = "".join(texts[m][:s + 1]) + tokenizer.decode(rollout)
      success = bool(is_correct(int(m), text))
      successes[m][s] += success
      outcomes[m][s].append(success)
      rollout_tokens[m][s].append(int(lengths[r]))
    generated += int(lengths[:len(chunk)].sum())
    if progress is not None:
      progress(start + len(chunk), len(rows))
  return MonteCarloLabels(
      soft=[[c / k for c in row] for row in successes],
      hard=[[float(c > 0) for c in row] for row in successes], successes=successes,
      rollouts_per_step=k, rollouts=len(rows), generated_tokens=generated, outcomes=outcomes,
      rollout_tokens=rollout_tokens)
