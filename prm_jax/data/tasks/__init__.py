"""Verifiable synthetic reasoning tasks (see `base` for the shared design).

    task = get_task("arithmetic", max_ops=5)
    problems = task.problems(1000, seed=0, split="train")
    corpus = generate_corpus(task, 1000, seed=0, error_rate=0.2)   # labelled Trajectories
    verdict = task.check(problem, model_text)                       # per-step truth
    pairs = generate_thinking(task, problems, seed=0)               # thinking + response
"""

from __future__ import annotations

import dataclasses

from prm_jax.data.tasks.arithmetic import ArithmeticTask
from prm_jax.data.tasks.base import (ANSWER_PREFIX, ERROR_KINDS, ChainTask, ErrorKind, Flawed,
                                     Verdict, split_of)
from prm_jax.data.tasks.corpus import generate_corpus, label_solution
from prm_jax.data.tasks.gsm8k import Gsm8kTask
from prm_jax.data.tasks.lists import ListTask
from prm_jax.data.tasks.thinking import (THINKING_KINDS, checker_judge, generate_thinking,
                                         parse_thinking_step, plan_template, straight_thinking,
                                         thinking_trajectory)

TASKS: dict[str, type] = {"arithmetic": ArithmeticTask, "lists": ListTask, "gsm8k": Gsm8kTask}


def get_task(name: str, **knobs) -> ChainTask | Gsm8kTask:
  """The task `name` with its `knobs` (its dataclass fields; unknown ones raise)."""
  if name not in TASKS:
    raise ValueError(f"unknown task {name!r}; known: {sorted(TASKS)}")
  fields = {f.name for f in dataclasses.fields(TASKS[name])}
  unknown = sorted(set(knobs) - fields)
  if unknown:
    raise ValueError(f"task {name!r} has no knob(s) {unknown}; its knobs: {sorted(fields)}")
  return TASKS[name](**knobs)


__all__ = ["ANSWER_PREFIX", "ERROR_KINDS", "TASKS", "THINKING_KINDS", "ArithmeticTask",
           "ChainTask", "ErrorKind", "Flawed", "Gsm8kTask", "ListTask", "Verdict",
           "checker_judge", "generate_corpus", "generate_thinking", "get_task", "label_solution",
           "parse_thinking_step", "plan_template", "split_of", "straight_thinking",
           "thinking_trajectory"]
