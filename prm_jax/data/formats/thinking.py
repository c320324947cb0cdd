"""Thinking trajectory + final response pairs (ReasonFlux-PRM), and their step split.

A reasoning model writes a long thinking trajectory, then a concise response. ReasonFlux-PRM
(Zou et al., arXiv 2506.18896) splits both into steps on blank lines (`split_steps`) and
aligns the thinking steps with the response steps (`align_steps`). As a `Trajectory`:
`steps` = thinking steps, `response` = response steps, `answer` = the gold answer.

Two JSONL layouts:

| name | record |
|---|---|
| `s1k` | `{"question", "thinking_trajectories": [str] or str, "attempt", "solution"?}` (s1K) |
| `reasoning` | `{"prompt", "reasoning", "response", "answer"?}` |

`s1k`: of a list of thinking trajectories the first is the thinking; the others are kept in
`meta["other_thinking_trajectories"]` and written back after it (a bare string is read as a
one-trajectory list and written as one). `solution` (s1K's reference solution) is the gold
answer. Other fields of either layout are kept in `meta["extra"]` and written back.

A record's thinking must have at least one step; its response may be empty (`response` is
then None). Writers join steps with one blank line (`"\\n\\n"`), so a trajectory written and
read back is equal (labels and `meta` other than the fields above are not stored: use the
native `prm_jax` format for those); records whose texts are already in that canonical layout
(stripped steps, one blank line between them) round-trip unchanged.
"""

from __future__ import annotations

import re
from typing import Any

from prm_jax.data.jsonl import Format, extra_fields, require, require_strings
from prm_jax.data.schema import Trajectory

STEP_SEPARATOR = "\n\n"
# A line break followed by one or more lines holding only (any Unicode) whitespace.
_BLANK_LINES = re.compile(r"\n(?:[^\S\n]*\n)+")
_OTHER_THINKING = "other_thinking_trajectories"


def split_steps(text: str) -> list[str]:
  """The steps of a thinking or response text: split on blank lines, stripped, non-empty.

  A blank line is one holding only whitespace (Unicode whitespace included); `\\r\\n` and
  lone `\\r` count as line breaks. Single line breaks stay inside a step.

    split_steps("a\\n\\n b\\nc \\r\\n  \\r\\n\\n d") == ["a", "b\\nc", "d"]
  """
  text = text.replace("\r\n", "\n").replace("\r", "\n")
  steps = (step.strip() for step in _BLANK_LINES.split(text))
  return [step for step in steps if step]


def step_pairing(num_thinking: int, num_response: int) -> list[int]:
  """The response step each thinking step pairs with (`[num_thinking]` indices), by
  `align_steps`' rule: with more thinking than response steps, the group step t is merged
  into; otherwise `min(t, num_response - 1)`. An empty response pairs nothing (all -1)."""
  if num_response == 0:
    return [-1] * num_thinking
  if num_thinking <= num_response:
    return list(range(num_thinking))
  size, extra = divmod(num_thinking, num_response)
  # The first `extra` groups hold `size + 1` steps, the rest `size`.
  return [t // (size + 1) if t < extra * (size + 1) else extra + (t - extra * (size + 1)) // size
          for t in range(num_thinking)]


def align_steps(thinking: list[str], response: list[str]) -> list[str]:
  """Thinking steps merged so that there are no more of them than response steps.

  With `T = len(thinking) > R = len(response) > 0`, the thinking steps are merged into `R`
  contiguous groups, in order, each joined with `"\\n\\n"`: the group sizes are as even as
  possible, the first `T mod R` groups taking one step more (`T // R + 1`, then `T // R`).
  E.g. 7 thinking steps onto 3 response steps merge as `[s1..s3], [s4, s5], [s6, s7]`.
  Thinking step `t` then pairs with response step `t` (`step_pairing` gives the group of
  every unmerged step).

  With `T <= R` or an empty response the thinking is returned unchanged; thinking step `t`
  then pairs with response step `min(t, R - 1)` (the same `t`: later response steps have no
  thinking step of their own).

  Args:
    thinking: thinking steps `s_1..s_T`.
    response: response steps `a_1..a_R` (only their number matters).
  Returns:
    `min(T, R)` steps if `R > 0`, else `T`; a new list.
  """
  if len(thinking) <= len(response) or not response:
    return list(thinking)
  groups: list[list[str]] = [[] for _ in response]
  for step, group in zip(thinking, step_pairing(len(thinking), len(response))):
    groups[group].append(step)
  return [STEP_SEPARATOR.join(group) for group in groups]


def _steps_of(text: str, field: str, *, required: bool) -> list[str]:
  steps = split_steps(text)
  if required and not steps:
    raise ValueError(f"field {field!r} has no step (it is empty or only whitespace)")
  return steps


def _join(steps: list[str], what: str) -> str:
  """`steps` as one text that `split_steps` reads back as the same steps."""
  for index, step in enumerate(steps):
    if split_steps(step) != [step]:
      raise ValueError(f"{what} step {index} would not read back as one step (it is empty, "
                       f"has surrounding whitespace or a blank line): {step!r}")
  return STEP_SEPARATOR.join(steps)


def _thinking_text(trajectory: Trajectory) -> str:
  if not trajectory.steps:
    raise ValueError("a thinking trajectory needs at least one step")
  return _join(trajectory.steps, "thinking")


def _optional(key: str, value: str | None) -> dict[str, str]:
  return {} if value is None else {key: value}


# s1K. ------------------------------------------------------------------------------------

_S1K_FIELDS = ("question", "thinking_trajectories", "attempt", "solution")


def _s1k_thinking(record: dict[str, Any]) -> list[str]:
  if isinstance(record.get("thinking_trajectories"), str):
    return [record["thinking_trajectories"]]
  trajectories = require_strings(record, "thinking_trajectories")
  if not trajectories:
    raise ValueError("field 'thinking_trajectories' is an empty list")
  return trajectories


def parse_s1k(record: dict[str, Any]) -> Trajectory:
  question = require(record, "question", str)
  thinking, *others = _s1k_thinking(record)
  attempt = require(record, "attempt", str)
  solution = require(record, "solution", str) if "solution" in record else None
  meta = extra_fields(record, _S1K_FIELDS)
  if others:
    meta[_OTHER_THINKING] = others
  return Trajectory(problem=question,
                    steps=_steps_of(thinking, "thinking_trajectories", required=True),
                    response=_steps_of(attempt, "attempt", required=False), answer=solution,
                    meta=meta)


def render_s1k(trajectory: Trajectory) -> dict[str, Any]:
  others = trajectory.meta.get(_OTHER_THINKING, [])
  return {"question": trajectory.problem,
          "thinking_trajectories": [_thinking_text(trajectory), *others],
          "attempt": _join(trajectory.response or [], "response"),
          **_optional("solution", trajectory.answer), **trajectory.meta.get("extra", {})}


# prompt / reasoning / response. ----------------------------------------------------------

_REASONING_FIELDS = ("prompt", "reasoning", "response", "answer")


def parse_reasoning(record: dict[str, Any]) -> Trajectory:
  prompt = require(record, "prompt", str)
  thinking = _steps_of(require(record, "reasoning", str), "reasoning", required=True)
  response = _steps_of(require(record, "response", str), "response", required=False)
  answer = require(record, "answer", str) if "answer" in record else None
  return Trajectory(problem=prompt, steps=thinking, response=response, answer=answer,
                    meta=extra_fields(record, _REASONING_FIELDS))


def render_reasoning(trajectory: Trajectory) -> dict[str, Any]:
  return {"prompt": trajectory.problem, "reasoning": _thinking_text(trajectory),
          "response": _join(trajectory.response or [], "response"),
          **_optional("answer", trajectory.answer), **trajectory.meta.get("extra", {})}


S1K = Format("s1k", parse_s1k, render_s1k)
REASONING = Format("reasoning", parse_reasoning, render_reasoning)
