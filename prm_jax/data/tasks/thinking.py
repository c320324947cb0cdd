"""Synthetic thinking trajectory + response pairs of known quality, on the chain tasks.

Ground truth for ReasonFlux-PRM data (`prm_jax.data.formats.thinking`): each problem gets a
thinking trajectory of one *kind* and a response, and every thinking step's quality is
known by construction (and agrees with `task.check`, see the tests):

| kind | thinking | response |
|---|---|---|
| `clean` | the clean solution | the clean solution |
| `exploration` | a wrong attempt at a step, a check rejecting it, then the clean solution | clean |
| `redundant` | the clean solution with one correct step derived again | clean |
| `unrecovered` | one error that later steps build on (wrong final answer) | the same, wrong |
| `unsupported` | the same wrong thinking | the clean solution |

Errors are the task's own (`task.flawed`, any of `ERROR_KINDS`). Thinking steps are solution
lines phrased by role, one line each (so `split_steps` of the text joined with blank lines
gives them back); `parse_thinking_step` reads the line back:

| role | text | quality |
|---|---|---|
| `move` | `"First, 7+5=12."`, `"Then ..."` / `"Next, ..."` / `"Now ..."` | 1.0 / 0.0 |
| | `"So the answer is #### 32."` for the answer line | |
| `retracted` | a move (a wrong attempt) that the next step rejects | 0.0 |
| `check` | `"Check: 7+5=13 is wrong, redo."` | 1.0 |
| `again` | `"Again: 7+5=12."` (a correct step derived a second time) | 0.5 |

A move's quality is the checker's prefix label over the committed moves (the moves that are
not retracted): 1.0 while they are on track, 0.0 from the first wrong one on, since no step
on a wrong track leads to the gold answer. A check that catches a real error is useful (1.0);
a re-derivation is correct but adds nothing (`REDUNDANT_QUALITY`).

`meta` of each trajectory (with `labels == meta["step_quality"]`):
  * `kind`, `task`, `error_kind` (the injected `ERROR_KINDS` name, or None);
  * `step_roles`, `step_quality`: per thinking step, as above;
  * `step_supports`: per thinking step, whether it agrees with the response: a move, retracted
    attempt or re-derivation states a line the response contains; a check rejects a line the
    response does not contain;
  * `response_correct`: `task.check(problem, response).solved`;
  * `trajectory_quality = response_correct * supported * (1 - WASTE_PENALTY * wasted)`, where
    `supported` = every committed move supports the response and `wasted` counts the steps
    that do not advance the solution (retracted attempts, checks, re-derivations). Per kind:
    clean 1.0 > redundant 0.9 > exploration 0.8 > unrecovered = unsupported = 0.0.
"""

from __future__ import annotations

import re
from typing import NamedTuple, Sequence

import numpy as np

from prm_jax.data.schema import Trajectory
from prm_jax.data.tasks.base import ANSWER_PREFIX, ERROR_KINDS, ChainTask, Flawed, check_subset

THINKING_KINDS = ("clean", "exploration", "redundant", "unrecovered", "unsupported")
REDUNDANT_QUALITY = 0.5
WASTE_PENALTY = 0.1

_FIRST, _LEADS, _CONCLUDE = "First, ", ("Then ", "Next, ", "Now "), "So the answer is "
_FORMS = {
    "move": re.compile(r"(?:First, |Then |Next, |Now |So the answer is )(.+)\."),
    "again": re.compile(r"Again: (.+)\."),
    "check": re.compile(r"Check: (.+) is wrong, redo\."),
}


class _Step(NamedTuple):
  """One planned thinking step: its role, the solution line it states, its quality."""

  role: str
  line: str
  quality: float


def parse_thinking_step(step: str) -> tuple[str, str]:
  """`(form, line)` of a generated thinking step: form is "move", "again" or "check".

  `line` is the solution line the step states (for a check, the line it rejects). A
  retracted attempt reads as a "move": only the check after it tells it apart.
  """
  for form, pattern in _FORMS.items():
    match = pattern.fullmatch(step)
    if match:
      return form, match.group(1)
  raise ValueError(f"not a generated thinking step: {step!r}")


def _moves(lines: Sequence[str], first_error: int = -1) -> list[_Step]:
  """Committed moves; with `first_error >= 0` the ones from it on are on a wrong track."""
  return [_Step("move", line, float(first_error < 0 or i < first_error))
          for i, line in enumerate(lines)]


def _error(task: ChainTask, problem: str, rng: np.random.Generator, changes_answer: bool,
           error_kinds: Sequence[str]) -> Flawed | None:
  """A solution with one injected error of a random applicable kind of `error_kinds` (one
  that changes the final answer if `changes_answer`), or None if there is none."""
  for kind in rng.permutation(sorted(error_kinds)):
    flawed = task.flawed(problem, str(kind), rng)
    if flawed and not (changes_answer and task.check(problem, flawed.steps).solved):
      return flawed
  return None


def _plan(task: ChainTask, problem: str, kind: str, rng: np.random.Generator,
          error_kinds: Sequence[str]) -> tuple[list[_Step], list[str], str | None] | None:
  """(thinking steps, response steps, injected error kind), None if `kind` cannot occur."""
  clean = task.solve(problem)
  if kind == "clean":
    return _moves(clean), clean, None
  if kind == "redundant":
    index = int(rng.integers(len(clean) - 1))  # An operation step, not the answer line.
    plan = _moves(clean)
    plan.insert(index + 1, _Step("again", clean[index], REDUNDANT_QUALITY))
    return plan, clean, None
  if kind == "exploration":
    flawed = _error(task, problem, rng, False, error_kinds)
    if flawed is None:
      return None
    wrong, at = flawed.steps[flawed.first_error], flawed.first_error
    detour = [_Step("retracted", wrong, 0.0), _Step("check", wrong, 1.0)]
    return _moves(clean[:at]) + detour + _moves(clean[at:]), clean, flawed.kind
  if kind in ("unrecovered", "unsupported"):
    flawed = _error(task, problem, rng, True, error_kinds)
    if flawed is None:
      return None
    response = flawed.steps if kind == "unrecovered" else clean
    return _moves(flawed.steps, flawed.first_error), response, flawed.kind
  raise ValueError(f"unknown thinking kind {kind!r}; known: {THINKING_KINDS}")


def _phrase(plan: Sequence[_Step], rng: np.random.Generator) -> list[str]:
  texts = []
  for index, step in enumerate(plan):
    if step.role == "check":
      texts.append(f"Check: {step.line} is wrong, redo.")
    elif step.role == "again":
      texts.append(f"Again: {step.line}.")
    elif step.line.startswith(ANSWER_PREFIX):
      texts.append(f"{_CONCLUDE}{step.line}.")
    else:
      lead = _FIRST if index == 0 else _LEADS[int(rng.integers(len(_LEADS)))]
      texts.append(f"{lead}{step.line}.")
  return texts


def straight_thinking(lines: Sequence[str]) -> list[str]:
  """Solution lines phrased as a `clean` trajectory's thinking, one move per line (leads
  drawn from a fixed stream: the same lines always read the same). How a response written
  without a thinking phase is read as a thinking + response pair (`rewards.ReasonFluxPRM`)."""
  return _phrase(_moves(lines), np.random.default_rng(0))


def thinking_trajectory(task: ChainTask, problem: str, kind: str, rng: np.random.Generator,
                        error_kinds: Sequence[str] = tuple(ERROR_KINDS)) -> Trajectory:
  """One thinking + response pair of `kind` for `problem` (see the module docstring).

  A kind that cannot occur on the problem (no injectable error changes its answer) falls
  back to "clean"; `meta["kind"]` names the kind generated.
  """
  planned = _plan(task, problem, kind, rng, error_kinds)
  if planned is None:
    kind, planned = "clean", _plan(task, problem, "clean", rng, error_kinds)
  plan, response, error_kind = planned
  supports = [(step.line in response) != (step.role == "check") for step in plan]
  response_correct = task.check(problem, response).solved
  supported = all(ok for step, ok in zip(plan, supports) if step.role == "move")
  wasted = sum(step.role != "move" for step in plan)
  quality = float(response_correct and supported) * max(0.0, 1.0 - WASTE_PENALTY * wasted)
  labels = [step.quality for step in plan]
  return Trajectory(problem=problem, steps=_phrase(plan, rng), labels=labels,
                    answer=task.answer(problem), response=list(response),
                    meta={"task": task.name, "kind": kind, "error_kind": error_kind,
                          "step_roles": [step.role for step in plan], "step_quality": labels,
                          "step_supports": supports, "response_correct": response_correct,
                          "trajectory_quality": quality})


def generate_thinking(task: ChainTask, problems: Sequence[str], *, seed: int,
                      kinds: Sequence[str] = THINKING_KINDS,
                      error_kinds: Sequence[str] = tuple(ERROR_KINDS)) -> list[Trajectory]:
  """One thinking + response pair per problem, deterministic in `seed`.

  Problem `i` gets kind `kinds[i % len(kinds)]` (round robin, so every kind appears equally
  often; list a kind twice to weigh it more), unless it falls back to "clean" (see
  `thinking_trajectory`). Injected errors are of `error_kinds` (`ERROR_KINDS` names).
  """
  check_subset("kinds", kinds, THINKING_KINDS)
  check_subset("error_kinds", error_kinds, tuple(ERROR_KINDS))
  rng = np.random.default_rng([seed, 3])  # A stream apart from the problems' and corpora's.
  return [thinking_trajectory(task, problem, kinds[i % len(kinds)], rng, error_kinds)
          for i, problem in enumerate(problems)]


# ----------------------------------------------------------------------------- exact targets


def _committed(earlier: Sequence[str]) -> list[str]:
  """The solution lines the thinking steps `earlier` stand by: every move, less the ones a
  check right after them rejected."""
  lines = []
  for step in earlier:
    form, line = parse_thinking_step(step)
    if form == "move":
      lines.append(line)
    elif form == "check" and lines and lines[-1] == line:
      lines.pop()
  return lines


def checker_judge(task: ChainTask):
  """The exact quality judge of generated thinking steps (a ReasonFlux `Judge`):
  `judge(problem, earlier_steps, step, response) -> [0, 1]` from the task's checker alone.

    move     1.0 if the committed lines so far and this one are all correct (the
             checker's prefix label), else 0.0 (a wrong attempt, or a step on a wrong track)
    check    1.0 if the line it rejects is the last committed one and is wrong, else 0.0
    again    REDUNDANT_QUALITY if it restates a committed line that was on track, else 0.0

  It sees the steps before `step` only, as a judge of `s_t` given `x, s_<t` must; on
  `generate_thinking`'s pairs it gives back their known `step_quality` (tests)."""
  def on_track(problem: str, lines: Sequence[str]) -> bool:
    return all(task.check(problem, list(lines)).step_correct)

  def judge(problem: str, earlier: Sequence[str], step: str, response: Sequence[str]) -> float:
    del response  # The checker knows the gold solution; the response adds nothing.
    committed = _committed(earlier)
    form, line = parse_thinking_step(step)
    if form == "check":
      return float(bool(committed) and committed[-1] == line
                   and not on_track(problem, committed))
    if form == "again":
      return REDUNDANT_QUALITY * float(
          line in committed and on_track(problem, committed[:committed.index(line) + 1]))
    return float(on_track(problem, committed + [line]))
  return judge


def plan_template(task: ChainTask, problem: str, response: Sequence[str]) -> str:
  """The template of a pair `(x, y)` on a chain task: the operations the response's steps
  apply, in order, from the problem's start, written as a problem (`"7+5*3=?"`); "" if
  no step of the response parses (no plan to follow).

  A policy solving the template follows the response's plan; its final answer is right
  for `x` only if the plan is (a skipped or misread operation is not; an arithmetic slip
  in the response leaves the plan right). This is ReasonFlux's template-guided trajectory
  reward on data whose templates can be read exactly."""
  start, _ = task.parse_problem(problem)
  ops = [parsed[0] for line in response
         if (parsed := task.parse_step(line.strip())) is not None]
  return task.render_problem(start, ops) if ops else ""

