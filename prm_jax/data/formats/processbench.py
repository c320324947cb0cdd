"""ProcessBench: `{"problem": str, "steps": [str], "label": int}`, label = earliest error.

`label` is the index of the earliest incorrect step, or -1 when every step is correct
(other fields, e.g. `id`, `generator`, `final_answer_correct`, are kept in `meta`). As
per-step labels: steps before the error are correct (1.0), the error step is 0.0, and the
steps after it are unknown (`None`): ProcessBench does not annotate them.

Writing takes the earliest step whose label is < 0.5 as the error; every step before it
(and, with no error, every step) must have a known label.

The benchmark is released as one file per subset, each a JSON list (`gsm8k.json`,
`math.json`, `olympiadbench.json`, `omnimath.json`); `formats.read` takes those as well as
JSON lines, and `subset_files` finds the subsets of a folder.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

from prm_jax.data.jsonl import Format, extra_fields, require, require_strings
from prm_jax.data.schema import Trajectory

_FIELDS = ("problem", "steps", "label")
SUFFIXES = (".json", ".jsonl")  # Of subset files.


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


def subset_files(folder: str, names: Sequence[str] = ()) -> dict[str, str]:
  """`{subset: path}` of the subset files `<subset>.json` / `<subset>.jsonl` in `folder`,
  sorted by name; with `names`, exactly those subsets. A missing folder, a folder without
  subset files, a named subset without a file, or one subset in both suffixes raise
  `ValueError` naming the path."""
  if not os.path.isdir(folder):
    raise ValueError(f"ProcessBench folder {folder!r} does not exist")
  found: dict[str, str] = {}
  for name in sorted(os.listdir(folder)):
    subset, suffix = os.path.splitext(name)
    path = os.path.join(folder, name)
    if suffix not in SUFFIXES or not os.path.isfile(path):
      continue
    if subset in found:
      raise ValueError(f"subset {subset!r} has two files: {found[subset]} and {path}")
    found[subset] = path
  if not found:
    raise ValueError(f"no subset files (*.json, *.jsonl) in {folder!r}")
  missing = [n for n in names if n not in found]
  if missing:
    raise ValueError(f"no file for subset(s) {missing} in {folder!r} (it has {sorted(found)})")
  return {n: found[n] for n in names} if names else found
