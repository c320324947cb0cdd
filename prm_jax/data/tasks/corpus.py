"""Labelled training corpora from a task: clean and flawed solutions as `Trajectory`s."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from prm_jax.data.schema import Trajectory
from prm_jax.data.tasks.base import ERROR_KINDS, ChainTask


def label_solution(task: ChainTask, problem: str, solution: str | Sequence[str],
                   **meta: Any) -> Trajectory:
  """A solution (e.g. sampled from a policy) as a `Trajectory` labelled by the checker.

  labels = `Verdict.prefix_labels` (1.0 up to the first error, 0.0 from it on);
  `meta` records the task, `first_error` and `solved`, plus the given fields.
  """
  verdict = task.check(problem, solution)
  return Trajectory(problem=problem, steps=list(verdict.steps), labels=verdict.prefix_labels,
                    answer=task.answer(problem),
                    meta={"task": task.name, "first_error": verdict.first_error,
                          "solved": verdict.solved, **meta})


def generate_corpus(task: ChainTask, num_problems: int, *, seed: int, split: str = "train",
                    error_rate: float = 0.0,
                    error_kinds: Sequence[str] | None = None) -> list[Trajectory]:
  """One solution per problem; a fraction `error_rate` of them carries one injected error.

  The kind of each error is drawn uniformly from `error_kinds` (default: all), falling
  back to another kind when it cannot occur on that problem. Deterministic in `seed`;
  `meta["error_kind"]` names the injected kind (None for clean solutions).
  """
  if not 0.0 <= error_rate <= 1.0:
    raise ValueError(f"error_rate must be in [0, 1], got {error_rate}")
  kinds = list(error_kinds or ERROR_KINDS)
  unknown = set(kinds) - set(ERROR_KINDS)
  if unknown:
    raise ValueError(f"unknown error kinds {sorted(unknown)}; known: {sorted(ERROR_KINDS)}")
  rng = np.random.default_rng([seed, 2])  # A stream apart from the problems' own.
  corpus = []
  for problem in task.problems(num_problems, seed=seed, split=split):
    flawed = None
    if rng.random() < error_rate:
      for kind in rng.permutation(kinds):
        flawed = task.flawed(problem, str(kind), rng)
        if flawed is not None:
          break
    steps = task.solve(problem) if flawed is None else flawed.steps
    corpus.append(label_solution(task, problem, steps, split=split,
                                 error_kind=flawed and flawed.kind))
  return corpus
