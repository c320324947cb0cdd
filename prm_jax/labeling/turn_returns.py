"""AgentPRM's turn-level Monte Carlo targets: `Q(s, a)` from the agent's own episodes.

For an episode of T turns with outcome r (1 if won, else 0), turn t's discounted return is

    G_t = gamma^(T - 1 - t) * r

(the outcome discounted by the turns still to go: the last turn of a won episode gets 1, a
turn k turns earlier gamma^k; a lost episode gives 0 everywhere). The target of a
(state, action) pair is the mean of G_t over all its visits, in any episode:

    Q(s, a) = mean_{visits (e, t) of (s, a)} G_t        in [0, 1] since r is in {0, 1}.

A visit's identity is its state prompt and the command it issued (the engine's action; two
outputs that differ only in their reason are the same action), hashed with SHA-256
(`visit_key`: stable across processes and runs, unlike Python's `hash`). DESIGN.md notes the
public code discounts by `gamma^t` from the episode start; this is the remaining-horizon
form the paper's formula means.
"""

from __future__ import annotations

import hashlib
from typing import Sequence


def visit_key(state: str, command: str) -> str:
  """A stable hash of a (state prompt, command) pair."""
  return hashlib.sha256(f"{state}\x00{command}".encode()).hexdigest()


def discounted_returns(turns: int, outcome: float, gamma: float) -> list[float]:
  """`[gamma^(T-1-t) * outcome for t < T]`."""
  return [outcome * gamma ** (turns - 1 - t) for t in range(turns)]


def turn_targets(episodes: Sequence[dict], gamma: float) -> list[dict]:
  """One record per distinct (state, command) visited in `episodes`: `{"key", "prompt",
  "output" (the first visit's output text), "command", "target" (mean discounted return),
  "visits"}`, in order of first visit.

  An episode is `{"won": bool, "turns": [{"prompt", "output", "command"}, ...]}` (what
  `envs.rollout.run_episodes` records).
  """
  if not 0 < gamma <= 1:
    raise ValueError(f"gamma must be in (0, 1], got {gamma!r}")
  records: dict[str, dict] = {}
  sums: dict[str, float] = {}
  for episode in episodes:
    turns = episode["turns"]
    returns = discounted_returns(len(turns), float(episode["won"]), gamma)
    for turn, value in zip(turns, returns):
      key = visit_key(turn["prompt"], turn["command"])
      if key not in records:
        records[key] = {"key": key, "prompt": turn["prompt"], "output": turn["output"],
                        "command": turn["command"], "visits": 0}
        sums[key] = 0.0
      records[key]["visits"] += 1
      sums[key] += value
  for key, record in records.items():
    record["target"] = sums[key] / record["visits"]
  return list(records.values())
