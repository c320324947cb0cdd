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
included). The paths are scheduled like continuous batching (`_TreeBuilder`): every live
path owns a row of one kept cache, each sampler call advances all running paths a few
tokens in place, and a query's next generation starts as soon as its own generation has
ended, in rows its ended paths gave back; so the decoding work follows the distinct
tokens rather than the longest path of each generation.

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

from prm_jax import models, parallel, sampling
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
  `candidates` met and `anchors` taken, the P-EDU `checks` (in the order the children
  were made), and its `generations` (the root's is 1)."""

  leaves: list[Leaf]
  generated_tokens: int
  candidates: int
  anchors: int
  checks: list[PruneCheck]
  generations: int

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
  row: int = -1  # Its row of the kept cache (-1: none).
  fork: tuple | None = None  # (source row, kept slots) its next call first copies.
  candidates: list = dataclasses.field(default_factory=list)  # (position, H, top1, top2).
  halted: bool = False
  finished: bool = False
  pruned: bool = False


def _bucket(rows: int) -> int:
  """Row counts are padded to the next of 8, 12, 16, 24, 32, 48, ... (2^k and 1.5 * 2^k):
  few distinct compiled shapes, at most a third of a call's rows padding."""
  power = max(8, 1 << (rows - 1).bit_length())
  return power * 3 // 4 if rows <= power * 3 // 4 and power > 8 else power


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
                chunk: int = 16, mesh=None,
                progress: Callable[[int, int], None] | None = None) -> list[Tree]:
  """One EDU tree per prompt (token ids, e.g. `prompt_ids(tokenizer, problem)` or a chat
  template's rendering).

  Args:
    config, params: the policy (stacked or `sampling.decode_params` layout).
    tokenizer: needs an EOS token (paths end there).
    edu: the tree settings.
    rng: PRNG key; path p of query q (p in creation order) draws its token at position i
      from `fold_in(fold_in(fold_in(rng, q), p), i)` (only used when `edu.temperature >
      0`), so a tree depends neither on the other queries of its batch nor on `chunk`.
    excluded: token ids that are never anchors (default `excluded_token_ids(tokenizer)`).
    prm: `(model config, params)` of the PRM that prunes (P-EDU; needs
      `edu.prune_threshold`); it must share the policy's tokenizer.
    queries_per_batch: queries in flight at once (`_TreeBuilder`); their paths share one
      kept KV cache of `queries_per_batch * edu.max_leaves` rows (lower it if that does
      not fit).
    chunk: tokens each sampler call advances a path (`_TreeBuilder`): smaller wastes fewer
      steps past paths' ends and starts children sooner, larger makes fewer calls.
    mesh: run the sampler data- and tensor-parallel on it.
    progress: called with (queries done, total) as queries finish.
  """
  if tokenizer.eos_id is None:
    raise ValueError("EDU trees need a tokenizer with an EOS token (tokenizer.eos_id is None): "
                     "paths end there")
  if (prm is None) != (edu.prune_threshold is None):
    raise ValueError("P-EDU needs both a PRM (prm=) and EduConfig.prune_threshold; plain EDU "
                     "neither")
  if queries_per_batch < 1:
    raise ValueError(f"queries_per_batch={queries_per_batch} must be >= 1")
  if chunk < 1:
    raise ValueError(f"chunk={chunk} must be >= 1")
  if excluded is None:
    excluded = excluded_token_ids(tokenizer)
  rule = AnchorRule(tau=float(edu.tau), min_gap=edu.min_gap, max_anchors=edu.max_anchors,
                    excluded=tuple(int(i) for i in excluded))
  rng = sampling.as_key(rng)
  params = sampling.prepare_params(config, params, mesh=mesh)  # Once for every call.
  prompts = [[int(t) for t in p] for p in prompts]
  if not all(prompts):
    raise ValueError("every prompt needs at least one token")
  return _TreeBuilder(config, params, tokenizer, prompts, edu, rule, rng, prm, mesh, chunk,
                      queries_per_batch, progress).run()


class _TreeBuilder:
  """The trees of all queries, decoded together like continuous batching.

  Every live path owns a row of one kept cache (`sampling.RowCache` of
  `queries_per_batch * max_leaves` rows: a query never has more live paths than leaves).
  Each sampler call advances every running path by up to `chunk` tokens, in place
  (`sampling.resume` with `dest`), a new child first copying its parent's row; a query's
  children start as soon as its own generation has ended, and a finished query's rows go
  to the next queries (prefilled into them, `sampling.put_rows`), admitted once a quarter
  of the query places are free or nothing else runs. So the calls stay full and the work
  follows the trees' distinct tokens, not the longest path of each generation. A path
  draws its tokens by its query, its creation index and the position (`_keys`): the
  schedule never changes a tree.
  """

  def __init__(self, config, params, tokenizer, prompts, edu, rule, rng, prm, mesh, chunk,
               in_flight, progress):
    self.config, self.params, self.prompts, self.edu = config, params, prompts, edu
    self.rng, self.prm, self.mesh, self.chunk = rng, prm, mesh, chunk
    self.in_flight, self.progress = in_flight, progress
    self.stop = tokenizer.eos_id
    self.pad = tokenizer.pad_id if tokenizer.pad_id is not None else tokenizer.eos_id
    self.paths: dict[int, list[_Path]] = {}  # Every path of each query, in creation order.
    self.waiting = list(range(len(prompts)))[::-1]  # Popped from the end: in order.
    self.generation: dict[int, list[_Path]] = {}  # Each query in flight's generation.
    self.next_pid, self.stats, self.done = {}, {}, 0
    self.release = []  # Rows to free after the next call (sources of the forks it makes).
    self.row_cache, self.free = None, []
    # Every prompt is padded to one width, so every prefill's cache fits the same rows.
    self.width = max(len(p) for p in prompts)
    self.score_length = self.width + edu.max_new_tokens
    self.steps = min(chunk, edu.max_new_tokens)
    self.common = dict(temperature=edu.temperature, stop_tokens=(self.stop,), pad_id=self.pad,
                       rule=rule, mesh=mesh)

  def run(self) -> list[Tree]:
    trees = {}
    while self.waiting or self.generation:
      running = self._running()
      free = self.in_flight - len(self.generation)
      if self.waiting and free and (free >= self.in_flight // 4 or not running):
        self._admit([self.waiting.pop() for _ in range(min(free, len(self.waiting)))])
      if self.prm is not None:
        self._prune_children()
      settled = True
      while settled:  # A generation may end without decoding (children ending on the spot).
        settled = False
        for q in list(self.generation):
          if all(p.pruned or self._ended(p) for p in self.generation[q]):
            settled = True
            if not self._expand(q):  # The tree is complete.
              del self.generation[q]
              trees[q] = self._tree(q)
              self.done += 1
              if self.progress is not None:
                self.progress(self.done, len(self.prompts))
      running = self._running()
      if running:
        self._advance(running)
    return [trees[q] for q in range(len(self.prompts))]

  def _running(self) -> list[_Path]:
    return [p for q in self.generation for p in self._live(q)
            if not (p.pruned or p.halted or self._ended(p))]

  def _live(self, query: int) -> list[_Path]:
    """The query's paths that hold a row (or are about to: new children)."""
    return [p for p in self.generation[query] if p.row >= 0]

  def _ended(self, path: _Path) -> bool:
    return path.finished or len(path.tokens) >= self.edu.max_new_tokens

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

  def _keys(self, rows: Sequence[_Path]) -> np.ndarray:
    """Row keys `fold_in(fold_in(rng, query), pid)`; the sampler folds in the position."""
    return np.asarray(_path_keys(self.rng, np.array([p.query for p in rows]),
                                 np.array([p.pid for p in rows])))

  def _admit(self, queries: list[int]) -> None:
    """Start the queries' roots: one call prefills their prompts and decodes one token;
    the rows are then written into free rows of the kept cache (made by the first call)."""
    count = _bucket(len(queries)) if self.row_cache is not None else self.in_flight
    prompts = [self.prompts[q] for q in queries]
    prompts += prompts[:1] * (count - len(prompts))  # Padded rows decode nothing.
    ids = np.full((count, self.width), self.pad, np.int32)
    mask = np.zeros(ids.shape, bool)
    for i, prompt in enumerate(prompts):
      ids[i, self.width - len(prompt):], mask[i, self.width - len(prompt):] = prompt, True
    roots = []
    for q in queries:
      root = _Path(query=q, pid=0, tokens=[], anchors=[], entropies=[], count=0, last=0)
      self.paths[q] = [root]
      self.generation[q], self.next_pid[q] = [root], 1
      self.stats[q] = {"tokens": 0, "candidates": 0, "anchors": 0, "generations": 1,
                       "checks": []}
      roots.append(root)
    padded = roots + roots[:1] * (count - len(roots))
    out = sampling.continue_prefixes(
        self.config, self.params, ids, mask, sources=np.arange(count),
        prefix_lengths=mask.sum(-1), max_new_tokens=1, rng=self._keys(padded),
        limits=[1] * len(roots) + [0] * (count - len(roots)),
        rule_carry=self._carry(roots, count), keep_cache=True,
        room=self.edu.max_new_tokens + self.steps, **self.common)
    kept = out.pop("row_cache")
    if self.row_cache is None:
      rows = max(self.in_flight * self.edu.max_leaves, len(kept.ends))
      if self.mesh is not None:  # Whole rows per device.
        parallelism = parallel.batch_parallelism(self.mesh)
        rows = -(-rows // parallelism) * parallelism
      self.row_cache = sampling.with_rows(self.config, kept, rows, mesh=self.mesh)
      self.free = list(range(rows - 1, len(roots) - 1, -1))  # Popped from the end.
      for i, root in enumerate(roots):
        root.row = i
    else:
      for root in roots:
        root.row = self.free.pop()
      dest = [p.row for p in roots] + [-1] * (len(kept.ends) - len(roots))
      self.row_cache = sampling.put_rows(self.row_cache, kept, dest)
    self._read(roots, out)

  def _advance(self, running: list[_Path]) -> None:
    """One sampler call: every running path decodes up to `chunk` more tokens in its row,
    a new child first copying its parent's row (`path.fork`: source row and kept slots)."""
    count = _bucket(len(running))
    pad = [running[0]] * (count - len(running))  # Padded rows decode nothing (limit 0).
    ends = self.row_cache.ends
    sources = [p.fork[0] if p.fork else p.row for p in running]
    keep = [p.fork[1] if p.fork else ends[p.row] for p in running]
    steps = self.steps
    limits = [min(steps, self.edu.max_new_tokens - len(p.tokens)) for p in running]
    out = sampling.resume(
        self.config, self.params, self.row_cache, sources=sources + sources[:1] * len(pad),
        keep=keep + keep[:1] * len(pad),
        next_tokens=[p.tokens[-1] for p in running + pad], max_new_tokens=steps,
        rng=self._keys(running + pad), key_offsets=[len(p.tokens) for p in running + pad],
        limits=limits + [0] * len(pad), rule_carry=self._carry(running, count),
        dest=[p.row for p in running] + [-1] * len(pad), **self.common)
    self.row_cache = out.pop("row_cache")
    for path in running:
      path.fork = None
    self.free += self.release
    self.release = []
    self._read(running, out)

  def _read(self, paths: Sequence[_Path], out: dict) -> None:
    """Append each row's emitted tokens to its path and note its candidates, its halt (a
    P-EDU child at its first candidate) or its end."""
    out = {k: np.asarray(out[k]) for k in ("tokens", "lengths", "halted", "stopped",
                                            "entropy", "top1", "top2", "marks")}
    for r, path in enumerate(paths):
      start = len(path.tokens)
      emitted = int(out["lengths"][r])
      path.tokens += [int(t) for t in out["tokens"][r, :emitted]]
      self.stats[path.query]["tokens"] += emitted
      path.halted = bool(out["halted"][r])
      for i in np.flatnonzero(out["marks"][r, :emitted + path.halted]):
        path.candidates.append((start + int(i), float(out["entropy"][r, i]),
                                int(out["top1"][r, i]), int(out["top2"][r, i])))
        path.count, path.last = path.count + 1, start + int(i)
        self.stats[path.query]["candidates"] += 1
      path.finished = bool(out["stopped"][r])

  def _take(self, path: _Path, token: int, fork=None) -> None:
    """`path` takes `token` next (a branch's top-2, a P-EDU survivor's top-1) and goes on
    from its own row, or first forks it from `fork` (source row, kept slots); a token
    that ends the path ends it on the spot, and it needs no row unless it may have
    children (a survivor keeps its candidate)."""
    path.tokens.append(token)
    self.stats[path.query]["tokens"] += 1
    path.finished, path.halted = token == self.stop, False
    if fork is not None and not self._ended(path):
      if not self.free:
        raise RuntimeError("EDU scheduler: no free cache row (a query has more live paths "
                           "than max_leaves)")
      path.row, path.fork = self.free.pop(), fork

  # Decisions. --------------------------------------------------------------------------

  def _prune_children(self) -> None:
    """P-EDU: score the children halted at their first candidate; prune those below the
    threshold (their rows are free at once) and let the others go on."""
    halted = [p for q in self.generation for p in self.generation[q]
              if p.halted and not p.pruned]
    if not halted:
      return
    scores = _prm_scores(self.prm, [self.prompts[p.query] + p.tokens for p in halted],
                         self.score_length)
    for path, score in zip(halted, scores):
      path.pruned = bool(score < self.edu.prune_threshold)
      self.stats[path.query]["checks"].append((path.pid, PruneCheck(
          list(path.tokens), float(score), path.pruned)))
      path.fresh = False
      if path.pruned:
        path.candidates, path.halted = [], False
        self.free.append(path.row)
        path.row = -1
      else:  # It takes the top-1 token at its halt (its candidate) and goes on.
        self._take(path, path.candidates[-1][2])

  def _expand(self, query: int) -> bool:
    """Anchors among the candidates of the query's ended generation (module docstring);
    the children become its next generation. Returns whether there are any."""
    generation = self.generation[query]
    leaves = sum(not p.pruned for p in self.paths[query])
    candidates = [(path, c) for path in generation if not path.pruned for c in path.candidates]
    order = (lambda x: (-x[1][1], x[1][0], x[0].pid)) if self.edu.order == "entropy" else (
        lambda x: (x[1][0], -x[1][1], x[0].pid))
    branches = []
    for path, (position, entropy, _, top2) in sorted(candidates, key=order):
      if leaves < self.edu.max_leaves:
        leaves += 1
        branches.append((path, position, entropy, top2))
    for path, position, entropy, _ in branches:
      index = sum(a < position for a in path.anchors)
      path.anchors.insert(index, position)
      path.entropies.insert(index, entropy)
    first = self.row_cache.first
    children = []
    for path, position, entropy, top2 in branches:
      index = path.anchors.index(position)
      child = _Path(query=query, pid=self.next_pid[query], tokens=path.tokens[:position],
                    anchors=path.anchors[:index + 1], entropies=path.entropies[:index + 1],
                    count=index + 1, last=position, fresh=self.prm is not None)
      self.next_pid[query] += 1
      self.paths[query].append(child)
      self.stats[query]["anchors"] += 1
      self._take(child, top2, fork=(path.row, first + 1 + position))
      children.append(child)
    for path in generation:
      path.candidates = []
      if path.row >= 0:  # Its row is read by the forks of the next call, then free.
        (self.release if children else self.free).append(path.row)
        path.row = -1
    self.generation[query] = children
    self.stats[query]["generations"] += bool(children)
    return bool(children)

  def _tree(self, query: int) -> Tree:
    paths, stats = self.paths.pop(query), self.stats.pop(query)
    leaves = [Leaf(p.tokens, p.anchors, p.entropies, p.finished) for p in paths if not p.pruned]
    checks = [check for _, check in sorted(stats["checks"], key=lambda c: c[0])]
    return Tree(leaves=leaves, generated_tokens=stats["tokens"], candidates=stats["candidates"],
                anchors=stats["anchors"], checks=checks, generations=stats["generations"])


@jax.jit
def _path_keys(rng, queries, pids):
  """`[R, 2]` key data `fold_in(fold_in(rng, query), pid)` per row."""
  def key(query, pid):
    return jax.random.key_data(jax.random.fold_in(jax.random.fold_in(rng, query), pid))
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
