"""ReasonFlux-PRM targets (Zou et al. 2025, arXiv 2506.18896): step and trajectory rewards
for thinking-trajectory + response pairs.

A pair is a problem `x`, thinking steps `s_1..s_T` and response steps `a_1..a_T'`
(`prm_jax.data.formats.thinking`: split on blank lines, extra thinking steps merged so the
two align). Every function here is pure; embeddings come from a pluggable encoder `Phi`
(`embed_texts`: mean-pooled hidden states of any prm_jax model).

Step rewards, each `[T]`:

  alignment  r_align_t = cos(Phi(s_t), Phi(a_t'))        t' = the response step s_t
                                                         aligns with (`step_pairing`)
  quality    r_qual_t  = judge(x, s_<t, s_t, a)             in [0, 1] (pluggable: the
                                                         task's checker on synthetic
                                                         data, `LMJudge` without one)
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


def quality_rewards(judge: Judge, pairs: Sequence[tuple[str, Sequence[str], Sequence[str]]]
                    ) -> list[np.ndarray]:
  """`quality_reward` of many `(problem, thinking, response)` pairs. A judge with a
  `batch(queries) -> [Q]` method (`LMJudge`) scores every step of every pair in one call,
  so its forward passes run in full batches; any other judge is called step by step."""
  if not hasattr(judge, "batch"):
    return [quality_reward(judge, *pair) for pair in pairs]
  queries = [(problem, thinking[:t], step, response)
             for problem, thinking, response in pairs for t, step in enumerate(thinking)]
  scores = np.asarray(judge.batch(queries), np.float64)
  if np.any((scores < 0) | (scores > 1)) or not np.all(np.isfinite(scores)):
    raise ValueError(f"the quality judge returned scores outside [0, 1]: {scores}")
  return np.split(scores, np.cumsum([len(thinking) for _, thinking, _ in pairs])[:-1])


JUDGE_TEMPLATE = ("Problem: {problem}\n\nReasoning so far:\n{earlier}\n\nNext step: {step}"
                  "\n\nFinal response:\n{response}\n\nIs the next step correct and useful? "
                  "Answer:")


class LMJudge:
  """The quality judge for data without a checker: a language model asked by prompt.

  The query `(x, s_<t, s_t, a)` fills `template` (fields `problem`, `earlier`, `step`,
  `response`; steps joined by newlines, `earlier` = "(none)" for the first step) and the
  score is `P(yes) / (P(yes) + P(no))` of the model's next token, `yes` / `no` being one
  token each under `tokenizer`. The two probabilities are read off one forward pass
  (the logit form of LLM-as-judge: deterministic, and no answer to parse), not from a
  sampled reply. Queries are left-padded to `max_length` tokens in batches of
  `batch_size` (one compilation); a longer prompt raises, naming the query.
  """

  def __init__(self, config: models.ModelConfig, params, tokenizer: Tokenizer, *,
               max_length: int, batch_size: int = 32, template: str = JUDGE_TEMPLATE,
               yes: str = " Yes", no: str = " No"):
    ids = {word: tokenizer.encode(word) for word in (yes, no)}
    for word, tokens in ids.items():
      if len(tokens) != 1:
        raise ValueError(f"judge answer {word!r} is {len(tokens)} tokens under the tokenizer; "
                         "it must be exactly one")
    self.answers = np.array([ids[yes][0], ids[no][0]], np.int32)
    self.config, self.params, self.tokenizer = config, params, tokenizer
    self.max_length, self.batch_size, self.template = max_length, batch_size, template
    self._logits = _last_logits(config)

  def prompt(self, problem: str, earlier: Sequence[str], step: str,
             response: Sequence[str]) -> str:
    return self.template.format(problem=problem, earlier="\n".join(earlier) or "(none)",
                                step=step, response="\n".join(response))

  def batch(self, queries: Sequence[tuple[str, Sequence[str], str, Sequence[str]]]
            ) -> np.ndarray:
    """`[Q]` P(yes | the query's prompt) renormalised over {yes, no}."""
    prompts = [self.tokenizer.encode(self.prompt(*q)) for q in queries]
    for index, tokens in enumerate(prompts):
      if len(tokens) > self.max_length:
        raise ValueError(f"judge query {index} (problem {queries[index][0][:40]!r}) is "
                         f"{len(tokens)} tokens; judge max_length is {self.max_length}")
    out = np.zeros(len(prompts), np.float64)
    for start in range(0, len(prompts), self.batch_size):
      chunk = prompts[start:start + self.batch_size]
      ids = np.zeros((self.batch_size, self.max_length), np.int32)
      mask = np.zeros(ids.shape, bool)
      for row, tokens in enumerate(chunk):  # Left padding: the last column is the next token.
        ids[row, self.max_length - len(tokens):] = tokens
        mask[row, self.max_length - len(tokens):] = True
      mask[len(chunk):, -1] = True  # Padding rows attend to something (their result is dropped).
      logits = np.asarray(self._logits(self.params, ids, mask), np.float64)[:len(chunk)]
      pair = logits[:, self.answers]
      pair -= pair.max(-1, keepdims=True)
      probs = np.exp(pair) / np.exp(pair).sum(-1, keepdims=True)
      out[start:start + len(chunk)] = probs[:, 0]
    return out

  def __call__(self, problem: str, earlier: Sequence[str], step: str,
               response: Sequence[str]) -> float:
    return float(self.batch([(problem, earlier, step, response)])[0])


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
def _last_logits(config: models.ModelConfig):
  """The jitted next-token logits `[B, V]` (fp32) of left-padded prompts, built once per
  model."""
  @jax.jit
  def logits(params, ids, mask):
    out = models.forward(config, params, ids, attention_mask=mask, lm_logits="last")
    return out["logits"][:, -1].astype(jnp.float32)
  return logits


@functools.lru_cache(maxsize=16)
def _encoder(config: models.ModelConfig):
  """The jitted mean-pooling forward, built once per model (every call would recompile)."""
  @jax.jit
  def encode(params, ids, mask):
    hidden = models.forward(config, params, ids, attention_mask=mask, lm_logits="none")["hidden"]
    weights = mask.astype(jnp.float32)[..., None]
    return jnp.sum(hidden.astype(jnp.float32) * weights, 1) / jnp.maximum(weights.sum(1), 1.0)
  return encode
