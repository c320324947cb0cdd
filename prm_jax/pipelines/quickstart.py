"""Pipeline `quickstart`: a step PRM, trained from Monte Carlo labels, beats majority voting.

Stages, in order; each writes its result atomically into the workdir and a rerun with the
same workdir skips what is finished (training stages resume from their checkpoints):

  tasks.json      problems: the SFT corpus, PRM-training problems and held-out test
                  problems (train/test disjoint, all from `config.seed`)
  policy/         the policy: SFT on solutions with errors at set rates (`config.data`)
  samples.json    N solutions per test problem, M per PRM problem, with the exact oracle
                  verdict of every step (the task's checker)
  labels.json     Monte Carlo soft and hard labels of the PRM samples (k rollouts from
                  every step prefix) and their cost; oracle labels for comparison
  prm/, orm/      the step PRM (initialised from the policy; soft MC labels by default)
                  and the outcome-RM baseline (the same samples, only the final step
                  labelled: solved or not)
  results.json    Best-of-N curves, ProcessBench F1, MC/oracle agreement, costs, wall time
  results.md, bon_curve.png

The same pipeline scales by config alone: a larger `policy.model`, a `mesh`, another task
family, or a pretrained policy (`policy.init = "hf"` / `"gguf"` with `policy.path`).
"""

from __future__ import annotations

import os
import time

import jax
import ml_collections
import numpy as np
from absl import logging

from prm_jax import config_lib
from prm_jax.data.tasks import get_task
from prm_jax.evaluate.report import write_report
from prm_jax.pipelines import stages

LABEL_SOURCES = ("mc_soft", "mc_hard", "oracle")


def _label_agreement(labels) -> dict:
  """How often the Monte Carlo labels (soft: >= 0.5) agree with the oracle, per step."""
  oracle = np.concatenate([np.asarray(o, bool) for o in labels["oracle"]])
  soft = np.concatenate([np.asarray(s) for s in labels["mc_soft"]])
  hard = np.concatenate([np.asarray(h, bool) for h in labels["mc_hard"]])
  return {"mc_oracle_agreement": float(np.mean((soft >= 0.5) == oracle)),
          "mc_hard_oracle_agreement": float(np.mean(hard == oracle)),
          "prm_train_steps": int(oracle.size)}


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  wall_start = time.perf_counter()
  if config.prm.labels not in LABEL_SOURCES:
    raise ValueError(f"prm.labels={config.prm.labels!r} is not one of {LABEL_SOURCES}")
  mesh = config_lib.make_mesh(config.mesh)
  task = get_task(config.task.name, **{k: v for k, v in config.task.items() if k != "name"})
  model_config, init_params, tokenizer = stages.policy_model(config)

  # 1. Problems.
  tasks = stages.stage(workdir, "tasks.json", lambda: stages.make_tasks(config, task))
  stages.check_reward_lengths(config, tokenizer, tasks["test"] + tasks["prm"], ("prm", "orm"))

  # 2. Policy (SFT).
  policy_params = stages.sft_policy(config, model_config, init_params, tokenizer, tasks,
                                    workdir, mesh)

  # 3. Samples: N per test problem, M per PRM-training problem.
  samples = stages.stage(workdir, "samples.json", lambda: {
      "test": stages.sample(config, task, model_config, policy_params, tokenizer,
                            tasks["test"], config.sampling.num_samples,
                            jax.random.key(config.seed), mesh),
      "prm": stages.sample(config, task, model_config, policy_params, tokenizer, tasks["prm"],
                           config.data.prm_samples, jax.random.key(config.seed + 1), mesh)})
  prm_samples = [s for s in samples["prm"]["samples"] if s["steps"]]

  # 4. Step labels: Monte Carlo (soft, hard) and the oracle's.
  labels = stages.stage(workdir, "labels.json", lambda: stages.monte_carlo_labels(
      config, task, model_config, policy_params, tokenizer, prm_samples, mesh))

  # 5. PRM and ORM, both initialised from the policy. Batches have a row per step of the
  # longest sample (a policy may write more lines than the task has steps).
  max_steps = max(len(s["steps"]) for s in samples["test"]["samples"] + prm_samples)
  reward_params = {
      name: stages.train_reward_model(name, config, model_config, tokenizer, data, max_steps,
                                      workdir, mesh, policy_params)
      for name, data in (("prm", stages.reward_data(prm_samples, labels[config.prm.labels])),
                         ("orm", stages.reward_data(prm_samples)))}

  # 6. Evaluation.
  def evaluate():
    def score(name, samples_):
      return stages.reward_scores(config, name, model_config, reward_params[name], tokenizer,
                                  stages.as_trajectories(samples_), max_steps, mesh)

    test_samples = samples["test"]["samples"]
    prm_test = score("prm", test_samples)
    results = stages.best_of_n(config, test_samples, prm_test, score("orm", test_samples))
    hard_source = "oracle" if config.prm.labels == "oracle" else "mc_hard"
    processbench = stages.processbench(config, test_samples, prm_test,
                                       score("prm", prm_samples), labels[hard_source])
    results.update(
        processbench=processbench, processbench_f1=processbench["f1"],
        **_label_agreement(labels), prm_train_samples=len(prm_samples),
        labeling_tokens=labels["generated_tokens"], labeling_rollouts=labels["rollouts"],
        labeling_seconds=labels["seconds"],
        sampling_tokens=samples["test"]["generated_tokens"] + samples["prm"]["generated_tokens"],
        wall_seconds=time.perf_counter() - wall_start, config=config.to_dict())
    return results

  results = stages.stage(workdir, "results.json", evaluate)
  if jax.process_index() == 0:
    write_report(results, workdir)
  largest = str(max(config.eval.ns))
  logging.info("quickstart: Best-of-%s accuracy %s; ProcessBench F1 %s; results in %s",
               largest, {m: results["bon"][m][largest] for m in results["bon"]},
               results["processbench_f1"], os.path.join(workdir, "results.md"))
  return results
