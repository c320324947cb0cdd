"""EDU trees: entropy-driven branching (EDU-PRM, Cao et al. 2025, arXiv 2503.22233).

A path is decoded greedily (or at `temperature`); a token whose entropy
`H = -sum_v p_v log p_v` (nats, of the model's untempered distribution) exceeds `tau`, whose
top-1 token is not excluded (whitespace, punctuation, special tokens: `excluded_token_ids`)
and that lies at least `min_gap` tokens after the path's previous anchor (or its start), on
a path with fewer than `max_anchors` anchors, is a *candidate*. A candidate that gets a
leaf from the budget becomes an *anchor*: the path splits into two children, one taking
the top-1 token there and one the top-2, each continuing the same way. The segments
between consecutive anchors are the steps of the paths (no separator needed), labelled
by Monte Carlo over the leaves below them (`segment_labels`).

Expansion order, by rounds. Round 0 decodes each query's root path until its first
candidate (or its end); every round then (1) for P-EDU, prunes children whose first
segment just ended at a candidate with a PRM score below `prune_threshold` (their
continuation and subtree are never generated, and their leaf goes back to the budget), (2) expands the query's candidates in
the order `order` -- "entropy": highest entropy first (ties: earlier position, then
earlier path), or "position": earliest first (ties: higher entropy) -- while the query has
fewer than `max_leaves` leaves, and (3) decodes every continuation to its next candidate.
A candidate that finds the budget spent is not an anchor: its path takes the token it
would have taken anyway and continues without further branching. Anchors are therefore
taken breadth-first: all of one generation of paths before any of the next.

Cost. Children share their parent's KV cache: a halted row is forked by copying its cache
rows (`sampling.resume`), so no prefix is ever prefilled or decoded twice, and the token
count of a tree is the number of distinct tree nodes generated (emitted tokens plus the
forced token of every continuation; pruned branches included).

    rule = AnchorRule(tau=1.0, min_gap=4, max_anchors=6, excluded=excluded_token_ids(tok))
    trees = build_trees(config, params, tok, [prompt_ids(tok, p) for p in problems],
                        EduConfig(...), rng=key)
    labels = segment_labels(trees[0].leaves, correct)       # soft label per leaf, per segment
"""

from __future__ import annotations

import dataclasses
import functools
import unicodedata
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from prm_jax import models, sampling
from prm_jax.data.schema import Trajectory
from prm_jax.data.tokenizer import Tokenizer

ORDERS = ("entropy", "position")
# Characters Unicode files as punctuation (category P*) that are operators in math text:
# they are content, not formatting, so they stay eligible as anchors.
MATH_PUNCTUATION = "-*/%"


def excluded_token_ids(tokenizer: Tokenizer, *, keep: str = MATH_PUNCTUATION) -> tuple[int, ...]:
  """Ids whose top-1 choice never makes an anchor: the tokenizer's special tokens (BOS, EOS,
  PAD) and every token whose text is empty, whitespace, or punctuation only (Unicode
  category P*), except the characters in `keep` (math operators by default). Built from
  the vocabulary by decoding each id, so it fits any tokenizer."""
  excluded = {i for i in (tokenizer.bos_id, tokenizer.eos_id, tokenizer.pad_id) if i is not None}
  for token in range(tokenizer.vocab_size):
    if token in excluded:
      continue
    text = tokenizer.decode([token]).strip()
    if all(unicodedata.category(c).startswith("P") and c not in keep for c in text):
      excluded.add(token)  # Also the empty / whitespace-only text.
  return tuple(sorted(excluded))


@dataclasses.dataclass(frozen=True)
class EduConfig:
  """EDU tree settings (module docstring).

  tau: entropy threshold in nats (> 0).
  max_leaves: leaves per query (>= 1; 1 = a single greedy path).
  max_anchors: anchors per root-to-leaf path (>= 0).
  min_gap: tokens from a path's start or previous anchor to its next anchor (>= 1).
  max_new_tokens: tokens per path.
  order: expansion order within a round, one of `ORDERS`.
  temperature: 0 decodes greedily between anchors; otherwise samples (the anchor tokens are
    still the top-1 and top-2).
  prune_threshold: P-EDU: drop a child whose first segment scores below this under the
    given PRM (paper: 0.2); None = plain EDU.
  """

  tau: float
  max_leaves: int
  max_new_tokens: int
  max_anchors: int = 8
  min_gap: int = 4
  order: str = "entropy"
  temperature: float = 0.0
  prune_threshold: float | None = None

  def __post_init__(self):
    def check(name, ok, need):
      if not ok:
        raise ValueError(f"EduConfig.{name}={getattr(self, name)!r}: {need}")
    check("tau", isinstance(self.tau, (int, float)) and self.tau > 0, "must be > 0 (nats)")
    for name, low in (("max_leaves", 1), ("max_new_tokens", 1), ("max_anchors", 0),
                      ("min_gap", 1)):
      value = getattr(self, name)
      check(name, isinstance(value, int) and value >= low, f"must be an int >= {low}")
    check("order", self.order in ORDERS, f"must be one of {ORDERS}")
    check("temperature", self.temperature >= 0, "must be >= 0")
    check("prune_threshold", self.prune_threshold is None or 0 <= self.prune_threshold <= 1,
          "must be None or in [0, 1]")


@dataclasses.dataclass(frozen=True)
class AnchorRule:
  """The sampler's `TokenRule` for EDU: halt a row at a candidate anchor (module docstring).

  Carry, `[R]` each: `position` (index in the path of the token being chosen), `last` (the
  path's previous anchor, 0 at its start), `anchors` (anchors on the path so far), `allow`
  (the path may still branch).
  """

  tau: float
  min_gap: int
  max_anchors: int
  excluded: tuple[int, ...]

  def __call__(self, tokens, stats, carry):
    excluded = jnp.zeros(max(self.excluded, default=0) + 1, bool).at[
        jnp.asarray(self.excluded, jnp.int32)].set(True)
    top1 = stats["top1"]
    top1_excluded = jnp.where(top1 < excluded.shape[0],
                              excluded[jnp.clip(top1, 0, excluded.shape[0] - 1)], False)
    halt = (carry["allow"] & (stats["entropy"] > self.tau) & ~top1_excluded & (top1 >= 0)
            & (carry["position"] - carry["last"] >= self.min_gap)
            & (carry["anchors"] < self.max_anchors))
    return tokens, halt, {**carry, "position": carry["position"] + 1}


@dataclasses.dataclass
class Leaf:
  """A root-to-leaf path: `tokens` (generated ids; a final stop token included), `anchors`
  (ascending positions in `tokens` where the path took the top-1 or top-2 branch),
  `entropies` (the entropy at each anchor), `finished` (it ended with a stop token)."""

  tokens: list[int]
  anchors: list[int]
  entropies: list[float]
  finished: bool

  def segments(self) -> list[list[int]]:
    """The path cut at its anchors: `[tokens[0:a_1], tokens[a_1:a_2], ..., tokens[a_k:]]`."""
    bounds = [0] + list(self.anchors) + [len(self.tokens)]
    return [self.tokens[a:b] for a, b in zip(bounds[:-1], bounds[1:])]


@dataclasses.dataclass
class PruneCheck:
  """A P-EDU decision: the child's tokens up to the end of its first segment, the PRM's
  score there, and whether it was pruned."""

  tokens: list[int]
  score: float
  pruned: bool


@dataclasses.dataclass
class Tree:
  """The EDU tree of one query: its `leaves` (pruned paths excluded), the number of
  distinct tokens generated (`generated_tokens`, pruned branches included), the
  `candidates` met and `anchors` taken, the P-EDU `checks`, and the decode `rounds`."""

  leaves: list[Leaf]
  generated_tokens: int
  candidates: int
  anchors: int
  checks: list[PruneCheck]
  rounds: int

  @property
  def pruned(self) -> int:
    return sum(c.pruned for c in self.checks)


@dataclasses.dataclass
class _Path:
  query: int
  pid: int  # Creation order within the query (the last tie-break of the expansion order).
  tokens: list[int]
  anchors: list[int]
  entropies: list[float]
  allow: bool
  fresh: bool = False  # A child whose first segment is being decoded (P-EDU checks it).
  row: int = -1  # Its row in the current `RowCache`.
  halt: tuple | None = None  # (position, entropy, top1, top2, chosen) at a candidate.
  finished: bool = False
  done: bool = False
  pruned: bool = False


def _bucket(rows: int) -> int:
  """Row counts are padded to a power of two (>= 8): few distinct compiled shapes."""
  return max(8, 1 << (rows - 1).bit_length())


def _order_key(order: str, path: _Path):
  position, entropy = path.halt[0], path.halt[1]
  if order == "entropy":
    return (-entropy, position, path.pid)
  return (position, -entropy, path.pid)


@functools.lru_cache(maxsize=8)
def _prm_scorer(config: models.ModelConfig):
  """Jitted `(params, ids [B, L], mask, positions [B]) -> [B]` PRM scores at one position."""
  def score(params, ids, mask, positions):
    out = models.forward(config, params, ids, attention_mask=mask,
                         step_positions=positions[:, None], lm_logits="none")
    return out["step_scores"][:, 0]
  return jax.jit(score)


def _prm_scores(prm, prompts: Sequence[list[int]], prefixes: Sequence[list[int]],
                length: int) -> np.ndarray:
  """PRM P(correct) of each `prompt + prefix` at its last token (right-padded, one shape)."""
  config, params = prm
  rows = _bucket(len(prefixes))
  ids = np.zeros((rows, length), np.int32)
  mask = np.zeros(ids.shape, bool)
  positions = np.zeros(rows, np.int32)
  for i, (prompt, prefix) in enumerate(zip(prompts, prefixes)):
    sequence = list(prompt) + list(prefix)
    ids[i, :len(sequence)], mask[i, :len(sequence)] = sequence, True
    positions[i] = len(sequence) - 1
  return np.asarray(_prm_scorer(config)(params, ids, mask, positions))[:len(prefixes)]


def build_trees(config: models.ModelConfig, params, tokenizer: Tokenizer,
                prompts: Sequence[Sequence[int]], edu: EduConfig, *, rng: jax.Array,
                excluded: Sequence[int] | None = None, prm=None, queries_per_batch: int = 32,
                mesh=None, progress: Callable[[int, int], None] | None = None) -> list[Tree]:
  """One EDU tree per prompt (token ids, e.g. `prompt_ids(tokenizer, problem)` or a chat
  template's rendering).

  Args:
    config, params: the policy (stacked or `sampling.decode_params` layout).
    tokenizer: needs an EOS token (paths end there).
    edu: the tree settings.
    rng: PRNG key; path p of query q draws round r's tokens from
      `fold_in(fold_in(fold_in(rng, q), p), r)` (only used when `edu.temperature > 0`), so a
      tree does not depend on the other queries of its batch.
    excluded: token ids that are never anchors (default `excluded_token_ids(tokenizer)`).
    prm: `(model config, params)` of the PRM that prunes (P-EDU; needs
      `edu.prune_threshold`); it must share the policy's tokenizer.
    queries_per_batch: queries decoded together (a fixed shape: one compile per round
      size).
    mesh: run the sampler data- and tensor-parallel on it.
    progress: called with (queries done, total) after each batch.
  """
  if tokenizer.eos_id is None:
    raise ValueError("EDU trees need a tokenizer with an EOS token (tokenizer.eos_id is None): "
                     "paths end there")
  if (prm is None) != (edu.prune_threshold is None):
    raise ValueError("P-EDU needs both a PRM (prm=) and EduConfig.prune_threshold; plain EDU "
                     "neither")
  if queries_per_batch < 1:
    raise ValueError(f"queries_per_batch={queries_per_batch} must be >= 1")
  if excluded is None:
    excluded = excluded_token_ids(tokenizer)
  rule = AnchorRule(tau=float(edu.tau), min_gap=edu.min_gap, max_anchors=edu.max_anchors,
                    excluded=tuple(int(i) for i in excluded))
  if not jax.dtypes.issubdtype(jnp.asarray(rng).dtype, jax.dtypes.prng_key):
    rng = jax.random.wrap_key_data(np.asarray(rng, np.uint32))
  params = sampling.prepare_params(config, params, mesh=mesh)  # Once for every round.
  prompts = [[int(t) for t in p] for p in prompts]
  if not all(prompts):
    raise ValueError("every prompt needs at least one token")
  trees = []
  for start in range(0, len(prompts), queries_per_batch):
    batch = list(range(start, min(start + queries_per_batch, len(prompts))))
    trees += _build_batch(config, params, tokenizer, prompts, batch, queries_per_batch, edu,
                          rule, rng, prm, mesh)
    if progress is not None:
      progress(batch[-1] + 1, len(prompts))
  return trees


def _build_batch(config, params, tokenizer, prompts, batch, queries_per_batch, edu, rule, rng,
                 prm, mesh) -> list[Tree]:
  """The trees of the queries `batch` (indices into `prompts`), decoded together."""
  n = edu.max_new_tokens
  stop = (tokenizer.eos_id,)
  pad = tokenizer.pad_id if tokenizer.pad_id is not None else tokenizer.eos_id
  stats = {q: {"tokens": 0, "candidates": 0, "anchors": 0, "rounds": 0, "checks": []}
           for q in batch}
  paths = [_Path(query=q, pid=0, tokens=[], anchors=[], entropies=[], allow=True, fresh=False,
                 row=i) for i, q in enumerate(batch)]
  next_pid = {q: 1 for q in batch}

  def keys(rows: Sequence[_Path], round_index: int) -> np.ndarray:
    return np.asarray(_path_keys(rng, np.array([p.query for p in rows]),
                                 np.array([p.pid for p in rows]), round_index))

  def carry(rows: Sequence[_Path], count: int) -> dict:
    def column(values, dtype):
      return np.array(list(values) + [values[0] if values else 0] * (count - len(rows)), dtype)
    return {"position": column([len(p.tokens) for p in rows], np.int32),
            "last": column([p.anchors[-1] if p.anchors else 0 for p in rows], np.int32),
            "anchors": column([len(p.anchors) for p in rows], np.int32),
            "allow": column([p.allow for p in rows], bool)}

  # Round 0: the root paths, from the prompts (padded to a fixed number of queries).
  length = max(len(prompts[q]) for q in batch)
  ids = np.full((queries_per_batch, length), pad, np.int32)
  mask = np.zeros(ids.shape, bool)
  for i, q in enumerate(batch + [batch[0]] * (queries_per_batch - len(batch))):
    ids[i, length - len(prompts[q]):] = prompts[q]
    mask[i, length - len(prompts[q]):] = True
  limits = np.array([n] * len(batch) + [0] * (queries_per_batch - len(batch)), np.int32)
  common = dict(max_new_tokens=n, temperature=edu.temperature, stop_tokens=stop, pad_id=pad,
                rule=rule, mesh=mesh)
  root_keys = keys(paths + [paths[0]] * (queries_per_batch - len(batch)), 0)
  out = sampling.continue_prefixes(
      config, params, ids, mask, sources=np.arange(queries_per_batch),
      prefix_lengths=mask.sum(-1), rng=root_keys, limits=limits,
      rule_carry=carry(paths, queries_per_batch), keep_cache=True, **common)
  active, round_index = paths, 0
  while True:
    for q in batch:
      stats[q]["rounds"] += any(p.query == q for p in active)
    _read_round(out, active, stats)
    if prm is not None:
      _prune(prm, prompts, active, edu.prune_threshold, stats, length + n)
    continuations = _expand(paths, active, edu, stats, next_pid)
    # Continuations feed their forced token; those it ends (a stop token, the length
    # limit) need no decoding.
    resumed = []
    for path, source, token in continuations:
      path.tokens.append(token)
      stats[path.query]["tokens"] += 1
      if token in stop or len(path.tokens) >= n:
        path.finished, path.done = token in stop, True
      else:
        resumed.append((path, source, token))
    if not resumed:
      break
    round_index += 1
    rows = _bucket(len(resumed))
    active = [path for path, _, _ in resumed]
    for i, path in enumerate(active):
      path.row = i
    extra = rows - len(resumed)
    sources = [source for _, source, _ in resumed] + [0] * extra
    tokens = [token for _, _, token in resumed] + [0] * extra
    row_keys = keys(active + [active[0]] * extra, round_index)
    limits = np.array([n - len(p.tokens) for p in active] + [0] * extra, np.int32)
    out = sampling.resume(config, params, out["row_cache"], sources=sources, next_tokens=tokens,
                          rng=row_keys, limits=limits, rule_carry=carry(active, rows), **common)
  return [_tree([p for p in paths if p.query == q], stats[q]) for q in batch]


@jax.jit
def _path_keys(rng, queries, pids, round_index):
  """`[R, 2]` key data `fold_in(fold_in(fold_in(rng, query), pid), round)` per row."""
  def key(query, pid):
    return jax.random.key_data(jax.random.fold_in(jax.random.fold_in(jax.random.fold_in(
        rng, query), pid), round_index))
  return jax.vmap(key)(queries, pids)


def _read_round(out: dict, active: Sequence[_Path], stats: dict) -> None:
  """Append each active row's emitted tokens to its path; note where it halted or ended."""
  tokens, lengths, halted = (np.asarray(out[k]) for k in ("tokens", "lengths", "halted"))
  entropy, top1, top2 = (np.asarray(out[k]) for k in ("entropy", "top1", "top2"))
  for path in active:
    r, emitted = path.row, int(lengths[path.row])
    path.tokens += [int(t) for t in tokens[r, :emitted]]
    stats[path.query]["tokens"] += emitted
    if halted[r]:
      path.halt = (len(path.tokens), float(entropy[r, emitted]), int(top1[r, emitted]),
                   int(top2[r, emitted]), int(tokens[r, emitted]))
      stats[path.query]["candidates"] += 1
    else:
      path.halt, path.done = None, True
      path.finished = bool(np.asarray(out["stopped"])[r])


def _prune(prm, prompts, active: Sequence[_Path], threshold: float, stats: dict,
           length: int) -> None:
  """P-EDU: score every child whose first segment just ended at a candidate, at the
  segment's last token, and prune those below `threshold`: their continuation and subtree
  are never generated. A child whose first segment reached its end is a finished leaf
  with a known outcome: nothing is left to save, so it is kept (and not scored)."""
  for path in active:
    if path.fresh and path.halt is None:
      path.fresh = False
  fresh = [p for p in active if p.fresh]
  if not fresh:
    return
  scores = _prm_scores(prm, [prompts[p.query] for p in fresh], [p.tokens for p in fresh],
                       length)
  for path, score in zip(fresh, scores):
    path.fresh = False
    path.pruned = bool(score < threshold)
    if path.pruned:
      path.done, path.halt = True, None
    stats[path.query]["checks"].append(PruneCheck(list(path.tokens), float(score),
                                                  path.pruned))


def _expand(paths: list[_Path], active: Sequence[_Path], edu: EduConfig, stats: dict,
            next_pid: dict) -> list[tuple[_Path, int, int]]:
  """Decide every halted path's fate (module docstring); returns the continuations as
  (path, source row, forced token). New child paths are appended to `paths`."""
  continuations = []
  leaves = {}
  for path in paths:
    if not path.pruned:
      leaves[path.query] = leaves.get(path.query, 0) + 1
  halted = sorted((p for p in active if p.halt is not None and not p.pruned),
                  key=lambda p: (p.query, _order_key(edu.order, p)))
  for path in halted:
    position, entropy, top1, top2, chosen = path.halt
    path.halt = None
    if leaves[path.query] < edu.max_leaves:
      leaves[path.query] += 1
      stats[path.query]["anchors"] += 1
      child = _Path(query=path.query, pid=next_pid[path.query], tokens=list(path.tokens),
                    anchors=path.anchors + [position], entropies=path.entropies + [entropy],
                    allow=True, fresh=True)
      next_pid[path.query] += 1
      paths.append(child)
      path.anchors.append(position)
      path.entropies.append(entropy)
      path.fresh = True
      continuations += [(path, path.row, top1), (child, path.row, top2)]
    else:  # The budget is spent: no anchor, and none later on this path.
      path.allow = False
      continuations.append((path, path.row, chosen))
  return continuations


def _tree(paths: Sequence[_Path], stats: dict) -> Tree:
  leaves = [Leaf(p.tokens, p.anchors, p.entropies, p.finished) for p in paths if not p.pruned]
  return Tree(leaves=leaves, generated_tokens=stats["tokens"], candidates=stats["candidates"],
              anchors=stats["anchors"], checks=stats["checks"], rounds=stats["rounds"])


# ----------------------------------------------------------------------------- labels


def segment_labels(leaves: Sequence[Leaf], correct: Sequence[bool]) -> list[list[float]]:
  """Soft Monte Carlo label of every segment of every leaf: the fraction of the tree's
  leaves below the segment -- those that share the path up to the segment's end, i.e. its
  subtree -- whose answer is correct. The last segment of a leaf is the leaf alone.
  Hard labels are `label > 0` (some leaf below is correct)."""
  if len(leaves) != len(correct):
    raise ValueError(f"{len(correct)} outcomes for {len(leaves)} leaves")
  labels = []
  for leaf in leaves:
    row = []
    for end in list(leaf.anchors) + [None]:
      prefix = leaf.tokens if end is None else leaf.tokens[:end]
      below = [ok for other, ok in zip(leaves, correct) if (
          other.tokens == prefix if end is None else other.tokens[:end] == prefix)]
      row.append(float(np.mean(below)))
    labels.append(row)
  return labels


def tree_trajectories(tree: Tree, problem: str, tokenizer: Tokenizer, correct: Sequence[bool],
                      *, hard: bool = False) -> list[Trajectory]:
  """One labelled `Trajectory` per leaf: its non-empty segments as steps (decoded; a final
  stop token dropped), each with its segment label. Train a PRM on them with
  `step_separator=""`: the segments concatenate to the path exactly, and each label sits on
  its segment's last token."""
  trajectories = []
  for leaf, labels in zip(tree.leaves, segment_labels(tree.leaves, correct)):
    steps, step_labels = [], []
    for segment, label in zip(leaf.segments(), labels):
      text = tokenizer.decode([t for t in segment if t != tokenizer.eos_id])
      if text:
        steps.append(text)
        step_labels.append(float(label > 0) if hard else label)
    if steps:
      trajectories.append(Trajectory(problem=problem, steps=steps, labels=step_labels,
                                     meta={"anchors": list(leaf.anchors)}))
  return trajectories
