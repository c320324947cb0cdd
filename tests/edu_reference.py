"""A brute-force EDU tree: plain Python, one full forward pass (no cache) per token, entropy
in float64 NumPy, the branching rule of `prm_jax.labeling.edu` written out again.

Slow and obviously right: what the batched, cache-forking `edu.build_trees` must equal.
"""

import dataclasses
import functools

import jax
import numpy as np

from prm_jax import models


@functools.lru_cache
def _logits_fn(config):
  return jax.jit(lambda params, ids: models.forward(config, params, ids)["logits"])


@functools.lru_cache
def _score_fn(config):
  return jax.jit(lambda params, ids, position: models.forward(
      config, params, ids, step_positions=position[None, None],
      lm_logits="none")["step_scores"][0, 0])


def prm_score(prm, sequence):
  """P(correct) of a PRM `(config, params)` at the last token of `sequence`."""
  return float(_score_fn(prm[0])(prm[1], _padded(sequence), np.int32(len(sequence) - 1)))


WIDTH = 64  # Sequences are right-padded to one shape: causal attention never sees the padding.


def _padded(sequence):
  if len(sequence) > WIDTH:
    raise ValueError(f"reference sequences are at most {WIDTH} tokens")
  ids = np.zeros((1, WIDTH), np.int32)
  ids[0, :len(sequence)] = sequence
  return ids


def next_token_stats(config, params, sequence):
  """(entropy, top1, top2) of the next-token distribution after `sequence`, float64."""
  logits = np.asarray(_logits_fn(config)(params, _padded(sequence)))[0, len(sequence) - 1]
  logits = logits.astype(np.float64)
  log_p = logits - np.logaddexp.reduce(logits)
  entropy = float(-(np.exp(log_p) * log_p).sum())
  order = np.argsort(-logits, kind="stable")  # Ties to the lower id.
  return entropy, int(order[0]), int(order[1])


@dataclasses.dataclass
class Path:
  pid: int
  tokens: list
  anchors: list
  count: int = 0
  last: int = 0
  candidates: list = dataclasses.field(default_factory=list)
  halted: bool = False
  finished: bool = False
  pruned: bool = False


def reference_tree(config, params, prompt, *, tau, max_leaves, max_anchors, min_gap,
                   max_new_tokens, eos, excluded, order="entropy", prm=None,
                   prune_threshold=None):
  """(leaves as (tokens, anchors, finished), generated tokens, prune checks) of one query."""
  excluded = set(excluded)
  generated = 0

  def extend(path, token):
    nonlocal generated
    path.tokens.append(token)
    generated += 1
    path.finished = token == eos
    return not path.finished and len(path.tokens) < max_new_tokens

  def decode(path, halt_first):
    """Greedy to the end, top-1 at candidates; a P-EDU child stops at its first one."""
    while len(path.tokens) < max_new_tokens:
      position = len(path.tokens)
      entropy, top1, top2 = next_token_stats(config, params, prompt + path.tokens)
      if (entropy > tau and top1 not in excluded and position - path.last >= min_gap
          and path.count < max_anchors):
        path.candidates.append((position, entropy, top1, top2))
        path.count, path.last = path.count + 1, position
        if halt_first:
          path.halted = True
          return
      if not extend(path, top1):
        return

  root = Path(0, [], [])
  paths, checks = [root], []
  decode(root, False)
  generation = [root]
  while generation:
    if prm is not None:  # P-EDU: children halted at their first candidate.
      for path in generation:
        if not path.halted:
          continue
        score = prm_score(prm, prompt + path.tokens)
        path.pruned = score < prune_threshold
        checks.append((list(path.tokens), score, path.pruned))
        path.halted = False
        if path.pruned:
          path.candidates = []
        elif extend(path, path.candidates[-1][2]):
          decode(path, False)
    candidates = [(path, c) for path in generation for c in path.candidates]
    if order == "entropy":
      candidates.sort(key=lambda x: (-x[1][1], x[1][0], x[0].pid))
    else:
      candidates.sort(key=lambda x: (x[1][0], -x[1][1], x[0].pid))
    leaves = sum(not p.pruned for p in paths)
    branches = []
    for path, (position, _, _, top2) in candidates:
      if leaves < max_leaves:
        leaves += 1
        branches.append((path, position, top2))
    for path in generation:
      path.candidates = []
    for path, position, _ in branches:
      path.anchors = sorted(path.anchors + [position])
    generation = []
    for path, position, top2 in branches:
      index = path.anchors.index(position)
      child = Path(len(paths), path.tokens[:position], path.anchors[:index + 1],
                   count=index + 1, last=position)
      paths.append(child)
      if extend(child, top2):
        decode(child, prm is not None)
      if child.candidates:
        generation.append(child)
  leaves = [(p.tokens, p.anchors, p.finished) for p in paths if not p.pruned]
  return leaves, generated, checks
