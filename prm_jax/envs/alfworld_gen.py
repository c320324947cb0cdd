"""ALFWorld problems generated locally: scenes, goals for all six task types, splits.

ALFRED's game files cannot be downloaded, but an ALFWorld game is only a PDDL problem on the
`alfworld` wheel's domain and grammar. This module writes such problems from ALFWorld's own
tables (`alfworld.gen.constants`: which receptacle can hold which object, which objects can be
cleaned / heated / cooled, which rooms each task type lives in, which receptacles open) and its
goal library (`alfworld.gen.goal_library`: the PDDL goal and the sentence templates of each task
type). Every problem is played by ALFWorld's expert before it is kept (`envs/alfworld.py:
expert_walkthrough`); its walkthrough is stored in the game file as `alfworld-generate` does.

Scenes. A scene is a room (Kitchen, LivingRoom, Bedroom, Bathroom) with a fixed set of
receptacles, drawn once from `(room, scene index)`: like ALFRED's floor plans. Problems put
objects into a scene's receptacles at random and pick a goal. Splits follow ALFWorld's:
`train` and `valid_seen` use the first `scenes_per_room - unseen_scenes_per_room` scenes of each
room, `valid_unseen` only the rest (room layouts never seen in training); valid_seen problems
never repeat a train problem. The room contents below (which receptacle types a room has, how
many, which objects live there) are our choice, written to resemble ALFRED's rooms.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import random

import alfworld.gen.constants as alfred
import alfworld.gen.goal_library as goal_library

from prm_jax import files
from prm_jax.envs import alfworld as engine

# room -> ((receptacle type, min count, max count), ...)
ROOM_RECEPTACLES = {
    "Kitchen": (("CounterTop", 1, 2), ("Cabinet", 1, 4), ("Drawer", 1, 3), ("Fridge", 1, 1),
                ("Microwave", 1, 1), ("SinkBasin", 1, 1), ("StoveBurner", 1, 2),
                ("DiningTable", 0, 1), ("Shelf", 0, 1), ("GarbageCan", 1, 1),
                ("CoffeeMachine", 0, 1), ("Toaster", 0, 1)),
    "LivingRoom": (("Sofa", 1, 1), ("ArmChair", 0, 1), ("CoffeeTable", 1, 1), ("SideTable", 1, 2),
                   ("TVStand", 0, 1), ("Shelf", 1, 2), ("Drawer", 0, 2), ("Cabinet", 0, 2),
                   ("Dresser", 0, 1), ("GarbageCan", 1, 1), ("Ottoman", 0, 1)),
    "Bedroom": (("Bed", 1, 1), ("Desk", 0, 1), ("Dresser", 1, 1), ("Drawer", 1, 3),
                ("SideTable", 1, 2), ("Shelf", 0, 2), ("GarbageCan", 1, 1),
                ("LaundryHamper", 0, 1), ("Safe", 0, 1), ("ArmChair", 0, 1)),
    "Bathroom": (("CounterTop", 1, 1), ("SinkBasin", 1, 2), ("Toilet", 1, 1), ("Cabinet", 1, 3),
                 ("Drawer", 0, 2), ("BathtubBasin", 0, 1), ("TowelHolder", 1, 1),
                 ("HandTowelHolder", 0, 1), ("ToiletPaperHanger", 1, 1), ("GarbageCan", 1, 1),
                 ("Shelf", 0, 1)),
}
ROOM_OBJECTS = {
    "Kitchen": ("Apple", "Bread", "Egg", "Lettuce", "Potato", "Tomato", "Mug", "Cup", "Bowl",
                "Plate", "Pan", "Pot", "Kettle", "Knife", "ButterKnife", "Fork", "Spoon", "Spatula",
                "Ladle", "DishSponge", "SaltShaker", "PepperShaker", "SoapBottle", "WineBottle"),
    "LivingRoom": ("Book", "Box", "CellPhone", "CreditCard", "KeyChain", "Laptop", "Newspaper",
                   "Pillow", "RemoteControl", "Statue", "Vase", "Watch", "WateringCan", "Bowl",
                   "Plate", "TissueBox"),
    "Bedroom": ("AlarmClock", "BaseballBat", "BasketBall", "Book", "CD", "CellPhone", "CreditCard",
                "KeyChain", "Laptop", "Pen", "Pencil", "Pillow", "TennisRacket", "Mug", "Bowl",
                "Box", "Watch", "Statue"),
    "Bathroom": ("Candle", "Cloth", "HandTowel", "Plunger", "ScrubBrush", "SoapBar", "SoapBottle",
                 "SprayBottle", "TissueBox", "ToiletPaper", "Towel", "DishSponge"),
}
# Where a desk lamp stands in rooms that have one (look_at_obj_in_light needs it).
LAMP_RECEPTACLES = ("Desk", "SideTable", "Dresser")
SPLITS = ("train", "valid_seen", "valid_unseen")
# Receptacle types that are static (everything else, movable receptacles included, is an object).
RTYPES = tuple(sorted(set(alfred.RECEPTACLES) - set(alfred.MOVABLE_RECEPTACLES)))
OTYPES = tuple(sorted((set(alfred.OBJECTS) | set(alfred.MOVABLE_RECEPTACLES)) - set(RTYPES)))
# The device a task type's goal needs, and the object affordance it needs.
_DEVICE = {"pick_clean_then_place_in_recep": ("SinkBasin", "Cleanable"),
           "pick_heat_then_place_in_recep": ("Microwave", "Heatable"),
           "pick_cool_then_place_in_recep": ("Fridge", "Coolable")}


@dataclasses.dataclass(frozen=True)
class GenConfig:
  """What `generate` builds. Problems per split are spread evenly over `task_types`."""
  seed: int = 0
  train: int = 120
  valid_seen: int = 30
  valid_unseen: int = 30
  scenes_per_room: int = 6
  unseen_scenes_per_room: int = 2
  max_distractors: int = 4
  task_types: tuple[str, ...] = engine.TASK_TYPES
  max_tries: int = 20  # per problem: resample when the expert cannot solve a draw

  def __post_init__(self):
    unknown = [t for t in self.task_types if t not in engine.TASK_TYPES]
    if unknown:
      raise ValueError(f"GenConfig.task_types: unknown task type(s) {unknown}; "
                       f"known: {', '.join(engine.TASK_TYPES)}")
    if not 0 < self.unseen_scenes_per_room < self.scenes_per_room:
      raise ValueError("GenConfig: need 0 < unseen_scenes_per_room < scenes_per_room, got "
                       f"{self.unseen_scenes_per_room} and {self.scenes_per_room}")


def _rng(*parts) -> random.Random:
  """A generator seeded by a stable hash of `parts` (Python's hash() is salted per process)."""
  digest = hashlib.sha256(repr(parts).encode()).digest()
  return random.Random(int.from_bytes(digest[:8], "little"))


def receptacle_id(rtype: str, k: int) -> str:
  """ALFRED-style ids; basins are named `<Sink>_bar_<k>_bar_SinkBasin` so ALFWorld's demangler
  shows them as "sinkbasin k" (it appends "basin" to ids containing it)."""
  if rtype.endswith("Basin"):
    return f"{rtype[:-len('Basin')]}_bar_{k}_bar_{rtype}"
  return f"{rtype}_bar_{k}"


def scene_receptacles(room: str, scene: int, seed: int) -> list[tuple[str, str]]:
  """[(receptacle id, type)] of scene `scene` of `room`, in a drawn order (its location ids)."""
  rng = _rng("scene", room, scene, seed)
  receptacles = []
  for rtype, low, high in ROOM_RECEPTACLES[room]:
    receptacles += [(receptacle_id(rtype, k + 1), rtype) for k in range(rng.randint(low, high))]
  rng.shuffle(receptacles)
  return receptacles


def _holders(otype: str, receptacles) -> list[tuple[str, str]]:
  return [(rid, rtype) for rid, rtype in receptacles
          if otype in alfred.VAL_RECEPTACLE_OBJECTS.get(rtype, ())]


def _goal_choices(task_type: str, room: str, receptacles) -> list[tuple[str, str]]:
  """[(object type, goal receptacle type or lamp)] the scene allows for `task_type`."""
  rtypes = {rtype for _, rtype in receptacles}
  choices = []
  for otype in ROOM_OBJECTS[room]:
    if not _holders(otype, receptacles):
      continue
    if task_type == "look_at_obj_in_light":
      choices.append((otype, "DeskLamp"))
      continue
    if task_type in _DEVICE:
      device, affordance = _DEVICE[task_type]
      if device not in rtypes or otype not in alfred.VAL_ACTION_OBJECTS[affordance]:
        continue
    for rtype in sorted(rtypes):
      if task_type in _DEVICE and rtype == _DEVICE[task_type][0]:
        continue
      # The goal must not hold at the start, so the object needs a holder of another type.
      if otype in alfred.VAL_RECEPTACLE_OBJECTS.get(rtype, ()) and any(
          t != rtype for _, t in _holders(otype, receptacles)):
        choices.append((otype, rtype))
  return choices


def _draw_problem(task_type: str, room: str, scene: int, rng: random.Random, config: GenConfig):
  """One draw: (PDDL problem, traj_data, task sentence); None if the scene cannot host the type."""
  receptacles = scene_receptacles(room, scene, config.seed)
  choices = _goal_choices(task_type, room, receptacles)
  if not choices:
    return None
  otype, target = rng.choice(choices)
  placed: list[tuple[str, str]] = []  # (object type, receptacle id)
  n_targets = 2 if task_type == "pick_two_obj_and_place" else 1
  start_holders = [(rid, t) for rid, t in _holders(otype, receptacles) if t != target]
  placed += [(otype, rng.choice(start_holders)[0]) for _ in range(n_targets)]
  if task_type == "look_at_obj_in_light":
    lamp_places = [rid for rid, t in receptacles if t in LAMP_RECEPTACLES]
    placed.append(("DeskLamp", rng.choice(lamp_places)))
  for _ in range(rng.randint(0, config.max_distractors)):
    distractor = rng.choice(ROOM_OBJECTS[room])
    holders = _holders(distractor, receptacles)
    if distractor == otype:  # same type elsewhere than the goal receptacle, or the goal holds
      holders = [(rid, t) for rid, t in holders if t != target]
    if holders:
      placed.append((distractor, rng.choice(holders)[0]))
  problem = _pddl_problem(receptacles, placed, task_type, otype, target)
  params = {"object_target": otype, "parent_target": "" if target == "DeskLamp" else target,
            "toggle_target": "DeskLamp" if target == "DeskLamp" else "", "mrecep_target": "",
            "object_sliced": False}
  template = rng.choice(goal_library.gdict[task_type]["templates"])
  sentence = template.format(obj=otype.lower(), recep=params["parent_target"].lower(),
                             toggle=params["toggle_target"].lower(), mrecep="")
  traj = {"task_type": task_type, "pddl_params": params, "scene": f"{room}{scene}",
          "task_desc": sentence}
  return problem, traj, sentence


def _pddl_problem(receptacles, placed, task_type, otype, target) -> str:
  """The PDDL problem text (the domain's constants declared as ALFRED's problems do)."""
  counts: dict[str, int] = {}
  objects = []
  for kind, rid in placed:
    counts[kind] = counts.get(kind, 0) + 1
    objects.append((f"{kind}_bar_{counts[kind]}", kind, rid))
  location = {rid: f"loc_bar_{j + 1}" for j, (rid, _) in enumerate(receptacles)}
  lines = ["(define (problem generated)", "(:domain alfred)", "(:objects", "agent1 - agent"]
  lines += [f"{t}Type - otype" for t in OTYPES] + [f"{t}Type - rtype" for t in RTYPES]
  lines += [f"{rid} - receptacle" for rid, _ in receptacles]
  lines += [f"{oid} - object" for oid, _, _ in objects]
  lines += ["loc_bar_0 - location"] + [f"{loc} - location" for loc in location.values()]
  lines += [")", "(:init", "(atLocation agent1 loc_bar_0)"]
  for rid, rtype in receptacles:
    lines += [f"(receptacleType {rid} {rtype}Type)", f"(receptacleAtLocation {rid} {location[rid]})"]
    if rtype in alfred.OPENABLE_CLASS_SET:
      lines.append(f"(openable {rid})")
  for oid, kind, rid in objects:
    lines += [f"(objectType {oid} {kind}Type)", f"(inReceptacle {oid} {rid})",
              f"(objectAtLocation {oid} {location[rid]})"]
    if kind in alfred.VAL_ACTION_OBJECTS["Toggleable"]:
      lines.append(f"(toggleable {oid})")
      continue
    lines.append(f"(pickupable {oid})")
    for affordance, predicate in (("Cleanable", "cleanable"), ("Heatable", "heatable"),
                                  ("Coolable", "coolable")):
      if kind in alfred.VAL_ACTION_OBJECTS[affordance]:
        lines.append(f"({predicate} {oid})")
  for rtype in RTYPES:
    for kind in sorted(alfred.VAL_RECEPTACLE_OBJECTS.get(rtype, ())):
      if kind in OTYPES:
        lines.append(f"(canContain {rtype}Type {kind}Type)")
  lines.append(")")
  goal = goal_library.gdict[task_type]["pddl"].format(
      obj=otype, recep="" if target == "DeskLamp" else target,
      toggle="DeskLamp" if target == "DeskLamp" else "", mrecep="")
  return "\n".join(lines) + goal.replace("#", "-")  # the library writes '#' for PDDL's '-'


def write_game(folder: str, problem: str, traj: dict, sentence: str,
               walkthrough: list[str] | None = None) -> None:
  """A game folder in ALFWorld's layout (atomic files)."""
  game = {"pddl_domain": engine.domain_text(),
          "grammar": engine.grammar_text().replace("UNKNOWN GOAL", sentence),
          "pddl_problem": problem, "solvable": walkthrough is not None, "walkthrough": walkthrough}
  files.write_json(os.path.join(folder, engine.TRAJ_FILE), traj)
  files.write_json(os.path.join(folder, engine.GAME_FILE), game)


def _scenes(split: str, config: GenConfig) -> list[int]:
  seen = config.scenes_per_room - config.unseen_scenes_per_room
  return list(range(seen, config.scenes_per_room)) if split == "valid_unseen" else list(range(seen))


def generate(root: str, config: GenConfig) -> dict[str, list[str]]:
  """Write every split's game folders under `root/<split>/`; returns {split: [folders]}.

  Problem `i` of a split has task type `task_types[i % len]`, a room valid for it (ALFWorld's
  GOALS_VALID) and a scene of the split, both drawn; a draw the expert cannot solve is redrawn
  (up to `max_tries`, then an error naming the task type and scene). Deterministic in `seed`.
  An index `root/<split>/problems.json` lists the folders with their task types, walkthrough
  lengths and draws; it is written last, so a split with an index is complete.
  """
  out: dict[str, list[str]] = {}
  train_problems: set[str] = set()
  for split in SPLITS:
    count = getattr(config, split)
    rng = _rng("split", split, config.seed)
    index = []
    for i in range(count):
      task_type = config.task_types[i % len(config.task_types)]
      rooms = sorted(alfred.GOALS_VALID[task_type])
      for attempt in range(config.max_tries):
        room, scene = rng.choice(rooms), rng.choice(_scenes(split, config))
        drawn = _draw_problem(task_type, room, scene, rng, config)
        if drawn is None or (split == "valid_seen" and drawn[0] in train_problems):
          continue
        problem, traj, sentence = drawn
        folder = os.path.join(root, split, f"{i:04d}-{task_type}")
        write_game(folder, problem, traj, sentence)
        walkthrough, won = engine.expert_walkthrough(folder, seed=i)
        if won:
          write_game(folder, problem, traj, sentence, walkthrough)
          break
      else:
        raise engine.GameError(f"{split} problem {i}: no solvable {task_type} problem in "
                               f"{config.max_tries} draws (last scene {room}{scene})")
      if split == "train":
        train_problems.add(problem)
      index.append({"folder": os.path.basename(folder), "task_type": task_type,
                    "scene": traj["scene"], "goal": sentence, "expert_turns": len(walkthrough),
                    "draws": attempt + 1})
    files.write_json(os.path.join(root, split, "problems.json"), index)
    out[split] = [os.path.join(root, split, item["folder"]) for item in index]
  return out


def read_split(root: str, split: str) -> list[str]:
  """The game folders of a generated split, in order (from its index)."""
  if split not in SPLITS:
    raise ValueError(f"unknown split {split!r}; known: {', '.join(SPLITS)}")
  path = os.path.join(root, split, "problems.json")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path}: no index; generate the split first (alfworld_gen.generate)")
  return [os.path.join(root, split, item["folder"]) for item in files.read_json(path)]
