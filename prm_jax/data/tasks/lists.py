"""List manipulation chains: `"[3,1,4,1] sort rev rot1=?"`, one operation per step.

    [3,1,4,1] sort rev rot1=?    problem
    sort:[1,1,3,4]               one step per operation: `<op>:<resulting list>`
    rev:[4,3,1,1]
    rot1:[3,1,1,4]
    #### [3,1,1,4]

Operations: `sort` (ascending), `rev`, `rotK` (rotate left by K), `addK` (add K to every
element). Errors: a slip changes one element by 1 to 3; a misread applies a neighbouring
operation (`sort`<->`rev`, `rot1`->`rot2`, ...); the systematic misapplication sorts
descending, rotates right, and subtracts instead of adding (`rev` has none).
"""

from __future__ import annotations

import dataclasses
import re

from prm_jax.data.tasks.base import ChainTask, check_range, check_subset, draw

OPERATIONS = ("sort", "rev", "rot", "add")
_OP = re.compile(r"(sort|rev)|(rot|add)([1-9]\d*)")
_LIST = re.compile(r"\[(-?\d+(?:,-?\d+)*)?\]")
_PROBLEM = re.compile(r"(\[[^\]]*\]) ((?:\w+ )*\w+)=\?")


def _render_op(op) -> str:
  name, arg = op
  return f"{name}{arg}" if arg else name


def _parse_op(text: str):
  match = _OP.fullmatch(text)
  if match is None:
    return None
  return (match.group(1), 0) if match.group(1) else (match.group(2), int(match.group(3)))


@dataclasses.dataclass(frozen=True)
class ListTask(ChainTask):
  """Difficulty knobs: number of operations, list length, largest start value, operations."""

  min_ops: int = 2
  max_ops: int = 3
  min_length: int = 3
  max_length: int = 4
  max_value: int = 9
  operations: tuple[str, ...] = OPERATIONS
  name = "lists"

  def __post_init__(self):
    check_range("min_ops", self.min_ops, "max_ops", self.max_ops, 1)
    check_range("min_length", self.min_length, "max_length", self.max_length, 2)
    if self.max_value < 1:
      raise ValueError(f"max_value must be >= 1, got {self.max_value}")
    check_subset("operations", self.operations, OPERATIONS)

  def sample(self, rng):
    length = draw(rng, self.min_length, self.max_length)
    values = tuple(int(v) for v in rng.integers(0, self.max_value + 1, length))
    ops = []
    for _ in range(draw(rng, self.min_ops, self.max_ops)):
      name = self.operations[int(rng.integers(len(self.operations)))]
      arg = {"rot": draw(rng, 1, length - 1), "add": draw(rng, 1, 5)}.get(name, 0)
      ops.append((name, arg))
    return values, tuple(ops)

  def render_problem(self, state, ops):
    return f"{self.render_state(state)} {' '.join(map(_render_op, ops))}=?"

  def parse_problem(self, problem):
    match = _PROBLEM.fullmatch(problem)
    state = match and self.parse_state(match.group(1))
    ops = tuple(map(_parse_op, match.group(2).split())) if match else ()
    if state is None or not ops or None in ops:
      raise ValueError(f"not a list chain problem: {problem!r}")
    return state, ops

  def apply(self, op, state):
    name, arg = op
    if name == "sort":
      return tuple(sorted(state))
    if name == "rev":
      return state[::-1]
    if name == "rot":
      shift = arg % len(state) if state else 0
      return state[shift:] + state[:shift]
    return tuple(v + arg for v in state)

  def render_step(self, op, before, after):
    return f"{_render_op(op)}:{self.render_state(after)}"

  def parse_step(self, text):
    name, _, result = text.partition(":")
    op, after = _parse_op(name), self.parse_state(result)
    return None if op is None or after is None else (op, None, after)

  def render_state(self, state):
    return "[" + ",".join(map(str, state)) + "]"

  def parse_state(self, text):
    match = _LIST.fullmatch(text)
    if match is None:
      return None
    return tuple(int(v) for v in match.group(1).split(",")) if match.group(1) else ()

  def perturb(self, state, rng):
    index = int(rng.integers(len(state)))
    delta = int(rng.choice((-3, -2, -1, 1, 2, 3)))
    return state[:index] + (state[index] + delta,) + state[index + 1:]

  def mutate(self, op, rng):
    name, arg = op
    if name in ("sort", "rev"):
      return ("rev" if name == "sort" else "sort", 0)
    return (name, arg + 1 if arg == 1 or rng.random() < 0.5 else arg - 1)

  def misapply(self, op, state):
    name, arg = op
    if name == "sort":
      return tuple(sorted(state, reverse=True))
    if name == "rot":
      return self.apply(("rot", -arg), state)
    if name == "add":
      return tuple(v - arg for v in state)
    return None
