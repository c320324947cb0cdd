"""Verifiable chain tasks: a start state and a list of operations, solved one step per op.

A problem renders as one short line (`"7+5*3-4=?"`); a solution is one line per operation
(`"7+5=12"`) and a final answer line (`"#### 32"`). Families (arithmetic, lists) supply
the primitives (sample, apply, render/parse a step); this module holds what is shared:

  * `solve`: the clean solution; `answer`: the gold final answer;
  * `check`: an exact verifier of any solution text, model-generated included;
  * `flawed`: a solution with one injected error that later steps build on, like real
    errors do, so the first error is exactly where it was injected;
  * `problems`: distinct problems by seed, with train/test disjoint by construction.

Error kinds. Random ones put a different mistake in every sample; *systematic* ones make
the same mistake on a given problem every time (the first place it applies), so samples
that make it agree on the same wrong answer: majority voting cannot fix those, a PRM can.
"""

from __future__ import annotations

import abc
import dataclasses
import hashlib
from typing import Hashable, Sequence

import numpy as np

ANSWER_PREFIX = "#### "
TEST_BUCKETS = 10  # One problem in TEST_BUCKETS (by hash) belongs to the test split.


@dataclasses.dataclass(frozen=True)
class ErrorKind:
  name: str
  systematic: bool
  description: str


ERROR_KINDS: dict[str, ErrorKind] = {k.name: k for k in (
    ErrorKind("slip", False, "a result is off (arithmetic slip / miscopied element)"),
    ErrorKind("misread", False, "a step applies another operation or operand than the problem"),
    ErrorKind("skip_step", True, "the first operation whose omission changes the answer is left out"),
    ErrorKind("wrong_operator", True, "the first operation that can be misapplied is "
              "(e.g. a-b done as b-a, sort done descending)"),
)}


@dataclasses.dataclass(frozen=True)
class Verdict:
  """The checker's reading of one solution.

  Attributes:
    steps: the solution's lines (the final answer line is a step too).
    step_correct: per step, whether it is a correct move from the state the solution
      itself reached (so steps after an error that build on it correctly are True).
    first_error: index of the first incorrect step, -1 if none.
    final_answer: text after the `#### ` line, None if there is none.
    solved: the final answer equals the gold answer.
  """

  steps: tuple[str, ...]
  step_correct: tuple[bool, ...]
  first_error: int
  final_answer: str | None
  solved: bool

  @property
  def prefix_labels(self) -> list[float]:
    """PRM labels: 1.0 while the solution is still on track, 0.0 from the first error on."""
    end = len(self.steps) if self.first_error < 0 else self.first_error
    return [1.0 if i < end else 0.0 for i in range(len(self.steps))]


@dataclasses.dataclass(frozen=True)
class Flawed:
  """A solution with one injected error of `kind` whose first wrong step is `first_error`."""

  steps: list[str]
  first_error: int
  kind: str


def split_of(problem: str) -> str:
  """"train" or "test", a fixed function of the problem text (so splits never overlap)."""
  digest = hashlib.blake2b(problem.encode("utf-8"), digest_size=8).digest()
  return "test" if int.from_bytes(digest, "little") % TEST_BUCKETS == 0 else "train"


def check_range(low_name: str, low: int, high_name: str, high: int, floor: int):
  """A difficulty knob pair must satisfy `floor <= low <= high`."""
  if not floor <= low <= high:
    raise ValueError(f"need {floor} <= {low_name} <= {high_name}, got {low}, {high}")


def check_subset(name: str, values: Sequence, allowed: Sequence):
  if not values or set(values) - set(allowed):
    raise ValueError(f"{name} must be a non-empty subset of {allowed!r}, got {values!r}")


def draw(rng: np.random.Generator, low: int, high: int) -> int:
  """A uniform int in [low, high], inclusive (knobs are inclusive ranges)."""
  return int(rng.integers(low, high + 1))


State = Hashable
Op = Hashable


class ChainTask(abc.ABC):
  """Shared solve / check / inject / sample logic over a family's primitives."""

  name: str

  # Family primitives. -------------------------------------------------------------------

  @abc.abstractmethod
  def sample(self, rng: np.random.Generator) -> tuple[State, tuple[Op, ...]]:
    """A random start state and operations, within the task's difficulty knobs."""

  @abc.abstractmethod
  def render_problem(self, state: State, ops: Sequence[Op]) -> str:
    ...

  @abc.abstractmethod
  def parse_problem(self, problem: str) -> tuple[State, tuple[Op, ...]]:
    """Inverse of `render_problem`; `ValueError` if `problem` is not one of this family."""

  @abc.abstractmethod
  def apply(self, op: Op, state: State) -> State:
    ...

  @abc.abstractmethod
  def render_step(self, op: Op, before: State, after: State) -> str:
    ...

  @abc.abstractmethod
  def parse_step(self, text: str) -> tuple[Op, State | None, State] | None:
    """(op, state it starts from if the step states it, result), or None if unparseable."""

  @abc.abstractmethod
  def render_state(self, state: State) -> str:
    ...

  @abc.abstractmethod
  def parse_state(self, text: str) -> State | None:
    ...

  @abc.abstractmethod
  def perturb(self, state: State, rng: np.random.Generator) -> State:
    """A nearby state != `state` (a slip)."""

  @abc.abstractmethod
  def mutate(self, op: Op, rng: np.random.Generator) -> Op | None:
    """Another op != `op` that a misreading would give, or None if there is none."""

  @abc.abstractmethod
  def misapply(self, op: Op, state: State) -> State | None:
    """The result of the family's systematic misapplication of `op`, or None."""

  # Shared logic. -----------------------------------------------------------------------

  def _states(self, state: State, ops: Sequence[Op]) -> list[State]:
    states = [state]
    for op in ops:
      states.append(self.apply(op, states[-1]))
    return states

  def answer(self, problem: str) -> str:
    """The gold final answer (as written after `#### `)."""
    return self.render_state(self._states(*self.parse_problem(problem))[-1])

  def _steps_from(self, state: State, ops: Sequence[Op]) -> list[str]:
    """Correct steps applying `ops` from `state`, then the final answer line."""
    steps = []
    for op in ops:
      after = self.apply(op, state)
      steps.append(self.render_step(op, state, after))
      state = after
    return steps + [ANSWER_PREFIX + self.render_state(state)]

  def solve(self, problem: str) -> list[str]:
    """The clean solution: one step per operation, then `#### <answer>`."""
    return self._steps_from(*self.parse_problem(problem))

  def check(self, problem: str, solution: str | Sequence[str]) -> Verdict:
    """Verify every step of a solution (text with one step per line, or the lines).

    A step is correct when it is the next operation of the problem (a skipped operation
    makes the step that follows wrong; the check then continues after the operation the
    step did apply), starts from the state the solution reached, and computes its result
    exactly. Unparseable lines and lines after the final answer are wrong. The final
    answer line is correct when every operation was applied and it states the state
    reached. `solved` compares the final answer with the gold one.
    """
    state, ops = self.parse_problem(problem)
    truth = self._states(state, ops)[-1]
    lines = solution.rstrip("\n").split("\n") if isinstance(solution, str) else list(solution)
    lines = [] if lines == [""] else lines
    correct, final, done, next_op = [], None, False, 0
    for line in lines:
      text = line.strip()
      if done:
        ok = False
      elif text.startswith(ANSWER_PREFIX.strip()):
        final = text[len(ANSWER_PREFIX.strip()):].strip()
        ok = next_op == len(ops) and self.parse_state(final) == state
        done = True
      else:
        parsed = self.parse_step(text)
        ok = False
        if parsed is not None:
          op, before, after = parsed
          applied = next((i for i in range(next_op, len(ops)) if ops[i] == op), None)
          ok = (applied == next_op and before in (None, state)
                and after == self.apply(op, state))
          state = after
          next_op = next_op + 1 if applied is None else applied + 1
      correct.append(ok)
    first_error = correct.index(False) if False in correct else -1
    solved = final is not None and self.parse_state(final) == truth
    return Verdict(tuple(lines), tuple(correct), first_error, final, solved)

  def _diverge(self, ops: Sequence[Op], states: Sequence[State], index: int, op: Op,
               after: State, kind: str) -> Flawed:
    """Clean steps up to `index`, the wrong step `op: states[index] -> after`, then
    correct steps from the wrong state on (the error propagates)."""
    clean = self._steps_from(states[0], ops[:index])[:-1]
    wrong = self.render_step(op, states[index], after)
    return Flawed(clean + [wrong] + self._steps_from(after, ops[index + 1:]), index, kind)

  def flawed(self, problem: str, kind: str, rng: np.random.Generator) -> Flawed | None:
    """A solution with one error of `kind` (see `ERROR_KINDS`), None if it cannot occur."""
    state, ops = self.parse_problem(problem)
    states = self._states(state, ops)
    if kind == "slip":
      index = int(rng.integers(len(ops)))
      return self._diverge(ops, states, index, ops[index], self.perturb(states[index + 1], rng),
                           kind)
    if kind == "misread":
      for index in map(int, rng.permutation(len(ops))):
        op = self.mutate(ops[index], rng)
        if op is not None:
          return self._diverge(ops, states, index, op, self.apply(op, states[index]), kind)
      return None
    if kind == "wrong_operator":
      for index, op in enumerate(ops):
        wrong = self.misapply(op, states[index])
        if wrong is not None and self._states(wrong, ops[index + 1:])[-1] != states[-1]:
          return self._diverge(ops, states, index, op, wrong, kind)
      return None
    if kind == "skip_step":
      for index in range(len(ops)):
        # Of a run of equal ops, leaving out the first reads as leaving out the last.
        if index + 1 < len(ops) and ops[index] == ops[index + 1]:
          continue
        if self._states(states[index], ops[index + 1:])[-1] != states[-1]:
          return Flawed(self._steps_from(state, ops[:index])[:-1]
                        + self._steps_from(states[index], ops[index + 1:]), index, kind)
      return None
    raise ValueError(f"unknown error kind {kind!r}; known: {sorted(ERROR_KINDS)}")

  def problems(self, count: int, *, seed: int, split: str = "train") -> list[str]:
    """`count` distinct problems of `split` ("train" / "test"), deterministic in `seed`."""
    if split not in ("train", "test"):
      raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    rng = np.random.default_rng([seed, 0 if split == "train" else 1])
    found: dict[str, None] = {}
    for _ in range(100 * count + 1000):
      if len(found) == count:
        break
      problem = self.render_problem(*self.sample(rng))
      if split_of(problem) == split:
        found[problem] = None
    if len(found) < count:
      raise ValueError(f"found only {len(found)} distinct {split} problems of {self!r}; "
                       "widen its difficulty knobs or ask for fewer")
    return list(found)

