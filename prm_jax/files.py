"""Writing files so that a crash never leaves a half-written one behind."""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any, Callable


def atomic_write(path: str | os.PathLike, write: Callable[[str], Any]) -> Any:
  """Call `write(tmp_path)`, then rename the temporary file onto `path` (atomic on POSIX).

  If `write` raises, the temporary file is removed and any existing `path` is untouched.
  Returns what `write` returned.
  """
  path = os.fspath(path)
  folder = os.path.dirname(os.path.abspath(path))
  os.makedirs(folder, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-" + os.path.basename(path))
  os.close(fd)
  try:
    result = write(tmp)
    os.replace(tmp, path)
    return result
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise


def write_text(path: str | os.PathLike, text: str) -> None:
  """`text` (UTF-8) at `path`, atomically."""
  def write(tmp):
    with open(tmp, "w", encoding="utf-8") as f:
      f.write(text)
  atomic_write(path, write)


def write_json(path: str | os.PathLike, value: Any) -> None:
  """`value` as indented JSON, atomically. NaN/Inf are not JSON: they raise (write None)."""
  write_text(path, json.dumps(value, indent=1, allow_nan=False) + "\n")


def read_json(path: str | os.PathLike) -> Any:
  with open(path, encoding="utf-8") as f:
    return json.load(f)
