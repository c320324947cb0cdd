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
  allow: bool = True
  fresh: bool = False
  halt: tuple = None
  finished: bool = False
  pruned: bool = False


def reference_tree(config, params, prompt, *, tau, max_leaves, max_anchors, min_gap,
                   max_new_tokens, eos, excluded, order="entropy", prm=None,
                   prune_threshold=None):
  """(leaves as (tokens, anchors, finished), generated tokens, prune checks) of one query."""
  excluded = set(excluded)
  paths = [Path(0, [], [])]
  active, generated, checks = [paths[0]], 0, []
  while active:
    for path in active:  # Decode to the next candidate, or the end.
      while True:
        position = len(path.tokens)
        if position >= max_new_tokens:
          break
        entropy, top1, top2 = next_token_stats(config, params, prompt + path.tokens)
        last = path.anchors[-1] if path.anchors else 0
        if (path.allow and entropy > tau and top1 not in excluded
            and position - last >= min_gap and len(path.anchors) < max_anchors):
          path.halt = (position, entropy, top1, top2)
          break
        path.tokens.append(top1)
        generated += 1
        if top1 == eos:
          path.finished = True
          break
    if prm is not None:  # P-EDU: children whose first segment just ended at a candidate.
      for path in active:
        if path.fresh and path.halt is not None:
          score = prm_score(prm, prompt + path.tokens)
          path.pruned = score < prune_threshold
          checks.append((list(path.tokens), score, path.pruned))
        path.fresh = False
    halted = [p for p in active if p.halt is not None and not p.pruned]
    if order == "entropy":
      halted.sort(key=lambda p: (-p.halt[1], p.halt[0], p.pid))
    else:
      halted.sort(key=lambda p: (p.halt[0], -p.halt[1], p.pid))
    leaves = sum(not p.pruned for p in paths)
    active = []
    for path in halted:
      position, _, top1, top2 = path.halt
      path.halt = None
      if leaves < max_leaves:
        leaves += 1
        child = Path(len(paths), path.tokens + [top2], path.anchors + [position], fresh=True)
        paths.append(child)
        path.tokens.append(top1)
        path.anchors.append(position)
        path.fresh = True
        pair = [path, child]
      else:
        path.allow = False
        path.tokens.append(top1)  # Greedy: the token it would have taken.
        pair = [path]
      for p in pair:
        generated += 1
        if p.tokens[-1] == eos or len(p.tokens) >= max_new_tokens:
          p.finished = p.tokens[-1] == eos
        else:
          active.append(p)
  leaves = [(p.tokens, p.anchors, p.finished) for p in paths if not p.pruned]
  return leaves, generated, checks
