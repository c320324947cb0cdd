"""GSM8K: `{"question": str, "answer": str}`, one step per line, last line `#### <answer>`.

Every line of `answer` is a step, the final `#### 72` line included (it is what a policy
trained on GSM8K writes, and a PRM scores it like any step); `Trajectory.answer` is the text
after `#### `. Reference solutions carry no labels: `prm_jax.data.calculator` derives
per-step arithmetic labels from their `<<a*b=c>>` annotations.

`read_model_solutions` reads the repository's `example_model_solutions.jsonl`: per test
problem, several model-written candidates (`{"solution", "is_correct"}` under the model's
name) ending with an `A: <answer>` line.
"""

from __future__ import annotations

import os
import re
from typing import Any

from prm_jax.data.jsonl import (DataFormatError, Format, ReadResult, extra_fields, iter_jsonl,
                                require)
from prm_jax.data.schema import Trajectory

_FIELDS = ("question", "answer")
_FINAL = re.compile(r"#### (.+)")
_MODEL_FINAL = re.compile(r"A: (.+)")


def parse(record: dict[str, Any]) -> Trajectory:
  question = require(record, "question", str)
  steps = require(record, "answer", str).split("\n")
  final = _FINAL.fullmatch(steps[-1])
  if final is None:
    raise ValueError(f"the last line of 'answer' must be '#### <final answer>', got {steps[-1]!r}")
  return Trajectory(problem=question, steps=steps, answer=final.group(1),
                    meta=extra_fields(record, _FIELDS))


def render(trajectory: Trajectory) -> dict[str, Any]:
  expected = f"#### {trajectory.answer}"
  if not trajectory.steps or trajectory.steps[-1] != expected:
    raise ValueError(f"a GSM8K solution ends with the gold answer line {expected!r}")
  if any("\n" in step for step in trajectory.steps):
    raise ValueError("a GSM8K step is one line; a step contains a newline")
  return {"question": trajectory.problem, "answer": "\n".join(trajectory.steps),
          **trajectory.meta.get("extra", {})}


FORMAT = Format("gsm8k", parse, render)


def _parse_candidates(record: dict[str, Any]) -> list[Trajectory]:
  question = require(record, "question", str)
  truth = require(record, "ground_truth", str).split("\n")[-1]
  gold = _MODEL_FINAL.fullmatch(truth)
  if gold is None:
    raise ValueError(f"the last line of 'ground_truth' must be 'A: <answer>', got {truth!r}")
  candidates = []
  for model, candidate in record.items():
    if not isinstance(candidate, dict):
      continue
    solution = require(candidate, "solution", str)
    is_correct = require(candidate, "is_correct", bool)
    candidates.append(Trajectory(problem=question, steps=solution.split("\n"),
                                 answer=gold.group(1),
                                 meta={"model": model, "is_correct": is_correct}))
  if not candidates:
    raise ValueError("no model solution (an object with 'solution' and 'is_correct')")
  return candidates


def read_model_solutions(path: str | os.PathLike, *, skip_bad: bool = False) -> ReadResult:
  """All candidates of `example_model_solutions.jsonl`, `meta = {"model", "is_correct"}`."""
  skipped: list[DataFormatError] = []
  examples = []
  for line, candidates in iter_jsonl(path, _parse_candidates, skip_bad=skip_bad,
                                     skipped=skipped):
    for candidate in candidates:
      candidate.meta["source"] = f"{os.fspath(path)}:{line}"
      examples.append(candidate)
  return ReadResult(examples, skipped)
