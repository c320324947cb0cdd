"""JSON-lines I/O shared by every format: line-numbered errors, `skip_bad`, atomic writes.

A format supplies `parse(record: dict) -> example`, raising `ValueError(reason)` for a bad
record; `iter_jsonl` turns that (and broken JSON) into a `DataFormatError` reading
`"<file>:<line>: <reason>"`, or, with `skip_bad=True`, counts and reports the line instead.
Blank lines are ignored (a trailing newline is not a record). `iter_records` also reads a
file holding one JSON list of records (how ProcessBench is released), numbering each record
by the line it starts on.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Callable, Iterable, Iterator, TypeVar

from prm_jax import files

T = TypeVar("T")


class DataFormatError(ValueError):
  """A malformed input record: `str(err) == "<path>:<line>: <reason>"`."""

  def __init__(self, path: str, line: int, reason: str):
    super().__init__(f"{path}:{line}: {reason}")
    self.path, self.line, self.reason = str(path), line, reason


@dataclasses.dataclass
class ReadResult:
  """What a reader returns: the parsed examples and the lines `skip_bad` passed over."""

  examples: list
  skipped: list[DataFormatError]

  def summary(self) -> str:
    """One line for logs: counts, and the first skipped line's reason if any."""
    text = f"read {len(self.examples)} examples, skipped {len(self.skipped)} bad lines"
    return f"{text} (first: {self.skipped[0]})" if self.skipped else text


def require(record: dict[str, Any], key: str, kind: type | tuple[type, ...]) -> Any:
  """`record[key]`, or a `ValueError` naming the missing field or its wrong type."""
  if key not in record:
    raise ValueError(f"missing field {key!r}")
  value = record[key]
  # bool is an int subclass; a JSON true where a number belongs is a format error.
  if not isinstance(value, kind) or (isinstance(value, bool) and bool not in _as_tuple(kind)):
    names = "/".join(k.__name__ for k in _as_tuple(kind))
    raise ValueError(f"field {key!r} must be {names}, got {type(value).__name__}")
  return value


def _as_tuple(kind: type | tuple[type, ...]) -> tuple[type, ...]:
  return kind if isinstance(kind, tuple) else (kind,)


def require_strings(record: dict[str, Any], key: str) -> list[str]:
  """`record[key]` as a list of strings, or a `ValueError` naming the bad item."""
  values = require(record, key, list)
  for i, value in enumerate(values):
    if not isinstance(value, str):
      raise ValueError(f"{key}[{i}] must be a string, got {type(value).__name__}")
  return values


def extra_fields(record: dict[str, Any], known: Iterable[str]) -> dict[str, Any]:
  """`meta` for a parsed record: its fields outside `known`, kept under `"extra"`."""
  known = set(known)
  extra = {k: v for k, v in record.items() if k not in known}
  return {"extra": extra} if extra else {}


@dataclasses.dataclass(frozen=True)
class Format:
  """A JSONL format: `parse(record) -> Trajectory` and its inverse `render`.

  `parse` raises `ValueError(reason)` on a malformed record; `render` raises `ValueError`
  when a trajectory cannot be expressed in the format (e.g. soft labels in a hard-label
  format). `render(parse(r)) == r` for every well-formed record `r` in the format's
  canonical layout; `meta["extra"]` carries the fields the format does not interpret.
  """

  name: str
  parse: Callable[[dict[str, Any]], Any]
  render: Callable[[Any], dict[str, Any]]


def iter_jsonl(path: str | os.PathLike, parse: Callable[[dict[str, Any]], T], *,
               skip_bad: bool = False,
               skipped: list[DataFormatError] | None = None) -> Iterator[tuple[int, T]]:
  """`(line_number, parse(record))` for each record of `path`, streamed from disk.

  Args:
    path: a JSON-lines file, one JSON object per line.
    parse: record -> example; raises `ValueError(reason)` for a bad record.
    skip_bad: report bad lines in `skipped` instead of raising `DataFormatError`.
    skipped: list that receives the `DataFormatError` of every skipped line.
  """
  path = os.fspath(path)
  with open(path, encoding="utf-8") as f:
    for number, line in enumerate(f, start=1):
      if not line.strip():
        continue
      try:
        yield number, parse(_load_object(line))
      except ValueError as err:
        error = DataFormatError(path, number, str(err))
        if not skip_bad:
          raise error from None
        if skipped is not None:
          skipped.append(error)


def iter_records(path: str | os.PathLike, parse: Callable[[dict[str, Any]], T], *,
                 skip_bad: bool = False,
                 skipped: list[DataFormatError] | None = None) -> Iterator[tuple[int, T]]:
  """`iter_jsonl` for a JSON-lines file or a file holding one JSON list of objects.

  A file whose first non-blank character is `[` is a list: it is read whole, and record `i`
  (0-based) is reported as `"<file>:<line>: record <i>: <reason>"`, `line` being where the
  record starts. Broken JSON inside a list always raises (the records after it cannot be
  located), even with `skip_bad`.
  """
  path = os.fspath(path)
  if not _holds_list(path):
    yield from iter_jsonl(path, parse, skip_bad=skip_bad, skipped=skipped)
    return
  with open(path, encoding="utf-8") as f:
    text = f.read()
  for index, (line, record) in enumerate(_list_items(path, text)):
    try:
      yield line, parse(_as_object(record))
    except ValueError as err:
      error = DataFormatError(path, line, f"record {index}: {err}")
      if not skip_bad:
        raise error from None
      if skipped is not None:
        skipped.append(error)


def _holds_list(path: str) -> bool:
  """Whether the file's first non-blank character is `[` (read in chunks: JSON-lines
  files can be large and are streamed)."""
  with open(path, encoding="utf-8") as f:
    for chunk in iter(lambda: f.read(1 << 16), ""):
      if chunk.strip():
        return chunk.lstrip().startswith("[")
  return False


def _list_items(path: str, text: str) -> Iterator[tuple[int, Any]]:
  """`(line, value)` of every item of the JSON list `text`, decoded one item at a time so
  that each is located (`json.loads` of the whole list would not say where an item is)."""
  decoder, line, counted = json.JSONDecoder(), 1, 0

  def skip_space(position: int) -> int:
    while position < len(text) and text[position] in " \t\n\r":  # JSON's whitespace.
      position += 1
    return position

  def line_at(position: int) -> int:
    nonlocal line, counted
    line, counted = line + text.count("\n", counted, position), position
    return line

  position = skip_space(skip_space(0) + 1)  # After the opening `[`.
  while not text.startswith("]", position):
    try:
      value, end = decoder.raw_decode(text, position)
    except json.JSONDecodeError as err:
      raise DataFormatError(path, err.lineno, f"invalid JSON ({err.msg} at column "
                            f"{err.colno})") from None
    yield line_at(position), value
    position = skip_space(end)
    if text.startswith("]", position):
      break
    if not text.startswith(",", position):
      raise DataFormatError(path, line_at(position), "expected ',' or ']' after a list item")
    position = skip_space(position + 1)
  if skip_space(position + 1) < len(text):
    raise DataFormatError(path, line_at(skip_space(position + 1)),
                          "text after the list's closing ']'")


def _load_object(line: str) -> dict[str, Any]:
  try:
    record = json.loads(line)
  except json.JSONDecodeError as err:
    raise ValueError(f"invalid JSON ({err.msg} at column {err.colno})") from None
  return _as_object(record)


def _as_object(record: Any) -> dict[str, Any]:
  if not isinstance(record, dict):
    raise ValueError(f"expected a JSON object, got {type(record).__name__}")
  return record


def _dumps(record: dict[str, Any]) -> str:
  # UTF-8 stays readable, but the Unicode line separators are escaped: readers that split
  # lines with `str.splitlines` (or JavaScript) would break a record at them.
  text = json.dumps(record, ensure_ascii=False, allow_nan=False)
  return text.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")


def write_jsonl(path: str | os.PathLike, records: Iterable[dict[str, Any]]) -> int:
  """Write records as JSON lines, atomically: `path` is replaced only once all are written.

  A record that cannot be written (an exception from the iterable or from `json.dumps`)
  leaves any existing file at `path` untouched. Returns the number of records written.
  """
  def write(tmp: str) -> int:
    count = 0
    with open(tmp, "w", encoding="utf-8") as f:
      for record in records:
        f.write(_dumps(record) + "\n")
        count += 1
    return count
  return files.atomic_write(path, write)
