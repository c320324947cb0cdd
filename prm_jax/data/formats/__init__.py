"""Step-labelled trajectory formats (JSON lines) and one entry point to read / write them.

| name | record | labels |
|---|---|---|
| `prm_jax` | `Trajectory.to_dict()` | hard, soft or unknown |
| `trl` | `{"prompt", "completions", "labels": [bool]}` | hard |
| `math_shepherd` | `{"input", "label"}` with `ки` / `+` / `-` step markers | hard |
| `processbench` | `{"problem", "steps", "label": earliest error or -1}` | up to the error |
| `gsm8k` | `{"question", "answer"}`, steps = lines, `#### x` last | none |
| `s1k` | `{"question", "thinking_trajectories", "attempt", "solution"?}` | none |
| `reasoning` | `{"prompt", "reasoning", "response", "answer"?}` | none |

The last two are thinking trajectory + response pairs, both split into steps on blank lines
(`steps` = thinking, `response` = response steps; see `prm_jax.data.formats.thinking`).

Files hold JSON lines or one JSON list of records (`prm_jax.data.jsonl.iter_records`; how
ProcessBench is released). `read(path, "trl")` raises `DataFormatError("<file>:<line>:
<reason>")` on the first bad line (in a list: `"<file>:<line>: record <i>: <reason>"`);
`read(..., skip_bad=True)` skips bad lines and reports them in the result (and a logged
warning). Every read trajectory gets `meta["source"] = "<file>:<line>"` unless it
already has one (a native record written from an earlier read keeps its origin).
"""

from __future__ import annotations

import logging
import os
from typing import Iterable, Iterator

from prm_jax.data.formats import gsm8k, math_shepherd, processbench, thinking, trl
from prm_jax.data.jsonl import DataFormatError, Format, ReadResult, iter_records, write_jsonl
from prm_jax.data.schema import Trajectory

NATIVE = Format("prm_jax", Trajectory.from_dict, Trajectory.to_dict)
FORMATS: dict[str, Format] = {
    f.name: f for f in (NATIVE, trl.FORMAT, math_shepherd.FORMAT, processbench.FORMAT,
                        gsm8k.FORMAT, thinking.S1K, thinking.REASONING)}


def get_format(name: str) -> Format:
  if name not in FORMATS:
    raise ValueError(f"unknown data format {name!r}; known: {sorted(FORMATS)}")
  return FORMATS[name]


def iter_trajectories(path: str | os.PathLike, format: str, *, skip_bad: bool = False,
                      skipped: list[DataFormatError] | None = None) -> Iterator[Trajectory]:
  """Stream the trajectories of a JSONL or JSON-list file (`prm_jax.data.jsonl.iter_records`)."""
  parse = get_format(format).parse
  for line, trajectory in iter_records(path, parse, skip_bad=skip_bad, skipped=skipped):
    trajectory.meta.setdefault("source", f"{os.fspath(path)}:{line}")
    yield trajectory


def read(path: str | os.PathLike, format: str, *, skip_bad: bool = False) -> ReadResult:
  """All trajectories of a JSONL or JSON-list file in `format`; skipped records are logged
  and returned."""
  skipped: list[DataFormatError] = []
  result = ReadResult(list(iter_trajectories(path, format, skip_bad=skip_bad, skipped=skipped)),
                      skipped)
  if skipped:
    logging.warning("%s: %s", os.fspath(path), result.summary())
  return result


def write(path: str | os.PathLike, trajectories: Iterable[Trajectory], format: str) -> int:
  """Write trajectories as JSONL in `format`, atomically; returns the number written.

  A trajectory the format cannot express raises `ValueError("example <i>: <reason>")` and
  leaves any existing file at `path` unchanged.
  """
  render = get_format(format).render

  def records():
    for index, trajectory in enumerate(trajectories):
      try:
        yield render(trajectory)
      except ValueError as err:
        raise ValueError(f"example {index}: {err}") from None

  return write_jsonl(path, records())


__all__ = ["DataFormatError", "FORMATS", "Format", "NATIVE", "ReadResult", "get_format",
           "iter_trajectories", "read", "write"]
