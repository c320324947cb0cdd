"""Math-Shepherd: `{"input": str, "label": str}` with a `ки` marker after every step.

`input` is the problem followed by the steps, each ended by ` ки`; `label` is the same text
with each marker replaced by `+` (correct) or `-` (incorrect):

    {"input": "Q? Step 1: 2+2=4 ки\\nStep 2: The answer is: 4 ки",
     "label": "Q? Step 1: 2+2=4 +\\nStep 2: The answer is: 4 +", "task": "GSM8K"}

The problem ends where the first step (`Step 1:`) begins. Steps keep their `Step k:` prefix
(as TRL's conversion of the dataset does) and are stripped of surrounding whitespace; the
writer emits the published layout `"<problem> <step 1> ки\\n<step 2> ки..."`, so records in
that layout round-trip unchanged.
"""

from __future__ import annotations

import re
from typing import Any

from prm_jax.data.jsonl import Format, extra_fields, require
from prm_jax.data.schema import Trajectory

MARKER = "ки"
FIRST_STEP = "Step 1:"
_FIELDS = ("input", "label")


def parse(record: dict[str, Any]) -> Trajectory:
  text = require(record, "input", str)
  tagged = require(record, "label", str)
  pieces = text.split(MARKER)
  if len(pieces) == 1:
    raise ValueError(f"no {MARKER!r} step marker in 'input'")
  if pieces[-1].strip():
    raise ValueError(f"'input' has text after its last {MARKER!r} marker")
  match = re.fullmatch("([+-])".join(map(re.escape, pieces)), tagged, flags=re.DOTALL)
  if match is None:
    raise ValueError(f"'label' is not 'input' with every {MARKER!r} replaced by '+' or '-'")
  head = pieces[0]
  start = head.find(FIRST_STEP)
  if start < 0:
    raise ValueError(f"no {FIRST_STEP!r} starts the first step of 'input'")
  steps = [head[start:]] + pieces[1:-1]
  return Trajectory(problem=head[:start].strip(), steps=[step.strip() for step in steps],
                    labels=[1.0 if sign == "+" else 0.0 for sign in match.groups()],
                    meta=extra_fields(record, _FIELDS))


def render(trajectory: Trajectory) -> dict[str, Any]:
  if not trajectory.steps or not trajectory.hard_labels:
    raise ValueError("Math-Shepherd needs at least one step and a hard label (0 or 1) for each")
  if not trajectory.steps[0].startswith(FIRST_STEP) or FIRST_STEP in trajectory.problem:
    raise ValueError(f"Math-Shepherd's first step starts with {FIRST_STEP!r} (and only it)")
  if any(MARKER in text for text in [trajectory.problem, *trajectory.steps]):
    raise ValueError(f"the text contains the step marker {MARKER!r}")

  def join(tags):
    return trajectory.problem + " " + "\n".join(
        f"{step} {tag}" for step, tag in zip(trajectory.steps, tags))

  return {"input": join([MARKER] * len(trajectory.steps)),
          "label": join(["+" if label == 1.0 else "-" for label in trajectory.labels]),
          **trajectory.meta.get("extra", {})}


FORMAT = Format("math_shepherd", parse, render)
