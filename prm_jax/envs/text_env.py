"""A batched text-environment interface: reset a batch of games, step it with one command each.

An environment here is turn-based text: an observation (the engine's words after the last
command), the admissible commands, the goal sentence, and whether the game is won. `TextEnv` is
the protocol one game satisfies (the ALFWorld engine in `envs/alfworld.py` is one); `EnvBatch`
runs `n` of them either in this process or spread over worker processes. Worker processes are
started with `spawn` (never `fork`: the parent usually holds JAX's thread pool) and each owns a
slice of the batch, so a batch's trajectories do not depend on how many workers run it (tested).
"""

from __future__ import annotations

import dataclasses
import multiprocessing
from typing import Callable, Protocol, Sequence


@dataclasses.dataclass(frozen=True)
class Observation:
  """What an agent sees after a reset or a step.

  text:       the engine's feedback to the last command (the room description on reset).
  admissible: the commands the engine accepts now, sorted.
  goal:       the task sentence ("put a clean apple in fridge").
  won:        the goal holds.
  done:       won, or the turn limit is reached; a done game ignores further steps.
  turn:       commands issued since the reset (invalid ones included: each costs a turn).
  valid:      whether the last command was admissible (True after a reset).
  """
  text: str
  admissible: tuple[str, ...]
  goal: str
  won: bool
  done: bool
  turn: int
  valid: bool = True


class TextEnv(Protocol):
  """One game at a time: `reset(game)` starts `game` (an identifier the env knows how to load)."""

  def reset(self, game: str) -> Observation: ...

  def step(self, command: str) -> Observation: ...


def _worker(make_env, connection):
  """A worker process's loop: one env per slot, commands from the parent until `None`."""
  envs = {}
  while True:
    message = connection.recv()
    if message is None:
      return
    kind, items = message
    try:
      if kind == "reset":
        result = []
        for slot, game in items:
          envs.setdefault(slot, make_env())
          result.append(envs[slot].reset(game))
      else:
        result = [envs[slot].step(command) for slot, command in items]
      connection.send(("ok", result))
    except Exception as error:  # sent back whole: the parent raises it with the slot's game
      connection.send(("error", error))


class EnvBatch:
  """`size` games stepped together, in this process (`processes=0`) or in worker processes.

  `make_env` builds one `TextEnv`; it must be picklable (a module-level function or a
  `functools.partial` of one) when `processes > 0`. Slot `i` always lives in worker
  `i % processes`, so each game's trajectory is the one a single env would produce.
  """

  def __init__(self, make_env: Callable[[], TextEnv], size: int, processes: int = 0):
    if size < 1:
      raise ValueError(f"EnvBatch: size must be >= 1, got {size}")
    if processes < 0:
      raise ValueError(f"EnvBatch: processes must be >= 0, got {processes}")
    self.size = size
    self.processes = min(processes, size)
    self._observations: list[Observation | None] = [None] * size
    self._games: list[str | None] = [None] * size
    if self.processes == 0:
      self._envs = [make_env() for _ in range(size)]
    else:
      context = multiprocessing.get_context("spawn")
      self._connections, self._workers = [], []
      for _ in range(self.processes):
        parent, child = context.Pipe()
        worker = context.Process(target=_worker, args=(make_env, child), daemon=True)
        worker.start()
        self._connections.append(parent)
        self._workers.append(worker)

  def _run(self, kind: str, items: Sequence[tuple[int, str]]) -> dict[int, Observation]:
    if self.processes == 0:
      call = (lambda slot, arg: self._envs[slot].reset(arg)) if kind == "reset" else (
          lambda slot, arg: self._envs[slot].step(arg))
      return {slot: call(slot, arg) for slot, arg in items}
    shards = [[item for item in items if item[0] % self.processes == w] for w in range(self.processes)]
    for connection, shard in zip(self._connections, shards):
      connection.send((kind, shard))
    results = {}
    for connection, shard in zip(self._connections, shards):
      status, payload = connection.recv()
      if status == "error":
        raise payload
      results.update({slot: observation for (slot, _), observation in zip(shard, payload)})
    return results

  def reset(self, games: Sequence[str]) -> list[Observation]:
    """Start `games[i]` in slot `i` (1 <= len(games) <= size; later slots stay idle until the
    next reset)."""
    if not 1 <= len(games) <= self.size:
      raise ValueError(f"EnvBatch.reset: {len(games)} games for a batch of {self.size}")
    results = self._run("reset", list(enumerate(games)))
    self._games = list(games)
    self._observations = [results[i] for i in range(len(games))]
    return list(self._observations)

  def step(self, commands: Sequence[str | None]) -> list[Observation]:
    """Issue `commands[i]` in slot `i` (one per game of the last reset); done slots (and
    `None` commands) keep their observation."""
    if not self._games or self._games[0] is None:
      raise RuntimeError("EnvBatch.step before reset")
    if len(commands) != len(self._observations):
      raise ValueError(f"EnvBatch.step: {len(commands)} commands for {len(self._observations)} "
                       "games")
    items = [(i, command) for i, command in enumerate(commands)
             if command is not None and not self._observations[i].done]
    results = self._run("step", items)
    for slot, observation in results.items():
      self._observations[slot] = observation
    return list(self._observations)

  @property
  def games(self) -> list[str | None]:
    return list(self._games)

  def close(self) -> None:
    if self.processes:
      for connection in self._connections:
        connection.send(None)
      for worker in self._workers:
        worker.join(timeout=10)
      self.processes = 0
      self._envs = []

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()
