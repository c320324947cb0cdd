"""Pipeline `test_time_search`: PRM-guided beam search and DVTS vs Best-of-N at equal compute.

The question of the test-time scaling studies (Snell et al. 2024; HF search-and-learn): for a
fixed policy and PRM, which way of spending generated tokens gives the most accuracy? Each
method ends with candidates scored by the same PRM (a solution's score is its last step's)
and an answer picked by PRM-weighted vote or by the best score, and is charged every token
the policy sampled and every partial solution the PRM scored (`prm_jax.evaluate.search`).

Stages, in order; each written atomically into the workdir, skipped on a rerun (training
resumes from its checkpoints). The task, policy and PRM are the quickstart's (same config
sections, same seed: the same problems, SFT policy and PRM recipe):
  tasks.json, policy/   problems and the SFT policy
  samples.json          one sample per PRM-training problem, and `max(search.ns)`
                        high-temperature samples per test problem (Best-of-N's candidates:
                        Best-of-N at N takes the first N)
  labels.json, prm/     Monte Carlo step labels and the step PRM trained on them
  search_<method>.json  per method (`search.methods`: Best-of-N, beam search, DVTS, EDU
                        tree sampling) and N (`search.ns`): accuracy under each rule,
                        generated tokens and PRM calls per problem
  results.json, results.md, search_curve.png
"""

from __future__ import annotations

import functools
import os
import time

import jax
import ml_collections
import numpy as np
from absl import logging

from prm_jax import config_lib, files
from prm_jax.data.tasks import get_task
from prm_jax.data.tokenize import prompt_ids
from prm_jax.evaluate import search
from prm_jax.evaluate.prm_scores import StepScorer
from prm_jax.evaluate.report import SEARCH_NAMES, plot_search
from prm_jax.pipelines import stages

METHODS = ("bon", "beam", "dvts", "edu")
RULES = ("vote", "best")


def _picks(task, problem: str, texts: list[str], scores: list[float]) -> dict:
  """`{rule: right or not}` for one problem: the checker reads each candidate's final answer
  and the rule picks one answer from them by their PRM scores."""
  records = [stages.verdict_record(task, problem, text, 0) for text in texts]
  solved = {r["answer"] for r in records if r["solved"]}
  answers = [r["answer"] for r in records]
  return {rule: search.best_answer(answers, scores, rule) in solved for rule in RULES}


def _summary(picks: list[dict], tokens, calls) -> dict:
  """Accuracy per rule, mean generated tokens and PRM calls per problem."""
  return {"accuracy": {rule: float(np.mean([p[rule] for p in picks])) for rule in RULES},
          "tokens": float(np.mean(tokens)), "prm_calls": float(np.mean(calls))}


def _last_scores(step_scores: list[np.ndarray]) -> list[float]:
  """A solution's PRM score: its last step's (0 for one without steps)."""
  return [float(x[-1]) if len(x) else 0.0 for x in step_scores]


def best_of_n(task, problems, groups: list[list[dict]], scores: list[list[np.ndarray]],
              n: int) -> dict:
  """Best-of-N over the first `n` samples of each problem (each scored by its last step's
  PRM score; one PRM call per candidate)."""
  picks = [_picks(task, problem, [s["text"] for s in group[:n]], _last_scores(score[:n]))
           for problem, group, score in zip(problems, groups, scores)]
  tokens = [sum(s["tokens"] for s in group[:n]) for group in groups]
  return _summary(picks, tokens, [n] * len(problems))


def edu_sampling(config, task, model_config, policy_params, tokenizer, scorer, problems,
                 n: int, mesh) -> dict:
  """EDU tree sampling (`prm_jax.labeling.edu`, EDU-PRM's test-time sampler): per problem a
  tree of at most `n` leaves from the policy's path (`edu.temperature`), branching to the
  top-2 token where the entropy exceeds `edu.tau` nats; the leaves are the candidates (one
  PRM call each) and the tree's distinct generated tokens its cost. A tree has fewer
  leaves than `n` when its paths have fewer anchors: the cost is what was generated.
  `scorer(steps)`: a `StepScorer` that holds solutions of that many steps."""
  trees = stages.edu_trees(config, task, model_config, policy_params, tokenizer, problems,
                           config.edu.tau, n, jax.random.key(config.seed + 3), mesh)["trees"]
  groups = [[leaf["record"] for leaf in tree["leaves"]] for tree in trees]
  flat = [record for group in groups for record in group]
  scores = scorer(max(len(r["steps"]) for r in flat))(stages.as_trajectories(flat))
  picks, start = [], 0
  for problem, group in zip(problems, groups):
    picks.append(_picks(task, problem, [r["text"] for r in group],
                        _last_scores(scores[start:start + len(group)])))
    start += len(group)
  return {**_summary(picks, [tree["generated_tokens"] for tree in trees],
                     [len(group) for group in groups]),
          "leaves": float(np.mean([len(group) for group in groups])),
          # The first leaf is the root path: the policy's own solution at edu.temperature
          # (greedy by default), what the tree adds its branches to.
          "root_accuracy": float(np.mean([group[0]["solved"] for group in groups]))}


def run_search(config, task, model_config, policy_params, tokenizer, scorer, problems,
               method: str, n: int, mesh) -> dict:
  """One search method at one N over every test problem, `search.problems_per_batch` at a
  time (the steps do not depend on the batching: `search.search`'s `first_problem`)."""
  s = config.search
  search_config = search.SearchConfig(
      method, n=n, width=min(s.width, n), max_steps=s.max_steps,
      max_step_tokens=s.max_step_tokens, temperature=config.sampling.temperature,
      top_p=config.sampling.top_p or None)
  rng = jax.random.fold_in(jax.random.key(config.seed + 2), n)
  picks, tokens, calls = [], [], []
  for start in range(0, len(problems), s.problems_per_batch):
    chunk = problems[start:start + s.problems_per_batch]
    result = search.search(model_config, policy_params, tokenizer, chunk, scorer,
                           search_config, rng, first_problem=start, mesh=mesh)
    for problem, candidates in zip(chunk, result.candidates):
      picks.append(_picks(task, problem, ["".join(step + "\n" for step in c.steps)
                                          for c in candidates],
                          [c.score for c in candidates]))
    tokens += result.generated_tokens.tolist()
    calls += result.prm_calls.tolist()
    logging.info("%s N=%d: %d/%d problems", method, n, start + len(chunk), len(problems))
  return _summary(picks, tokens, calls)


def check_settings(config) -> None:
  s = config.search
  unknown = set(s.methods) - set(METHODS)
  if unknown:
    raise ValueError(f"search.methods has {sorted(unknown)}; known: {METHODS}")
  if "edu" in s.methods:
    stages.edu_settings(config, config.edu.tau, max(s.ns))
  bad = [n for n in s.ns if n % min(s.width, n)]
  if bad:
    raise ValueError(f"search.ns={tuple(s.ns)}: N={bad[0]} is not divisible by "
                     f"search.width={s.width} (each kept prefix expands into width children)")


def search_length(config, model_config, tokenizer, problems) -> int:
  """The longest a searched solution can be (the PRM scorer's padded length); fails now,
  not mid-search, if the models cannot hold it."""
  s = config.search
  longest = max(len(prompt_ids(tokenizer, p)) for p in problems) + (
      s.max_steps * s.max_step_tokens)
  if longest > model_config.max_seq_len:
    raise ValueError(f"search.max_steps * search.max_step_tokens = "
                     f"{s.max_steps * s.max_step_tokens} tokens after the longest prompt is "
                     f"{longest} > the model's max_seq_len={model_config.max_seq_len}")
  return max(longest, config.prm.max_length)


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  wall_start = time.perf_counter()
  check_settings(config)
  mesh = config_lib.make_mesh(config.mesh)
  task = get_task(config.task.name, **{k: v for k, v in config.task.items() if k != "name"})
  model_config, init_params, tokenizer = stages.policy_model(config)

  # 1. Problems and the SFT policy (the quickstart's).
  tasks = stages.stage(workdir, "tasks.json", lambda: stages.make_tasks(config, task))
  stages.check_reward_lengths(config, tokenizer, tasks["test"] + tasks["prm"], ("prm",))
  scorer_length = search_length(config, model_config, tokenizer, tasks["test"])
  policy_params = stages.sft_policy(config, model_config, init_params, tokenizer, tasks,
                                    workdir, mesh)

  # 2. Samples: PRM training data, and Best-of-N's candidates.
  largest = max(config.search.ns)
  samples = stages.stage(workdir, "samples.json", lambda: {
      "test": stages.sample(config, task, model_config, policy_params, tokenizer,
                            tasks["test"], largest, jax.random.key(config.seed), mesh),
      "prm": stages.sample(config, task, model_config, policy_params, tokenizer, tasks["prm"],
                           config.data.prm_samples, jax.random.key(config.seed + 1), mesh)})
  prm_samples = [s for s in samples["prm"]["samples"] if s["steps"]]

  # 3. The step PRM, from Monte Carlo labels (the quickstart's recipe).
  labels = stages.stage(workdir, "labels.json", lambda: stages.monte_carlo_labels(
      config, task, model_config, policy_params, tokenizer, prm_samples, mesh))
  max_steps = max([len(s["steps"]) for s in samples["test"]["samples"] + prm_samples]
                  + [config.search.max_steps])
  prm_params = stages.train_reward_model(
      "prm", config, model_config, tokenizer,
      stages.reward_data(prm_samples, labels[config.prm.labels]), max_steps, workdir, mesh,
      policy_params)

  # 4. Every method at every N, on the same test problems and PRM (a stage per method).
  @functools.cache  # One scorer (params placed once) per step capacity, for every method.
  def scorer(steps: int = 0) -> StepScorer:
    """A scorer of solutions with up to max(steps, max_steps) steps."""
    return StepScorer(model_config, prm_params, tokenizer, max_length=scorer_length,
                      max_steps=max(steps, max_steps), batch_size=config.prm.batch_size,
                      mesh=mesh)

  @functools.cache
  def sample_scores() -> list[list[np.ndarray]]:
    """Best-of-N's candidates' step scores, grouped per problem (scored once for every N)."""
    return stages.grouped(scorer()(stages.as_trajectories(samples["test"]["samples"])),
                          largest)

  def method_at(method: str, n: int) -> dict:
    if method == "bon":
      return best_of_n(task, tasks["test"], stages.grouped(samples["test"]["samples"], largest),
                       sample_scores(), n)
    if method == "edu":
      return edu_sampling(config, task, model_config, policy_params, tokenizer, scorer,
                          tasks["test"], n, mesh)
    return run_search(config, task, model_config, policy_params, tokenizer, scorer(),
                      tasks["test"], method, n, mesh)

  def timed(method: str, n: int) -> dict:
    start = time.perf_counter()
    return {**method_at(method, n), "seconds": time.perf_counter() - start}
  methods = {method: stages.stage(workdir, f"search_{method}.json",
                                  lambda: {str(n): timed(method, n) for n in config.search.ns})
             for method in config.search.methods}

  results = stages.stage(workdir, "results.json", lambda: {
      "methods": methods, "at_equal_tokens": at_equal_tokens(methods),
      "test_problems": len(tasks["test"]), "wall_seconds": time.perf_counter() - wall_start,
      "config": config.to_dict()})
  if jax.process_index() == 0:
    files.write_text(os.path.join(workdir, "results.md"), markdown(results))
    plot_search([results], os.path.join(workdir, "search_curve.png"))
  logging.info("test-time search: %s", {m: {n: r["accuracy"]["vote"] for n, r in by_n.items()}
                                       for m, by_n in results["methods"].items()})
  return results


def at_equal_tokens(methods: dict) -> dict:
  """For each search method and N: Best-of-N's accuracy (each rule) at the same generated
  tokens per problem, linear between the measured N (`inside`: those tokens lie within
  Best-of-N's measured range; outside it the nearest end stands in)."""
  if "bon" not in methods:
    return {}
  bon = methods["bon"]
  ns = sorted(bon, key=lambda n: bon[n]["tokens"])
  xs = [bon[n]["tokens"] for n in ns]
  out = {}
  for method, by_n in methods.items():
    if method == "bon":
      continue
    out[method] = {n: {"bon": {rule: float(np.interp(r["tokens"], xs,
                                                      [bon[m]["accuracy"][rule] for m in ns]))
                               for rule in RULES},
                       "inside": bool(xs[0] <= r["tokens"] <= xs[-1])}
                   for n, r in by_n.items()}
  return out


def markdown(results: dict) -> str:
  """One row per method and N: accuracy under each rule, tokens and PRM calls per problem."""
  lines = [f"# PRM-guided search vs Best-of-N ({results['test_problems']} test problems)", "",
           "| method | N | accuracy (PRM vote) | accuracy (best PRM score) | generated tokens "
           "/ problem | PRM calls / problem |", "|---|---|---|---|---|---|"]
  for method, by_n in results["methods"].items():
    for n, r in sorted(by_n.items(), key=lambda item: int(item[0])):
      lines.append(f"| {SEARCH_NAMES.get(method, method)} | {n} | {r['accuracy']['vote']:.3f} "
                   f"| {r['accuracy']['best']:.3f} | {r['tokens']:.1f} | {r['prm_calls']:.1f} |")
  if results["at_equal_tokens"]:
    lines += ["", "Best-of-N at the search's generated tokens (linear between measured N):", "",
              "| method | N | search (vote) | Best-of-N at equal tokens (vote) | inside "
              "Best-of-N's range |", "|---|---|---|---|---|"]
    for method, by_n in results["at_equal_tokens"].items():
      for n, r in sorted(by_n.items(), key=lambda item: int(item[0])):
        lines.append(f"| {SEARCH_NAMES.get(method, method)} | {n} | "
                     f"{results['methods'][method][n]['accuracy']['vote']:.3f} | "
                     f"{r['bon']['vote']:.3f} | {'yes' if r['inside'] else 'no'} |")
  return "\n".join(lines) + "\n"
