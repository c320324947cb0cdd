"""ProcessBench: `{"problem": str, "steps": [str], "label": int}`, label = earliest error.

`label` is the index of the earliest incorrect step, or -1 when every step is correct
(other fields, e.g. `id`, `generator`, `final_answer_correct`, are kept in `meta`). As
per-step labels: steps before the error are correct (1.0), the error step is 0.0, and the
steps after it are unknown (`None`): ProcessBench does not annotate them.

Writing takes the earliest step whose label is < 0.5 as the error; every step before it
(and, with no error, every step) must have a known label.
"""

from __future__ import annotations

from typing import Any

from prm_jax.data.jsonl import Format, extra_fields, require, require_strings
from prm_jax.data.schema import Trajectory

_FIELDS = ("problem", "steps", "label")


def parse(record: dict[str, Any]) -> Trajectory:
  problem = require(record, "problem", str)
  steps = require_strings(record, "steps")
  error = require(record, "label", int)
  if not -1 <= error < len(steps):
    raise ValueError(f"label {error} is neither -1 nor a step index (0..{len(steps) - 1})")
  if error < 0:
    labels = [1.0] * len(steps)
  else:
    labels = [1.0] * error + [0.0] + [None] * (len(steps) - error - 1)
  return Trajectory(problem=problem, steps=steps, labels=labels,
                    meta=extra_fields(record, _FIELDS))


def earliest_error(trajectory: Trajectory) -> int:
  """Index of the first step labelled < 0.5, or -1; `ValueError` if it is not determined."""
  labels = trajectory.labels or [None] * len(trajectory.steps)
  for index, label in enumerate(labels):
    if label is None:
      raise ValueError(f"step {index} has no label, so the earliest error is unknown")
    if label < 0.5:
      return index
  return -1


def render(trajectory: Trajectory) -> dict[str, Any]:
  return {"problem": trajectory.problem, "steps": trajectory.steps,
          "label": earliest_error(trajectory), **trajectory.meta.get("extra", {})}


FORMAT = Format("processbench", parse, render)
