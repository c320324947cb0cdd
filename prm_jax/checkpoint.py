"""Checkpoints of a training run (orbax `CheckpointManager`): exact resume, atomic saves.

One checkpoint is a directory `<root>/<step>/` holding named pytree items plus the data
position. The trainer saves two items (`prm_jax.train.checkpoint_items`):

  params       model parameters, restorable on their own (`restore_params`: evaluation,
               fine-tuning from another run, export);
  train_state  `{"step", "opt_state", "rng"}`, the rest of the `TrainState`;

and `data`, the position of the batch source when it has one: a grain iterator's (one JSON
file per process, grain's orbax handler) or the state of any other source with
`get_state() -> pytree of NumPy arrays` and `set_state(pytree)` (e.g. the online RL source,
`prm_jax.online`: prompt position, rollout RNG, the rollout batch being served), saved as a
pytree (written once: such a state must be the same on every process).

Atomicity comes from orbax: a save is written to `<step>.orbax-checkpoint-tmp-*` and
renamed to `<step>` only when complete, so a run killed mid-save leaves a tmp directory
that restore ignores (and deletes, with a warning). A *finalized* checkpoint can still be
unreadable (a truncated file on a flaky disk): restore then warns, tries the previous
step, and moves the bad directory aside to `<step>.unreadable` so that step can be
saved again. Restores take abstract targets carrying the *current* mesh's shardings,
which is what lets a checkpoint written on 8 devices load on 1 and vice versa.
"""

from __future__ import annotations

import os
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp
from absl import logging
from jax.experimental import multihost_utils

_TMP_MARKER = ".orbax-checkpoint-tmp"
UNREADABLE_SUFFIX = ".unreadable"
DATA_ITEM = "data"
PARAMS_ITEM = "params"
GRAIN_ITERATORS = (grain.DatasetIterator, grain.DataLoaderIterator)


class CheckpointError(RuntimeError):
  """No usable checkpoint where one was required; the message names the path."""


def has_data_state(iterator: Any) -> bool:
  """Whether `iterator`'s position can be checkpointed: a grain iterator, or any object with
  `get_state()` and `set_state(state)` (module docstring)."""
  return isinstance(iterator, GRAIN_ITERATORS) or (
      callable(getattr(iterator, "get_state", None))
      and callable(getattr(iterator, "set_state", None)))


class Checkpointer:
  """Saves and restores named pytree items (+ data position) under `directory`.

  Args:
    directory: root of the step directories (created if missing).
    max_to_keep: newest checkpoints kept; older ones are deleted after each save.
    async_save: write in a background thread (the call returns once the arrays are
      copied to host memory, so training goes on while the files are written).
  """

  def __init__(self, directory: str, *, max_to_keep: int, async_save: bool = True):
    self.directory = os.path.abspath(directory)
    self._warn_unfinished()
    self._manager = ocp.CheckpointManager(
        self.directory, options=ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, enable_async_checkpointing=async_save,
            cleanup_tmp_directories=True))

  def _warn_unfinished(self) -> None:
    if not os.path.isdir(self.directory):
      return
    for name in sorted(os.listdir(self.directory)):
      if _TMP_MARKER in name:
        logging.warning("ignoring unfinished checkpoint %s (a save was interrupted); "
                        "it is deleted and the newest complete one is used",
                        os.path.join(self.directory, name))

  def step_directory(self, step: int) -> str:
    return os.path.join(self.directory, str(step))

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def save(self, step: int, items: dict[str, Any], data_iterator: Any = None) -> None:
    """Start saving the pytrees `items` (and the iterator position, if any) as `step`."""
    args = {name: ocp.args.StandardSave(tree) for name, tree in items.items()}
    if isinstance(data_iterator, GRAIN_ITERATORS):
      args[DATA_ITEM] = grain.checkpoint.CheckpointSave(data_iterator)
    elif has_data_state(data_iterator):
      args[DATA_ITEM] = ocp.args.StandardSave(data_iterator.get_state())
    self._manager.save(step, args=ocp.args.Composite(**args))

  def restore_latest(self, abstract_items: dict[str, Any], data_iterator: Any = None
                     ) -> tuple[int, dict[str, Any]] | None:
    """`(step, items)` of the newest readable checkpoint, or None if there is none.

    `abstract_items`: `{name: tree of jax.ShapeDtypeStruct}` with the target shardings.
    A `data_iterator` with state is moved to the saved position. Unreadable checkpoints are
    skipped with a warning and moved aside once an older one restores; if checkpoints
    exist but none restores, `CheckpointError` (nothing is moved).
    """
    unreadable = []
    for step in sorted(self._manager.all_steps(), reverse=True):
      try:
        items = self._restore(step, abstract_items, data_iterator)
      # orbax/tensorstore report damage as ValueError, OSError, JSONDecodeError, KeyError,
      # ...; any failure here means "try the previous step", and if every step fails
      # (e.g. the target does not match the saved tree) the first error is raised below.
      except Exception as error:  # pylint: disable=broad-except
        logging.warning("checkpoint %s is unreadable (%s: %s); trying the previous one",
                        self.step_directory(step), type(error).__name__,
                        _first_line(error))
        unreadable.append((step, error))
        continue
      self._set_aside([s for s, _ in unreadable])
      return step, items
    if unreadable:
      step, error = unreadable[0]
      raise CheckpointError(
          f"no readable checkpoint in {self.directory}: the newest, "
          f"{self.step_directory(step)}, fails with {type(error).__name__}: "
          f"{_first_line(error)}") from error
    return None

  def _restore(self, step: int, abstract_items: dict[str, Any], data_iterator: Any
               ) -> dict[str, Any]:
    args = {name: ocp.args.StandardRestore(tree) for name, tree in abstract_items.items()}
    saved_data = os.path.isdir(os.path.join(self.step_directory(step), DATA_ITEM))
    grain_data = isinstance(data_iterator, GRAIN_ITERATORS)
    if saved_data and has_data_state(data_iterator):
      args[DATA_ITEM] = (grain.checkpoint.CheckpointRestore(data_iterator) if grain_data
                         else ocp.args.StandardRestore())  # As saved: a NumPy pytree.
    elif saved_data or has_data_state(data_iterator):
      logging.warning("step %d: the data position is not restored (%s); the data order "
                      "differs from an uninterrupted run", step,
                      "the batch source has no state" if saved_data else
                      "the checkpoint has none")
    restored = self._manager.restore(step, args=ocp.args.Composite(**args))
    if saved_data and has_data_state(data_iterator) and not grain_data:
      data_iterator.set_state(restored[DATA_ITEM])
    return {name: restored[name] for name in abstract_items}

  def _set_aside(self, steps: list[int]) -> None:
    """Rename unreadable step directories (kept for inspection, no longer listed)."""
    if not steps:
      return
    if jax.process_index() == 0:
      for step in steps:
        path = self.step_directory(step)
        os.replace(path, _free_name(path + UNREADABLE_SUFFIX))
        logging.warning("moved unreadable checkpoint %s aside", path)
    multihost_utils.sync_global_devices("prm_jax.checkpoint.set_aside")
    self._manager.reload()

  def close(self) -> None:
    """Finish pending saves and release the manager."""
    self._manager.wait_until_finished()
    self._manager.close()

  def __enter__(self) -> "Checkpointer":
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()


def restore_params(path: str, abstract_params: Any) -> Any:
  """Parameters from a checkpoint, placed as `abstract_params` (shape/dtype/sharding tree).

  `path`: one step directory (`.../checkpoints/<step>`), a checkpoint root (its newest
  step is used) or a run's workdir. Raises `CheckpointError` naming `path` if there is
  no checkpoint there or it cannot be read.
  """
  step_dir = _find_step_directory(path)
  try:
    with ocp.StandardCheckpointer() as checkpointer:
      return checkpointer.restore(os.path.join(step_dir, PARAMS_ITEM), abstract_params)
  except Exception as error:  # pylint: disable=broad-except  # Any failure: same message.
    raise CheckpointError(f"checkpoint {step_dir} is unreadable: {type(error).__name__}: "
                          f"{_first_line(error)}") from error


def _find_step_directory(path: str) -> str:
  path = os.path.abspath(path)
  for candidate in (path, os.path.join(path, "checkpoints")):
    if os.path.isdir(os.path.join(candidate, PARAMS_ITEM)):
      return candidate
    steps = [int(n) for n in os.listdir(candidate) if n.isdigit()] if os.path.isdir(
        candidate) else []
    if steps:
      return os.path.join(candidate, str(max(steps)))
  raise CheckpointError(f"no checkpoint at {path} (expected a step directory with "
                        "params/, or a directory of step directories)")


def _free_name(path: str) -> str:
  candidate, index = path, 1
  while os.path.exists(candidate):
    candidate, index = f"{path}.{index}", index + 1
  return candidate


def _first_line(error: BaseException) -> str:
  text = str(error).strip()
  return text.splitlines()[0] if text else repr(error)
