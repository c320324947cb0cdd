"""`Trajectory`: the one in-memory record every reader produces and every consumer takes.

A trajectory is a problem, the steps of one solution, and what is known about each step:

  * `labels[t]` in [0, 1] is the probability that step t is correct: hard labels are 0.0 / 1.0,
    soft labels (Monte Carlo success fractions) anything in between, `None` = unknown
    (e.g. ProcessBench annotates only up to the earliest error). `labels=None` means no step
    label is known; a list holding only `None` is normalised to `None`, so the two spellings
    compare equal.
  * `answer` is the gold final answer of the problem (not the answer the steps reach).
  * `response` holds the response steps of a thinking-trajectory + response pair
    (ReasonFlux-PRM); `steps` are then the thinking steps.
  * `meta` is free-form JSON-serialisable provenance: readers record the source
    `"<file>:<line>"` and the source format's other fields (under `"extra"`, written back
    by the writer of that format).

Empty `answer` / `response` are normalised to `None`: stored formats cannot tell them apart.
"""

from __future__ import annotations

import dataclasses
from typing import Any


def _check_strings(name: str, values: Any) -> list[str]:
  if not isinstance(values, (list, tuple)):
    raise ValueError(f"{name} must be a list of strings, got {type(values).__name__}")
  for i, value in enumerate(values):
    if not isinstance(value, str):
      raise ValueError(f"{name}[{i}] must be a string, got {type(value).__name__}")
  return list(values)


def _check_label(index: int, label: Any) -> float | None:
  if label is None:
    return None
  if not isinstance(label, (bool, int, float)) or not 0.0 <= label <= 1.0:
    raise ValueError(f"labels[{index}] must be a number in [0, 1] or null, got {label!r}")
  return float(label)


@dataclasses.dataclass
class Trajectory:
  """One step-segmented solution of a problem (see module docstring).

  Attributes:
    problem: the problem / prompt text.
    steps: the solution steps, in order (the PRM scores each one).
    labels: per-step P(correct) in [0, 1] or None (unknown), `len(labels) == len(steps)`;
      None if no label is known.
    answer: the gold final answer, or None.
    response: response steps of a thinking + response pair, or None.
    meta: JSON-serialisable provenance and format-specific fields.
  """

  problem: str
  steps: list[str]
  labels: list[float | None] | None = None
  answer: str | None = None
  response: list[str] | None = None
  meta: dict[str, Any] = dataclasses.field(default_factory=dict)

  def __post_init__(self):
    if not isinstance(self.problem, str):
      raise ValueError(f"problem must be a string, got {type(self.problem).__name__}")
    self.steps = _check_strings("steps", self.steps)
    if self.labels is not None:
      if not isinstance(self.labels, (list, tuple)):
        raise ValueError(f"labels must be a list, got {type(self.labels).__name__}")
      if len(self.labels) != len(self.steps):
        raise ValueError(f"{len(self.labels)} labels for {len(self.steps)} steps")
      labels = [_check_label(i, label) for i, label in enumerate(self.labels)]
      self.labels = None if all(label is None for label in labels) else labels
    if self.answer is not None and not isinstance(self.answer, str):
      raise ValueError(f"answer must be a string or null, got {type(self.answer).__name__}")
    self.answer = self.answer or None
    if self.response is not None:
      self.response = _check_strings("response", self.response) or None
    if not isinstance(self.meta, dict):
      raise ValueError(f"meta must be a dict, got {type(self.meta).__name__}")

  @property
  def hard_labels(self) -> bool:
    """Every step's label is known and exactly 0 or 1 (vacuously true without steps)."""
    labels = self.labels or [None] * len(self.steps)
    return all(label in (0.0, 1.0) for label in labels)

  def to_dict(self) -> dict[str, Any]:
    """Plain JSON-ready dict (the native `prm_jax` JSONL record)."""
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, record: dict[str, Any]) -> Trajectory:
    """Inverse of `to_dict`; unknown keys are an error (they are usually typos)."""
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(record) - fields)
    if unknown:
      raise ValueError(f"unknown field(s) {unknown}; expected some of {sorted(fields)}")
    for required in ("problem", "steps"):
      if required not in record:
        raise ValueError(f"missing field {required!r}")
    return cls(**record)

