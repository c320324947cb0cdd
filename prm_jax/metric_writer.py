"""Where training metrics go: `metrics.jsonl`, TensorBoard event files, console progress.

All three live in (or print for) one workdir and only process 0 writes. A resumed run
continues the same files without duplicating or losing lines: `metrics.jsonl` keeps the
records at steps <= the restored step (plus a record cut off mid-line by a kill is
dropped) and TensorBoard is told to purge later events (`purge_step`).
"""

from __future__ import annotations

import json
import math
import os
import time

import jax
import numpy as np
from absl import logging

from prm_jax import files

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"


class MetricWriter:
  """Writes scalar records `{"step": int, name: float, ...}` for one run.

  Args:
    workdir: the run's directory.
    resume_step: the step training (re)starts from; records after it are discarded.
    total_steps: the final step (for the ETA).
    progress_every_s: console progress lines are at least this many seconds apart
      (the last step always prints).
  """

  def __init__(self, workdir: str, *, resume_step: int, total_steps: int,
               progress_every_s: float = 10.0):
    self.enabled = jax.process_index() == 0
    self.total_steps = total_steps
    self.progress_every_s = progress_every_s
    self._last_print = -math.inf
    self._rate_mark: tuple[float, int] | None = None
    self._jsonl = self._tensorboard = None
    if not self.enabled:
      return
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, METRICS_FILE)
    _truncate_after(path, resume_step)
    self._jsonl = open(path, "a", encoding="utf-8")
    # Imported here: tensorboardX pulls in protobuf, which only process 0 needs.
    from tensorboardX import SummaryWriter  # pylint: disable=import-outside-toplevel
    self._tensorboard = SummaryWriter(os.path.join(workdir, TENSORBOARD_DIR),
                                      purge_step=resume_step + 1 if resume_step else None)

  def write(self, step: int, scalars: dict[str, float]) -> dict:
    """Record `scalars` at `step` (one jsonl line, one TensorBoard point each)."""
    record = {"step": int(step), **{k: _plain(v) for k, v in scalars.items()}}
    if self.enabled:
      self._jsonl.write(json.dumps(record) + "\n")
      self._jsonl.flush()
      for name, value in record.items():
        if name != "step" and value is not None:
          self._tensorboard.add_scalar(name, value, step)
    return record

  def start_timer(self, step: int) -> None:
    """Start measuring the rate at `step` (call after the first, compiling, step)."""
    self._rate_mark = (time.perf_counter(), step)

  def progress(self, step: int, summary: str, *, tokens_per_step: int = 0) -> None:
    """Console line with steps/s (tokens/s) and ETA, throttled to `progress_every_s`."""
    now = time.perf_counter()
    if not self.enabled or (now - self._last_print < self.progress_every_s
                            and step != self.total_steps):
      return
    self._last_print = now
    line = f"step {step}/{self.total_steps} | {summary}"
    if self._rate_mark is not None and step > self._rate_mark[1]:
      rate = (step - self._rate_mark[1]) / (now - self._rate_mark[0])
      line += f" | {rate:.2f} steps/s"
      if tokens_per_step:
        line += f", {rate * tokens_per_step:,.0f} tokens/s"
      line += f" | ETA {_duration((self.total_steps - step) / rate)}"
    logging.info(line)

  def close(self) -> None:
    if self.enabled:
      self._jsonl.close()
      self._tensorboard.close()

  def __enter__(self) -> "MetricWriter":
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()


def read_metrics(workdir: str) -> list[dict]:
  """The records of `workdir/metrics.jsonl`, in order."""
  with open(os.path.join(workdir, METRICS_FILE), encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]


def _truncate_after(path: str, step: int) -> None:
  """Keep the complete records at steps <= `step`; rewrite atomically."""
  if not os.path.exists(path):
    return
  kept = []
  with open(path, encoding="utf-8") as f:
    for line in f:
      try:
        record = json.loads(line)
      except json.JSONDecodeError:
        continue  # A line cut off by a kill mid-write.
      if record.get("step", 0) <= step:
        kept.append(json.dumps(record) + "\n")
  files.write_text(path, "".join(kept))


def _plain(value) -> float | int | None:
  """A JSON-safe Python scalar (non-finite floats become None: JSON has no NaN)."""
  value = np.asarray(value).item()
  if isinstance(value, float) and not math.isfinite(value):
    return None
  return value


def _duration(seconds: float) -> str:
  seconds = int(seconds)
  return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
