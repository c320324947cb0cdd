"""CHAMP's first-wrong-step annotations as ProcessBench samples (a converter, not a format).

CHAMP (Mao et al. 2024, arXiv 2401.06961; `pip install champ-dataset`) has 270 competition
problems in 5 categories, and for each, two model-written solutions (GPT-3.5, GPT-4,
GPT-4 Turbo or PaLM 2 Medium, under two prompt settings) whose *first wrong step* a person
marked as a character span of the solution, or "No mistake": 540 annotations. Each becomes
one record of the ProcessBench layout (`prm_jax.data.formats.processbench`):

  problem    the problem text (CHAMP's `@@` markup removed)
  steps      the solution's paragraphs (`thinking.split_steps`: split on blank lines), which
             is what ProcessBench's steps are
  label      the paragraph holding the span's first character: every character before the
             span is annotated correct, so that paragraph is the earliest wrong one, whether
             the span starts it, starts mid-paragraph (a wrong sentence or a line of a
             derivation) or runs over several paragraphs; "No mistake" is -1
  id         `<problem id>|<model>|<prompt setting>`; `generator` the model
  prompt     the prompt setting: "No C w/o H" (the problem alone) or "Direct C w/ H"
             (with concepts and hints)
  truncated  the solution was cut by the generator's length limit (6 of them, all with an
             annotated error before the cut, so their label is still exact)

Dropped: the concepts and hints shown to the generator (a PRM judges the solution against
the problem alone, as in ProcessBench), where the span ends (only where the error starts
matters), the generator's one-sentence answer summary, and `final_answer_correct` (CHAMP has
no verdict on the generators' answers: the field is left out, not guessed). No annotation is
dropped. Subsets are CHAMP's categories, so they hold disjoint problems, as ProcessBench's
subsets (by problem source) do.
"""

from __future__ import annotations

import os
from typing import Any

from prm_jax import files
from prm_jax.data.formats.thinking import split_steps

SUBSETS = {"Combinatorics": "combinatorics", "Inequality": "inequality",
           "Number-Theory": "number_theory", "Polynomial": "polynomial", "Sequence": "sequence"}


def first_wrong_step(text: str, start: int) -> int:
  """Index of the paragraph of `text` (`split_steps`) holding character `start`; a start on
  the blank lines between paragraphs belongs to the next one."""
  if not 0 <= start < len(text) or not text[start:].strip():
    raise ValueError(f"the wrong step starts at character {start}, after the solution's "
                     f"last paragraph ({len(text)} characters)")
  start += len(text[start:]) - len(text[start:].lstrip())
  # The paragraphs of the text before the span, plus one character of the span: a span that
  # starts a paragraph makes a new one, a span inside a paragraph extends its last one.
  return len(split_steps(text[:start] + text[start])) - 1


def load(version: str = "v0"):
  """CHAMP's `champ_dataset.Dataset` (the file shipped in the package)."""
  try:
    import champ_dataset  # pylint: disable=import-outside-toplevel
  except ImportError:
    raise ValueError("CHAMP needs the champ-dataset package: pip install champ-dataset") \
        from None
  return champ_dataset.load(version)


def records(dataset=None) -> dict[str, list[dict[str, Any]]]:
  """`{subset: [ProcessBench record]}` of every annotation of `dataset` (default `load()`),
  in CHAMP's order (problems, then annotations)."""
  dataset = load() if dataset is None else dataset
  subsets: dict[str, list[dict[str, Any]]] = {name: [] for name in SUBSETS.values()}
  for problem_id, problem in dataset.problems.items():
    for key, annotation in problem.fws_annotations.items():
      where = f"CHAMP {problem_id} {key!r}"
      steps = split_steps(annotation.text)
      if not steps:
        raise ValueError(f"{where}: the solution has no text")
      try:
        label = -1 if annotation.start_idx is None else first_wrong_step(
            annotation.text, annotation.start_idx)
      except ValueError as err:
        raise ValueError(f"{where}: {err}") from None
      messages = problem.conversations[key].messages
      subsets[SUBSETS[problem.category]].append({
          "id": f"{problem_id}|{key}", "generator": annotation.author, "problem": problem.text,
          "steps": steps, "label": label, "prompt": key.split("|", 1)[1],
          "truncated": any(m.text == annotation.text and m.error == "LENGTH_CURRENT"
                           for m in messages)})
  return subsets


def write_subsets(folder: str, dataset=None) -> dict[str, int]:
  """`records(dataset)` as ProcessBench's release lays it out: `<folder>/<subset>.json`, one
  JSON list per subset, each written atomically. Returns `{subset: number of records}`."""
  counts = {}
  for subset, rows in records(dataset).items():
    files.write_json(os.path.join(folder, f"{subset}.json"), rows)
    counts[subset] = len(rows)
  return counts
