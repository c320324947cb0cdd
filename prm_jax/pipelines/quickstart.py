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
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging

from prm_jax import config_lib, files, labeling, policy, train
from prm_jax.data import CharTokenizer, Trajectory, pipeline
from prm_jax.data.tokenize import prompt_ids
from prm_jax.data.tasks import generate_corpus, get_task
from prm_jax.evaluate import (Candidates, best_of_n_curves, calibrate_threshold, earliest_error,
                              first_errors, pad_steps, processbench_f1)
from prm_jax.evaluate.prm_scores import score_steps
from prm_jax.evaluate.report import write_report
from prm_jax.objectives.prm import make_prm_loss
from prm_jax.objectives.sft import make_sft_loss

LABEL_SOURCES = ("mc_soft", "mc_hard", "oracle")


def _stage(workdir: str, name: str, compute) -> Any:
  """The stage's saved result, or `compute()` saved atomically (process 0 writes)."""
  path = os.path.join(workdir, name)
  if os.path.exists(path):
    logging.info("stage %s: done before (%s)", name, path)
    return files.read_json(path)
  start = time.perf_counter()
  result = compute()
  if jax.process_index() == 0:
    files.write_json(path, result)
  logging.info("stage %s: %.1fs", name, time.perf_counter() - start)
  return result


def _progress(what: str):
  last = [0.0]

  def report(done: int, total: int):
    now = time.perf_counter()
    if now - last[0] > 10 or done == total:
      last[0] = now
      logging.info("%s: %d/%d", what, done, total)
  return report


# ----------------------------------------------------------------------------- policy


def _policy_model(config: ml_collections.ConfigDict):
  """(model config, initial params or None, tokenizer) of the policy."""
  section = config.policy
  if section.init == "scratch":
    return config_lib.model_config(section.model), None, CharTokenizer()
  if section.init == "hf":
    from prm_jax.data.tokenizer import load_tokenizer
    from prm_jax.models.hf import load_pretrained
    model_config, params = load_pretrained(section.path)
    return model_config, params, load_tokenizer(section.path)
  if section.init == "gguf":
    from prm_jax.models.gguf import load_gguf
    return load_gguf(section.path)
  raise ValueError(f"policy.init={section.init!r} is not one of 'scratch', 'hf', 'gguf'")


def _error_rate(config: ml_collections.ConfigDict, task):
  """Error rate of a problem's SFT solution by its number of reasoning steps: entry i of
  `data.error_rates` is for i + 1 steps, the last entry for all longer solutions."""
  rates = tuple(config.data.error_rates)
  if not rates:
    raise ValueError("data.error_rates is empty (give at least one rate)")
  return lambda problem: rates[min(len(task.solve(problem)) - 2, len(rates) - 1)]


def _check_reward_lengths(config, tokenizer, problems) -> None:
  """Fail now, not after sampling, if a sampled solution might not fit a reward model."""
  longest = max(len(prompt_ids(tokenizer, p)) for p in problems) + config.sampling.max_new_tokens
  for name in ("prm", "orm"):
    if config[name].max_length < longest:
      raise ValueError(
          f"{name}.max_length={config[name].max_length} cannot hold a sampled solution: the "
          f"longest prompt plus sampling.max_new_tokens is {longest} tokens")


def _train(name, model_config, loss_fn, batches, section, workdir, mesh, init_params=None):
  result = train.train_loop(model_config, loss_fn, iter(batches),
                            config=config_lib.train_config(section.train),
                            workdir=os.path.join(workdir, name), mesh=mesh,
                            init_params=init_params)
  return result.state.params


# ----------------------------------------------------------------------------- stages


def _make_tasks(config, task) -> dict:
  data, seed = config.data, config.seed
  corpus = generate_corpus(task, data.sft_problems, seed=seed, split="train",
                           error_rate=_error_rate(config, task),
                           error_kinds=tuple(data.error_kinds))
  sft_set = {t.problem for t in corpus}
  # PRM problems: train split, apart from the SFT corpus (its own seed stream).
  prm = [p for p in task.problems(data.prm_problems + len(sft_set), seed=seed + 10_000)
         if p not in sft_set][:data.prm_problems]
  return {"sft": [t.to_dict() for t in corpus], "prm": prm,
          "test": task.problems(data.test_problems, seed=seed, split="test")}


def _sample(config, task, model_config, params, tokenizer, problems, num_samples, key, mesh):
  s = config.sampling
  solutions = policy.sample_solutions(
      model_config, params, tokenizer, problems, num_samples=num_samples,
      max_new_tokens=s.max_new_tokens, temperature=s.temperature, top_p=s.top_p or None,
      rng=key, prompts_per_batch=s.prompts_per_batch, mesh=mesh,
      progress=_progress(f"sampling {num_samples} per problem"))
  samples = []
  for problem, texts in zip(problems, solutions.texts):
    for text in texts:
      verdict = task.check(problem, text)
      samples.append({"problem": problem, "text": text, "steps": list(verdict.steps),
                      "step_correct": list(verdict.step_correct),
                      "first_error": verdict.first_error, "answer": verdict.final_answer,
                      "solved": verdict.solved})
  return {"samples": samples, "generated_tokens": solutions.generated_tokens}


def _labels(config, task, model_config, params, tokenizer, samples, mesh) -> dict:
  trajectories = [Trajectory(problem=s["problem"], steps=s["steps"]) for s in samples]
  lab = config.labeling
  start = time.perf_counter()
  mc = labeling.monte_carlo_labels(
      model_config, params, tokenizer, trajectories,
      lambda m, text: task.check(samples[m]["problem"], text).solved,
      rollouts_per_step=lab.rollouts, max_new_tokens=config.sampling.max_new_tokens,
      rng=jax.random.key(config.seed + 2), temperature=config.sampling.temperature,
      rows_per_batch=lab.rows_per_batch, mesh=mesh, progress=_progress("Monte Carlo rollouts"))
  oracle = [task.check(s["problem"], s["steps"]).prefix_labels for s in samples]
  return {"mc_soft": mc.soft, "mc_hard": mc.hard, "oracle": oracle, "rollouts": mc.rollouts,
          "generated_tokens": mc.generated_tokens, "seconds": time.perf_counter() - start}


def _reward_data(samples, step_labels=None) -> list[Trajectory]:
  """Reward-model training trajectories: with `step_labels`, every step labelled (PRM);
  without, only the final step, labelled by the outcome (ORM)."""
  data = []
  for index, sample in enumerate(samples):
    steps = sample["steps"]
    labels = (list(step_labels[index]) if step_labels is not None
              else [None] * (len(steps) - 1) + [float(sample["solved"])])
    data.append(Trajectory(problem=sample["problem"], steps=steps, labels=labels))
  return data


def _json_safe(metrics: dict) -> dict:
  """Undefined metrics (no erroneous sample, say) are NaN: stored as null."""
  return {k: None if isinstance(v, float) and np.isnan(v) else v for k, v in metrics.items()}


def _processbench(config, test_samples, test_scores, train_scores, train_labels) -> dict:
  """Earliest-error F1 of the PRM on the test samples (truth: the oracle's first error).

  The threshold is `eval.processbench_threshold`, or with "calibrate" the one with the best
  F1 on the PRM's training samples, whose first errors come from the hard labels of the
  PRM's label source (Monte Carlo or oracle): no test data is used to choose it.
  """
  setting = config.eval.processbench_threshold
  if setting == "calibrate":
    threshold, _ = calibrate_threshold(*pad_steps(train_scores), first_errors(train_labels))
  else:
    threshold = float(setting)
  scores, mask = pad_steps(test_scores)
  truth = np.array([s["first_error"] for s in test_samples])
  result = processbench_f1(earliest_error(scores, mask, threshold), truth)
  result.update(threshold=threshold,
                f1_at_half=processbench_f1(earliest_error(scores, mask, 0.5), truth)["f1"])
  return _json_safe(result)


def _evaluate(config, test_samples, prm_scores, orm_scores) -> dict:
  num_samples = config.sampling.num_samples
  problems = len(test_samples) // num_samples
  step_scores, step_mask = pad_steps(prm_scores)
  step_scores = step_scores.reshape(problems, num_samples, -1)
  step_mask = step_mask.reshape(step_scores.shape)
  answer_ids = np.full((problems, num_samples), -1)
  for p in range(problems):
    ids: dict[str, int] = {}
    for n in range(num_samples):
      answer = test_samples[p * num_samples + n]["answer"]
      if answer is not None:
        answer_ids[p, n] = ids.setdefault(answer, len(ids))
  correct = np.array([s["solved"] for s in test_samples]).reshape(problems, num_samples)
  orm = np.array([s[-1] if len(s) else -np.inf for s in orm_scores],
                 np.float32).reshape(problems, num_samples)
  candidates = Candidates(answer_ids, correct, step_scores, step_mask, orm)
  e = config.eval
  return {"bon": best_of_n_curves(candidates, tuple(e.ns), draws=e.draws, seed=config.seed,
                                  vote_aggregation=e.vote_aggregation),
          "policy_accuracy": float(correct.mean())}


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
  model_config, init_params, tokenizer = _policy_model(config)

  # 1. Problems.
  tasks = _stage(workdir, "tasks.json", lambda: _make_tasks(config, task))
  _check_reward_lengths(config, tokenizer, tasks["test"] + tasks["prm"])
  corpus = [Trajectory.from_dict(t) for t in tasks["sft"]]

  # 2. Policy (SFT).
  sft = config.sft
  policy_params = _train("policy", model_config, make_sft_loss(model_config),
                         pipeline.sft_batches(corpus, tokenizer, batch_size=sft.batch_size,
                                              max_length=sft.max_length, seed=config.seed),
                         sft, workdir, mesh, init_params)

  # 3. Samples: N per test problem, M per PRM-training problem.
  samples = _stage(workdir, "samples.json", lambda: {
      "test": _sample(config, task, model_config, policy_params, tokenizer, tasks["test"],
                      config.sampling.num_samples, jax.random.key(config.seed), mesh),
      "prm": _sample(config, task, model_config, policy_params, tokenizer, tasks["prm"],
                     config.data.prm_samples, jax.random.key(config.seed + 1), mesh)})
  prm_samples = [s for s in samples["prm"]["samples"] if s["steps"]]

  # 4. Step labels: Monte Carlo (soft, hard) and the oracle's.
  labels = _stage(workdir, "labels.json", lambda: _labels(
      config, task, model_config, policy_params, tokenizer, prm_samples, mesh))

  # 5. PRM and ORM, both initialised from the policy. Batches have a row per step of the
  # longest sample (a policy may write more lines than the task has steps).
  max_steps = max(len(s["steps"]) for s in samples["test"]["samples"] + prm_samples)
  test = [Trajectory(problem=s["problem"], steps=s["steps"]) for s in samples["test"]["samples"]]
  reward_params = {}
  for name, data in (("prm", _reward_data(prm_samples, labels[config.prm.labels])),
                     ("orm", _reward_data(prm_samples))):
    section = config[name]
    batches = pipeline.prm_batches(data, tokenizer, batch_size=section.batch_size,
                                   max_length=section.max_length, max_steps=max_steps,
                                   seed=config.seed)
    reward_params[name] = _train(name, model_config, make_prm_loss(model_config), batches,
                                 section, workdir, mesh, policy_params)

  # 6. Evaluation.
  def evaluate():
    def score(name, trajectories):
      section = config[name]
      return score_steps(model_config, reward_params[name], tokenizer, trajectories,
                         max_length=section.max_length, max_steps=max_steps,
                         batch_size=section.batch_size, mesh=mesh)

    prm_test = score("prm", test)
    results = _evaluate(config, samples["test"]["samples"], prm_test, score("orm", test))
    hard_source = "oracle" if config.prm.labels == "oracle" else "mc_hard"
    processbench = _processbench(
        config, samples["test"]["samples"], prm_test,
        score("prm", [Trajectory(problem=s["problem"], steps=s["steps"]) for s in prm_samples]),
        labels[hard_source])
    results.update(
        processbench=processbench, processbench_f1=processbench["f1"],
        **_label_agreement(labels), prm_train_samples=len(prm_samples),
        labeling_tokens=labels["generated_tokens"], labeling_rollouts=labels["rollouts"],
        labeling_seconds=labels["seconds"],
        sampling_tokens=samples["test"]["generated_tokens"] + samples["prm"]["generated_tokens"],
        wall_seconds=time.perf_counter() - wall_start, config=config.to_dict())
    return results

  results = _stage(workdir, "results.json", evaluate)
  if jax.process_index() == 0:
    write_report(results, workdir)
  largest = str(max(config.eval.ns))
  logging.info("quickstart: Best-of-%s accuracy %s; ProcessBench F1 %s; results in %s",
               largest, {m: results["bon"][m][largest] for m in results["bon"]},
               results["processbench_f1"], os.path.join(workdir, "results.md"))
  return results
