"""Pipeline `agent_prm`: AgentPRM and InversePRM (Choudhury 2025) on the real ALFWorld engine.

A text agent (`envs.agent`: state prompt in, `think: ... act: <command>` out) is trained by
SFT on ALFWorld's expert demonstrations, made imperfect on purpose (random detours), then
improved for `iterations` rounds of rollout -> turn-level PRM -> policy:

  games/          train / valid_seen / valid_unseen ALFWorld games generated locally
                  (`envs.alfworld_gen`: all six task types, every game solved by ALFWorld's
                  expert; valid_unseen in room layouts never seen in training)
  demos.json      the experts' walkthroughs of the train games, replayed with a random
                  `go to` detour before each expert `go to` with probability
                  `demos.detour_rate` (the expert's plan stays valid: going somewhere works
                  from anywhere); every turn has a reason (`agent.demo_reason`)
  policy_0/       pi_0: SFT on the demo turns (prompt -> action line)
  eval_0.json     pi_0 greedy on valid_seen and valid_unseen
  iter_<i>/       for i = 1..iterations:
    rollouts.json   `rollouts.per_game` episodes of pi_{i-1} per train game (temperature)
    targets.json    AgentPRM: Q(s, a) = mean discounted outcome of the visits of (s, a)
                    (`labeling.turn_returns`); InversePRM: transitions, expert (1, the
                    clean walkthroughs) vs pi_{i-1}'s (0), balanced, with a' ~ pi_{i-1}(s')
    prm/            Q_i on pi_{i-1}'s backbone: soft BCE on the targets (AgentPRM) or the
                    InversePRM loss (`objectives.inverse_prm`); no outcome reward is read
                    by InversePRM
    policy/         pi_i: online DPO from pi_{i-1} (its reference: the KL anchor) on the
                    states of the rollouts, K samples per state ranked by Q_i (an
                    inadmissible command ranks below every admissible one)
    eval.json       pi_i greedy, and Best-of-N(pi_i, Q_i) per turn for N in `eval.ns`, on
                    both validation splits; the reward-hacking check (Q_i of the chosen
                    actions in won vs lost episodes) and wall times
  results.json, results.md

Every stage writes atomically and training stages checkpoint: rerunning with the same
workdir resumes. Validation games are only evaluated, never trained or tuned on.
`method` switches AgentPRM ("agent_prm") and InversePRM ("inverse_prm"); everything else is
shared.
"""

from __future__ import annotations

import functools
import os
import random
import time

import jax
import ml_collections
import numpy as np
from absl import logging

from prm_jax import config_lib, files, online, train
from prm_jax.data import Trajectory
from prm_jax.data.tokenize import prompt_ids
from prm_jax.envs import agent, alfworld_gen, rollout
from prm_jax.envs import alfworld as engine
from prm_jax.envs.text_env import EnvBatch
from prm_jax.labeling import turn_returns
from prm_jax.objectives import dpo, inverse_prm
from prm_jax.objectives.prm import auroc
from prm_jax.pipelines import stages

METHODS = ("agent_prm", "inverse_prm")


# ----------------------------------------------------------------------------- settings


def check_config(config) -> None:
  """Bad values fail before any work, naming their key."""
  if config.method not in METHODS:
    raise ValueError(f"method={config.method!r} is not one of {METHODS}")
  if not 0 <= config.demos.detour_rate < 1:
    raise ValueError(f"demos.detour_rate must be in [0, 1), got {config.demos.detour_rate!r}")
  if not 0 < config.prm.gamma <= 1:
    raise ValueError(f"prm.gamma must be in (0, 1], got {config.prm.gamma!r}")
  if config.iterations < 1:
    raise ValueError(f"iterations must be >= 1, got {config.iterations}")
  if any(n < 1 for n in config.eval.ns):
    raise ValueError(f"eval.ns must be positive, got {tuple(config.eval.ns)}")
  a = config.agent
  if config.prm.max_length < a.prompt_width + a.max_new_tokens + 1:
    raise ValueError(f"prm.max_length={config.prm.max_length} cannot hold a state and an action "
                     f"(agent.prompt_width + agent.max_new_tokens + 1 = "
                     f"{a.prompt_width + a.max_new_tokens + 1})")
  alfworld_gen.GenConfig(seed=config.seed, **config.games.to_dict())
  config_lib.from_section(dpo.DPOConfig, config.dpo)
  online.RolloutConfig(seed=config.seed, **config.improve.rollout.to_dict())


def policy_and_tokenizer(config):
  """(model config, initial params or None, tokenizer): a scratch or checkpoint policy
  speaks the domain's word tokenizer, a pretrained one its own."""
  model_config, params, tokenizer = stages.load_model(config.policy, "policy")
  if config.policy.init in ("scratch", "checkpoint"):
    tokenizer = agent.domain_tokenizer()
    if model_config.vocab_size < tokenizer.vocab_size:
      raise ValueError(f"policy.model.vocab_size={model_config.vocab_size} is smaller than the "
                       f"domain tokenizer's {tokenizer.vocab_size}")
  return model_config, params, tokenizer


def make_envs(config) -> EnvBatch:
  a = config.agent
  return EnvBatch(functools.partial(engine.AlfworldEnv, max_turns=a.max_turns),
                  a.batch_size, processes=a.processes)


# ----------------------------------------------------------------------------- demonstrations


def demonstrations(config, folders) -> dict:
  """`{"episodes": [...], "clean": [...]}`: each train game's expert walkthrough with
  detours (SFT data) and without (InversePRM's expert), as `rollout.run_episodes` records."""
  rng = random.Random(config.seed)
  env = engine.AlfworldEnv(max_turns=10 * config.agent.max_turns)
  out = {"episodes": [], "clean": []}
  for folder in folders:
    game, traj = engine.read_game(folder)
    walkthrough = game["walkthrough"]
    for name, rate in (("clean", 0.0), ("episodes", config.demos.detour_rate)):
      observation = env.reset(folder)
      history, turns, done = [], [], []
      for command in walkthrough:
        commands = [command]
        if command.startswith("go to ") and rng.random() < rate:
          detours = [c for c in observation.admissible if c.startswith("go to ") and c != command]
          commands = [rng.choice(detours), command] if detours else commands
        for issued in commands:
          prompt = agent.state_prompt(observation.goal, history, observation.admissible,
                                      config.agent.history)
          reason = agent.demo_reason(issued, traj["pddl_params"], traj["task_type"], done)
          observation = env.step(issued)
          turns.append({"prompt": prompt, "output": agent.format_action(reason, issued),
                        "command": issued, "kind": "exact", "answer": observation.text})
          history.append((issued, observation.text))
          done.append(issued)
      if not observation.won:
        raise engine.GameError(f"{folder}: the expert's walkthrough ({name}) does not win on "
                               "replay")
      out[name].append({"game": folder, "task_type": traj["task_type"], "won": True,
                        "turns": turns})
  return out


def turn_data(episodes) -> list[Trajectory]:
  """One SFT example per turn: the state prompt and the action line."""
  return [Trajectory(problem=t["prompt"], steps=[t["output"]]) for e in episodes
          for t in e["turns"]]


def train_policy_sft(config, model_config, init_params, tokenizer, demos, workdir, mesh):
  """pi_0: SFT on the demonstration turns, in `workdir/policy_0`."""
  data = turn_data(demos["episodes"])
  longest = max(len(prompt_ids(tokenizer, t.problem)) for t in data)
  if longest > config.agent.prompt_width:
    raise ValueError(f"agent.prompt_width={config.agent.prompt_width} cannot hold a "
                     f"demonstration state: the longest is {longest} tokens")
  return stages.train_sft("policy_0", config, model_config, init_params, tokenizer, data,
                          workdir, mesh)


# ----------------------------------------------------------------------------- acting


def sampler(config, model_config, params, tokenizer, mesh, temperature, games=None):
  """The policy's sampler, its batch sized for `games` played at once (a multiple of 8 up
  to `agent.batch_size`; default: the full batch): fewer games than the batch would
  otherwise sample rows of padding every turn."""
  a = config.agent
  rows = a.batch_size if games is None else min(a.batch_size, -(-games // 8) * 8)
  return rollout.policy_sampler(model_config, params, tokenizer, temperature=temperature,
                                max_new_tokens=a.max_new_tokens, prompt_width=a.prompt_width,
                                prompts_per_batch=rows, mesh=mesh)


def q_function(config, model_config, params, tokenizer, mesh):
  return rollout.prm_q(model_config, params, tokenizer, max_length=config.prm.max_length,
                       batch_size=config.prm.batch_size, mesh=mesh)


def play(config, envs, games, actor, key) -> dict:
  start = time.perf_counter()
  episodes = rollout.run_episodes(games, actor, envs, max_history=config.agent.history,
                                  rng=key, progress=stages.progress("episodes"))
  return {"episodes": episodes, "seconds": time.perf_counter() - start}


def evaluate(config, envs, splits, model_config, params, tokenizer, mesh, q=None,
             seed_offset: int = 0) -> dict:
  """Greedy, and (with `q`) Best-of-N(pi, Q) per turn for N in `eval.ns` at
  `eval.temperature`, on valid_seen and valid_unseen: per split, the summary and the
  episode records (`records`); seconds and turns per second of each actor's play (both
  splits are played in one batch: one model call per turn serves both)."""
  names = ("valid_seen", "valid_unseen")
  games = [g for split in names for g in splits[split]]
  greedy = rollout.policy_actor(sampler(config, model_config, params, tokenizer, mesh, 0.0,
                                        len(games)))
  actors = {"greedy": greedy}
  if q is not None:
    sample = sampler(config, model_config, params, tokenizer, mesh, config.eval.temperature,
                     len(games))
    actors.update({f"bon_{n}": rollout.best_of_n_actor(sample, q, n) for n in config.eval.ns})
  out = {}
  for name, actor in actors.items():
    played = play(config, envs, games, actor, jax.random.key(config.seed * 1000 + 7 + seed_offset))
    turns = sum(len(e["turns"]) for e in played["episodes"])
    start = 0
    for split in names:
      episodes = played["episodes"][start:start + len(splits[split])]
      start += len(splits[split])
      out[f"{name}/{split}"] = {**rollout.summarise(episodes), "seconds": played["seconds"],
                                "turns_per_second": turns / played["seconds"],
                                "records": episodes}
      logging.info("eval %s/%s: success %.3f", name, split, out[f"{name}/{split}"]["success"])
  return out


def hacking_check(episodes, q) -> dict:
  """The paper's reward-hacking check on evaluation episodes: Q of the chosen actions in won
  vs lost episodes, and the AUROC of an episode's mean Q for its success."""
  scored = [(e["won"], [(t["prompt"], t["output"]) for t in e["turns"]]) for e in episodes
            if e["turns"]]
  flat = [pair for _, pairs in scored for pair in pairs]
  values = q([p for p, _ in flat], [o for _, o in flat]) if flat else np.zeros(0)
  means, start = [], 0
  for _, pairs in scored:
    means.append(float(np.mean(values[start:start + len(pairs)])))
    start += len(pairs)
  won = np.array([w for w, _ in scored], bool)
  means = np.array(means)
  value = auroc(means, won) if won.any() and (~won).any() else float("nan")
  return stages.json_safe({"q_won": float(means[won].mean()) if won.any() else float("nan"),
                           "q_lost": float(means[~won].mean()) if (~won).any() else float("nan"),
                           "q_success_auroc": value})


# ----------------------------------------------------------------------------- the PRM


def agent_prm_targets(config, episodes) -> dict:
  records = turn_returns.turn_targets(episodes, config.prm.gamma)
  return {"records": records, "visits": sum(r["visits"] for r in records),
          "mean_target": float(np.mean([r["target"] for r in records]))}


def inverse_prm_transitions(config, clean, episodes, model_config, params, tokenizer, mesh,
                            key) -> dict:
  """Expert transitions (label 1) and policy transitions (label 0), balanced by subsampling
  the larger side, each with `a' ~ pi(s')` (the current policy, one sample)."""
  def transitions(source, label):
    out = []
    for e in source:
      turns = e["turns"]
      for t, turn in enumerate(turns):
        last = t == len(turns) - 1
        out.append({"prompt": turn["prompt"], "output": turn["output"], "label": label,
                    "terminal": last, "next_prompt": None if last else turns[t + 1]["prompt"]})
    return out
  expert, policy_side = transitions(clean, 1.0), transitions(episodes, 0.0)
  rng = random.Random(config.seed)
  size = min(len(expert), len(policy_side))
  chosen = rng.sample(expert, size) + rng.sample(policy_side, size)
  needs = [i for i, t in enumerate(chosen) if not t["terminal"]]
  sample = sampler(config, model_config, params, tokenizer, mesh, config.rollouts.temperature)
  nexts = sample([chosen[i]["next_prompt"] for i in needs], 1, key)
  for i, texts in zip(needs, nexts):
    chosen[i]["next_output"] = rollout.first_line(texts[0])
  return {"transitions": chosen, "expert": size, "policy": size}


def train_q(config, model_config, tokenizer, targets, workdir, name, mesh, init_params):
  """Q_i: soft BCE on the MC targets (AgentPRM) or the InversePRM loss."""
  section = config.prm
  if config.method == "agent_prm":
    data = [Trajectory(problem=r["prompt"], steps=[r["output"]], labels=[r["target"]])
            for r in targets["records"]]
    return stages.train_reward_model(name, config, model_config, tokenizer, data, 1, workdir,
                                     mesh, init_params, section="prm")
  batches = inverse_prm.pair_batches(tokenizer, targets["transitions"],
                                     batch_size=section.batch_size,
                                     max_length=section.max_length, seed=config.seed)
  loss = inverse_prm.make_inverse_prm_loss(model_config, section.gamma)
  return stages.train_model(name, model_config, loss, batches, section, workdir, mesh,
                            init_params)


# ----------------------------------------------------------------------------- the policy step


def admissible_of(prompt: str) -> list[str]:
  """The admissible commands a state prompt lists (its last line)."""
  line = prompt.rstrip("\n").rsplit("\n", 1)[-1]
  return line[len("Actions: "):].split(" | ")


def improve_policy(config, model_config, tokenizer, params, q, states, workdir, mesh):
  """pi_i: online DPO from `params` (also the reference) on `states`, ranked by Q."""
  rollout_config = online.RolloutConfig(seed=config.seed, **config.improve.rollout.to_dict())
  admissible = [admissible_of(s) for s in states]

  def score(rollouts: online.Rollouts) -> online.Scores:
    rows = range(len(rollouts.tokens))
    lines, parsed = [], []
    for r in rows:
      tokens = [int(t) for t in rollouts.tokens[r, :rollouts.lengths[r]] if t != tokenizer.eos_id]
      lines.append(rollout.first_line(tokenizer.decode(tokens)))
      parsed.append(agent.parse_action(lines[-1], admissible[int(rollouts.prompt_index[r])]))
    valid = np.array([p.valid for p in parsed])
    values = np.full(len(lines), -1.0, np.float32)  # below any admissible command's Q
    idx = np.flatnonzero(valid)
    if len(idx):
      prompts = [states[int(rollouts.prompt_index[r])] for r in idx]
      values[idx] = q(prompts, [lines[r] for r in idx])  # in (0, 1): sigmoid of the head
    return online.Scores(rewards=values, stats={"valid": valid.astype(np.float32),
                                                "q": np.where(valid, values, 0.0)})

  objective = config_lib.from_section(dpo.DPOConfig, config.dpo)
  source = online.OnlineSource(model_config, [prompt_ids(tokenizer, s) for s in states], score,
                               objective, rollout_config, mesh=mesh, reference_params=params,
                               stop_tokens=(tokenizer.eos_id,), pad_id=tokenizer.pad_id or 0)
  result = train.train_loop(model_config, dpo.make_dpo_loss(model_config, objective), source,
                            config=config_lib.train_config(config.improve.train),
                            workdir=workdir, mesh=mesh, init_params=params)
  return result.state.params


# ----------------------------------------------------------------------------- the run


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  check_config(config)
  mesh = config_lib.make_mesh(config.mesh)
  model_config, init_params, tokenizer = policy_and_tokenizer(config)
  timings = {}

  def timed(name, fn):
    start = time.perf_counter()
    value = fn()
    timings[name] = timings.get(name, 0.0) + time.perf_counter() - start
    return value

  # 1. Games and demonstrations.
  gen_config = alfworld_gen.GenConfig(seed=config.seed, **config.games.to_dict())
  # Stored relative to the workdir, so a workdir can be moved or copied (the seeds sweep
  # starts InversePRM from a copy of AgentPRM's stages).
  relative = timed("games", lambda: stages.stage(workdir, "games.json", lambda: {
      split: [os.path.relpath(f, workdir) for f in folders] for split, folders in
      alfworld_gen.generate(os.path.join(workdir, "games"), gen_config).items()}))
  splits = {split: [os.path.join(workdir, f) for f in folders]
            for split, folders in relative.items()}
  demos = timed("demos", lambda: stages.stage(workdir, "demos.json",
                                              lambda: demonstrations(config, splits["train"])))

  # 2. pi_0: SFT on the demonstrations.
  params = timed("sft", lambda: train_policy_sft(config, model_config, init_params, tokenizer,
                                                 demos, workdir, mesh))
  envs = make_envs(config)
  evals = {0: timed("eval", lambda: stages.stage(workdir, "eval_0.json", lambda: _strip(evaluate(
      config, envs, splits, model_config, params, tokenizer, mesh))))}

  # 3. Iterations: rollouts -> Q_i -> pi_i.
  for i in range(1, config.iterations + 1):
    folder = os.path.join(workdir, f"iter_{i}")
    previous = params
    sample = sampler(config, model_config, previous, tokenizer, mesh, config.rollouts.temperature)
    games = [g for g in splits["train"] for _ in range(config.rollouts.per_game)]
    played = timed("rollouts", lambda: stages.stage(folder, "rollouts.json", lambda: play(
        config, envs, games, rollout.policy_actor(sample), jax.random.key(config.seed + 100 * i))))
    episodes = played["episodes"]
    if config.method == "agent_prm":
      targets = timed("targets", lambda: stages.stage(
          folder, "targets.json", lambda: agent_prm_targets(config, episodes)))
    else:
      targets = timed("targets", lambda: stages.stage(folder, "targets.json", lambda: (
          inverse_prm_transitions(config, demos["clean"], episodes, model_config, previous,
                                  tokenizer, mesh, jax.random.key(config.seed + 100 * i + 1)))))
    q_params = timed("prm", lambda: train_q(config, model_config, tokenizer, targets, folder,
                                            "prm", mesh, previous))
    q = q_function(config, model_config, q_params, tokenizer, mesh)
    states = sorted({t["prompt"] for e in episodes for t in e["turns"]})
    random.Random(config.seed + i).shuffle(states)
    states = states[:config.improve.states]
    params = timed("policy", lambda: improve_policy(config, model_config, tokenizer, previous, q,
                                                    states, os.path.join(folder, "policy"), mesh))

    def evaluation():
      result = evaluate(config, envs, splits, model_config, params, tokenizer, mesh, q=q,
                        seed_offset=i)
      largest = f"bon_{max(config.eval.ns)}"
      hacking = {split: hacking_check(result[f"{largest}/{split}"]["records"], q)
                 for split in ("valid_seen", "valid_unseen")}
      return {**_strip(result), "hacking": hacking,
              "rollout_success": rollout.summarise(episodes)["success"]}
    evals[i] = timed("eval", lambda: stages.stage(folder, "eval.json", evaluation))
  envs.close()

  results = {"method": config.method, "seed": config.seed, "evals": evals,
             "timings": timings, "config": config.to_dict()}
  if jax.process_index() == 0:
    files.write_json(os.path.join(workdir, "results.json"), results)
    files.write_text(os.path.join(workdir, "results.md"), markdown(results))
  logging.info("agent_prm: results in %s", os.path.join(workdir, "results.md"))
  return results


def _strip(evaluation: dict) -> dict:
  """An evaluation without its episode records (they stay in memory only: large)."""
  return {k: ({kk: vv for kk, vv in v.items() if kk != "records"} if isinstance(v, dict) else v)
          for k, v in evaluation.items()}


def markdown(results: dict) -> str:
  """The paper-shaped table: rows = policy (and Best-of-N) per iteration, columns = task
  types and all, seen and unseen."""
  types = engine.TASK_TYPES
  short = {"pick_and_place_simple": "pick", "look_at_obj_in_light": "look",
           "pick_clean_then_place_in_recep": "clean", "pick_heat_then_place_in_recep": "heat",
           "pick_cool_then_place_in_recep": "cool", "pick_two_obj_and_place": "pick2"}
  name = "AgentPRM" if results["method"] == "agent_prm" else "InversePRM"
  lines = [f"# {name} on ALFWorld (seed {results['seed']})", "",
           "Success rate per task type; seen / unseen validation games.", "",
           "| policy | " + " | ".join(short[t] for t in types) + " | all seen | all unseen |"
           " invalid | turns |", "|---|" + "---|" * (len(types) + 4)]
  fmt = lambda v: "-" if v is None else f"{v:.2f}"
  for i, evaluation in sorted(results["evals"].items(), key=lambda kv: int(kv[0])):
    for actor in [k.split("/")[0] for k in evaluation if k.endswith("/valid_seen")]:
      seen, unseen = evaluation[f"{actor}/valid_seen"], evaluation[f"{actor}/valid_unseen"]
      label = ("SFT" if int(i) == 0 else f"{name} iter {i}") + (
          "" if actor == "greedy" else f", Best-of-{actor.split('_')[1]}")
      lines.append(f"| {label} | " + " | ".join(
          f"{fmt(seen['by_type'][t])}/{fmt(unseen['by_type'][t])}" for t in types) +
          f" | {fmt(seen['success'])} | {fmt(unseen['success'])} | {fmt(seen['invalid_rate'])} |"
          f" {seen['mean_turns']:.1f} |")
  last = results["evals"][max(results["evals"], key=int)]
  lines += ["", "Batched agent throughput (turns/s, both validation splits, last "
            "evaluation): " + ", ".join(
      f"{k.split('/')[0]} {v['turns_per_second']:.1f}" for k, v in last.items()
      if k.endswith("/valid_seen") and "turns_per_second" in v)]
  lines += ["", "Wall time (s): " + ", ".join(f"{k} {v:.0f}" for k, v in
                                               results["timings"].items())]
  return "\n".join(lines) + "\n"
