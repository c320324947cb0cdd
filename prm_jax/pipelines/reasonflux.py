"""Pipeline `reasonflux`: ReasonFlux-PRM (Zou et al. 2025, arXiv 2506.18896) in miniature.

A trajectory-aware PRM is trained on thinking-trajectory + response pairs from its own
targets (step rewards: alignment, quality, coherence; trajectory reward: template-guided
success rate) and used the three ways the paper uses it: to **select SFT data** (keep the
top-K pairs of a pool by `mean_t R(s_t) + alpha * R(x, y)`, fine-tune a policy on them), as
a **GRPO reward** (`(1 - beta) r_outcome + beta r_ReasonFlux`, the step and trajectory
terms) and as a **Best-of-N** verifier over candidate pairs. The pairs are synthetic and of known quality
(`prm_jax.data.tasks.thinking`: clean, exploration with self-correction, redundant,
unrecovered errors, thinking that does not support its response), so every score is checked
against exact ground truth. Stages, in order; each writes atomically and a rerun with the same
workdir skips what is finished (training stages resume from their checkpoints):

  tasks.json        the quickstart's problems (same seed: the same SFT policy)
  pairs.json        pairs on train-split problems apart from the quickstart's: `prm` (to
                    train the PRM) and `pool` (to select from); and `bon`: `bon.n` candidate
                    pairs (kinds drawn at random) per held-out test problem
  policy/           the quickstart's SFT policy: the encoder Phi (mean-pooled hidden
                    states) and the template-guided sampler
  targets.json      per `prm` pair: the three step terms (quality by `targets.judge`: the
                    checker, or the policy as an LM judge) and their softmax-weighted
                    combination `r_t`, the template and `r_final` (`targets.template_samples`
                    policy samples of the template, success rate under the checker)
  reasonflux_prm/   the PRM (initialised from the policy), loss `lambda_step * mean_t
                    (R(s_t) - r_t)^2 + lambda_final * (R(x, y) - r_final)^2`
  scores.json       its scores of the pool and the Best-of-N candidates
  step_prm/         the baseline: a step PRM of the quickstart's kind trained on the `prm`
                    pairs' *responses* only (lines labelled by the checker, step BCE), and
  step_prm_scores.json  its scores (`step_prm.aggregation` of the lines) of the same pairs
  student_<sel>/    per selector, a policy trained from scratch (SFT, `student`) on the
                    responses of the top `selection.top_k` pool pairs, and its test accuracy
                    (`student_<sel>.json`)
  grpo/             GRPO from the SFT policy, one run per reward of `rl.rewards` (`outcome`:
                    rule only; `mix`: with ReasonFlux-PRM), through `policy_rl.train_run`;
                    `grpo/results.md` and `grpo/rl_curves.png` compare them
  results.json, results.md, selection.png

Selectors: `random`; `outcome` (the response's final answer is right: a rule filter needing
the gold answer); `reasonflux` (the pair score, `selection.alpha`); `reasonflux_steps`
(alpha = 0: the step scores alone); `oracle` (the known trajectory quality); `step_prm` (the
baseline step PRM's score of the response). Ties are broken at random. Students learn the
*responses* of the pairs they are given (the thinking would triple the sequence length of a
character-level policy; the selection still reads it).

GRPO. The policy writes responses without a thinking phase; the reward model
(`rewards.ReasonFluxPRM`) reads each rollout as a pair whose thinking is the response's lines
phrased as moves (`straight_thinking`) and scores it `(mean_t R(s_t) + alpha R(x, y)) / (1 +
alpha)` in [0, 1]. The rule-only run logs that score too, so the two runs' hacking monitors
compare. Test problems are only evaluated, never trained or tuned on.
"""

from __future__ import annotations

import os
import time

import jax
import ml_collections
import numpy as np
from absl import logging

from prm_jax import config_lib, files, policy, rewards
from prm_jax.data import Trajectory, pipeline
from prm_jax.data.tasks import (checker_judge, generate_thinking, get_task, plan_template,
                                thinking_trajectory)
from prm_jax.data.tokenize import tokenize_stepwise
from prm_jax.evaluate.policy_eval import make_policy_evaluator
from prm_jax.evaluate import rl_report
from prm_jax.evaluate.report import plot_selection
from prm_jax.labeling import reasonflux as targets_lib
from prm_jax.objectives import reasonflux as objective
from prm_jax.objectives.sft import make_sft_loss
from prm_jax.pipelines import policy_rl, stages

# New selectors go at the end: a selector's tie-breaking stream is seeded by its index.
SELECTORS = ("random", "outcome", "reasonflux", "reasonflux_steps", "oracle", "step_prm")
BON_SELECTORS = ("random", "majority", "reasonflux", "reasonflux_steps", "oracle", "step_prm")
PRM = "reasonflux_prm"  # The PRM's stage directory and config section.
STEP_PRM = "step_prm"  # The baseline step PRM's stage directory and config section.
GRPO = "grpo"  # The GRPO runs' folder (a `policy_rl` workdir of their own).


# ----------------------------------------------------------------------------- data


def make_pairs(config, task, tasks: dict) -> dict:
  """`{"prm": [pair], "pool": [pair], "bon": [[pair] * bon.n per test problem]}` as
  Trajectory dicts, from `config.seed`; `prm` and `pool` problems are train-split and apart
  from the quickstart's SFT and PRM problems and from each other."""
  p = config.pairs
  taken = {t["problem"] for t in tasks["sft"]} | set(tasks["prm"])
  count = p.prm_pairs + p.pool_pairs
  drawn = [x for x in task.problems(count + len(taken), seed=config.seed + 30_000)
           if x not in taken][:count]
  if len(drawn) < count:
    raise ValueError(f"the task has only {len(drawn)} train problems apart from the "
                     f"quickstart's; pairs.prm_pairs + pairs.pool_pairs = {count}")
  pairs = generate_thinking(task, drawn, seed=config.seed, kinds=tuple(p.kinds),
                            error_kinds=tuple(p.error_kinds))
  # Best-of-N candidates: kinds drawn independently, so groups differ in their mix.
  rng = np.random.default_rng([config.seed, 5])
  bon = [[thinking_trajectory(task, problem, str(rng.choice(p.kinds)), rng, tuple(p.error_kinds))
          for _ in range(config.bon.n)] for problem in tasks["test"]]
  return {"prm": [x.to_dict() for x in pairs[:p.prm_pairs]],
          "pool": [x.to_dict() for x in pairs[p.prm_pairs:]],
          "bon": [[x.to_dict() for x in group] for group in bon]}


def check_lengths(config, tokenizer, pairs) -> None:
  """Fail now, not in training, if a pair's example does not fit `reasonflux_prm.max_length`."""
  longest = max(len(tokenize_stepwise(tokenizer, objective.reasonflux_example(x))["input_ids"])
                for x in pairs)
  if config[PRM].max_length < longest:
    raise ValueError(f"{PRM}.max_length={config[PRM].max_length} cannot hold a pair: the "
                     f"longest is {longest} tokens")


# ----------------------------------------------------------------------------- targets


JUDGES = ("checker", "lm")


def make_judge(section, task, model_config, params, tokenizer) -> targets_lib.Judge:
  """The quality judge `targets.judge`: "checker" (the task's exact checker, what the
  synthetic pairs allow) or "lm" (`targets_lib.LMJudge`: the policy asked by prompt, with
  `targets.lm_judge` settings; what data without a checker needs)."""
  if section.judge == "checker":
    return checker_judge(task)
  if section.judge == "lm":
    return targets_lib.LMJudge(model_config, params, tokenizer, **section.lm_judge.to_dict())
  raise ValueError(f"targets.judge={section.judge!r} is not one of {JUDGES}")


def make_targets(config, task, model_config, params, tokenizer, pairs) -> dict:
  """The PRM's training targets for `pairs` (see the module docstring), the cost of the
  template-guided samples, and how the targets agree with the known truth."""
  t = config.targets
  problems = [x.problem for x in pairs]
  # Phi: every problem, thinking step and response step embedded once.
  thinking = [step for x in pairs for step in x.steps]
  response = [step for x in pairs for step in x.response]
  embed = lambda texts: targets_lib.embed_texts(  # noqa: E731
      model_config, params, tokenizer, texts, max_length=t.encoder_max_length,
      batch_size=t.encoder_batch_size)
  problem_emb, thinking_emb, response_emb = embed(problems), embed(thinking), embed(response)
  owners = np.repeat(np.arange(len(pairs)), [len(x.steps) for x in pairs])
  starts = np.cumsum([0] + [len(x.steps) for x in pairs])
  response_starts = np.cumsum([0] + [len(x.response) for x in pairs])
  rng = np.random.default_rng([config.seed, 4])
  quality = targets_lib.quality_rewards(make_judge(t, task, model_config, params, tokenizer),
                                        [(x.problem, x.steps, x.response) for x in pairs])
  terms = {name: [] for name in ("alignment", "quality", "coherence", "r")}
  for i, x in enumerate(pairs):
    steps = thinking_emb[starts[i]:starts[i + 1]]
    negatives = targets_lib.coherence_negatives(owners, thinking_emb, i, len(x.steps),
                                                t.negatives, rng)
    pair_terms = targets_lib.step_targets(
        problem_emb[i], steps, response_emb[response_starts[i]:response_starts[i + 1]],
        negatives, quality[i], temperature=t.temperature)
    for name, values in pair_terms.items():
      terms[name].append([float(v) for v in values])

  # r_final: the policy follows each pair's template (its plan); success rate.
  templates = [plan_template(task, x.problem, x.response) for x in pairs]
  generated = [0]

  def guided(problems_, templates_, n):
    usable = [i for i, template in enumerate(templates_) if template]
    out = policy.sample_solutions(
        model_config, params, tokenizer, [templates_[i] for i in usable], num_samples=n,
        max_new_tokens=config.sampling.max_new_tokens, temperature=config.sampling.temperature,
        rng=jax.random.key(config.seed + 5), prompts_per_batch=config.sampling.prompts_per_batch,
        progress=stages.progress("template-guided samples"))
    generated[0] = out.generated_tokens
    texts = [[""] * n for _ in templates_]  # No plan: nothing to follow, never solved.
    for i, group in zip(usable, out.texts):
      texts[i] = list(group)
    return texts

  final = targets_lib.template_reward(templates, problems, guided,
                                      lambda problem, text: task.check(problem, text).solved,
                                      t.template_samples)
  step_truth = np.concatenate([x.meta["step_quality"] for x in pairs])
  final_truth = np.array([x.meta["trajectory_quality"] for x in pairs])
  agreement = {f"{name}_step_pearson": objective.pearson(np.concatenate(values), step_truth)
               for name, values in terms.items()}
  agreement["final_pearson"] = objective.pearson(final, final_truth)
  return {"steps": terms, "final": [float(v) for v in final], "templates": templates,
          "generated_tokens": generated[0], "agreement": stages.json_safe(agreement)}


# ----------------------------------------------------------------------------- the PRM


def train_prm(config, model_config, tokenizer, pairs, targets, max_steps, workdir, mesh,
              init_params):
  """ReasonFlux-PRM params, trained on `pairs` with `targets` (in `workdir/reasonflux_prm`)."""
  section = config[PRM]
  data = [objective.reasonflux_example(x, r, final)
          for x, r, final in zip(pairs, targets["steps"]["r"], targets["final"])]
  batches = pipeline.prm_batches(data, tokenizer, batch_size=section.batch_size,
                                 max_length=section.max_length, max_steps=max_steps,
                                 seed=config.seed)
  loss = objective.make_reasonflux_loss(model_config, lambda_step=section.lambda_step,
                                        lambda_final=section.lambda_final)
  return stages.train_model(PRM, model_config, loss, batches, section, workdir, mesh,
                            init_params)


def pair_scores(config, model_config, params, tokenizer, pairs, max_steps, mesh) -> list:
  """`[T + 1]` scores per pair (thinking steps, then the trajectory score), as lists."""
  examples = [objective.reasonflux_example(x) for x in pairs]
  scores = stages.reward_scores(config, PRM, model_config, params, tokenizer, examples,
                                max_steps, mesh)
  return [[float(v) for v in s] for s in scores]


def train_step_prm(config, task, model_config, tokenizer, pairs, workdir, mesh, init_params):
  """The baseline: a step PRM of the quickstart's kind (step BCE on solution lines) trained
  on the *responses* of `pairs` only, each line labelled by the task's checker (the same
  exact judge as ReasonFlux-PRM's quality term, so the two PRMs differ in what they read
  and how they are trained, not in the judge)."""
  data = [Trajectory(problem=x.problem, steps=list(x.response),
                     labels=[float(c) for c in task.check(x.problem, x.response).step_correct])
          for x in pairs]
  return stages.train_reward_model(STEP_PRM, config, model_config, tokenizer, data,
                                   max(len(x.response) for x in pairs), workdir, mesh,
                                   init_params)


def step_prm_scores(config, model_config, params, tokenizer, groups, mesh) -> list[list[float]]:
  """Per group of pairs, the step PRM's score of each response (`step_prm.aggregation` of
  its line scores)."""
  flat = [Trajectory(problem=x.problem, steps=list(x.response)) for g in groups for x in g]
  scores = stages.reward_scores(config, STEP_PRM, model_config, params, tokenizer, flat,
                                max(len(t.steps) for t in flat), mesh)
  values = [float(v) for v in rewards.aggregate(scores, config[STEP_PRM].aggregation)]
  out, start = [], 0
  for group in groups:
    out.append(values[start:start + len(group)])
    start += len(group)
  return out


def split_first(groups: list) -> tuple:
  """`(groups[0], groups[1:])`: the pool's scores, then the Best-of-N groups'."""
  return groups[0], groups[1:]


# ----------------------------------------------------------------------------- uses


def selection_keys(selector: str, pairs, scores, step_prm, alpha: float, rng) -> np.ndarray:
  """`[M]` the selector's score of every pool pair (higher is kept first); `scores`:
  ReasonFlux-PRM's `[T + 1]` per pair, `step_prm`: the step PRM's score per pair."""
  if selector == "random":
    return rng.random(len(pairs))
  if selector == "outcome":
    return np.array([float(x.meta["response_correct"]) for x in pairs])
  if selector == "reasonflux":
    return np.array([objective.pair_score(s, alpha) for s in scores])
  if selector == "reasonflux_steps":
    return np.array([objective.pair_score(s, 0.0) for s in scores])
  if selector == "oracle":
    return np.array([x.meta["trajectory_quality"] for x in pairs])
  if selector == "step_prm":
    return np.asarray(step_prm, float)
  raise ValueError(f"selection.selectors: unknown selector {selector!r}; known: {SELECTORS}")


def select(selector: str, pairs, scores, step_prm, top_k: int, alpha: float,
           seed: int) -> list[int]:
  """Indices of the top `top_k` pool pairs by the selector, ties broken at random."""
  rng = np.random.default_rng([seed, 6, SELECTORS.index(selector)])
  keys = selection_keys(selector, pairs, scores, step_prm, alpha, rng)
  order = np.lexsort((rng.random(len(pairs)), -keys))  # Last key sorts first.
  return sorted(int(i) for i in order[:top_k])


def composition(chosen) -> dict:
  """What a selection holds: kinds, share of right responses, mean trajectory quality."""
  kinds = {}
  for x in chosen:
    kinds[x.meta["kind"]] = kinds.get(x.meta["kind"], 0) + 1
  return {"kinds": dict(sorted(kinds.items())),
          "response_correct": float(np.mean([x.meta["response_correct"] for x in chosen])),
          "trajectory_quality": float(np.mean([x.meta["trajectory_quality"] for x in chosen]))}


def train_student(config, selector, model_config, tokenizer, chosen, evaluate, workdir, mesh):
  """A policy trained from scratch on the responses of `chosen`; its test figures."""
  corpus = [Trajectory(problem=x.problem, steps=list(x.response)) for x in chosen]
  section = config.student
  start = time.perf_counter()
  params = stages.train_model(
      f"student_{selector}", model_config, make_sft_loss(model_config),
      pipeline.sft_batches(corpus, tokenizer, batch_size=section.batch_size,
                           max_length=section.max_length, seed=config.seed),
      section, workdir, mesh)
  return {**evaluate(params), **composition(chosen), "train_seconds": time.perf_counter() - start}


def best_of_n(groups, scores, step_prm, alpha: float, seed: int) -> dict:
  """Per selector: accuracy (the picked pair's response is right) and the picked pair's
  mean trajectory quality, over the test problems' candidate groups (`scores`, `step_prm`:
  per group, as in `selection_keys`)."""
  rng = np.random.default_rng([seed, 7])
  result = {}
  for selector in BON_SELECTORS:
    right, quality = [], []
    for group, group_scores, group_step_prm in zip(groups, scores, step_prm):
      if selector == "random":  # Its expectation: the group's mean.
        right.append(np.mean([x.meta["response_correct"] for x in group]))
        quality.append(np.mean([x.meta["trajectory_quality"] for x in group]))
        continue
      if selector == "majority":  # The most frequent final answer; a random holder of it.
        answers = [x.response[-1] if x.response else "" for x in group]
        values, counts = np.unique(answers, return_counts=True)
        top = set(values[counts == counts.max()])
        keys = np.array([float(a in top) for a in answers])
      elif selector == "oracle":
        keys = np.array([x.meta["trajectory_quality"] for x in group])
      elif selector == "step_prm":
        keys = np.asarray(group_step_prm, float)
      else:
        keys = np.array([objective.pair_score(s, alpha if selector == "reasonflux" else 0.0)
                         for s in group_scores])
      pick = np.lexsort((rng.random(len(group)), -keys))[0]
      right.append(float(group[pick].meta["response_correct"]))
      quality.append(group[pick].meta["trajectory_quality"])
    result[selector] = {"accuracy": float(np.mean(right)), "quality": float(np.mean(quality))}
  return result


def grpo_runs(config, task, model_config, tokenizer, tasks, policy_params, prm_params,
              workdir: str, mesh) -> dict:
  """GRPO from the SFT policy, one run per reward of `rl.rewards` (`policy_rl.train_run`,
  in `workdir/grpo/grpo_<reward>`), with ReasonFlux-PRM as the reward model: `mix` is the
  paper's `(1 - beta) r_outcome + beta r_ReasonFlux`, `outcome` the rule-only baseline
  (which still logs ReasonFlux-PRM's reward: the hacking monitor). The policy writes
  responses; `rewards.ReasonFluxPRM` reads each as a thinking + response pair."""
  folder = os.path.join(workdir, GRPO)
  rollout, _, _ = policy_rl.settings(config)
  problems = stages.stage(folder, "rl_problems.json",
                          lambda: policy_rl.rl_problems(config, task, tasks))
  reward_model = rewards.ReasonFluxPRM(
      model_config, prm_params, tokenizer, max_length=config[PRM].max_length,
      max_steps=rollout.max_new_tokens + 1, alpha=config.selection.alpha, mesh=mesh)
  evaluator = make_policy_evaluator(
      model_config, tokenizer, task, tasks["test"], max_new_tokens=rollout.max_new_tokens,
      temperature=rollout.temperature, samples_per_problem=config.rl.eval_samples,
      seed=config.seed + 3, prompts_per_batch=config.sampling.prompts_per_batch, mesh=mesh,
      prm_scores=lambda trajectories: reward_model.score_trajectories(trajectories, "mean"))
  initial = stages.stage(folder, "policy_eval.json", lambda: evaluator(policy_params))
  runs = {}
  for name in config.rl.rewards:
    reward = rewards.RewardSettings(name=name, aggregation=config.reward.aggregation,
                                    beta=config.reward.beta, prm=reward_model)
    run_dir = os.path.join(folder, f"{config.rl.method}_{name}")
    result = stages.stage(folder, os.path.join(run_dir, policy_rl.RUN_RESULTS),
                          lambda: policy_rl.train_run(
                              config, model_config, tokenizer, task, problems, policy_params,
                              reward, evaluator, run_dir, mesh, initial))
    runs[result["name"]] = {k: v for k, v in result.items() if k != "config"}
  summary = {"runs": runs, "policy": initial, "seed": config.seed}
  if jax.process_index() == 0:
    rl_report.write_report(summary, folder)  # grpo/results.md, grpo/rl_curves.png
  return summary


# ----------------------------------------------------------------------------- pipeline


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  wall_start = time.perf_counter()
  for selector in config.selection.selectors:
    if selector not in SELECTORS:
      raise ValueError(f"selection.selectors: unknown selector {selector!r}; known: "
                       f"{SELECTORS}")
  for name in config.rl.rewards:
    policy_rl.settings(config, {**config.reward.to_dict(), "name": name})  # Fail early.
  if config.targets.judge not in JUDGES:
    raise ValueError(f"targets.judge={config.targets.judge!r} is not one of {JUDGES}")
  mesh = config_lib.make_mesh(config.mesh)
  task = get_task(config.task.name, **{k: v for k, v in config.task.items() if k != "name"})
  model_config, init_params, tokenizer = stages.policy_model(config)

  # 1. Problems and pairs.
  tasks = stages.stage(workdir, "tasks.json", lambda: stages.make_tasks(config, task))
  raw = stages.stage(workdir, "pairs.json", lambda: make_pairs(config, task, tasks))
  pairs = {name: [Trajectory.from_dict(x) for x in raw[name]] for name in ("prm", "pool")}
  bon = [[Trajectory.from_dict(x) for x in group] for group in raw["bon"]]
  everything = pairs["prm"] + pairs["pool"] + [x for g in bon for x in g]
  check_lengths(config, tokenizer, everything)
  if not 0 < config.selection.top_k <= len(pairs["pool"]):
    raise ValueError(f"selection.top_k={config.selection.top_k} must be in [1, "
                     f"{len(pairs['pool'])}] (the pool)")
  max_steps = max(len(x.steps) for x in everything) + 1  # Thinking steps + the response.

  # 2. The quickstart's SFT policy: the encoder and the template-guided sampler.
  policy_params = stages.sft_policy(config, model_config, init_params, tokenizer, tasks,
                                    workdir, mesh)

  # 3. Targets, 4. the PRM, 5. its scores.
  targets = stages.stage(workdir, "targets.json", lambda: make_targets(
      config, task, model_config, policy_params, tokenizer, pairs["prm"]))
  prm_params = train_prm(config, model_config, tokenizer, pairs["prm"], targets, max_steps,
                         workdir, mesh, policy_params)
  scores = stages.stage(workdir, "scores.json", lambda: {
      "pool": pair_scores(config, model_config, prm_params, tokenizer, pairs["pool"],
                          max_steps, mesh),
      "bon": stages.grouped(pair_scores(config, model_config, prm_params, tokenizer,
                                        [x for g in bon for x in g], max_steps, mesh),
                            config.bon.n)})
  step_prm_params = train_step_prm(config, task, model_config, tokenizer, pairs["prm"],
                                   workdir, mesh, policy_params)
  step_prm = stages.stage(workdir, "step_prm_scores.json", lambda: dict(zip(
      ("pool", "bon"), split_first(step_prm_scores(
          config, model_config, step_prm_params, tokenizer, [pairs["pool"], *bon], mesh)))))

  # 6. Selection -> SFT, one student per selector, evaluated on the test problems.
  evaluate = make_policy_evaluator(
      model_config, tokenizer, task, tasks["test"], max_new_tokens=config.sampling.max_new_tokens,
      temperature=config.sampling.temperature, samples_per_problem=config.student.eval_samples,
      seed=config.seed + 3, prompts_per_batch=config.sampling.prompts_per_batch, mesh=mesh)
  sel = config.selection
  students = {}
  for selector in sel.selectors:
    chosen = [pairs["pool"][i] for i in select(selector, pairs["pool"], scores["pool"],
                                                 step_prm["pool"], sel.top_k, sel.alpha,
                                                 config.seed)]
    students[selector] = stages.stage(workdir, f"student_{selector}.json", lambda: train_student(
        config, selector, model_config, tokenizer, chosen, evaluate, workdir, mesh))

  # 7. GRPO from the SFT policy: rule-only reward vs the mix with ReasonFlux-PRM.
  grpo = grpo_runs(config, task, model_config, tokenizer, tasks, policy_params, prm_params,
                   workdir, mesh)

  # 8. Best-of-N over candidate pairs; 9. how the PRM tracks the truth on held-out pairs.
  def results():
    held_out = [x for g in bon for x in g]
    flat_scores = [np.asarray(s) for g in scores["bon"] for s in g]
    return {"students": students,
            "bon": best_of_n(bon, scores["bon"], step_prm["bon"], sel.alpha, config.seed),
            "grpo": {"policy": grpo["policy"], "runs": {
                name: {k: run[k] for k in ("reward", "steps", "final", "steps_to_target",
                                           "generated_tokens", "wall_seconds")}
                for name, run in grpo["runs"].items()}},
            "prm_metrics": stages.json_safe(objective.reasonflux_metrics(
                flat_scores, [x.meta["step_quality"] for x in held_out],
                [x.meta["trajectory_quality"] for x in held_out])),
            "target_agreement": targets["agreement"],
            "template_tokens": targets["generated_tokens"],
            "pool": composition(pairs["pool"]), "top_k": sel.top_k, "bon_n": config.bon.n,
            "wall_seconds": time.perf_counter() - wall_start, "seed": config.seed,
            "config": config.to_dict()}

  out = stages.stage(workdir, "results.json", results)
  if jax.process_index() == 0:
    files.write_text(os.path.join(workdir, "results.md"), markdown(out))
    plot_selection([out], os.path.join(workdir, "selection.png"))
  logging.info("reasonflux: student greedy accuracy %s; Best-of-%d accuracy %s; results in %s",
               {k: v["greedy_accuracy"] for k, v in out["students"].items()}, config.bon.n,
               {k: v["accuracy"] for k, v in out["bon"].items()},
               os.path.join(workdir, "results.md"))
  return out


def markdown(results: dict) -> str:
  """The report of one run: selection -> SFT, Best-of-N, the PRM against the truth."""
  k, pool = results["top_k"], results["pool"]
  lines = [f"# ReasonFlux-PRM, seed {results['seed']}", "",
           f"## Selection: top {k} of the pool -> SFT from scratch (test problems)", "",
           f"Pool: {pool['response_correct']:.1%} right responses, mean trajectory quality "
           f"{pool['trajectory_quality']:.3f}.", "",
           "| selector | greedy acc. | sampled acc. | selected: right responses | "
           "selected: trajectory quality |", "|---|---|---|---|---|"]
  for name, s in results["students"].items():
    lines.append(f"| {name} | {s['greedy_accuracy']:.3f} | {s['sampled_accuracy']:.3f} | "
                 f"{s['response_correct']:.1%} | {s['trajectory_quality']:.3f} |")
  runs, start = results["grpo"]["runs"], results["grpo"]["policy"]
  lines += ["", "## GRPO from the SFT policy (test problems; curves in grpo/results.md)", "",
            "| reward | steps | greedy acc. | sampled acc. | ReasonFlux reward | gap |",
            "|---|---|---|---|---|---|",
            f"| (SFT policy) | 0 | {start['greedy_accuracy']:.3f} | "
            f"{start['sampled_accuracy']:.3f} | {start['prm_reward']:.3f} | "
            f"{start['prm_gap']:+.3f} |"]
  for name, run in runs.items():
    f = run["final"]
    lines.append(f"| {name} | {run['steps']} | {f['greedy_accuracy']:.3f} | "
                 f"{f['sampled_accuracy']:.3f} | {f['prm_reward']:.3f} | {f['prm_gap']:+.3f} |")
  lines += ["", f"## Best-of-{results['bon_n']} over candidate pairs (test problems)", "",
            "| selector | accuracy | trajectory quality of the pick |", "|---|---|---|"]
  for name, b in results["bon"].items():
    lines.append(f"| {name} | {b['accuracy']:.3f} | {b['quality']:.3f} |")
  m, a = results["prm_metrics"], results["target_agreement"]
  lines += ["", "## The PRM and its targets against the known truth", "",
            f"Held-out pairs: step Pearson {_fmt(m['step_pearson'])}, step AUROC "
            f"{_fmt(m['step_auroc'])}; trajectory Pearson {_fmt(m['final_pearson'])}, "
            f"trajectory AUROC {_fmt(m['final_auroc'])}.", "",
            "Training targets (Pearson with the truth): " + ", ".join(
                f"{name.replace('_step_pearson', '').replace('_pearson', '')} {_fmt(v)}"
                for name, v in a.items()) + ".", "",
            f"Template-guided samples: {results['template_tokens']:,} generated tokens. "
            f"Wall time {results['wall_seconds'] / 60:.1f} min."]
  return "\n".join(lines) + "\n"


def _fmt(value) -> str:
  return "n/a" if value is None else f"{value:.3f}"
