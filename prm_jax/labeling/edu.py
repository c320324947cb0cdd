"""EDU trees: entropy-driven branching (EDU-PRM, Cao et al. 2025, arXiv 2503.22233).

A path is decoded greedily (or at `temperature`); a token whose entropy
`H = -sum_v p_v log p_v` (nats, of the model's untempered distribution) exceeds `tau`, whose
top-1 token is not excluded (whitespace, punctuation, special tokens: `excluded_token_ids`)
and that lies at least `min_gap` tokens after the path's previous candidate (or its start),
on a path with fewer than `max_anchors` candidates, is a *candidate*; the path itself takes
the top-1 token there. A candidate that gets a leaf from the budget becomes an *anchor*:
a child path branches off with the top-2 token and continues the same way. The segments
between consecutive anchors are the steps of the paths (no separator needed), labelled by
Monte Carlo over the leaves below them (`segment_labels`).

Expansion order, by generations. Generation 0 is each query's root path, decoded to its
end; the candidates of a generation's paths (counted as if every earlier one of the path
branched, so the gap and the cap hold for whichever become anchors) are then expanded in
the order `order` -- "entropy": highest entropy first (ties: earlier position, then earlier
path), or "position": earliest first (ties: higher entropy) -- while the query has fewer
than `max_leaves` leaves; the children are generation g + 1. A candidate that finds the
budget spent stays a plain token of its path.

P-EDU. With a PRM and `prune_threshold`, a child stops at its first candidate; the PRM
scores it there (the end of its first segment) and a child below the threshold is pruned:
its continuation and subtree are never generated, and its leaf goes back to the budget. A
child that reaches its end before any candidate is a finished leaf with a known outcome;
it is kept (nothing is left to save) and not scored.

Cost. A child is decoded from a copy of its parent's KV cache cut at the anchor
(`sampling.resume` with `keep`): no prefix is ever prefilled or decoded twice, and the
token count of a tree is the number of distinct tree nodes generated (pruned branches
included). Every row of a generation decodes to its end in one sampler call, so rows are
never left waiting for others to reach a decision.

    settings = EduConfig(tau=0.3, max_leaves=8, max_new_tokens=48, max_anchors=4, min_gap=2)
    trees = build_trees(config, params, tok, [prompt_ids(tok, p) for p in problems],
                        settings, rng=jax.random.key(0))    # one Tree per problem
    labels = segment_labels(trees[0].leaves, correct)       # soft label per leaf, per segment
    data = tree_trajectories(trees[0], problems[0], tok, correct)  # train: step_separator=""
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
  order: expansion order within a generation, one of `ORDERS`.
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
  """The sampler's `TokenRule` for EDU: mark candidates, take their top-1 token (module
  docstring), or halt there instead where the carry's `halt` says so (P-EDU's children).

  Carry, `[R]` each: `position` (index in the path of the token being chosen), `last` (the
  path's previous candidate, 0 at its start), `count` (candidates on the path so far),
  `allow` (the path may still branch), `halt` (stop at the next candidate).
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
    candidate = (carry["allow"] & (stats["entropy"] > self.tau) & ~top1_excluded & (top1 >= 0)
                 & (carry["position"] - carry["last"] >= self.min_gap)
                 & (carry["count"] < self.max_anchors))
    halt = candidate & carry["halt"]
    taken = candidate & ~halt
    return jnp.where(taken, top1, tokens), halt, candidate, {
        **carry, "position": carry["position"] + 1,
        "last": jnp.where(taken, carry["position"], carry["last"]),
        "count": carry["count"] + taken}


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
  `candidates` met and `anchors` taken, the P-EDU `checks`, and the sampler calls its
  paths took (`rounds`: one per generation; two under P-EDU, halting and continuing)."""

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
  anchors: list[int]  # Where it branched (realised), ascending.
  entropies: list[float]
  count: int  # Candidates so far (as if each had branched): the rule's cap.
  last: int  # Its last candidate (or 0): the rule's gap.
  fresh: bool = False  # P-EDU: a child not yet past its first candidate.
  row: int = -1  # Its row in the current `RowCache`.
  candidates: list = dataclasses.field(default_factory=list)  # (position, H, top1, top2).
  halted: bool = False
  finished: bool = False
  pruned: bool = False


def _bucket(rows: int) -> int:
  """Row counts are padded to a power of two (>= 8): few distinct compiled shapes."""
  return max(8, 1 << (rows - 1).bit_length())


@functools.lru_cache(maxsize=8)
def _prm_scorer(config: models.ModelConfig):
  """Jitted `(params, ids [B, L], mask, positions [B]) -> [B]` PRM scores at one position."""
  def score(params, ids, mask, positions):
    out = models.forward(config, params, ids, attention_mask=mask,
                         step_positions=positions[:, None], lm_logits="none")
    return out["step_scores"][:, 0]
  return jax.jit(score)


def _prm_scores(prm, sequences: Sequence[list[int]], length: int) -> np.ndarray:
  """PRM P(correct) of each token sequence at its last token (right-padded, one shape)."""
  config, params = prm
  rows = _bucket(len(sequences))
  ids = np.zeros((rows, length), np.int32)
  mask = np.zeros(ids.shape, bool)
  positions = np.zeros(rows, np.int32)
  for i, sequence in enumerate(sequences):
    ids[i, :len(sequence)], mask[i, :len(sequence)] = sequence, True
    positions[i] = len(sequence) - 1
  return np.asarray(_prm_scorer(config)(params, ids, mask, positions))[:len(sequences)]


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
    rng: PRNG key; path p of query q draws its tokens of sampler call c from
      `fold_in(fold_in(fold_in(rng, q), p), c)` (only used when `edu.temperature > 0`), so a
      tree does not depend on the other queries of its batch.
    excluded: token ids that are never anchors (default `excluded_token_ids(tokenizer)`).
    prm: `(model config, params)` of the PRM that prunes (P-EDU; needs
      `edu.prune_threshold`); it must share the policy's tokenizer.
    queries_per_batch: queries decoded together (a fixed shape: one compile per sampler
      call size).
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
  params = sampling.prepare_params(config, params, mesh=mesh)  # Once for every call.
  prompts = [[int(t) for t in p] for p in prompts]
  if not all(prompts):
    raise ValueError("every prompt needs at least one token")
  trees = []
  for start in range(0, len(prompts), queries_per_batch):
    batch = list(range(start, min(start + queries_per_batch, len(prompts))))
    builder = _TreeBuilder(config, params, tokenizer, prompts, batch, edu, rule, rng, prm, mesh)
    trees += builder.run(queries_per_batch)
    if progress is not None:
      progress(batch[-1] + 1, len(prompts))
  return trees


class _TreeBuilder:
  """The trees of one batch of queries (indices into `prompts`), decoded together."""

  def __init__(self, config, params, tokenizer, prompts, batch, edu, rule, rng, prm, mesh):
    self.config, self.params, self.prompts, self.batch = config, params, prompts, batch
    self.edu, self.rng, self.prm = edu, rng, prm
    self.stop = tokenizer.eos_id
    self.pad = tokenizer.pad_id if tokenizer.pad_id is not None else tokenizer.eos_id
    self.paths = [_Path(query=q, pid=0, tokens=[], anchors=[], entropies=[], count=0, last=0,
                        row=i) for i, q in enumerate(batch)]
    self.next_pid = {q: 1 for q in batch}
    self.stats = {q: {"tokens": 0, "candidates": 0, "anchors": 0, "rounds": 0, "checks": []}
                  for q in batch}
    self.common = dict(max_new_tokens=edu.max_new_tokens, temperature=edu.temperature,
                       stop_tokens=(self.stop,), pad_id=self.pad, rule=rule, mesh=mesh)

  def run(self, queries_per_batch: int) -> list[Tree]:
    generation, index = self._roots(queries_per_batch), 0
    while generation:
      for q in {p.query for p in generation}:
        self.stats[q]["rounds"] += 1
      if self.prm is not None:
        self._prune_children(generation, phase=2 * index + 1)
      index += 1
      generation = self._expand(generation, phase=2 * index)
    return [self._tree(q) for q in self.batch]

  # Decoding. ---------------------------------------------------------------------------

  def _carry(self, rows: Sequence[_Path], count: int) -> dict:
    """The rule's carry for `rows`, padded to `count` rows (copies of the first)."""
    def column(values, dtype):
      return np.array(values + values[:1] * (count - len(values)), dtype)
    return {"position": column([len(p.tokens) for p in rows], np.int32),
            "last": column([p.last for p in rows], np.int32),
            "count": column([p.count for p in rows], np.int32),
            "allow": column([True] * len(rows), bool),
            "halt": column([p.fresh for p in rows], bool)}

  def _keys(self, rows: Sequence[_Path], phase: int) -> np.ndarray:
    """Row keys `fold_in(fold_in(fold_in(rng, query), pid), phase)`: a phase is a sampler
    call of a query's tree (2g: generation g; 2g + 1: P-EDU continuing it)."""
    return np.asarray(_path_keys(self.rng, np.array([p.query for p in rows]),
                                 np.array([p.pid for p in rows]), phase))

  def _roots(self, queries_per_batch: int) -> list[_Path]:
    """Generation 0: every query's greedy path, decoded to its end."""
    prompts = [self.prompts[q] for q in self.batch]
    prompts += prompts[:1] * (queries_per_batch - len(prompts))  # A fixed shape.
    length = max(len(p) for p in prompts)
    ids = np.full((len(prompts), length), self.pad, np.int32)
    mask = np.zeros(ids.shape, bool)
    for i, prompt in enumerate(prompts):
      ids[i, length - len(prompt):], mask[i, length - len(prompt):] = prompt, True
    roots = self.paths + self.paths[:1] * (queries_per_batch - len(self.paths))
    limits = [self.edu.max_new_tokens] * len(self.paths) + [0] * (len(roots) - len(self.paths))
    self.out = sampling.continue_prefixes(
        self.config, self.params, ids, mask, sources=np.arange(len(prompts)),
        prefix_lengths=mask.sum(-1), rng=self._keys(roots, 0), limits=limits,
        rule_carry=self._carry(self.paths, len(roots)), keep_cache=True, **self.common)
    self.score_length = length + self.edu.max_new_tokens
    self._read(self.paths)
    return list(self.paths)

  def _decode(self, rows: list[tuple[_Path, int, int, int]], phase: int) -> None:
    """Continue each `(path, source row, kept slots, next token)` from the current cache
    to its end (or, for a P-EDU child, its first candidate). A path its next token ends
    is finished on the spot; it keeps a row (decoding nothing) if children may fork off
    it, since the call replaces the cache."""
    resumed = []
    for path, source, keep, token in rows:
      path.tokens.append(token)
      self.stats[path.query]["tokens"] += 1
      if token == self.stop or len(path.tokens) >= self.edu.max_new_tokens:
        path.finished, path.halted = token == self.stop, False
      if not path.finished and len(path.tokens) < self.edu.max_new_tokens or path.candidates:
        resumed.append((path, source, keep, token))
    if not resumed:
      return
    count = _bucket(len(resumed))
    paths = [path for path, _, _, _ in resumed]
    pad = [resumed[0]] * (count - len(resumed))  # Padded rows decode nothing (limit 0).
    for i, path in enumerate(paths):
      path.row = i
    limits = [self.edu.max_new_tokens - len(p.tokens) for p in paths] + [0] * len(pad)
    rows = resumed + pad
    self.out = sampling.resume(
        self.config, self.params, self.out["row_cache"], sources=[r[1] for r in rows],
        keep=[r[2] for r in rows], next_tokens=[r[3] for r in rows],
        rng=self._keys(paths + [paths[0]] * len(pad), phase), limits=limits,
        rule_carry=self._carry(paths, count), **self.common)
    self._read(paths)

  def _read(self, paths: Sequence[_Path]) -> None:
    """Append each row's emitted tokens to its path and note its candidates, its halt (a
    P-EDU child at its first candidate) or its end."""
    out = {k: np.asarray(self.out[k]) for k in ("tokens", "lengths", "halted", "stopped",
                                                 "entropy", "top1", "top2", "marks")}
    for path in paths:
      r, start = path.row, len(path.tokens)
      emitted = int(out["lengths"][r])
      if path.finished:  # Kept only as a source of children: it decoded nothing.
        continue
      path.tokens += [int(t) for t in out["tokens"][r, :emitted]]
      self.stats[path.query]["tokens"] += emitted
      path.halted = bool(out["halted"][r])
      for i in np.flatnonzero(out["marks"][r, :emitted + path.halted]):
        path.candidates.append((start + int(i), float(out["entropy"][r, i]),
                                int(out["top1"][r, i]), int(out["top2"][r, i])))
        path.count, path.last = path.count + 1, start + int(i)
        self.stats[path.query]["candidates"] += 1
      path.finished = bool(out["stopped"][r])

  # Decisions. --------------------------------------------------------------------------

  def _prune_children(self, generation: list[_Path], phase: int) -> None:
    """P-EDU: score the children halted at their first candidate; prune those below the
    threshold and continue the others to their end. (The generation's other paths ended
    before any candidate: nothing forks off them.)"""
    halted = [p for p in generation if p.halted]
    if not halted:
      return
    scores = _prm_scores(self.prm, [self.prompts[p.query] + p.tokens for p in halted],
                         self.score_length)
    for path, score in zip(halted, scores):
      path.pruned = bool(score < self.edu.prune_threshold)
      self.stats[path.query]["checks"].append(PruneCheck(list(path.tokens), float(score),
                                                         path.pruned))
      if path.pruned:
        path.candidates = []
    ends = self.out["row_cache"].ends
    survivors = [p for p in halted if not p.pruned]
    for path in survivors:
      path.fresh = False
    # A survivor takes the top-1 token at its halt (its candidate) and goes on.
    self._decode([(p, p.row, ends[p.row], p.candidates[-1][2]) for p in survivors], phase)

  def _expand(self, generation: list[_Path], phase: int) -> list[_Path]:
    """Anchors among the generation's candidates (module docstring); returns the next
    generation, decoded."""
    leaves = {}
    for path in self.paths:
      leaves[path.query] = leaves.get(path.query, 0) + (not path.pruned)
    candidates = [(path, c) for path in generation if not path.pruned for c in path.candidates]
    order = (lambda x: (x[0].query, -x[1][1], x[1][0], x[0].pid)) if self.edu.order == (
        "entropy") else (lambda x: (x[0].query, x[1][0], -x[1][1], x[0].pid))
    branches = []
    for path, (position, entropy, _, top2) in sorted(candidates, key=order):
      if leaves[path.query] < self.edu.max_leaves:
        leaves[path.query] += 1
        branches.append((path, position, entropy, top2))
    for path in generation:
      path.candidates = []
    for path, position, entropy, _ in branches:
      index = sum(a < position for a in path.anchors)
      path.anchors.insert(index, position)
      path.entropies.insert(index, entropy)
    first = self.out["row_cache"].first
    children, rows = [], []
    for path, position, entropy, top2 in branches:
      index = path.anchors.index(position)
      child = _Path(query=path.query, pid=self.next_pid[path.query],
                    tokens=path.tokens[:position], anchors=path.anchors[:index + 1],
                    entropies=path.entropies[:index + 1], count=index + 1, last=position,
                    fresh=self.prm is not None)
      self.next_pid[path.query] += 1
      self.paths.append(child)
      self.stats[path.query]["anchors"] += 1
      children.append(child)
      rows.append((child, path.row, first + 1 + position, top2))
    self._decode(rows, phase)
    return [c for c in children if c.candidates]

  def _tree(self, query: int) -> Tree:
    paths = [p for p in self.paths if p.query == query]
    stats = self.stats[query]
    leaves = [Leaf(p.tokens, p.anchors, p.entropies, p.finished) for p in paths if not p.pruned]
    return Tree(leaves=leaves, generated_tokens=stats["tokens"], candidates=stats["candidates"],
                anchors=stats["anchors"], checks=stats["checks"], rounds=stats["rounds"])


@jax.jit
def _path_keys(rng, queries, pids, call):
  """`[R, 2]` key data `fold_in(fold_in(fold_in(rng, query), pid), call)` per row."""
  def key(query, pid):
    return jax.random.key_data(jax.random.fold_in(jax.random.fold_in(jax.random.fold_in(
        rng, query), pid), call))
  return jax.vmap(key)(queries, pids)


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
