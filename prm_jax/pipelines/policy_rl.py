"""Pipeline `policy_rl`: the quickstart's SFT policy improved online against a reward.

GRPO with an outcome, PRM, mixed (ReasonFlux-PRM's `(1 - beta) r_outcome + beta r_PRM`) or
dense per-step PRM reward, or online DPO ranked by the PRM with the previous iteration's
policy as the reference (AgentPRM's policy step), all through `train.train_loop` with an
`online.OnlineSource`. Stages, in order; each writes atomically and a rerun with the same
workdir skips what is finished (training resumes from its checkpoints):

  tasks.json        the quickstart's problems (same seed: same problems, same policy)
  rl_problems.json  the RL prompts: train split, apart from the SFT and PRM problems
  policy/           the quickstart's SFT policy (systematic misconception on long chains)
  prm_samples.json  one solution per PRM-training problem, with the checker's verdicts
  labels.json       their Monte Carlo step labels
  prm/              the step PRM (initialised from the policy): the reward model
  policy_eval.json  the SFT policy on the test problems (step 0 of every curve)
  <run>/            one RL run (`rl.name`, default `<method>_<reward>`): checkpoints,
                    `metrics.jsonl` (loss, rollout statistics and the hacking monitor
                    every step; test accuracy every `rl.train.eval_every`), results.json
  results.json, results.md, rl_curves.png: every finished run in the workdir, compared

Runs share everything above `<run>/`: run the experiment again in the same workdir with
another `--config.reward.name`, `--config.rl.method`, ... and the report gains a row.
Test problems are only ever evaluated, never trained or tuned on.
"""

from __future__ import annotations

import dataclasses
import glob
import os
import time

import jax
import ml_collections
from absl import logging

from prm_jax import config_lib, files, metric_writer, online, rewards, train
from prm_jax.data.tasks import get_task
from prm_jax.data.tokenize import prompt_ids
from prm_jax.evaluate import rl_report
from prm_jax.evaluate.policy_eval import make_policy_evaluator
from prm_jax.objectives import dpo, grpo
from prm_jax.pipelines import stages

METHODS = ("grpo", "dpo")
RUN_RESULTS = "results.json"


STAGE_DIRECTORIES = ("policy", "prm")  # Training stages' workdirs: no run may use them.


def run_name(config: ml_collections.ConfigDict) -> str:
  """`rl.name`, or `<method>_<reward>` (`_b<beta>` for a mix)."""
  name = config.rl.name
  if not name:
    reward = config.reward.name + (f"_b{config.reward.beta:g}" if config.reward.name == "mix"
                                   else "")
    name = f"{config.rl.method}_{reward}"
  if name in STAGE_DIRECTORIES or os.sep in name or name.startswith("."):
    raise ValueError(f"rl.name={name!r} is not a usable run directory: runs live next to "
                     f"the stages {STAGE_DIRECTORIES} in the workdir; choose another name")
  return name


def settings(config, reward: dict | None = None):
  """`(rollout, objective, train config)` of the typed sections, validated before anything
  runs (bad values name their field); `reward` (default `config.reward`) is checked too."""
  if config.rl.method not in METHODS:
    raise ValueError(f"rl.method={config.rl.method!r} is not one of {METHODS}")
  rollout = online.RolloutConfig(seed=config.seed, **config.rollout.to_dict())
  objective = (config_lib.from_section(grpo.GRPOConfig, config.grpo) if config.rl.method == "grpo"
               else config_lib.from_section(dpo.DPOConfig, config.dpo))
  reward = config.reward.to_dict() if reward is None else reward
  rewards.RewardSettings(**reward)  # Checks name, aggregation, beta.
  if config.rl.method == "dpo" and reward["name"] == "prm_steps":
    raise ValueError("reward.name='prm_steps' gives step rewards; online DPO ranks by a "
                     "sequence reward (outcome, prm or mix)")
  return rollout, objective, config_lib.train_config(config.rl.train)


def rl_problems(config, task, tasks: dict) -> list[str]:
  """`rl.problems` train-split problems apart from the SFT and PRM problems."""
  taken = {t["problem"] for t in tasks["sft"]} | set(tasks["prm"])
  count = config.rl.problems
  drawn = [p for p in task.problems(count + len(taken), seed=config.seed + 20_000)
           if p not in taken]
  return drawn[:count]


def _check_lengths(config, tokenizer, problems, rollout: online.RolloutConfig) -> None:
  longest = max(len(prompt_ids(tokenizer, p)) for p in problems) + rollout.max_new_tokens
  if config.prm.max_length < longest:
    raise ValueError(f"prm.max_length={config.prm.max_length} cannot hold a rollout: the "
                     f"longest prompt plus rollout.max_new_tokens is {longest} tokens")


def _curves(run_dir: str, iteration_dirs: list[str], steps_per_iteration: int) -> dict:
  """`{"train": {metric: [..]}, "test": {metric: [..]}}` with a `step` list in each, over
  the run's iterations (steps counted across them)."""
  curves = {"train": {}, "test": {}}
  for index, folder in enumerate(iteration_dirs):
    for record in metric_writer.read_metrics(os.path.join(run_dir, folder)):
      kind = "test" if any(k.startswith("test/") for k in record) else "train"
      series = curves[kind]
      series.setdefault("step", []).append(record["step"] + index * steps_per_iteration)
      for name, value in record.items():
        if name != "step":
          series.setdefault(name.split("/", 1)[1], []).append(value)
  return curves


def _steps_to(curve: dict, target: float, initial: float) -> int | None:
  """First evaluated step whose sampled test accuracy reaches `target` (0 if the SFT
  policy already does; None if never)."""
  if initial >= target:
    return 0
  hits = [s for s, a in zip(curve.get("step", []), curve.get("sampled_accuracy", []))
          if a >= target]
  return hits[0] if hits else None


def train_run(config, model_config, tokenizer, task, problems, policy_params,
              reward: rewards.RewardSettings, evaluator, run_dir: str, mesh,
              initial: dict) -> dict:
  """Train one run of `config.rl.method` on `problems` against `reward` from
  `policy_params` (resuming from its checkpoints in `run_dir`) and summarise it: final and
  initial test figures, curves, steps to `rl.target_accuracy`, tokens, wall time."""
  reward_section = {f.name: getattr(reward, f.name)
                    for f in dataclasses.fields(reward) if f.name != "prm"}
  rollout, objective, train_config = settings(config, reward_section)
  start = time.perf_counter()
  score = rewards.make_scorer(reward, problems=problems, tokenizer=tokenizer, task=task)
  prompts = [prompt_ids(tokenizer, p) for p in problems]
  pad = tokenizer.pad_id if tokenizer.pad_id is not None else tokenizer.eos_id
  is_dpo = config.rl.method == "dpo"
  loss = (dpo.make_dpo_loss(model_config, objective) if is_dpo else
          grpo.make_grpo_loss(model_config, objective, temperature=rollout.temperature))
  iterations = config.rl.iterations if is_dpo else 1
  folders = [f"iter_{i}" for i in range(iterations)] if is_dpo else ["."]
  params, generated = policy_params, 0
  for folder in folders:
    # GRPO's reference is the SFT policy; online DPO's, the previous iteration's policy.
    needs_reference = is_dpo or objective.kl_coef > 0
    source = online.OnlineSource(model_config, prompts, score, objective, rollout, mesh=mesh,
                                 reference_params=params if needs_reference else None,
                                 stop_tokens=(tokenizer.eos_id,), pad_id=pad)
    result = train.train_loop(model_config, loss, source, config=train_config,
                              workdir=os.path.join(run_dir, folder), mesh=mesh,
                              evaluators={"test": evaluator}, init_params=params)
    params, generated = result.state.params, generated + source.generated_tokens
  curves = _curves(run_dir, folders, train_config.total_steps)
  test = curves["test"]
  final = {name: values[-1] for name, values in test.items() if name != "step"}
  return {"name": os.path.basename(run_dir), "method": config.rl.method,
          "reward": reward_section, "steps": train_config.total_steps * iterations,
          "final": final, "initial": initial, "curves": curves,
          "steps_to_target": _steps_to(test, config.rl.target_accuracy,
                                       initial["sampled_accuracy"]),
          "target_accuracy": config.rl.target_accuracy, "generated_tokens": generated,
          "wall_seconds": time.perf_counter() - start, "config": config.to_dict()}


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  rollout, _, _ = settings(config)
  name = run_name(config)
  mesh = config_lib.make_mesh(config.mesh)
  task = get_task(config.task.name, **{k: v for k, v in config.task.items() if k != "name"})
  model_config, init_params, tokenizer = stages.policy_model(config)

  # 1. Problems: the quickstart's, and the RL prompts.
  tasks = stages.stage(workdir, "tasks.json", lambda: stages.make_tasks(config, task))
  problems = stages.stage(workdir, "rl_problems.json",
                          lambda: rl_problems(config, task, tasks))
  stages.check_reward_lengths(config, tokenizer, tasks["prm"], ("prm",))
  _check_lengths(config, tokenizer, problems + tasks["test"], rollout)

  # 2. Policy (SFT).
  policy_params = stages.sft_policy(config, model_config, init_params, tokenizer, tasks,
                                    workdir, mesh)

  # 3. The PRM: samples of the PRM problems, Monte Carlo labels, step BCE.
  samples = stages.stage(workdir, "prm_samples.json", lambda: stages.sample(
      config, task, model_config, policy_params, tokenizer, tasks["prm"],
      config.data.prm_samples, jax.random.key(config.seed + 1), mesh))
  prm_samples = [s for s in samples["samples"] if s["steps"]]
  labels = stages.stage(workdir, "labels.json", lambda: stages.monte_carlo_labels(
      config, task, model_config, policy_params, tokenizer, prm_samples, mesh))
  max_steps = max(len(s["steps"]) for s in prm_samples)
  prm_params = stages.train_reward_model(
      "prm", config, model_config, tokenizer,
      stages.reward_data(prm_samples, labels[config.prm.labels]), max_steps, workdir, mesh,
      policy_params)
  prm = rewards.PRM(model_config, prm_params, tokenizer, max_length=config.prm.max_length,
                    max_steps=rollout.max_new_tokens, batch_size=config.prm.batch_size,
                    mesh=mesh)

  # 4. The test-set evaluator (accuracy greedy and sampled, the PRM next to the checker),
  # and the SFT policy's figures: step 0 of every run.
  aggregation = config.reward.aggregation
  evaluator = make_policy_evaluator(
      model_config, tokenizer, task, tasks["test"], max_new_tokens=rollout.max_new_tokens,
      temperature=rollout.temperature, samples_per_problem=config.rl.eval_samples,
      seed=config.seed + 3, prompts_per_batch=config.sampling.prompts_per_batch, mesh=mesh,
      prm_scores=lambda trajectories: prm.score_trajectories(trajectories, aggregation))
  initial = stages.stage(workdir, "policy_eval.json", lambda: evaluator(policy_params))

  # 5. The RL run.
  reward = rewards.RewardSettings(**config.reward.to_dict(), prm=prm)
  stages.stage(workdir, os.path.join(name, RUN_RESULTS), lambda: train_run(
      config, model_config, tokenizer, task, problems, policy_params, reward, evaluator,
      os.path.join(workdir, name), mesh, initial))

  # 6. Every finished run in the workdir, compared.
  runs = {}
  for path in sorted(glob.glob(os.path.join(workdir, "*", RUN_RESULTS))):
    result = files.read_json(path)
    runs[result["name"]] = {k: v for k, v in result.items() if k != "config"}
  results = {"runs": runs, "policy": initial, "seed": config.seed}
  if jax.process_index() == 0:
    files.write_json(os.path.join(workdir, "results.json"), results)
    rl_report.write_report(results, workdir)
  logging.info("policy_rl: %s", {n: (r["final"].get("sampled_accuracy"),
                                     r["final"].get("greedy_accuracy")) for n, r in runs.items()})
  logging.info("policy_rl: results in %s", os.path.join(workdir, "results.md"))
  return results
