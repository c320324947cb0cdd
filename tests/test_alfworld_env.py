"""The ALFWorld engine, its generated problems, its cache and the batched interface.

References: TextWorld's own `PddlEnv` (wrapped in ALFWorld's demangler, exactly as ALFWorld
plays its games) run as shipped, and ALFWorld's own experts.
"""

import functools
import os

import pytest
import textworld
from alfworld.agents.environment.alfred_tw_env import AlfredDemangler
from textworld.envs import PddlEnv

from prm_jax import files
from prm_jax.envs import alfworld as engine
from prm_jax.envs import alfworld_gen as gen
from prm_jax.envs.text_env import EnvBatch

CONFIG = gen.GenConfig(seed=3, train=12, valid_seen=6, valid_unseen=6)


@pytest.fixture(scope="module")
def games(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("alfworld"))
  return root, gen.generate(root, CONFIG)


def _walkthrough(folder):
  return files.read_json(os.path.join(folder, engine.GAME_FILE))["walkthrough"]


def test_every_generated_problem_is_solved_by_the_expert(games):
  root, splits = games
  for split, folders in splits.items():
    index = files.read_json(os.path.join(root, split, "problems.json"))
    assert [item["task_type"] for item in index] == [
        CONFIG.task_types[i % 6] for i in range(getattr(CONFIG, split))]
    for folder in folders:
      _, traj = engine.read_game(folder)
      # Replayed by the env (not only by the expert's own run): the stored walkthrough wins.
      env = engine.AlfworldEnv()
      observation = env.reset(folder)
      assert not observation.won, f"{folder}: the goal holds before any command"
      for command in _walkthrough(folder):
        assert command in observation.admissible
        observation = env.step(command)
      assert observation.won, folder
      # A fresh expert run reproduces the stored walkthrough (the generator's seed is i).
      i = int(os.path.basename(folder)[:4])
      assert engine.expert_walkthrough(folder, seed=i) == (_walkthrough(folder), True)
      assert traj["task_type"] in os.path.basename(folder)


def test_all_six_task_types_and_unseen_scenes(games):
  root, splits = games
  types = {engine.read_game(f)[1]["task_type"] for f in splits["train"]}
  assert types == set(engine.TASK_TYPES)
  seen = {engine.read_game(f)[1]["scene"] for f in splits["train"] + splits["valid_seen"]}
  unseen = {engine.read_game(f)[1]["scene"] for f in splits["valid_unseen"]}
  assert seen and unseen and not seen & unseen
  train = {engine.read_game(f)[0]["pddl_problem"] for f in splits["train"]}
  assert not train & {engine.read_game(f)[0]["pddl_problem"] for f in splits["valid_seen"]}


def test_generation_is_deterministic(games, tmp_path):
  root, splits = games
  small = gen.GenConfig(seed=3, train=3, valid_seen=1, valid_unseen=1)
  again = gen.generate(str(tmp_path), small)
  for split in gen.SPLITS:
    for a, b in zip(splits[split], again[split]):
      assert engine.read_game(a) == engine.read_game(b)


def _reference_trace(folder):
  """TextWorld's PddlEnv as shipped (no cache), ALFWorld's demangler: (feedback, admissible, won)."""
  env = AlfredDemangler(PddlEnv(textworld.EnvInfos(admissible_commands=True, won=True)))
  env.load(os.path.join(folder, engine.GAME_FILE))
  state = env.reset()
  trace = [(state["feedback"], tuple(state["admissible_commands"]), bool(state["won"]))]
  for command in _walkthrough(folder):
    state, _, _ = env.step(command)
    trace.append((state["feedback"], tuple(state["admissible_commands"]), bool(state["won"])))
  return trace


def _env_trace(env, folder):
  observation = env.reset(folder)
  trace = [(observation.text, observation.admissible, observation.won)]
  for command in _walkthrough(folder):
    observation = env.step(command)
    trace.append((observation.text, observation.admissible, observation.won))
  return trace


@pytest.mark.parametrize("fast", [False, True])
def test_env_equals_textworld_pddl_env(games, fast):
  _, splits = games
  env = engine.AlfworldEnv(fast=fast)
  for folder in splits["train"][:6] + splits["valid_unseen"][:2]:
    with engine.fast_engine(False):  # the reference runs the engine as shipped
      reference = _reference_trace(folder)
    assert _env_trace(env, folder) == reference, folder
    # A second reset of the same game (cached load) replays identically.
    assert _env_trace(env, folder) == reference, folder


def test_fast_engine_restores_the_originals():
  import fast_downward
  import textworld.envs.pddl.textgen as textgen
  before = (textgen._parse_and_convert, textgen.copy_context, fast_downward.pddl2sas)
  with engine.fast_engine():
    with engine.fast_engine():
      assert textgen.copy_context is not before[1]
    assert textgen.copy_context is not before[1]
  assert (textgen._parse_and_convert, textgen.copy_context, fast_downward.pddl2sas) == before


def test_invalid_command_is_a_wasted_turn_and_turns_run_out(games):
  _, splits = games
  env = engine.AlfworldEnv(max_turns=3)
  first = env.reset(splits["train"][0])
  observation = env.step("fly to the moon")
  assert (observation.valid, observation.turn, observation.text) == (False, 1, "Nothing happens.")
  assert observation.admissible == first.admissible and not observation.done
  observation = env.step(first.admissible[0])
  assert observation.valid and observation.turn == 2
  observation = env.step("look")
  assert observation.done and not observation.won and observation.turn == 3
  assert env.step("look") == observation  # a done game ignores further commands


def _batch_traces(folders, processes):
  with EnvBatch(functools.partial(engine.AlfworldEnv, max_turns=40), len(folders),
                processes=processes) as batch:
    observations = batch.reset(folders)
    walks = [_walkthrough(f) for f in folders]
    traces = [observations]
    for t in range(max(map(len, walks))):
      observations = batch.step([w[t] if t < len(w) else None for w in walks])
      traces.append(observations)
  return traces


def test_parallel_batch_equals_sequential(games):
  _, splits = games
  folders = splits["valid_seen"][:5]
  sequential = _batch_traces(folders, processes=0)
  assert _batch_traces(folders, processes=2) == sequential
  assert all(o.won for o in sequential[-1])
  # And each slot equals the single env's own trace.
  single = _env_trace(engine.AlfworldEnv(max_turns=40), folders[1])
  assert [(o[1].text, o[1].admissible, o[1].won) for o in sequential][:len(single)] == single


# --- Bad input ---------------------------------------------------------------------------------

def _copy_game(folder, tmp_path):
  game, traj = engine.read_game(folder)
  out = str(tmp_path / "game")
  files.write_json(os.path.join(out, engine.GAME_FILE), game)
  files.write_json(os.path.join(out, engine.TRAJ_FILE), traj)
  return out, game, traj


def test_unknown_task_type_names_the_file(games, tmp_path):
  folder, _, traj = _copy_game(games[1]["train"][0], tmp_path)
  files.write_json(os.path.join(folder, engine.TRAJ_FILE), {**traj, "task_type": "juggle"})
  with pytest.raises(engine.GameError, match=r"traj_data\.json: unknown task_type 'juggle'"):
    engine.AlfworldEnv().reset(folder)
  with pytest.raises(ValueError, match="unknown task type"):
    gen.GenConfig(task_types=("juggle",))


def test_game_file_that_does_not_parse_names_it(games, tmp_path):
  folder, game, _ = _copy_game(games[1]["train"][0], tmp_path)
  with open(os.path.join(folder, engine.GAME_FILE), "w") as f:
    f.write('{"pddl_domain": "x",\n  oops}')
  with pytest.raises(engine.GameError, match=r"game\.tw-pddl:2: not JSON"):
    engine.AlfworldEnv().reset(folder)
  files.write_json(os.path.join(folder, engine.GAME_FILE),
                   {**game, "pddl_problem": "(define (problem broken"})
  with pytest.raises(engine.GameError, match=r"game\.tw-pddl: the engine cannot load it"):
    engine.AlfworldEnv().reset(folder)
  os.unlink(os.path.join(folder, engine.TRAJ_FILE))
  with pytest.raises(engine.GameError, match=r"traj_data\.json: missing"):
    engine.AlfworldEnv().reset(folder)


def test_unsolvable_generated_problem_names_it(tmp_path, monkeypatch):
  monkeypatch.setattr(engine, "expert_walkthrough", lambda folder, seed: (["look"], False))
  with pytest.raises(engine.GameError, match=r"train problem 0: no solvable pick_and_place_simple "
                                             r"problem in 2 draws"):
    gen.generate(str(tmp_path), gen.GenConfig(train=1, valid_seen=1, valid_unseen=1, max_tries=2))
  assert not os.path.exists(tmp_path / "train" / "problems.json")  # no index: not a split


def test_read_split_needs_an_index(tmp_path):
  with pytest.raises(FileNotFoundError, match="problems.json: no index"):
    gen.read_split(str(tmp_path), "train")
  with pytest.raises(ValueError, match="unknown split"):
    gen.read_split(str(tmp_path), "test")
