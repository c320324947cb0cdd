"""The `agent_prm` pipeline: episodes in a batch of ALFWorld envs, and `experiments/
agent_prm.py:smoke` end to end through launch.py (AgentPRM, then InversePRM in the same
workdir, reusing the games, demos and SFT policy), bad settings failing in one line."""

import functools
import json
import os
import subprocess

import jax
import pytest

from prm_jax import files
from prm_jax.envs import agent, alfworld_gen, rollout
from prm_jax.envs import alfworld as engine
from prm_jax.envs.text_env import EnvBatch
from tests.launch_helper import ROOT, launch_command, launch_env

SMOKE = ("--config", os.path.join("experiments", "agent_prm.py:smoke"))


def test_run_episodes_records_every_turn(tmp_path):
  games = alfworld_gen.generate(str(tmp_path), alfworld_gen.GenConfig(
      seed=5, train=3, valid_seen=1, valid_unseen=1))["train"]
  walks = {g: files.read_json(os.path.join(g, engine.GAME_FILE))["walkthrough"] for g in games}

  def actor(prompts, admissible, key):
    """The expert's next command, found from the prompt's history; game 1 wastes turn 0."""
    out = []
    for prompt in prompts:
      game = next(g for g in games if engine.read_game(g)[1]["task_desc"] in prompt)
      done = prompt.count("\n> ")
      if game == games[1] and "Nothing happens." not in prompt and done == 0:
        out.append("think: hmm act: dance")
      else:
        out.append(agent.format_action("go", walks[game][done - (game == games[1])]))
    return out

  with EnvBatch(functools.partial(engine.AlfworldEnv, max_turns=30), 2) as envs:
    episodes = rollout.run_episodes(games, actor, envs, max_history=100, rng=jax.random.key(0))
  assert [e["game"] for e in episodes] == games and all(e["won"] for e in episodes)
  assert [len(e["turns"]) for e in episodes] == [len(walks[games[0]]), len(walks[games[1]]) + 1,
                                                  len(walks[games[2]])]
  wasted = episodes[1]["turns"][0]
  assert (wasted["command"], wasted["kind"], wasted["answer"]) == ("dance", "invalid",
                                                                     "Nothing happens.")
  assert [t["command"] for t in episodes[0]["turns"]] == walks[games[0]]
  summary = rollout.summarise(episodes)
  assert summary["success"] == 1.0 and summary["episodes"] == 3
  assert summary["invalid_rate"] == pytest.approx(1 / sum(len(e["turns"]) for e in episodes))


def _launch(*args, workdir):
  return subprocess.run(launch_command(*SMOKE, *args, workdir=workdir), capture_output=True,
                        text=True, env=launch_env(), cwd=ROOT, timeout=900)


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("agent_prm")
  agent_run = _launch(workdir=workdir / "agent")
  assert agent_run.returncode == 0, agent_run.stderr[-3000:]
  return workdir


def test_smoke_writes_every_artefact(smoke):
  workdir = smoke / "agent"
  for path in ("games.json", "demos.json", "eval_0.json", "iter_1/rollouts.json",
               "iter_1/targets.json", "iter_1/eval.json", "results.json", "results.md",
               "policy_0/metrics.jsonl", "iter_1/prm/metrics.jsonl",
               "iter_1/policy/metrics.jsonl", "games/train/problems.json"):
    assert os.path.isfile(workdir / path), path
  with open(workdir / "results.json", encoding="utf-8") as f:
    results = json.load(f)
  evaluation = results["evals"]["1"]
  for actor in ("greedy", "bon_1", "bon_4"):
    for split in ("valid_seen", "valid_unseen"):
      figures = evaluation[f"{actor}/{split}"]
      assert 0 <= figures["success"] <= 1 and figures["episodes"] == 6
      assert set(figures["by_type"]) == set(engine.TASK_TYPES)
  assert set(evaluation["hacking"]) == {"valid_seen", "valid_unseen"}
  targets = files.read_json(workdir / "iter_1/targets.json")["records"]
  assert targets and all(0 <= r["target"] <= 1 for r in targets)
  markdown = (workdir / "results.md").read_text()
  assert "| AgentPRM iter 1, Best-of-4 |" in markdown and "| SFT |" in markdown
  demos = files.read_json(workdir / "demos.json")
  # Detours make the SFT demonstrations longer than the experts' own walkthroughs.
  assert sum(len(e["turns"]) for e in demos["episodes"]) > sum(
      len(e["turns"]) for e in demos["clean"])


def test_inverse_prm_reuses_the_stages(smoke, tmp_path):
  # Same games, demos and SFT policy: copy them in, then run the InversePRM switch.
  workdir = tmp_path / "inverse"
  subprocess.run(["cp", "-r", str(smoke / "agent"), str(workdir)], check=True)
  subprocess.run(["rm", "-rf", str(workdir / "iter_1"), str(workdir / "results.json")],
                 check=True)
  run = _launch("--config.method=inverse_prm", workdir=workdir)
  assert run.returncode == 0, run.stderr[-3000:]
  assert "stage demos.json: done before" in run.stderr
  targets = files.read_json(workdir / "iter_1/targets.json")
  labels = [t["label"] for t in targets["transitions"]]
  assert labels.count(1.0) == labels.count(0.0) == targets["expert"] > 0
  assert "InversePRM iter 1" in (workdir / "results.md").read_text()


@pytest.mark.parametrize("flag, message", [
    ("--config.method=agentprm", "method='agentprm' is not one of"),
    ("--config.demos.detour_rate=1.5", "demos.detour_rate must be in [0, 1)"),
    ("--config.prm.max_length=100", "prm.max_length=100 cannot hold a state and an action"),
    ("--config.games.task_types=('juggle',)", "unknown task type"),
    ("--config.no_such_key=1", "no_such_key"),
])
def test_bad_settings_fail_before_any_work(tmp_path, flag, message):
  run = _launch(flag, workdir=tmp_path / "bad")
  assert run.returncode != 0 and message in run.stderr, run.stderr[-2000:]
  assert not os.path.exists(tmp_path / "bad" / "games.json")


def test_best_of_n_rejects_zero():
  with pytest.raises(ValueError, match="n must be >= 1"):
    rollout.best_of_n_actor(lambda *a: [], lambda *a: [], 0)
