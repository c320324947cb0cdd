"""PRM-guided beam search and DVTS against a brute-force reference: every child re-sampled
from its whole prefix (no cache), the kept prefixes chosen by plain sorting, on a tiny random
policy over "ab\\n" and a deterministic scorer."""

import zlib

import jax
import numpy as np
import pytest

from prm_jax import models, sampling
from prm_jax.data.tokenize import prompt_ids
from prm_jax.data.tokenizer import CharTokenizer
from prm_jax.evaluate import search

TOKENIZER = CharTokenizer("ab\n")
CONFIG = models.ModelConfig(vocab_size=TOKENIZER.vocab_size, hidden_size=32, num_layers=2,
                            num_heads=2, num_kv_heads=2, head_dim=16, mlp_dim=64,
                            max_seq_len=160, init_std=0.3)
PROBLEMS = ["ab", "ba\nb"]
SEPARATOR, EOS = TOKENIZER.encode("\n")[0], TOKENIZER.eos_id


@pytest.fixture(scope="module")
def policy():
  return models.init_params(CONFIG, jax.random.key(0))


def text_score(problem: str, steps) -> float:
  """A deterministic score in [0, 1) of a partial solution."""
  return zlib.crc32(("|".join([problem, *steps])).encode()) % 1000 / 1000


class CountingScorer:
  """Step scores of `text_score` for every prefix of the steps; counts the trajectories."""

  def __init__(self):
    self.calls = 0

  def __call__(self, trajectories):
    self.calls += len(trajectories)
    return [np.array([text_score(t.problem, t.steps[:i + 1]) for i in range(len(t.steps))])
            for t in trajectories]


def _sample_step(params, prompt, tokens, key, cfg):
  """One child sampled from the whole prefix, prefilled from scratch."""
  if tokens:  # The parent's last step ended with the separator: forced, like `resume`.
    ids, next_token = list(prompt) + list(tokens[:-1]), tokens[-1]
  else:
    ids, next_token = list(prompt), -1
  out = sampling.continue_prefixes(
      CONFIG, params, np.array([ids], np.int32), sources=[0], prefix_lengths=[len(ids)],
      next_tokens=[next_token], max_new_tokens=cfg.max_step_tokens,
      temperature=cfg.temperature, stop_tokens=(SEPARATOR, EOS), pad_id=TOKENIZER.pad_id,
      rng=key[None])
  return tuple(int(t) for t in np.asarray(out["tokens"])[0, :int(out["lengths"][0])])


def reference(params, cfg: search.SearchConfig, rng):
  """Brute force, one problem at a time: `(kept per depth, candidates, tokens, prm calls)`."""
  result = []
  for p, problem in enumerate(PROBLEMS):
    prompt = prompt_ids(TOKENIZER, problem)
    # An open prefix: (group, tokens, steps, score).
    open_ = [(g if cfg.method == "dvts" else 0, (), [], 0.0) for g in range(cfg.kept)]
    width_left, kept_log, candidates, tokens_used, calls = cfg.kept, [], [], 0, 0
    for depth in range(cfg.max_steps):
      if not open_:
        break
      children = []
      for b, (group, tokens, steps, score) in enumerate(open_):
        for j in range(cfg.width):
          step = _sample_step(params, prompt, tokens,
                              search.child_key(rng, p, depth, b * cfg.width + j), cfg)
          tokens_used += len(step)
          child_steps, child_score = steps, score
          if step != (EOS,):
            child_steps = steps + [TOKENIZER.decode([t for t in step if t != SEPARATOR])]
            child_score, calls = text_score(problem, child_steps), calls + 1
          ended = step[-1] != SEPARATOR or depth == cfg.max_steps - 1
          children.append((group, tokens + step, child_steps, child_score, ended,
                           step[-1] == EOS))
      ranked = sorted(range(len(children)), key=lambda i: (-children[i][3], i))
      if cfg.method == "beam":
        chosen = ranked[:width_left]
      else:  # The best child of every open subtree, in rank order.
        best = {}
        for i in ranked:
          best.setdefault(children[i][0], i)
        chosen = [i for i in ranked if best[children[i][0]] == i]
      kept_log.append([(children[i][0], children[i][1]) for i in chosen])
      open_ = []
      for i in chosen:
        group, tokens, steps, score, ended, finished = children[i]
        if ended:
          candidates.append((steps, score, finished, group))
          width_left -= 1
        else:
          open_.append((group, tokens, steps, score))
    result.append((kept_log, candidates, tokens_used, calls))
  return result


@pytest.mark.parametrize("method,n,width", [("beam", 8, 2), ("beam", 4, 4), ("dvts", 8, 2)])
def test_search_equals_the_brute_force_reference(policy, method, n, width):
  cfg = search.SearchConfig(method, n=n, width=width, max_steps=4, max_step_tokens=8,
                            temperature=1.0)
  rng = jax.random.key(7)
  scorer = CountingScorer()
  result = search.search(CONFIG, policy, TOKENIZER, PROBLEMS, scorer, cfg, rng)
  expected = reference(policy, cfg, rng)
  for p, (kept_log, candidates, tokens_used, calls) in enumerate(expected):
    # A problem whose search ended early keeps nothing at the later depths of the batch.
    assert [depth[p] for depth in result.kept if depth[p]] == kept_log
    assert [(c.steps, c.score, c.finished, c.group) for c in result.candidates[p]] == \
        candidates
    assert result.generated_tokens[p] == tokens_used
    assert result.prm_calls[p] == calls
  assert scorer.calls == result.prm_calls.sum()
  # The search did search: several depths, steps that ended with the separator, and EOS.
  assert len(result.kept) > 1
  assert any(c.finished for cands in result.candidates for c in cands)


def test_dvts_subtrees_are_disjoint_and_each_yields_one_candidate(policy):
  cfg = search.SearchConfig("dvts", n=8, width=2, max_steps=4, max_step_tokens=8,
                            temperature=1.0)
  result = search.search(CONFIG, policy, TOKENIZER, PROBLEMS, CountingScorer(), cfg,
                         jax.random.key(3))
  for p in range(len(PROBLEMS)):
    assert sorted(c.group for c in result.candidates[p]) == list(range(cfg.kept))
    lineage = {}
    for depth in result.kept:
      groups = [group for group, _ in depth[p]]
      assert len(groups) == len(set(groups))  # One kept prefix per subtree.
      for group, tokens in depth[p]:
        # Each subtree only ever extends its own prefix.
        assert tokens[:len(lineage.get(group, ()))] == lineage.get(group, ())
        lineage[group] = tokens


def test_best_answer_rules():
  answers, scores = ["7", "3", "3", None], [0.9, 0.5, 0.6, 1.0]
  assert search.best_answer(answers, scores, "best") == "7"  # The unanswered 1.0 takes no part.
  assert search.best_answer(answers, scores, "vote") == "3"  # 1.1 > 0.9
  assert search.best_answer([None], [1.0]) is None
  with pytest.raises(ValueError, match="rule='max'"):
    search.best_answer(answers, scores, "max")


@pytest.mark.parametrize("fields,message", [
    (dict(n=6, width=4), "n=6 is not divisible by width=4"),
    (dict(method="mcts"), "method='mcts' is not one of"),
    (dict(max_steps=0), "max_steps must be a positive int"),
])
def test_bad_settings_are_named(fields, message):
  with pytest.raises(ValueError, match=message):
    search.SearchConfig(**{**dict(method="beam", n=8, width=2, max_steps=4,
                                  max_step_tokens=8), **fields})
