"""GSM8K calculator annotations as a per-step arithmetic verifier.

GSM8K solutions mark each computation as `<<expression=result>>` followed by the result as
written in the text: `Janet sells 16 - 3 - 4 = <<16-3-4=9>>9 duck eggs`. A step has an
arithmetic slip when an annotation's sides disagree (`<<4*(1/3)=8>>`) or the number written
after it disagrees with it (`<<130000*.15=19500>>195,000`).

Agreement allows the rounding a written number implies: a number written with `d` decimals
matches a value less than one unit of its last place away, i.e. the value rounded, floored
or ceiled to `d` decimals (word problems do all three: `<<200/3=66.67>>66` whole bags,
`<<10/3=3.33>>`, `<<19.5/4=5>>` people pass, `<<5000*30=150000>>1,500,000` does not). An annotation that is not plain arithmetic (variables, `%`,
implicit multiplication) is not checked.
"""

from __future__ import annotations

import ast
import dataclasses
import fractions
import operator
import re

# The written number must not run on into a fraction (`<<3/4=3/4>>3/4`) or more digits.
_ANNOTATION = re.compile(r"<<([^<>]*)>>(-?[\d,]*\.?\d+(?![\d/]|[.,]\d))?")
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
_OPERATORS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
              ast.Div: operator.truediv, ast.Pow: operator.pow, ast.FloorDiv: operator.floordiv,
              ast.Mod: operator.mod}
_MAX_EXPONENT = 64  # Larger powers are not grade-school arithmetic and could take forever.


def evaluate(expression: str) -> fractions.Fraction | None:
  """Exact value of a plain arithmetic expression (numbers, + - * / ** // %, parentheses).

  Decimals are read exactly (`0.1` is 1/10, so `4.20+9.45+1.35` is 15, not 14.999...).
  Thousands separators (`12,000`) are accepted; anything else (names, calls, `%` as
  percent, a fractional power, division by zero) gives None. Never runs code.
  """
  text = _THOUSANDS.sub("", expression.strip())
  try:
    return _eval_node(ast.parse(text, mode="eval").body)
  except (SyntaxError, ValueError, ZeroDivisionError, OverflowError, TypeError):
    return None


def _eval_node(node: ast.AST) -> fractions.Fraction:
  if isinstance(node, ast.Constant) and type(node.value) in (int, float):
    return fractions.Fraction(repr(node.value))
  if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
    value = _eval_node(node.operand)
    return -value if isinstance(node.op, ast.USub) else value
  if isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
    left, right = _eval_node(node.left), _eval_node(node.right)
    if isinstance(node.op, ast.Pow) and (right.denominator != 1 or abs(right) > _MAX_EXPONENT):
      raise ValueError("not a small integer power")
    return _OPERATORS[type(node.op)](left, right)
  raise ValueError(f"not arithmetic: {ast.dump(node)}")


def _agrees(value: fractions.Fraction, written: str) -> bool:
  """`written` (a number or an expression) states `value` to its own precision.

  A number with `d` decimals may be off by less than one unit of its last place; the
  relative slack absorbs the float noise of the calculator that produced GSM8K's results
  (`<<0.0375/0.75=0.049999999999999996>>`).
  """
  other = evaluate(written)
  if other is None:
    return False
  number = re.fullmatch(r"-?[\d,]*\.?(\d*)", written)
  unit = fractions.Fraction(1, 10 ** len(number.group(1))) if number else 0
  slack = max(unit, abs(value) * fractions.Fraction(1, 10**9))
  return other == value or abs(other - value) < slack


@dataclasses.dataclass(frozen=True)
class Annotation:
  """One `<<expression=result>>written` occurrence and its verdict.

  ok: True (consistent), False (an arithmetic slip) or None (not checkable).
  """

  text: str
  written: str | None
  ok: bool | None


def check_annotation(inner: str, written: str | None) -> bool | None:
  """Verdict on `<<inner>>written`: every `=`-separated side and `written` agree."""
  sides = inner.split("=")
  if len(sides) < 2:
    return None
  first = evaluate(sides[0])
  if first is None or any(evaluate(side) is None for side in sides[1:]):
    return None
  return all(_agrees(first, side.strip()) for side in sides[1:]) and (
      written is None or _agrees(first, written))


def annotations(step: str) -> list[Annotation]:
  """Every calculator annotation of one step, in order, with its verdict."""
  return [Annotation(m.group(1), m.group(2), check_annotation(m.group(1), m.group(2)))
          for m in _ANNOTATION.finditer(step)]


def step_label(step: str) -> float | None:
  """0.0 if any annotation of the step is a slip, 1.0 if all check, None if none checkable."""
  verdicts = [a.ok for a in annotations(step) if a.ok is not None]
  if not verdicts:
    return None
  return 1.0 if all(verdicts) else 0.0


def calculator_labels(steps: list[str]) -> list[float | None]:
  """Per-step labels from the calculator annotations (see `step_label`)."""
  return [step_label(step) for step in steps]
