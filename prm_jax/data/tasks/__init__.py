"""Verifiable synthetic reasoning tasks (see `base` for the shared design).

    task = get_task("arithmetic", max_ops=5)
    problems = task.problems(1000, seed=0, split="train")
    corpus = generate_corpus(task, 1000, seed=0, error_rate=0.2)   # labelled Trajectories
    verdict = task.check(problem, model_text)                       # per-step truth
"""

from __future__ import annotations

from prm_jax.data.tasks.arithmetic import ArithmeticTask
from prm_jax.data.tasks.base import (ANSWER_PREFIX, ERROR_KINDS, ChainTask, ErrorKind, Flawed,
                                     Verdict, split_of)
from prm_jax.data.tasks.corpus import generate_corpus, label_solution
from prm_jax.data.tasks.lists import ListTask

TASKS: dict[str, type[ChainTask]] = {"arithmetic": ArithmeticTask, "lists": ListTask}


def get_task(name: str, **knobs) -> ChainTask:
  """The task family `name` with difficulty `knobs` (its dataclass fields)."""
  if name not in TASKS:
    raise ValueError(f"unknown task {name!r}; known: {sorted(TASKS)}")
  return TASKS[name](**knobs)


__all__ = ["ANSWER_PREFIX", "ERROR_KINDS", "TASKS", "ArithmeticTask", "ChainTask", "ErrorKind",
           "Flawed", "ListTask", "Verdict", "generate_corpus", "get_task", "label_solution",
           "split_of"]
