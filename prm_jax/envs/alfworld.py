"""The real ALFWorld engine: the `alfworld` package's PDDL domain and grammar on TextWorld's PDDL
backend (fast-downward), one game at a time, with its experts and a cache that makes it fast.

A game is ALFWorld's own on-disk layout, so real ALFWorld games and the ones
`envs/alfworld_gen.py` writes load the same way: a folder holding

  game.tw-pddl     JSON: `pddl_domain`, `grammar` (the task sentence in place of "UNKNOWN GOAL"),
                   `pddl_problem`, `solvable`, `walkthrough`
  traj_data.json   JSON: `task_type` (one of TASK_TYPES) and `pddl_params` (object_target,
                   parent_target, toggle_target, mrecep_target, object_sliced): what ALFWorld's
                   handcoded expert reads.

Speed. Out of the box most of a step is pure re-parsing: TextWorld parses every grammar string
with tatsu each time it derives a sentence (once per admissible command per step) and every
reset re-translates the PDDL problem to SAS with fast-downward's translator. `fast_engine()`
memoises those pure functions (parse results are deep-copied out of the cache because TextWorld
writes contexts into them) and copies derivation contexts shallowly (see `_copy_context`); the
trajectories are unchanged (tests compare every observation and
admissible list along the experts' walkthroughs with and without it).
"""

from __future__ import annotations

import contextlib
import copy
import functools
import json
import os
import random
from typing import Iterator

import alfworld
import fast_downward
import textworld
import textworld.envs.pddl.logic as pddl_logic
import textworld.envs.pddl.textgen as pddl_textgen
import textworld.logic
from alfworld.agents.environment.alfred_tw_env import AlfredDemangler, AlfredExpert
from textworld.envs import PddlEnv

from prm_jax.envs.text_env import Observation

TASK_TYPES = (
    "pick_and_place_simple",
    "look_at_obj_in_light",
    "pick_clean_then_place_in_recep",
    "pick_heat_then_place_in_recep",
    "pick_cool_then_place_in_recep",
    "pick_two_obj_and_place",
)
GAME_FILE = "game.tw-pddl"
TRAJ_FILE = "traj_data.json"
_GAME_KEYS = ("pddl_domain", "grammar", "pddl_problem")
_DATA = os.path.join(os.path.dirname(alfworld.__file__), "data")


def domain_text() -> str:
  """The `alfworld` wheel's PDDL domain (`alfworld/data/alfred.pddl`)."""
  with open(os.path.join(_DATA, "alfred.pddl"), encoding="utf-8") as f:
    return f.read()


def grammar_text() -> str:
  """The wheel's text grammar (`alfred.twl2`), task sentence still "UNKNOWN GOAL"."""
  with open(os.path.join(_DATA, "alfred.twl2"), encoding="utf-8") as f:
    return f.read()


class GameError(ValueError):
  """A game folder that cannot be played; the message names the file and what is wrong."""


def read_game(folder: str) -> tuple[dict, dict]:
  """(game.tw-pddl contents, traj_data.json contents) of a game folder, checked."""
  game_path, traj_path = os.path.join(folder, GAME_FILE), os.path.join(folder, TRAJ_FILE)
  parsed = []
  for path in (game_path, traj_path):
    try:
      with open(path, encoding="utf-8") as f:
        parsed.append(json.load(f))
    except FileNotFoundError:
      raise GameError(f"{path}: missing (a game folder holds {GAME_FILE} and {TRAJ_FILE})") from None
    except json.JSONDecodeError as error:
      raise GameError(f"{path}:{error.lineno}: not JSON: {error.msg}") from None
  game, traj = parsed
  for key in _GAME_KEYS:
    if not isinstance(game.get(key), str):
      raise GameError(f"{game_path}: key {key!r} missing or not a string")
  task_type = traj.get("task_type")
  if task_type not in TASK_TYPES:
    raise GameError(f"{traj_path}: unknown task_type {task_type!r}; known: {', '.join(TASK_TYPES)}")
  if not isinstance(traj.get("pddl_params"), dict):
    raise GameError(f"{traj_path}: key 'pddl_params' missing or not an object")
  return game, traj


def goal_sentence(grammar: str) -> str:
  """The task sentence a game's grammar holds ("Your task is to: <goal>.")."""
  marker = "Your task is to: "
  start = grammar.find(marker)
  if start < 0:
    return ""
  start += len(marker)
  return grammar[start:grammar.find('"', start)].rstrip(".")


# --- The cache of pure work -------------------------------------------------------------------

def _deepcopied(cached):
  """Memoise `cached` (an lru_cache'd function) and hand out deep copies of its results."""
  @functools.wraps(cached)
  def call(*args, **kwargs):
    return copy.deepcopy(cached(*args, **kwargs))
  return call


_ORIGINALS = {
    "textgen_parse": pddl_textgen._parse_and_convert,
    "logic_parse": pddl_logic._parse_and_convert,
    "query": textworld.logic.Rule.__dict__["parse_conjunctive_query"],
    "pddl2sas": fast_downward.pddl2sas,
    "copy_context": pddl_textgen.copy_context,
}


def _copy_context(context: dict) -> dict:
  """TextWorld's `copy_context` deep-copies the variables and the mapping for every symbol it
  derives (most of a step's time); derivation only adds keys to those dicts (`query` updates
  them) and reads their values, so copying the dicts themselves is the same derivation."""
  return {"state": context["state"], "facts": context["facts"],
          "variables": dict(context["variables"]), "mapping": dict(context["mapping"]),
          "entity_infos": context["entity_infos"]}


# Built once: the caches live as long as the process (fast_engine only swaps them in and out).
_CACHES = {
    "textgen_parse": functools.lru_cache(maxsize=None)(_ORIGINALS["textgen_parse"]),
    "logic_parse": functools.lru_cache(maxsize=16)(_ORIGINALS["logic_parse"]),
    "query": functools.lru_cache(maxsize=None)(_ORIGINALS["query"].__func__),
    # Keyed by the (domain, problem) strings; PddlState only reads the translated task.
    "pddl2sas": functools.lru_cache(maxsize=256)(_ORIGINALS["pddl2sas"]),
}
_CACHED = {
    (pddl_textgen, "_parse_and_convert"): _deepcopied(_CACHES["textgen_parse"]),
    (pddl_logic, "_parse_and_convert"): _deepcopied(_CACHES["logic_parse"]),
    # A parsed query is only read (matched against the state), so it is shared, not copied.
    (textworld.logic.Rule, "parse_conjunctive_query"): classmethod(_CACHES["query"]),
    (fast_downward, "pddl2sas"): _CACHES["pddl2sas"],
    (pddl_textgen, "copy_context"): _copy_context,
}


def clear_cache() -> None:
  """Empty `fast_engine()`'s caches (benchmarks time a cold first load with it)."""
  for cache in _CACHES.values():
    cache.cache_clear()


@contextlib.contextmanager
def fast_engine(enabled: bool = True) -> Iterator[None]:
  """Within the block, TextWorld's grammar/query parsing and fast-downward's PDDL->SAS
  translation are memoised and its derivation contexts copied shallowly (process-wide: they are module functions). Re-entrant; restores the
  originals on exit. `enabled=False` runs the engine as shipped (the reference for tests)."""
  if not enabled or pddl_textgen._parse_and_convert is not _ORIGINALS["textgen_parse"]:
    yield
    return
  for (owner, name), value in _CACHED.items():
    setattr(owner, name, value)
  try:
    yield
  finally:
    for (owner, name), key in zip(_CACHED, _ORIGINALS):
      setattr(owner, name, _ORIGINALS[key])


# --- One game ---------------------------------------------------------------------------------

class AlfworldEnv:
  """ALFWorld on TextWorld's PddlEnv (names demangled as ALFWorld does: "apple 1", "fridge 1").

  `reset(folder)` loads a game folder (reloading only when the folder changes), `step(command)`
  issues a command: an inadmissible one is a wasted turn ("Nothing happens.", `valid=False`).
  `max_turns` ends the episode (ALFWorld's evaluations use 50). `fast=True` runs the engine
  under `fast_engine()`.
  """

  def __init__(self, max_turns: int = 50, fast: bool = True):
    if max_turns < 1:
      raise ValueError(f"AlfworldEnv: max_turns must be >= 1, got {max_turns}")
    self.max_turns = max_turns
    self.fast = fast
    self._env = AlfredDemangler(PddlEnv(textworld.EnvInfos(admissible_commands=True, won=True)))
    self._folder = None
    self._goal = ""
    self._turn = 0
    self._last: Observation | None = None

  def _load(self, folder: str) -> None:
    game, _ = read_game(folder)
    try:
      self._env.load(os.path.join(folder, GAME_FILE))
    except Exception as error:  # tatsu / fast-downward errors do not name the file
      raise GameError(f"{os.path.join(folder, GAME_FILE)}: the engine cannot load it: "
                      f"{type(error).__name__}: {error}") from error
    self._folder = folder
    self._goal = goal_sentence(game["grammar"])

  def reset(self, game: str) -> Observation:
    with fast_engine(self.fast):
      if game != self._folder:
        self._load(game)
      state = self._env.reset()
    self._turn = 0
    self._last = self._observation(state, valid=True)
    return self._last

  def step(self, command: str) -> Observation:
    if self._last is None:
      raise RuntimeError("AlfworldEnv.step before reset")
    if self._last.done:
      return self._last
    valid = command in self._last.admissible
    self._turn += 1
    with fast_engine(self.fast):
      state, _, _ = self._env.step(command)
    self._last = self._observation(state, valid=valid)
    return self._last

  def _observation(self, state, valid: bool) -> Observation:
    won = bool(state["won"])
    return Observation(text=state["feedback"], admissible=tuple(state["admissible_commands"]),
                       goal=self._goal, won=won, done=won or self._turn >= self.max_turns,
                       turn=self._turn, valid=valid)


# --- ALFWorld's experts -----------------------------------------------------------------------

def expert_kind(task_type: str) -> str:
  """Which ALFWorld expert demonstrates a task type: the planner for pick_two (the handcoded
  expert fails when the second object sits in a closed receptacle), the handcoded one otherwise
  (its walkthroughs explore like a person: look, open, search; the planner's are optimal)."""
  return "planner" if task_type == "pick_two_obj_and_place" else "handcoded"


def expert_walkthrough(folder: str, max_turns: int = 50, seed: int = 0,
                       fast: bool = True) -> tuple[list[str], bool]:
  """(commands, won) of ALFWorld's expert on a game folder.

  The handcoded expert breaks ties with Python's global `random`; it is seeded with `seed` here
  and the caller's random state restored afterwards, so a walkthrough is a function of
  (game, seed). The planner expert's plan is computed once at the reset and replayed.
  """
  _, traj = read_game(folder)
  kind = expert_kind(traj["task_type"])
  env = AlfredExpert(AlfredDemangler(PddlEnv(textworld.EnvInfos(admissible_commands=True, won=True))),
                     expert_type=kind)
  saved = random.getstate()
  random.seed(seed)
  commands = []
  try:
    with fast_engine(fast):
      env.load(os.path.join(folder, GAME_FILE))
      state = env.reset()
      plan = list(state["extra.expert_plan"]) if kind == "planner" else None
      won = bool(state["won"])
      while not won and len(commands) < max_turns:
        if plan is not None:
          if len(commands) == len(plan):
            break
          command = plan[len(commands)]
        else:
          command = state["extra.expert_plan"][0]
        state, _, _ = env.step(command)
        commands.append(command)
        won = bool(state["won"])
  except Exception as error:
    raise GameError(f"{folder}: ALFWorld's {kind} expert failed: {type(error).__name__}: {error}") from error
  finally:
    random.setstate(saved)
  return commands, won
