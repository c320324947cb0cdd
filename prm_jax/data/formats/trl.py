"""TRL stepwise supervision: `{"prompt": str, "completions": [str], "labels": [bool]}`.

The format of TRL's `PRMTrainer` (one label per completion step, `true` = correct). Labels
must be JSON booleans; a trajectory with soft or unknown labels cannot be written here
(use the native `prm_jax` format).
"""

from __future__ import annotations

from typing import Any

from prm_jax.data.jsonl import Format, extra_fields, require, require_strings
from prm_jax.data.schema import Trajectory

_FIELDS = ("prompt", "completions", "labels")


def parse(record: dict[str, Any]) -> Trajectory:
  prompt = require(record, "prompt", str)
  completions = require_strings(record, "completions")
  labels = require(record, "labels", list)
  for i, label in enumerate(labels):
    if not isinstance(label, bool):
      raise ValueError(f"labels[{i}] must be true or false, got {label!r}")
  if len(labels) != len(completions):
    raise ValueError(f"{len(labels)} labels for {len(completions)} completions")
  return Trajectory(problem=prompt, steps=completions, labels=[float(x) for x in labels],
                    meta=extra_fields(record, _FIELDS))


def render(trajectory: Trajectory) -> dict[str, Any]:
  if not trajectory.hard_labels:
    raise ValueError("TRL stepwise supervision needs a hard label (0 or 1) for every step")
  return {"prompt": trajectory.problem, "completions": trajectory.steps,
          "labels": [label == 1.0 for label in trajectory.labels or []],
          **trajectory.meta.get("extra", {})}


FORMAT = Format("trl", parse, render)
