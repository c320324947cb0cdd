"""ReasonFlux-PRM targets (Zou et al. 2025, arXiv 2506.18896): step and trajectory rewards
for thinking-trajectory + response pairs.

A pair is a problem `x`, thinking steps `s_1..s_T` and response steps `a_1..a_T'`
(`prm_jax.data.formats.thinking`: split on blank lines, extra thinking steps merged so the
two align). Every function here is pure; embeddings come from a pluggable encoder `Phi`
(`embed_texts`: mean-pooled hidden states of any prm_jax model).

Step rewards, each `[T]`:

  alignment  r_align_t = cos(Phi(s_t), Phi(a_t'))        t' = the response step s_t
                                                         aligns with (`step_pairing`)
  quality    r_qual_t  = judge(x, s_<t, s_t, a)             in [0, 1] (pluggable)
  coherence  r_coh_t   = log softmax_j(sim(Phi(s_{t-1}), c_j) / temperature)[positive]

where the candidates `c` are `Phi(s_t)` (the positive) and `Phi` of steps of *other*
trajectories (negatives; `coherence_negatives` never draws from the pair itself), `sim` is
the cosine, and `s_0` is the problem `x` (the first step continues the question). The
three combine per step by their own softmax weights (DESIGN.md):

  r_t = sum_k softmax(r_align_t, r_qual_t, r_coh_t)_k * r_k_t.

Units. The formulas' ranges differ (cos in [-1, 1], log-probabilities <= 0), while the
PRM's score is a probability; `unit=True` (the default for training targets) maps each
term to [0, 1] before combining -- alignment `(1 + cos) / 2`, coherence `exp(log softmax)`
(the positive's probability), quality as is -- so the combined target lies in [0, 1]
too. `unit=False` gives the formulas as written.

Trajectory reward (template-guided): a template extracted from `(x, y)` (on the synthetic
chain tasks: the plan, the sequence of operation kinds; pluggable for real data) guides
`N` policy samples; `r_final` = their success rate under the task's checker
(`template_reward`).
"""

from __future__ import annotations

import functools
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from prm_jax import models
from prm_jax.data.formats.thinking import step_pairing
from prm_jax.data.tokenizer import Tokenizer

# A judge scores step t of a pair: (problem, earlier thinking steps, step, response steps).
Judge = Callable[[str, Sequence[str], str, Sequence[str]], float]


def _unit_rows(vectors: np.ndarray) -> np.ndarray:
  vectors = np.asarray(vectors, np.float64)
  norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
  return vectors / np.maximum(norms, 1e-12)


def alignment_reward(thinking: np.ndarray, response: np.ndarray, *, unit: bool = True
                     ) -> np.ndarray:
  """`[T]` cosine of each thinking step's embedding `thinking [T, D]` with its response
  step's `response [T', D]`: the one it aligns with (`align_steps`' rule, `step_pairing`:
  the group it merges into when T > T', else `min(t, T' - 1)`)."""
  if len(response) == 0:
    raise ValueError("alignment needs at least one response step")
  pair = np.asarray(step_pairing(len(thinking), len(response)))
  cos = np.sum(_unit_rows(thinking) * _unit_rows(response)[pair], axis=-1)
  return (1.0 + cos) / 2.0 if unit else cos


def coherence_reward(problem: np.ndarray, thinking: np.ndarray, negatives: np.ndarray, *,
                     temperature: float = 0.1, unit: bool = True) -> np.ndarray:
  """`[T]` contrastive coherence of each step with the one before it.

  Args:
    problem: `[D]` embedding of the problem (step 0's predecessor).
    thinking: `[T, D]` embeddings of the pair's thinking steps.
    negatives: `[T, M, D]` embeddings of M steps of other trajectories for each step
      (`coherence_negatives`); they must not include the pair's own steps.
    temperature: the softmax temperature (> 0).
  """
  if temperature <= 0:
    raise ValueError(f"temperature={temperature} must be > 0")
  thinking = _unit_rows(thinking)
  previous = np.concatenate([_unit_rows(problem)[None], thinking[:-1]])
  candidates = np.concatenate([thinking[:, None], _unit_rows(negatives)], axis=1)  # [T, 1+M, D]
  logits = np.einsum("td,tmd->tm", previous, candidates) / temperature
  log_prob = logits[:, 0] - np.logaddexp.reduce(logits, axis=-1)
  return np.exp(log_prob) if unit else log_prob


def coherence_negatives(owners: np.ndarray, embeddings: np.ndarray, trajectory: int,
                        steps: int, count: int, rng: np.random.Generator) -> np.ndarray:
  """`[steps, count, D]` negatives for the `steps` steps of `trajectory`: embeddings of
  steps drawn uniformly (with replacement) among the steps of other trajectories.

  Args:
    owners: `[N]` the trajectory each row of `embeddings` belongs to.
    embeddings: `[N, D]` step embeddings of a pool of trajectories.
  """
  others = np.flatnonzero(np.asarray(owners) != trajectory)
  if len(others) == 0:
    raise ValueError("coherence needs steps of at least one other trajectory as negatives")
  return np.asarray(embeddings)[rng.choice(others, size=(steps, count))]


def quality_reward(judge: Judge, problem: str, thinking: Sequence[str],
                   response: Sequence[str]) -> np.ndarray:
  """`[T]` the judge's score of every thinking step given the problem, the steps before
  it and the response; each must lie in [0, 1]."""
  scores = np.array([judge(problem, thinking[:t], step, response)
                     for t, step in enumerate(thinking)], np.float64)
  if np.any((scores < 0) | (scores > 1)) or not np.all(np.isfinite(scores)):
    raise ValueError(f"the quality judge returned scores outside [0, 1]: {scores}")
  return scores


def combine(*terms: np.ndarray) -> np.ndarray:
  """`[T]` `sum_k softmax_k(terms[:, t]) * terms[k, t]`: each step's terms weighted by
  their own softmax (a soft maximum that leans to the largest term)."""
  stacked = np.stack([np.asarray(t, np.float64) for t in terms])  # [K, T]
  weights = np.exp(stacked - np.max(stacked, axis=0, keepdims=True))
  weights /= weights.sum(axis=0, keepdims=True)
  return np.sum(weights * stacked, axis=0)


def template_reward(templates: Sequence[str], problems: Sequence[str],
                    sample: Callable[[Sequence[str], Sequence[str], int], Sequence[Sequence[str]]],
                    solved: Callable[[str, str], bool], num_samples: int) -> np.ndarray:
  """`[M]` success rate of `num_samples` template-guided policy samples per pair.

  Args:
    templates: per pair, the template extracted from its `(x, y)`.
    problems: per pair, the problem `x`.
    sample: `(problems, templates, n) -> n texts per problem`, the policy guided by the
      template (e.g. the template in its prompt, through the sampler).
    solved: `(problem, text) -> bool`, the task's checker.
  """
  if num_samples < 1:
    raise ValueError(f"num_samples={num_samples} must be >= 1")
  texts = sample(problems, templates, num_samples)
  if len(texts) != len(problems) or any(len(t) != num_samples for t in texts):
    raise ValueError(f"the template-guided sampler must return {num_samples} texts for each "
                     f"of the {len(problems)} problems")
  return np.array([np.mean([solved(p, t) for t in group]) for p, group in zip(problems, texts)])


def step_targets(problem_embedding: np.ndarray, thinking: np.ndarray, response: np.ndarray,
                 negatives: np.ndarray, quality: np.ndarray, *, temperature: float = 0.1,
                 unit: bool = True) -> dict[str, np.ndarray]:
  """The three step terms and their combination `r` (`[T]` each) of one pair."""
  terms = {"alignment": alignment_reward(thinking, response, unit=unit),
           "quality": np.asarray(quality, np.float64),
           "coherence": coherence_reward(problem_embedding, thinking, negatives,
                                         temperature=temperature, unit=unit)}
  return {**terms, "r": combine(*terms.values())}


def embed_texts(config: models.ModelConfig, params, tokenizer: Tokenizer, texts: Sequence[str],
                *, max_length: int, batch_size: int = 64) -> np.ndarray:
  """`[N, D]` float32: the encoder `Phi`, each text's mean final hidden state under a
  prm_jax model (its first `max_length` tokens, no special tokens; an empty text embeds as
  zeros, which every cosine treats as orthogonal)."""
  encode = _encoder(config)
  out = np.zeros((len(texts), config.hidden_size), np.float32)
  for start in range(0, len(texts), batch_size):
    chunk = [tokenizer.encode(t)[:max_length] for t in texts[start:start + batch_size]]
    ids = np.zeros((batch_size, max_length), np.int32)
    mask = np.zeros(ids.shape, bool)
    for row, tokens in enumerate(chunk):
      ids[row, :len(tokens)], mask[row, :len(tokens)] = tokens, True
    out[start:start + len(chunk)] = np.asarray(encode(params, ids, mask))[:len(chunk)]
  return out


@functools.lru_cache(maxsize=16)
def _encoder(config: models.ModelConfig):
  """The jitted mean-pooling forward, built once per model (every call would recompile)."""
  @jax.jit
  def encode(params, ids, mask):
    hidden = models.forward(config, params, ids, attention_mask=mask, lm_logits="none")["hidden"]
    weights = mask.astype(jnp.float32)[..., None]
    return jnp.sum(hidden.astype(jnp.float32) * weights, 1) / jnp.maximum(weights.sum(1), 1.0)
  return encode
