"""Pipeline `edu_prm`: EDU-PRM (Cao et al. 2025, arXiv 2503.22233) in miniature.

The paper's claim is about cost: step labels from entropy-driven (EDU) trees train a PRM
as good as one trained on uniform Monte Carlo labels, from far fewer generated tokens; and
EDU tree sampling at test time matches or beats independent high-temperature samples with
fewer tokens. On the quickstart's task and policy, with exact verifiers, this pipeline
measures both:

  tasks.json, policy/   the quickstart's problems and SFT policy (same config sections and
                        seed: the same problems and policy)
  samples.json          `test_time.samples` high-temperature (HT) samples per test problem --
                        the first `sampling.num_samples` are the Best-of-N candidates every
                        PRM is compared on -- and one per PRM-training problem (the
                        trajectories Monte Carlo labels)
  labels_mc.json        Math-Shepherd Monte Carlo: `labeling.rollouts` rollouts from every step
                        prefix; a budget (k, n) reads the first k rollouts of the first n
                        trajectories, at the cost of those trajectories and rollouts
  labels_edu_*.json     EDU trees (`prm_jax.labeling.edu`) per (tau, leaves), one per PRM
                        problem; a budget (tau, leaves, n) takes the first n trees
  labels_pedu_*.json    P-EDU: the problems after the pruner's are labelled by trees whose
                        children are pruned by the PRM of the EDU budget `p_edu.pruner`; its
                        data and cost are part of the P-EDU budget
  prms/<budget>/        one PRM per budget, initialised from the policy, same training
  results.json          per budget: labeling tokens, Best-of-N accuracy (PRM-weighted vote,
                        PRM-min), ProcessBench F1, step AUROC against the oracle; and the
                        test-time comparison: EDU tree sampling vs HT sampling (accuracy
                        and generated tokens per problem, N in `test_time.ns`)
  results.md, labeling_curve.png, test_time.png

Steps differ by family: Monte Carlo labels the policy's lines (separator "\\n"), EDU its
segments (separator "": the segments concatenate to the path); every PRM is evaluated on
the same newline-step test candidates. Nothing is tuned on test problems.
"""

from __future__ import annotations

import os
import time

import jax
import ml_collections
import numpy as np
from absl import logging

from prm_jax import config_lib, files
from prm_jax.data import Trajectory
from prm_jax.data.tasks import get_task
from prm_jax.evaluate.best_of_n import best_of_n_curves
from prm_jax.evaluate.report import plot_labeling_curves, plot_test_time
from prm_jax.labeling import edu
from prm_jax.pipelines import stages

BON_METHODS = ("majority", "prm_vote", "prm_min", "oracle", "random")
CALIBRATION_TRAJECTORIES = 1536  # Training trajectories the ProcessBench threshold is fit on.


# ----------------------------------------------------------------------------- labels


def _mc_budget(samples, mc: dict, k: int, n: int) -> tuple[list[Trajectory], int]:
  """(trajectories, labeling tokens) of the budget: k rollouts on each of n samples."""
  data, tokens = [], 0
  for sample, outcomes, lengths in zip(samples[:n], mc["outcomes"][:n],
                                       mc["rollout_tokens"][:n]):
    labels = [float(np.mean(o[:k])) for o in outcomes[:-1]] + [float(sample["solved"])]
    data.append(Trajectory(problem=sample["problem"], steps=sample["steps"], labels=labels))
    tokens += sample["tokens"] + sum(sum(t[:k]) for t in lengths)
  return data, tokens


def _tree_data(trees: list[dict], tokenizer) -> tuple[list[Trajectory], int]:
  """(trajectories of every leaf with segment labels, tokens generated) of `trees`."""
  data, tokens = [], 0
  for tree in trees:
    leaves = [edu.Leaf(l["tokens"], l["anchors"], l["entropies"], l["finished"])
              for l in tree["leaves"]]
    data += edu.tree_trajectories(edu.Tree(leaves, 0, 0, 0, [], 0), tree["problem"], tokenizer,
                                  [l["record"]["solved"] for l in tree["leaves"]])
    tokens += tree["generated_tokens"]
  return data, tokens


def _tree_stats(trees: list[dict]) -> dict:
  """Mean leaves per tree, and the fraction of trees whose leaves disagree on the outcome
  (the trees whose segment labels separate good prefixes from bad ones)."""
  outcomes = [{leaf["record"]["solved"] for leaf in t["leaves"]} for t in trees]
  return {"leaves_per_tree": float(np.mean([len(t["leaves"]) for t in trees])),
          "mixed_trees": float(np.mean([len(o) == 2 for o in outcomes]))}


def _budget_name(family: str, budget) -> str:
  if family == "mc":
    return f"mc_k{budget[0]}_n{budget[1]}"
  return f"{family}_tau{budget[0]:g}_leaves{budget[1]}_n{budget[2]}"


# ----------------------------------------------------------------------------- evaluation


def _evaluate_prm(config, name, model_config, params, tokenizer, data, separator, test_samples,
                  max_steps, mesh) -> dict:
  """Best-of-N, ProcessBench F1 and oracle step AUROC of one PRM on the test candidates."""
  test_scores = stages.reward_scores(config, "prm", model_config, params, tokenizer,
                                     stages.as_trajectories(test_samples), max_steps, mesh)
  result = stages.best_of_n(config, test_samples, test_scores, methods=BON_METHODS)
  calibration = data[:CALIBRATION_TRAJECTORIES]
  train_scores = stages.reward_scores(
      config, "prm", model_config, params, tokenizer,
      [Trajectory(problem=t.problem, steps=t.steps) for t in calibration],
      max(len(t.steps) for t in calibration), mesh, step_separator=separator)
  processbench = stages.processbench(config, test_samples, test_scores, train_scores,
                                     [[float(y > 0) for y in t.labels] for t in calibration])
  logging.info("PRM %s: Best-of-%d %s, ProcessBench F1 %s", name, max(config.eval.ns),
               {m: result["bon"][m][str(max(config.eval.ns))] for m in ("prm_vote", "prm_min")},
               processbench["f1"])
  return {**result, "processbench": processbench, "processbench_f1": processbench["f1"],
          "step_auroc": stages.oracle_step_auroc(test_samples, test_scores)}


def _test_time(config, task, model_config, policy_params, tokenizer, test_problems, ht_samples,
               prm_params, max_steps, mesh) -> dict:
  """EDU tree sampling vs high-temperature sampling on the test problems, both scored by
  the PRM `test_time.prm`: accuracy and generated tokens per problem at each N."""
  t = config.test_time
  per_problem = t.samples
  groups = stages.grouped(ht_samples, per_problem)
  scores = stages.reward_scores(config, "prm", model_config, prm_params, tokenizer,
                                stages.as_trajectories(ht_samples), max_steps, mesh)
  candidates = stages.candidates(groups, stages.grouped(scores, per_problem))
  ns = sorted({1, 2, 4, 8, 16, 32, per_problem} & set(range(1, per_problem + 1)) | set(t.ns))
  ht = {"bon": best_of_n_curves(candidates, tuple(ns), draws=config.eval.draws, seed=config.seed,
                                methods=BON_METHODS, vote_aggregation=config.eval.vote_aggregation),
        "tokens": {str(n): float(n * np.mean([s["tokens"] for s in ht_samples])) for n in ns}}
  trees_out = {}
  for tau, n in ((tau, n) for tau in t.taus for n in t.ns):
    trees = stages.edu_trees(config, task, model_config, policy_params, tokenizer,
                             test_problems, tau, n, jax.random.key(config.seed + 4),
                             mesh)["trees"]
    groups = [[leaf["record"] for leaf in tree["leaves"]] for tree in trees]
    leaf_scores = stages.reward_scores(config, "prm", model_config, prm_params, tokenizer,
                                       stages.as_trajectories([s for g in groups for s in g]),
                                       max_steps, mesh)
    scored, start = [], 0
    for group in groups:
      scored.append(leaf_scores[start:start + len(group)])
      start += len(group)
    leaves = stages.candidates(groups, scored)
    bon = best_of_n_curves(leaves, (leaves.correct.shape[1],), draws=1, seed=config.seed,
                           methods=("majority", "prm_vote", "prm_min", "oracle"),
                           vote_aggregation=config.eval.vote_aggregation)
    trees_out.setdefault(f"{tau:g}", {})[str(n)] = {
        "bon": {m: next(iter(v.values())) for m, v in bon.items()},
        "tokens": float(np.mean([tree["generated_tokens"] for tree in trees])),
        "leaves": float(np.mean([len(g) for g in groups])),
        "leaf_accuracy": float(np.mean([s["solved"] for g in groups for s in g]))}
  return {"ht": ht, "edu": trees_out}


def _ht_at_tokens(ht: dict, method: str, tokens: float) -> float:
  """HT accuracy of `method` at `tokens` per problem, linear between measured N."""
  xs = np.array([ht["tokens"][n] for n in ht["tokens"]])
  ys = np.array([ht["bon"][method][n] for n in ht["tokens"]])
  order = np.argsort(xs)
  return float(np.interp(tokens, xs[order], ys[order]))


# ----------------------------------------------------------------------------- the run


def check_budgets(config) -> None:
  """Fail before any work on budgets the data or the other settings cannot meet."""
  def fail(key, value, need):
    raise ValueError(f"{key}={value!r}: {need}")

  problems = config.data.prm_problems
  for key in ("mc.budgets", "edu.budgets", "p_edu.budgets"):
    section, field = key.split(".")
    budgets = config[section][field]
    size, form = (2, "(k, n)") if section == "mc" else (3, "(tau, leaves, n)")
    if not budgets or any(len(b) != size for b in budgets):
      fail(key, budgets, f"need a non-empty list of {form}")
    for budget in budgets:
      if not 1 <= budget[-1] <= problems:
        fail(key, budgets, f"every n must be in [1, data.prm_problems={problems}]")
      rollouts = config.labeling.rollouts
      if section == "mc" and not 1 <= budget[0] <= rollouts:
        fail(key, budgets, f"every k must be in [1, labeling.rollouts={rollouts}]")
  for tau, leaves, _ in config.edu.budgets:  # The tree settings, each budget's.
    stages.edu_settings(config, tau, leaves)
  for tau, leaves, _ in config.p_edu.budgets:
    stages.edu_settings(config, tau, leaves, config.p_edu.prune_threshold)
  if not 0 <= config.p_edu.pruner < len(config.edu.budgets):
    fail("p_edu.pruner", config.p_edu.pruner, "must index edu.budgets")
  pruner_n = config.edu.budgets[config.p_edu.pruner][2]
  if any(b[2] <= pruner_n for b in config.p_edu.budgets):
    fail("p_edu.budgets", config.p_edu.budgets,
         f"every n must exceed the pruner's n={pruner_n} (P-EDU labels the problems after it)")
  t = config.test_time
  if not t.ns or max(t.ns) > t.samples or min(t.ns) < 1:
    fail("test_time.ns", t.ns, f"need values in [1, test_time.samples={t.samples}]")
  if config.sampling.num_samples > t.samples:
    fail("sampling.num_samples", config.sampling.num_samples,
         f"must be <= test_time.samples={t.samples} (the candidates are its first samples)")


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  wall_start = time.perf_counter()
  mesh = config_lib.make_mesh(config.mesh)
  task = get_task(config.task.name, **{k: v for k, v in config.task.items() if k != "name"})
  model_config, init_params, tokenizer = stages.policy_model(config)
  check_budgets(config)

  # 1. The quickstart's problems and policy.
  tasks = stages.stage(workdir, "tasks.json", lambda: stages.make_tasks(config, task))
  stages.check_reward_lengths(config, tokenizer, tasks["test"] + tasks["prm"], ("prm",))
  policy_params = stages.sft_policy(config, model_config, init_params, tokenizer, tasks,
                                    workdir, mesh)

  # 2. HT samples per test problem (the first `sampling.num_samples` are every PRM's
  # Best-of-N candidates) and one per PRM problem.
  per_problem = config.test_time.samples
  samples = stages.stage(workdir, "samples.json", lambda: {
      "test": stages.sample(config, task, model_config, policy_params, tokenizer, tasks["test"],
                            per_problem, jax.random.key(config.seed), mesh),
      "prm": stages.sample(config, task, model_config, policy_params, tokenizer, tasks["prm"],
                           1, jax.random.key(config.seed + 1), mesh)})
  test_groups = stages.grouped(samples["test"]["samples"], per_problem)
  test_samples = [s for g in test_groups for s in g[:config.sampling.num_samples]]
  prm_samples = samples["prm"]["samples"]

  # 3. Labels of every family.
  mc = stages.stage(workdir, "labels_mc.json", lambda: stages.monte_carlo_labels(
      config, task, model_config, policy_params, tokenizer, prm_samples, mesh))
  datasets = {}  # name -> (family, budget, trajectories, labeling tokens, separator)
  for budget in config.mc.budgets:
    data, tokens = _mc_budget(prm_samples, mc, *budget)
    datasets[_budget_name("mc", budget)] = ("mc", budget, data, tokens, "\n")
  tree_sets = {}
  for tau, leaves in sorted({(b[0], b[1]) for b in config.edu.budgets}):
    n = max(b[2] for b in config.edu.budgets if (b[0], b[1]) == (tau, leaves))
    tree_sets[tau, leaves] = stages.stage(
        workdir, f"labels_edu_tau{tau:g}_leaves{leaves}.json", lambda: stages.edu_trees(
            config, task, model_config, policy_params, tokenizer, tasks["prm"][:n], tau, leaves,
            jax.random.key(config.seed + 3), mesh))["trees"]
  details = {}  # Tree statistics per budget (and for P-EDU: pruning).
  for budget in config.edu.budgets:
    tau, leaves, n = budget
    data, tokens = _tree_data(tree_sets[tau, leaves][:n], tokenizer)
    datasets[_budget_name("edu", budget)] = ("edu", budget, data, tokens, "")
    details[_budget_name("edu", budget)] = _tree_stats(tree_sets[tau, leaves][:n])

  # 4. A PRM per budget, all trained alike; max_steps fits every dataset and the tests.
  max_steps = max([len(s["steps"]) for s in samples["test"]["samples"] + prm_samples]
                  + [len(t.steps) for d in datasets.values() for t in d[2]])

  def train(name, data, separator):
    return stages.train_reward_model(os.path.join("prms", name), config, model_config,
                                     tokenizer, data, max_steps, workdir, mesh, policy_params,
                                     step_separator=separator, section="prm")

  prms = {name: train(name, d[2], d[4]) for name, d in datasets.items()}

  # 5. P-EDU: after the pruner's problems, trees pruned by the pruner's PRM.
  pruner = config.edu.budgets[config.p_edu.pruner]
  pruner_name = _budget_name("edu", pruner)
  for budget in config.p_edu.budgets:
    tau, leaves, n = budget
    stage_name = f"labels_pedu_tau{tau:g}_leaves{leaves}_n{n}.json"
    pruned = stages.stage(workdir, stage_name, lambda: stages.edu_trees(
        config, task, model_config, policy_params, tokenizer, tasks["prm"][pruner[2]:n], tau,
        leaves, jax.random.key(config.seed + 3), mesh,
        prm=(model_config, prms[pruner_name]),
        prune_threshold=config.p_edu.prune_threshold))["trees"]
    data, tokens = _tree_data(pruned, tokenizer)
    name = _budget_name("pedu", budget)
    pruner_data, pruner_tokens = datasets[pruner_name][2], datasets[pruner_name][3]
    datasets[name] = ("p_edu", budget, pruner_data + data, pruner_tokens + tokens, "")
    details[name] = {**_tree_stats(pruned), "pruned_children": sum(t["pruned"] for t in pruned)}
    unpruned = tree_sets.get((tau, leaves), [])[pruner[2]:n]
    if len(unpruned) == len(pruned):  # Plain EDU trees of the same problems: tokens saved.
      details[name]["tokens_saved_vs_edu"] = sum(t["generated_tokens"] for t in unpruned) - sum(
          t["generated_tokens"] for t in pruned)
    max_steps = max([max_steps] + [len(t.steps) for t in data])
    prms[name] = train(name, pruner_data + data, "")

  # 6. Evaluation: every PRM on the same test candidates; test-time sampling.
  def evaluate():
    methods = {}
    for name, (family, budget, data, tokens, separator) in datasets.items():
      methods[name] = {"family": family, "budget": list(budget), "labeling_tokens": tokens,
                       "train_trajectories": len(data),
                       "train_steps": sum(len(t.steps) for t in data),
                       **details.get(name, {}),
                       **_evaluate_prm(config, name, model_config, prms[name], tokenizer, data,
                                       separator, test_samples, max_steps, mesh)}
    reference = config.test_time.prm or _budget_name("mc", config.mc.budgets[0])
    if reference not in prms:
      raise ValueError(f"test_time.prm={reference!r} is not a trained PRM: {sorted(prms)}")
    test_time = _test_time(config, task, model_config, policy_params, tokenizer, tasks["test"],
                           samples["test"]["samples"], prms[reference], max_steps, mesh)
    test_time["prm"] = reference
    for by_n in test_time["edu"].values():
      for result in by_n.values():
        result["ht_at_equal_tokens"] = {
            m: _ht_at_tokens(test_time["ht"], m, result["tokens"]) for m in result["bon"]}
    return {"methods": methods, "test_time": test_time,
            "policy_accuracy": float(np.mean([s["solved"] for s in test_samples])),
            "mc_seconds": mc["seconds"], "wall_seconds": time.perf_counter() - wall_start,
            "config": config.to_dict()}

  results = stages.stage(workdir, "results.json", evaluate)
  if jax.process_index() == 0:
    files.write_text(os.path.join(workdir, "results.md"), markdown(results))
    plot_labeling_curves([results], os.path.join(workdir, "labeling_curve.png"))
    plot_test_time([results], os.path.join(workdir, "test_time.png"))
  return results


# ----------------------------------------------------------------------------- report


def markdown(results: dict) -> str:
  """The labeling comparison and the test-time comparison as markdown tables."""
  n = str(max(int(k) for k in next(iter(results["methods"].values()))["bon"]["prm_vote"]))
  lines = ["# EDU-PRM in miniature", "",
           f"## PRMs by labeling budget (Best-of-{n} on the same test candidates)", "",
           "| PRM | labeling tokens | trajectories | PRM-weighted vote | PRM min | "
           "ProcessBench F1 (calibrated / 0.5) | step AUROC |", "|---|---|---|---|---|---|---|"]
  for name, m in sorted(results["methods"].items(), key=lambda x: (x[1]["family"],
                                                                    x[1]["labeling_tokens"])):
    pb = m["processbench"]
    f1 = lambda v: "n/a" if v is None else f"{v:.3f}"
    lines.append(f"| {name} | {m['labeling_tokens']:,} | {m['train_trajectories']:,} | "
                 f"{m['bon']['prm_vote'][n]:.3f} | {m['bon']['prm_min'][n]:.3f} | "
                 f"{f1(pb['f1'])} / {f1(pb['f1_at_half'])} | {f1(m['step_auroc'])} |")
  any_method = next(iter(results["methods"].values()))["bon"]
  lines += ["", f"Majority vote {any_method['majority'][n]:.3f}, oracle "
            f"{any_method['oracle'][n]:.3f}, random {any_method['random'][n]:.3f}."]
  for name, m in results["methods"].items():
    if "pruned_children" in m:
      saved = m.get("tokens_saved_vs_edu")
      lines.append(f"{name}: {m['pruned_children']:,} children pruned" + (
          "" if saved is None else f", {saved:,} tokens fewer than plain EDU on its problems")
          + ".")
  lines.append("")
  tt = results["test_time"]
  lines += [f"## Test time: EDU tree sampling vs HT sampling (PRM `{tt['prm']}`)", "",
            "| sampler | N | leaves | tokens / problem | majority | PRM vote | PRM min | "
            "oracle |", "|---|---|---|---|---|---|---|---|"]
  row = lambda name, n_, leaves, tokens, b: lines.append(
      f"| {name} | {n_} | {leaves} | {tokens:.0f} | {b['majority']:.3f} | {b['prm_vote']:.3f} | "
      f"{b['prm_min']:.3f} | {b['oracle']:.3f} |")
  for tau, by_n in tt["edu"].items():
    for n_, r in by_n.items():
      row(f"EDU tau={tau}", n_, f"{r['leaves']:.1f}", r["tokens"], r["bon"])
      row("HT at equal tokens", "-", "-", r["tokens"], r["ht_at_equal_tokens"])
  for n_ in tt["ht"]["tokens"]:
    row("HT", n_, n_, tt["ht"]["tokens"][n_], {m: v[n_] for m, v in tt["ht"]["bon"].items()})
  lines += ["", f"Policy accuracy (HT samples): {results['policy_accuracy']:.3f}; wall time "
            f"{results['wall_seconds']:.0f} s."]
  return "\n".join(lines) + "\n"
