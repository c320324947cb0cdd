"""A TFDS builder that turns JSONL trajectories (any `prm_jax.data.formats` format) into an
`array_record` dataset, read back with `tfds.data_source` — no TensorFlow anywhere.

    builder = build_dataset({"train": ["a.jsonl", "b.jsonl"], "test": "c.jsonl"},
                            format="trl", data_dir="/data/tfds", name="my_prm_data")
    source = data_source("/data/tfds", "train", name="my_prm_data")  # random access
    trajectory = from_features(source[0])

Each dataset is a `TrajectoryConfig` of the one `prm_trajectories` builder, stored under
`<data_dir>/prm_trajectories/<name>/<version>/`. Examples keep the order of the input files
(shuffling belongs to the grain pipeline, which is seeded and resumable). With
`skip_bad=True` malformed lines are skipped, logged, and counted in the dataset's metadata
(`skipped_lines/<split>`); otherwise the first one stops the build with its file and line.

Feature encoding: `labels` are float64 (soft labels such as 1/3 survive exactly) with NaN
for unknown; an absent `answer` /
`response` is stored empty; `meta` is JSON text. `from_features(to_features(t)) == t`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
from typing import Any, Mapping, Sequence

import numpy as np
import tensorflow_datasets as tfds

from prm_jax.data import formats
from prm_jax.data.jsonl import DataFormatError
from prm_jax.data.schema import Trajectory

BUILDER_NAME = "prm_trajectories"


@dataclasses.dataclass
class TrajectoryConfig(tfds.core.BuilderConfig):
  """One dataset: `files` maps a split name to its JSONL file(s) in `format`."""

  format: str = "prm_jax"
  files: dict[str, list[str]] = dataclasses.field(default_factory=dict)
  skip_bad: bool = False


def to_features(trajectory: Trajectory) -> dict[str, Any]:
  """The TFDS feature dict of a trajectory (see module docstring)."""
  labels = trajectory.labels or [None] * len(trajectory.steps)
  return {
      "problem": trajectory.problem,
      "steps": trajectory.steps,
      "labels": np.asarray([np.nan if x is None else x for x in labels], np.float64),
      "answer": trajectory.answer or "",
      "response": trajectory.response or [],
      "meta": json.dumps(trajectory.meta, ensure_ascii=False, sort_keys=True),
  }


def _text(value: bytes | str) -> str:
  return value.decode("utf-8") if isinstance(value, bytes) else value


def from_features(record: Mapping[str, Any]) -> Trajectory:
  """The trajectory of one `data_source` record (bytes decoded, NaN -> None)."""
  return Trajectory(
      problem=_text(record["problem"]), steps=[_text(s) for s in record["steps"]],
      labels=[None if math.isnan(x) else float(x) for x in record["labels"]],
      answer=_text(record["answer"]), response=[_text(s) for s in record["response"]],
      meta=json.loads(_text(record["meta"])))


class PrmTrajectories(tfds.core.GeneratorBasedBuilder):
  """Step-labelled trajectories from JSONL files; configure with a `TrajectoryConfig`."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Problem, steps, labels (NaN = unknown), answer, response, meta."}

  # TFDS looks for download checksums next to a builder's module, via `importlib_resources`,
  # which tfds only installs on Python < 3.9 (so it crashes on a packaged builder). This
  # builder downloads nothing: there is no code path to look in.
  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls):
    return None

  def _info(self) -> tfds.core.DatasetInfo:
    text = tfds.features.Text()
    return tfds.core.DatasetInfo(
        builder=self,
        description="Step-labelled reasoning trajectories (prm_jax.data.schema.Trajectory).",
        features=tfds.features.FeaturesDict({
            "problem": text, "steps": tfds.features.Sequence(text),
            # Raw bytes: a float feature would be serialised as float32 and lose 1/3.
            "labels": tfds.features.Tensor(shape=(None,), dtype=np.float64,
                                            encoding=tfds.features.Encoding.BYTES),
            "answer": text,
            "response": tfds.features.Sequence(text), "meta": text}),
        metadata=tfds.core.MetadataDict(),
        # Keep file order: shuffling is the (seeded, resumable) grain pipeline's job.
        disable_shuffling=True)

  def _split_generators(self, dl_manager):
    del dl_manager  # Local files only.
    return {split: self._generate_examples(split, paths)
            for split, paths in self.builder_config.files.items()}

  def _generate_examples(self, split: str, paths: Sequence[str]):
    skipped: list[DataFormatError] = []
    for path in paths:
      for index, trajectory in enumerate(formats.iter_trajectories(
          path, self.builder_config.format, skip_bad=self.builder_config.skip_bad,
          skipped=skipped)):
        yield f"{path}:{index}", to_features(trajectory)
    if skipped:
      logging.warning("%s: skipped %d malformed lines (first: %s)", split, len(skipped),
                      skipped[0])
    self.info.metadata[f"skipped_lines/{split}"] = len(skipped)


def build_dataset(files: Mapping[str, str | Sequence[str]], format: str,
                  data_dir: str | os.PathLike, *, name: str = "default",
                  skip_bad: bool = False) -> PrmTrajectories:
  """Convert JSONL files to an `array_record` TFDS dataset (a no-op if already built).

  Args:
    files: split name -> JSONL path or list of paths.
    format: a `prm_jax.data.formats` name (`trl`, `math_shepherd`, `processbench`, ...).
    data_dir: TFDS data directory.
    name: the dataset's config name (one folder per name).
    skip_bad: skip malformed lines (counted in metadata) instead of failing.
  """
  formats.get_format(format)
  files = {split: [os.fspath(paths)] if isinstance(paths, (str, os.PathLike))
           else [os.fspath(p) for p in paths] for split, paths in files.items()}
  config = TrajectoryConfig(name=name, format=format, files=files, skip_bad=skip_bad)
  builder = PrmTrajectories(config=config, data_dir=os.fspath(data_dir))
  builder.download_and_prepare(file_format="array_record")
  return builder


def data_source(data_dir: str | os.PathLike, split: str, *, name: str = "default"):
  """Random-access source (`len`, `[i]` -> feature dict) of a built dataset's split."""
  return tfds.data_source(f"{BUILDER_NAME}/{name}", split=split, data_dir=os.fspath(data_dir),
                          download=False)
