"""GSM8K-format problems as a task, so the quickstart runs on real word problems by config.

Problems, gold answers and reference solutions come from GSM8K-format JSONL files (a train
and a test file; `prm_jax.data.formats.gsm8k`). The checker reads free text, e.g. a
policy's sample, one step per line:

  step_correct   the calculator verdict of the step's `<<a*b=c>>` annotations
                 (`prm_jax.data.calculator`; a step with nothing checkable counts as
                 correct), lines after the `#### ` line are wrong, and the final answer
                 line is correct when it states the gold answer
  solved         the final answer equals the gold one as a number (`1,000`, `$5`, `5.0`)

Errors cannot be injected into free text: `flawed` gives None, so a corpus drawn from this
task holds the reference solutions only.
"""

from __future__ import annotations

import dataclasses
import fractions
import functools
from typing import Sequence

import numpy as np

from prm_jax.data import calculator
from prm_jax.data.formats import read
from prm_jax.data.schema import Trajectory
from prm_jax.data.tasks.base import ANSWER_PREFIX, Verdict


def _number(text: str) -> fractions.Fraction | None:
  cleaned = text.strip().replace(",", "").replace("$", "").rstrip(".")
  try:
    return fractions.Fraction(cleaned)
  except (ValueError, ZeroDivisionError):
    return None


def same_answer(answer: str | None, gold: str) -> bool:
  """Equal as numbers when both parse, else as stripped text."""
  if answer is None:
    return False
  a, g = _number(answer), _number(gold)
  return a == g if a is not None and g is not None else answer.strip() == gold.strip()


@dataclasses.dataclass(frozen=True)
class Gsm8kTask:
  """Knobs: `train_path`, `test_path` (GSM8K-format JSONL)."""

  train_path: str
  test_path: str
  name = "gsm8k"

  @functools.cached_property
  def _splits(self) -> dict[str, dict[str, Trajectory]]:
    """{split: {question: reference trajectory}}, in file order."""
    return {split: {t.problem: t for t in read(path, "gsm8k").examples}
            for split, path in (("train", self.train_path), ("test", self.test_path))}

  def _reference(self, problem: str) -> Trajectory:
    for split in self._splits.values():
      if problem in split:
        return split[problem]
    raise ValueError(f"not a problem of {self.train_path} or {self.test_path}: {problem[:80]!r}")

  def problems(self, count: int, *, seed: int, split: str = "train") -> list[str]:
    """`count` problems of `split`, a seeded random choice (train/test: the two files)."""
    if split not in self._splits:
      raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    questions = list(self._splits[split])
    if count > len(questions):
      raise ValueError(f"{count} {split} problems asked, {len(questions)} in the file")
    order = np.random.default_rng([seed, 0 if split == "train" else 1]).permutation(
        len(questions))
    return [questions[i] for i in order[:count]]

  def answer(self, problem: str) -> str:
    return self._reference(problem).answer

  def solve(self, problem: str) -> list[str]:
    return list(self._reference(problem).steps)

  def flawed(self, problem: str, kind: str, rng: np.random.Generator) -> None:
    del problem, kind, rng  # Free text: no error can be injected exactly.
    return None

  def check(self, problem: str, solution: str | Sequence[str]) -> Verdict:
    gold = self.answer(problem)
    lines = solution.rstrip("\n").split("\n") if isinstance(solution, str) else list(solution)
    lines = [] if lines == [""] else lines
    correct, final = [], None
    for line in lines:
      text = line.strip()
      if final is not None:
        ok = False
      elif text.startswith(ANSWER_PREFIX.strip()):
        final = text[len(ANSWER_PREFIX.strip()):].strip()
        ok = same_answer(final, gold)
      else:
        ok = calculator.step_label(text) != 0.0
      correct.append(ok)
    first_error = correct.index(False) if False in correct else -1
    return Verdict(tuple(lines), tuple(correct), first_error, final, same_answer(final, gold))
