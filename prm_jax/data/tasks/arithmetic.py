"""Arithmetic chains: `"7+5*3-4=?"` evaluated left to right, one operation per step.

    7+5*3-4=?      problem (a calculator chain: left to right, no precedence)
    7+5=12         one step per operation: `<running value><op><operand>=<result>`
    12*3=36
    36-4=32
    #### 32

Errors: a slip is off by 1, 2 or 10; a misread uses another operand; the systematic
misapplication does `a-b` as `b-a` and `a*b` as `a+b`.
"""

from __future__ import annotations

import dataclasses
import operator
import re

import numpy as np

from prm_jax.data.tasks.base import ChainTask, check_range, check_subset, draw

_APPLY = {"+": operator.add, "-": operator.sub, "*": operator.mul}
_PROBLEM = re.compile(r"(\d+)((?:[-+*]\d+)+)=\?")
_OP = re.compile(r"([-+*])(\d+)")
_STEP = re.compile(r"(-?\d+)([-+*])(\d+)=(-?\d+)")
_NUMBER = re.compile(r"-?\d+")
_SLIPS = (-10, -2, -1, 1, 2, 10)


@dataclasses.dataclass(frozen=True)
class ArithmeticTask(ChainTask):
  """Difficulty knobs: number of operations, operand range, operators (from `+-*`)."""

  min_ops: int = 2
  max_ops: int = 4
  min_operand: int = 1
  max_operand: int = 9
  operators: str = "+-*"
  name = "arithmetic"

  def __post_init__(self):
    check_range("min_ops", self.min_ops, "max_ops", self.max_ops, 1)
    check_range("min_operand", self.min_operand, "max_operand", self.max_operand, 0)
    check_subset("operators", self.operators, "+-*")

  def _operand(self, rng: np.random.Generator) -> int:
    return draw(rng, self.min_operand, self.max_operand)

  def sample(self, rng):
    ops = tuple((self.operators[int(rng.integers(len(self.operators)))], self._operand(rng))
                for _ in range(draw(rng, self.min_ops, self.max_ops)))
    return self._operand(rng), ops

  def render_problem(self, state, ops):
    return str(state) + "".join(f"{symbol}{operand}" for symbol, operand in ops) + "=?"

  def parse_problem(self, problem):
    match = _PROBLEM.fullmatch(problem)
    if match is None:
      raise ValueError(f"not an arithmetic chain problem: {problem!r}")
    return int(match.group(1)), tuple((s, int(b)) for s, b in _OP.findall(match.group(2)))

  def apply(self, op, state):
    symbol, operand = op
    return _APPLY[symbol](state, operand)

  def render_step(self, op, before, after):
    return f"{before}{op[0]}{op[1]}={after}"

  def parse_step(self, text):
    match = _STEP.fullmatch(text)
    if match is None:
      return None
    before, symbol, operand, after = match.groups()
    return (symbol, int(operand)), int(before), int(after)

  def render_state(self, state):
    return str(state)

  def parse_state(self, text):
    return int(text) if _NUMBER.fullmatch(text) else None

  def perturb(self, state, rng):
    return state + int(rng.choice(_SLIPS))

  def mutate(self, op, rng):
    others = [b for b in range(self.min_operand, self.max_operand + 1) if b != op[1]]
    return (op[0], others[int(rng.integers(len(others)))]) if others else None

  def misapply(self, op, state):
    symbol, operand = op
    if symbol == "-":
      return operand - state
    if symbol == "*":
      return state + operand
    return None
