"""The agent as text: a state prompt in, a ReAct-style line out, parsed against the admissible
commands.

State prompt (what the policy and the turn-level PRM read; AgentPRM's state `s`):

    Task: put a hot apple in countertop.
    Visited: countertop 1, fridge 1
    > go to fridge 1
    You arrive at fridge 1. The fridge 1 is closed.
    > open fridge 1
    You open the fridge 1. The fridge 1 is open. In it, you see a egg 1.
    Actions: close fridge 1 | examine fridge 1 | go to cabinet 1 | ... | take egg 1 from fridge 1

the task sentence, the receptacles gone to so far (in order: the agent's memory of where it
has looked, which a short window of turns would lose), the last `history` turns (command,
then the engine's answer), and the admissible commands. The room's opening description is left out: the `go to` commands list
the same receptacles. The action `a` is one line, `think: <reason> act: <command>`.

Parsing (`parse_action`): the command is the text after the last `act:` (the whole text if
there is none), stripped. It is
  * "exact" if it is an admissible command as written;
  * "normalised" if it matches exactly one admissible command after lower-casing, collapsing
    spaces and dropping a trailing period (that command is issued);
  * "invalid" otherwise: it is still sent to the engine, which answers "Nothing happens." and
    counts the turn (ALFWorld's behaviour; the invalid-action rate is reported);
  * "empty" if nothing is left: sent as "" (also a wasted turn).

Demonstrations carry reasons too (`demo_reason`): the sub-goal the expert's command serves,
read off the task and the commands so far ("find the apple", "heat the apple", "put the apple
in the countertop"), so an SFT policy learns the ReAct format from ALFWorld's experts.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from typing import Sequence

import alfworld.gen.constants as alfred
import alfworld.gen.goal_library as goal_library

from prm_jax.data.tokenizer import WordTokenizer
from prm_jax.envs import alfworld as engine

THINK, ACT = "think:", "act:"
PARSE_KINDS = ("exact", "normalised", "invalid", "empty")


@dataclasses.dataclass(frozen=True)
class Parsed:
  """A parsed agent output: the command sent to the engine and how it was matched."""
  command: str
  kind: str

  @property
  def valid(self) -> bool:
    return self.kind in ("exact", "normalised")


def _normal(text: str) -> str:
  return " ".join(text.lower().split()).rstrip(".")


def parse_action(text: str, admissible: Sequence[str]) -> Parsed:
  """The command an output issues (see the module docstring for the four cases)."""
  command = text.rsplit(ACT, 1)[-1].strip()
  if not command:
    return Parsed("", "empty")
  if command in admissible:
    return Parsed(command, "exact")
  matches = [a for a in admissible if _normal(a) == _normal(command)]
  if len(matches) == 1:
    return Parsed(matches[0], "normalised")
  return Parsed(command, "invalid")


def format_action(reason: str, command: str) -> str:
  """The agent's output line for a reason and a command."""
  return f"{THINK} {reason} {ACT} {command}"


def _one_line(text: str) -> str:
  return " ".join(text.split())


def state_prompt(goal: str, history: Sequence[tuple[str, str]], admissible: Sequence[str],
                 max_history: int) -> str:
  """The prompt of a state: `history` = [(command, engine answer)] since the reset (every
  `go to` makes the Visited line; the last `max_history` turns are shown), `admissible` the
  commands accepted now. Ends with a newline: the
  action is the next line."""
  lines = [f"Task: {goal}."]
  visited = list(dict.fromkeys(c[len("go to "):] for c, _ in history if c.startswith("go to ")))
  if visited:
    lines.append("Visited: " + ", ".join(visited))
  for command, answer in history[-max_history:] if max_history else []:
    lines += [f"> {command}", _one_line(answer)]
  lines.append("Actions: " + " | ".join(admissible))
  return "\n".join(lines) + "\n"


def demo_reason(command: str, params: dict, task_type: str, earlier: Sequence[str]) -> str:
  """The sub-goal an expert's `command` serves, from the task (`pddl_params`) and the
  commands `earlier` in the episode."""
  obj = params["object_target"].lower()
  verb = {"pick_clean_then_place_in_recep": "clean", "pick_heat_then_place_in_recep": "heat",
          "pick_cool_then_place_in_recep": "cool"}.get(task_type)
  holding = False
  processed = verb is None
  for previous in earlier:
    if previous.startswith(f"take {obj} "):
      holding = True
    elif previous.startswith("move "):
      holding = False
    elif verb and previous.startswith(f"{verb} {obj} "):
      processed = True
  if task_type == "look_at_obj_in_light":
    destination = "desklamp"
  elif not processed:
    destination = {"clean": "sinkbasin", "heat": "microwave", "cool": "fridge"}[verb]
  else:
    destination = params["parent_target"].lower()
  first = command.split(" ", 1)[0]
  if first == "take":
    return f"take the {obj}"
  if first in ("clean", "heat", "cool"):
    return f"{first} the {obj}"
  if first == "move":
    return f"put the {obj} in the {destination}"
  if first == "use":
    return f"look at the {obj} under the {destination}"
  if first in ("go", "open", "close"):
    return f"bring the {obj} to the {destination}" if holding else f"find the {obj}"
  return "look around"


def _names(types) -> set[str]:
  """How ALFWorld shows types: lower case; basins as "sinkbasin" / "bathtubbasin"."""
  return {t.lower() for t in types}


@functools.lru_cache(maxsize=1)
def domain_tokenizer() -> WordTokenizer:
  """A word tokenizer for everything the ALFWorld agent reads and writes: the wheel's grammar
  (every sentence the engine can say), ALFWorld's object and receptacle names, the goal
  templates, the prompt's words, and digits (instance numbers are spelled digit by digit)."""
  corpus = [engine.grammar_text(), "Task: Visited: Actions: > | " + f"{THINK} {ACT} look around",
            "Nothing happens.",  # TextWorld's answer to an inadmissible command
            " ".join(sorted(_names(alfred.OBJECTS) | _names(alfred.RECEPTACLES) |
                            _names(alfred.MOVABLE_RECEPTACLES) | {"sinkbasin", "bathtubbasin"})),
            "find take clean heat cool put bring look at the to in under a an of",
            "0 1 2 3 4 5 6 7 8 9 . , ! ? : ; ' - = ( ) \n"]
  corpus += [t for entry in goal_library.gdict.values() for t in entry["templates"]]
  # The grammar writes `{r.name}`-style fields; its literal words are what matter, and the
  # braces and dots of the fields are harmless extra pieces.
  return WordTokenizer.from_corpus([re.sub(r"[{}#]", " ", text) for text in corpus])
