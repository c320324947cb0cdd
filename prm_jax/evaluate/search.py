"""PRM-guided test-time search over solution steps: beam search and DVTS, with exact cost.

    config = SearchConfig(method="beam", n=16, width=4, max_steps=8, max_step_tokens=48)
    result = search(policy_config, policy_params, tokenizer, problems, scorer, config, rng)
    result.candidates[p]        # the final solutions of problem p, each with its PRM score
    result.generated_tokens[p]  # tokens the policy sampled for problem p
    result.prm_calls[p]         # partial solutions the PRM scored for problem p

A search grows solutions one step at a time (a step ends at the step separator token, a
solution at EOS). `n` candidate steps are sampled per depth from `n / width` kept prefixes,
`width` children each, and the PRM scores each child's new step (`scorer`, e.g.
`StepScorer`: a solution's score is its last step's). Then, per *group*, the best-scoring
children are kept (ties: the earlier child):

  * beam (`method="beam"`): one group per problem keeping the top `k` children, `k` the beam
    width left (`n / width` at the start); a kept child that has ended (EOS, or its step ran
    out of tokens, or the depth limit) is set aside as a final candidate and its place in
    the beam is not refilled (the classic shrinking beam), so at most `n / width` candidates
    come out;
  * DVTS (`method="dvts"`, diverse verifier tree search): `n / width` independent subtrees,
    each its own group keeping its single best child (greedy by PRM) until it ends: every
    subtree yields one candidate and no two subtrees share a step.

Either way a problem's final answer is picked from its candidates by the PRM (highest score
or PRM-weighted vote, `best_answer`), as Best-of-N picks from independent samples: the
methods are compared at equal generated tokens (the search-vs-compute curves of the
test-time scaling studies), which is why every token sampled and every PRM call is counted.

Cost and caching. Every child is a row of the KV-cache sampler. Depth 0 prefills each
prompt once (`sampling.continue_prefixes`, rows sharing the prompt); later depths fork the
kept rows' caches (`sampling.resume`): a child continues its parent's cache, so no prefix is
ever prefilled again, and a token is counted once, in the row that sampled it. The batch has
a fixed `len(problems) * n` rows at every depth (rows of ended or pruned prefixes run as
padding and are not counted), so the whole search compiles two sampling programs.

Randomness. Child `j` of kept prefix `b` (kept prefixes numbered by rank) of problem `p`
at depth `d` samples with `child_key(rng, p, d, b * width + j)`: a search's steps depend
only on the problems, the models and `rng` (not on the batch), which is what lets a
brute-force reference re-derive every depth from scratch (`tests/test_search.py`).
"""

from __future__ import annotations

import collections
import dataclasses
from typing import Callable, Sequence

import jax
import numpy as np

from prm_jax import sampling
from prm_jax.data.schema import Trajectory
from prm_jax.data.tokenize import prompt_ids
from prm_jax.data.tokenizer import Tokenizer
from prm_jax.models import ModelConfig

METHODS = ("beam", "dvts")
Scorer = Callable[[Sequence[Trajectory]], Sequence[np.ndarray]]


@dataclasses.dataclass(frozen=True)
class SearchConfig:
  """A search's static settings.

  Attributes:
    method: "beam" or "dvts" (module docstring).
    n: children sampled per depth and problem (the "N" of Best-of-N it is compared with).
    width: children per kept prefix (M); `n / width` prefixes are kept (beam) or subtrees
      grown (DVTS).
    max_steps: the most steps a solution gets; a prefix still open at this depth ends.
    max_step_tokens: the most tokens one step gets (separator or EOS included); a step that
      runs out ends its solution (unfinished).
    temperature, top_p: the policy's sampling.
  """

  method: str
  n: int
  width: int
  max_steps: int
  max_step_tokens: int
  temperature: float = 0.8
  top_p: float | None = None

  def __post_init__(self):
    if self.method not in METHODS:
      raise ValueError(f"SearchConfig.method={self.method!r} is not one of {METHODS}")
    for name in ("n", "width", "max_steps", "max_step_tokens"):
      value = getattr(self, name)
      if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"SearchConfig.{name} must be a positive int, got {value!r}")
    if self.n % self.width:
      raise ValueError(f"SearchConfig.n={self.n} is not divisible by width={self.width}: "
                       f"the search keeps n / width prefixes, each expanded into width children")

  @property
  def kept(self) -> int:
    """Prefixes kept per problem at the start: the beam width, or the number of subtrees."""
    return self.n // self.width


@dataclasses.dataclass
class Candidate:
  """A final solution: its steps (texts), its PRM score (its last step's), whether it ended
  with EOS, and its subtree (DVTS; 0 for beam search)."""

  steps: list[str]
  score: float
  finished: bool
  group: int = 0


@dataclasses.dataclass
class SearchResult:
  """`candidates[p]`: problem p's final solutions; `generated_tokens[p]`, `prm_calls[p]`:
  its cost; `kept[d][p]`: `(group, token ids)` of the prefixes kept at depth d (ended ones
  too), in rank order (what a reference implementation checks)."""

  candidates: list[list[Candidate]]
  generated_tokens: np.ndarray
  prm_calls: np.ndarray
  kept: list[list[list[tuple[int, tuple[int, ...]]]]]


@dataclasses.dataclass
class _Prefix:
  """A kept partial solution: its steps' token ids (each step's separator included), texts,
  PRM score, subtree, and its row in the sampler's cache (None at the root)."""

  tokens: tuple[int, ...]
  steps: list[str]
  score: float
  group: int
  row: int | None


def child_key(rng: jax.Array, problem: int, depth: int, child: int) -> np.ndarray:
  """The raw key data of one child's sampling (module docstring: Randomness)."""
  key = jax.random.fold_in(jax.random.fold_in(jax.random.fold_in(rng, problem), depth), child)
  return np.asarray(jax.random.key_data(key))


def select(scores: Sequence[float], groups: Sequence[int], quota: dict[int, int]) -> list[int]:
  """Indices of the kept children: per group, its `quota` best scores (ties: the earlier
  index), all groups' choices in rank order (best first; ties by index)."""
  order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
  taken, kept = collections.Counter(), []
  for index in order:
    if taken[groups[index]] < quota.get(groups[index], 0):
      taken[groups[index]] += 1
      kept.append(index)
  return kept


def search(config: ModelConfig, params, tokenizer: Tokenizer, problems: Sequence[str],
           scorer: Scorer, search_config: SearchConfig, rng, *,
           step_separator: str = "\n", first_problem: int = 0, mesh=None) -> SearchResult:
  """Beam search or DVTS (module docstring) for every problem, batched.

  Args:
    config, params: the policy (stacked or `sampling.decode_params` layout).
    tokenizer: the policy's; `step_separator` must be one of its tokens, and it needs EOS.
    problems: P problem texts (prompted with `prompt_ids`).
    scorer: trajectories -> their step scores (`[len(steps)]` each); a child is scored by
      its last step's.
    rng: a PRNG key (typed or raw).
    first_problem: the index of `problems[0]` in a larger set searched in several calls:
      problem p draws with `child_key(rng, first_problem + p, ...)`, so a set searched in
      chunks of any size gives the same steps.
  """
  cfg = search_config
  separator = tokenizer.encode(step_separator)
  if len(separator) != 1:
    raise ValueError(f"step_separator {step_separator!r} is {len(separator)} tokens; a step "
                     "search stops on one token")
  if tokenizer.eos_id is None:
    raise ValueError("a step search needs a tokenizer with an EOS token (to end solutions)")
  separator, eos = separator[0], tokenizer.eos_id
  rng = sampling.as_key(rng)
  pad = tokenizer.pad_id if tokenizer.pad_id is not None else eos
  prompts = [prompt_ids(tokenizer, problem) for problem in problems]
  length = max(len(p) for p in prompts)
  ids = np.full((len(prompts), length), pad, np.int32)
  mask = np.zeros(ids.shape, bool)
  for row, prompt in enumerate(prompts):
    ids[row, length - len(prompt):], mask[row, length - len(prompt):] = prompt, True
  params = sampling.prepare_params(config, params, mesh=mesh)  # Once for every depth.
  rows = len(problems) * cfg.n
  sample_args = dict(max_new_tokens=cfg.max_step_tokens, temperature=cfg.temperature,
                     top_p=cfg.top_p, stop_tokens=(separator, eos), pad_id=pad, mesh=mesh)

  open_ = [[_Prefix((), [], 0.0, group if cfg.method == "dvts" else 0, None)
            for group in range(cfg.kept)] for _ in problems]
  width_left = [cfg.kept] * len(problems)  # Beam search: the beam's free places.
  candidates = [[] for _ in problems]
  tokens_used, prm_calls = np.zeros(len(problems), np.int64), np.zeros(len(problems), np.int64)
  kept_log, row_cache = [], None
  for depth in range(cfg.max_steps):
    # The children: child j of open prefix b of problem p is batch row p * n + b * width + j.
    parents = [(p, b) for p in range(len(problems)) for b in range(len(open_[p]))]
    if not parents:
      break
    real = [(p, b, j) for p, b in parents for j in range(cfg.width)]
    slots = np.array([p * cfg.n + b * cfg.width + j for p, b, j in real])
    keys = np.stack([child_key(rng, first_problem + p, depth, b * cfg.width + j)
                     for p, b, j in real])
    batch_keys = np.repeat(keys[:1], rows, axis=0)
    batch_keys[slots] = keys
    if depth == 0:
      sources = np.repeat(np.arange(len(problems)), cfg.n)
      out = sampling.continue_prefixes(
          config, params, ids, mask, sources=sources, prefix_lengths=mask.sum(1)[sources],
          rng=batch_keys, keep_cache=True, room=cfg.max_steps * cfg.max_step_tokens,
          **sample_args)
    else:
      sources = np.full(rows, open_[parents[0][0]][parents[0][1]].row, np.int32)
      for (p, b, j), slot in zip(real, slots):
        sources[slot] = open_[p][b].row
      out = sampling.resume(config, params, row_cache, sources=sources,
                            next_tokens=np.full(rows, separator, np.int32), rng=batch_keys,
                            **sample_args)
    row_cache = out["row_cache"]
    tokens, lengths = np.asarray(out["tokens"]), np.asarray(out["lengths"])

    # Read and score the children; one that ends with EOS alone adds no step (its parent's
    # score stands, no PRM call).
    children, to_score = [], []
    for (p, b, j), slot in zip(real, slots):
      parent = open_[p][b]
      step = tuple(int(t) for t in tokens[slot, :lengths[slot]])
      tokens_used[p] += len(step)
      ended = step[-1] != separator or depth == cfg.max_steps - 1
      text = tokenizer.decode([t for t in step if t not in (separator, eos)])
      new_step = step != (eos,)
      child = _Prefix(parent.tokens + step, parent.steps + [text] if new_step else parent.steps,
                      parent.score, parent.group, int(slot))
      children.append((p, child, ended, step[-1] == eos))
      if new_step:
        to_score.append(len(children) - 1)
    if to_score:
      scored = scorer([Trajectory(problem=problems[children[i][0]], steps=children[i][1].steps)
                       for i in to_score])
      for i, step_scores in zip(to_score, scored):
        children[i][1].score = float(np.asarray(step_scores)[-1])
        prm_calls[children[i][0]] += 1

    # Keep the best per group; ended kept children become candidates.
    kept_log.append([[] for _ in problems])
    by_problem = collections.defaultdict(list)
    for child in children:
      by_problem[child[0]].append(child)
    for p, group_children in by_problem.items():
      scores = [child.score for _, child, _, _ in group_children]
      groups = [child.group for _, child, _, _ in group_children]
      quota = ({0: width_left[p]} if cfg.method == "beam" else
               {prefix.group: 1 for prefix in open_[p]})
      open_[p] = []
      for index in select(scores, groups, quota):
        _, child, ended, finished = group_children[index]
        kept_log[-1][p].append((child.group, child.tokens))
        if ended:
          candidates[p].append(Candidate(child.steps, child.score, finished, child.group))
          width_left[p] -= 1
        else:
          open_[p].append(child)
  return SearchResult(candidates, tokens_used, prm_calls, kept_log)


def best_answer(answers: Sequence[str | None], scores: Sequence[float],
                rule: str = "vote") -> str | None:
  """A problem's answer from its candidates' final answers and PRM scores: "best" = the
  highest-scoring candidate's, "vote" = the answer with the largest sum of scores
  (PRM-weighted vote); a candidate without an answer (None) takes no part."""
  if rule not in ("best", "vote"):
    raise ValueError(f"rule={rule!r} is not 'best' or 'vote'")
  answered = [(a, s) for a, s in zip(answers, scores) if a is not None]
  if not answered:
    return None
  if rule == "best":
    return max(answered, key=lambda pair: pair[1])[0]
  totals = collections.defaultdict(float)
  for answer, score in answered:
    totals[answer] += score
  return max(totals, key=totals.get)
