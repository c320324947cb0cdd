"""AgentPRM's policy step in isolation, judged on TRAINING games only.

    python benchmarks/agent_policy_step.py --run runs/agent_seeds/agent_prm/seed_0 \
        --out runs/policy_step --variant dpo_lr3e-5= \
        --variant dpo_lr3e-4=improve.train.learning_rate=3e-4 \
        --variant rpo_lr1e-4=improve.train.learning_rate=1e-4,dpo.sft_weight=1.0 \
        --variant rpo_lr3e-4=improve.train.learning_rate=3e-4,dpo.sft_weight=1.0

Takes a finished `experiments/agent_prm.py` run (its config, games, SFT policy pi_0 and
iteration-1 rollouts and PRM Q_1) and redoes its iteration-1 policy step once per variant
(`name=key=value,key=value`: settings over the run's config): online DPO from pi_0 against
Q_1 on the same states. Then pi_0 and every variant's pi_1 play every `--every`-th train
game, greedy and at temperature 1, with one key: success, invalid-action rate, mean turns,
and the commands issued by verb (an inadmissible one starred), which show what the step
taught. Validation games are never played: this is where the step's settings may be
probed without tuning on the evaluation. Writes `<out>/results.json` and prints a table.
"""

from __future__ import annotations

import argparse
import ast
import collections
import os
import random
import shutil
import sys

import jax
import ml_collections

from prm_jax import config_lib, files
from prm_jax.envs import rollout
from prm_jax.pipelines import agent_prm
from worker import ROOT, machine

# What the step needs from the run; copied so the run's folders are only read.
INPUTS = ("games", "games.json", "demos.json", "policy_0", "iter_1/rollouts.json",
          "iter_1/targets.json", "iter_1/prm")


def parse_variant(text: str) -> tuple[str, dict]:
  """`name=key=value,key=value` -> (name, {dotted key: value})."""
  name, _, settings = text.partition("=")
  overrides = {}
  for item in filter(None, settings.split(",")):
    key, sep, value = item.partition("=")
    if not sep:
      raise ValueError(f"--variant {text!r}: {item!r} is not key=value")
    overrides[key] = ast.literal_eval(value)
  return name, overrides


def run_config(run: str) -> ml_collections.ConfigDict:
  """The run's stored config over today's `experiments/agent_prm.py` defaults (a setting
  added since the run keeps its default)."""
  config = ml_collections.ConfigDict(config_lib.experiment_config(
      os.path.join(ROOT, "experiments", "agent_prm.py")).to_dict())

  def update(node, stored, prefix):
    for key, value in stored.items():
      if key not in node:
        raise KeyError(f"{run}/config.json: {prefix}{key} is not a setting of "
                       "experiments/agent_prm.py")
      if isinstance(value, dict):
        update(node[key], value, f"{prefix}{key}.")
      else:
        node[key] = tuple(value) if isinstance(value, list) else value
  update(config, files.read_json(os.path.join(run, "config.json")), "")
  return config


def apply(config: ml_collections.ConfigDict, overrides: dict) -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict(config.to_dict())
  for key, value in overrides.items():
    *path, last = key.split(".")
    node = config
    for part in path:
      node = node[part]
    if last not in node:
      raise KeyError(f"--variant: the run's config has no key {key!r}")
    node[last] = value
  return config


def play(config, model_config, params, tokenizer, mesh, games) -> dict:
  out = {}
  for name, temperature in (("greedy", 0.0), ("t1", 1.0)):
    sample = agent_prm.sampler(config, model_config, params, tokenizer, mesh, temperature)
    with agent_prm.make_envs(config) as envs:
      episodes = rollout.run_episodes(games, rollout.policy_actor(sample), envs,
                                      max_history=config.agent.history,
                                      rng=jax.random.key(4242))
    summary = rollout.summarise(episodes)
    verbs = collections.Counter(
        (t["command"] or "").split(" ")[0] + ("*" if t["kind"] in ("invalid", "empty") else "")
        for e in episodes for t in e["turns"])
    out[name] = {"success": summary["success"], "invalid_rate": summary["invalid_rate"],
                 "mean_turns": summary["mean_turns"], "verbs": dict(verbs.most_common())}
  return out


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--run", required=True, help="a finished experiments/agent_prm.py run")
  parser.add_argument("--out", required=True)
  parser.add_argument("--variant", action="append", default=[], type=parse_variant)
  parser.add_argument("--every", type=int, default=2, help="play every k-th train game")
  args = parser.parse_args()
  base = os.path.join(args.out, "base")
  for name in INPUTS:
    source, target = os.path.join(args.run, name), os.path.join(base, name)
    if not os.path.exists(source):
      raise FileNotFoundError(f"{source}: --run must hold a finished iteration 1")
    if not os.path.exists(target):
      os.makedirs(os.path.dirname(target), exist_ok=True)
      (shutil.copytree if os.path.isdir(source) else shutil.copy)(source, target)
  base_config = run_config(args.run)
  configs = {name: apply(base_config, overrides) for name, overrides in args.variant}
  for config in configs.values():
    agent_prm.check_config(config)

  mesh = config_lib.make_mesh(base_config.mesh)
  model_config, init_params, tokenizer = agent_prm.policy_and_tokenizer(base_config)
  splits = {split: [os.path.join(base, f) for f in folders]
            for split, folders in files.read_json(os.path.join(base, "games.json")).items()}
  games = splits["train"][::args.every]
  demos = files.read_json(os.path.join(base, "demos.json"))
  pi_0 = agent_prm.train_policy_sft(base_config, model_config, init_params, tokenizer, demos,
                                    base, mesh)
  episodes = files.read_json(os.path.join(base, "iter_1", "rollouts.json"))["episodes"]
  targets = files.read_json(os.path.join(base, "iter_1", "targets.json"))
  q_1 = agent_prm.q_function(base_config, model_config, agent_prm.train_q(
      base_config, model_config, tokenizer, targets, os.path.join(base, "iter_1"), "prm", mesh,
      pi_0), tokenizer, mesh)
  # The run's own iteration-1 states, in its order (`agent_prm.run`).
  states = sorted({t["prompt"] for e in episodes for t in e["turns"]})
  random.Random(base_config.seed + 1).shuffle(states)

  results = {"run": args.run, "games": len(games), "machine": machine(),
             "pi_0": play(base_config, model_config, pi_0, tokenizer, mesh, games)}
  for name, config in configs.items():
    pi_1 = agent_prm.improve_policy(config, model_config, tokenizer, pi_0, q_1,
                                    states[:config.improve.states],
                                    os.path.join(args.out, name, "policy"), mesh)
    results[name] = {"overrides": dict(dict(args.variant)[name]),
                     **play(config, model_config, pi_1, tokenizer, mesh, games)}
  files.write_json(os.path.join(args.out, "results.json"), results)

  lines = [f"Policy step on {len(games)} train games of {args.run} ({machine()})", "",
           "| policy | greedy success | greedy invalid | T=1 success | T=1 invalid |"
           " T=1 commands (top 6; * inadmissible) |", "|---|---|---|---|---|---|"]
  for name, r in ((k, v) for k, v in results.items() if isinstance(v, dict) and "t1" in v):
    top = ", ".join(f"{verb} {count}" for verb, count in list(r["t1"]["verbs"].items())[:6])
    lines.append(f"| {name} | {r['greedy']['success']:.3f} | {r['greedy']['invalid_rate']:.2f} |"
                 f" {r['t1']['success']:.3f} | {r['t1']['invalid_rate']:.2f} | {top} |")
  sys.stdout.write("\n".join(lines) + "\n")


if __name__ == "__main__":
  main()
