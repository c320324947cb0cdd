"""Stages the paper pipelines share: tasks, the SFT policy, sampled candidates, reward-model
training and scoring, Best-of-N / ProcessBench evaluation.

A pipeline (`quickstart`, `edu_prm`, ...) is a top-to-bottom sequence of these. Each stage
writes its result atomically into the workdir (`stage`) and training stages checkpoint, so
rerunning a pipeline with the same workdir skips what is finished. The config sections
they read are those of `experiments/quickstart.py` (`task`, `data`, `policy`, `sft`,
`sampling`, `eval`, reward-model sections with `batch_size` / `max_length` / `train`):
pipelines that start from the quickstart's tasks and policy reuse its config builder, so
the same seed gives the same problems and the same policy.
"""

from __future__ import annotations

import os
import time
from typing import Any, Callable, Sequence

import jax
import ml_collections
import numpy as np
from absl import logging

from prm_jax import checkpoint, config_lib, files, labeling, parallel, policy, train
from prm_jax.data import CharTokenizer, Trajectory, pipeline
from prm_jax.data.tasks import generate_corpus
from prm_jax.data.tokenize import prompt_ids, tokenize_sft
from prm_jax.evaluate import (Candidates, best_of_n_curves, calibrate_threshold, earliest_error,
                              first_errors, pad_steps, processbench_f1)
from prm_jax.evaluate.prm_scores import score_steps
from prm_jax.labeling import edu
from prm_jax.objectives.prm import auroc, make_prm_loss
from prm_jax.objectives.sft import make_sft_loss


def stage(workdir: str, name: str, compute: Callable[[], Any]) -> Any:
  """The stage's saved result (`workdir/name`, JSON), or `compute()` saved atomically
  (process 0 writes)."""
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


def progress(what: str) -> Callable[[int, int], None]:
  """A `(done, total)` callback that logs at most every 10 s, and at the end."""
  last = [0.0]

  def report(done: int, total: int):
    now = time.perf_counter()
    if now - last[0] > 10 or done == total:
      last[0] = now
      logging.info("%s: %d/%d", what, done, total)
  return report


def json_safe(metrics: dict) -> dict:
  """Undefined metrics (no erroneous sample, say) are NaN: stored as null."""
  return {k: None if isinstance(v, float) and np.isnan(v) else v for k, v in metrics.items()}


# ----------------------------------------------------------------------------- policy


MODEL_SOURCES = ("scratch", "checkpoint", "hf", "gguf")  # `init` of a model section.


def policy_model(config: ml_collections.ConfigDict):
  """(model config, initial params or None, tokenizer) of the policy (`config.policy`, see
  `load_model`)."""
  return load_model(config.policy, "policy")


def load_model(section: ml_collections.ConfigDict, name: str, mesh=None):
  """(model config, params or None, tokenizer) of the model the config section `name` names
  by `init`: "scratch" (the section's `model` fields; params None: the caller initialises or
  trains them; character tokenizer), "checkpoint" (the same model, params from the prm_jax
  checkpoint at `path`, a run's workdir or checkpoint directory, placed on `mesh`), "hf"
  (the Hugging Face folder `path`) or "gguf" (the `.gguf` file `path`)."""
  if section.init not in MODEL_SOURCES:
    raise ValueError(f"{name}.init={section.init!r} is not one of {MODEL_SOURCES}")
  if section.init == "scratch":
    return config_lib.model_config(section.model), None, CharTokenizer()
  if not section.path:
    raise ValueError(f"{name}.path is empty: {name}.init={section.init!r} loads the model "
                     "from it")
  if section.init == "checkpoint":
    model_config = config_lib.model_config(section.model)
    mesh = parallel.make_mesh(devices=jax.devices()[:1]) if mesh is None else mesh
    params = checkpoint.restore_params(section.path,
                                       parallel.abstract_sharded_params(model_config, mesh))
    return model_config, params, CharTokenizer()
  if section.init == "hf":
    from prm_jax.data.tokenizer import load_tokenizer
    from prm_jax.models.hf import load_pretrained
    model_config, params = load_pretrained(section.path)
    return model_config, params, load_tokenizer(section.path)
  from prm_jax.models.gguf import load_gguf
  return load_gguf(section.path)


def error_rate(config: ml_collections.ConfigDict, task) -> Callable[[str], float]:
  """Error rate of a problem's SFT solution by its number of reasoning steps: entry i of
  `data.error_rates` is for i + 1 steps, the last entry for all longer solutions."""
  rates = tuple(config.data.error_rates)
  if not rates:
    raise ValueError("data.error_rates is empty (give at least one rate)")
  return lambda problem: rates[min(len(task.solve(problem)) - 2, len(rates) - 1)]


def check_reward_lengths(config, tokenizer, problems: Sequence[str],
                         sections: Sequence[str]) -> None:
  """Fail now, not after sampling, if a sampled solution might not fit a reward model."""
  longest = max(len(prompt_ids(tokenizer, p)) for p in problems) + config.sampling.max_new_tokens
  for name in sections:
    if config[name].max_length < longest:
      raise ValueError(
          f"{name}.max_length={config[name].max_length} cannot hold a sampled solution: the "
          f"longest prompt plus sampling.max_new_tokens is {longest} tokens")


def train_model(name: str, model_config, loss_fn, batches, section, workdir: str, mesh,
                init_params=None):
  """Parameters after `train_loop` in `workdir/name` (resumes from its checkpoints)."""
  result = train.train_loop(model_config, loss_fn, iter(batches),
                            config=config_lib.train_config(section.train),
                            workdir=os.path.join(workdir, name), mesh=mesh,
                            init_params=init_params)
  return result.state.params


def make_tasks(config, task) -> dict:
  """`{"sft": [Trajectory dicts], "prm": [problems], "test": [problems]}`: the SFT corpus
  (errors at `data.error_rates`), PRM-training problems (train split, apart from the SFT
  corpus) and held-out test problems, all from `config.seed`."""
  data, seed = config.data, config.seed
  corpus = generate_corpus(task, data.sft_problems, seed=seed, split="train",
                           error_rate=error_rate(config, task),
                           error_kinds=tuple(data.error_kinds))
  sft_set = {t.problem for t in corpus}
  # PRM problems: train split, apart from the SFT corpus (its own seed stream).
  prm = [p for p in task.problems(data.prm_problems + len(sft_set), seed=seed + 10_000)
         if p not in sft_set][:data.prm_problems]
  return {"sft": [t.to_dict() for t in corpus], "prm": prm,
          "test": task.problems(data.test_problems, seed=seed, split="test")}


def sft_policy(config, model_config, init_params, tokenizer, tasks: dict, workdir: str, mesh):
  """The policy: SFT (`config.sft`) on the task corpus, in `workdir/policy`."""
  return train_sft("policy", config, model_config, init_params, tokenizer,
                   [Trajectory.from_dict(t) for t in tasks["sft"]], workdir, mesh)


def train_sft(name: str, config, model_config, init_params, tokenizer,
              corpus: Sequence[Trajectory], workdir: str, mesh):
  """Parameters after SFT (`config.sft`) on `corpus`, in `workdir/name`."""
  sft = config.sft
  for index, trajectory in enumerate(corpus):  # Fail before compiling, not mid-run.
    length = len(tokenize_sft(tokenizer, trajectory)["input_ids"])
    if length > sft.max_length:
      raise ValueError(f"sft.max_length={sft.max_length} cannot hold SFT example {index} "
                       f"({trajectory.problem[:40]!r}...): {length} tokens")
  return train_model(name, model_config, make_sft_loss(model_config),
                     pipeline.sft_batches(corpus, tokenizer, batch_size=sft.batch_size,
                                          max_length=sft.max_length, seed=config.seed,
                                          **bucketing(sft)),
                     sft, workdir, mesh, init_params)


def bucketing(section: ml_collections.ConfigDict) -> dict:
  """A data section's optional `bucket_lengths` / `bucket_window` (`data.pipeline`: pad
  each batch to the shortest bucket that fits it), as keyword arguments."""
  return {key: section[key] for key in ("bucket_lengths", "bucket_window") if key in section}


# ----------------------------------------------------------------------------- samples


def verdict_record(task, problem: str, text: str, tokens: int) -> dict:
  """A sampled solution (`tokens` generated) with the checker's verdict of every step."""
  verdict = task.check(problem, text)
  return {"problem": problem, "text": text, "tokens": tokens, "steps": list(verdict.steps),
          "step_correct": list(verdict.step_correct), "first_error": verdict.first_error,
          "answer": verdict.final_answer, "solved": verdict.solved}


def sample(config, task, model_config, params, tokenizer, problems, num_samples: int, key,
           mesh) -> dict:
  """`{"samples": [verdict_record], "generated_tokens"}`: `num_samples` solutions per problem
  at `config.sampling`'s temperature (sample s of problem p is row p * num_samples + s)."""
  s = config.sampling
  solutions = policy.sample_solutions(
      model_config, params, tokenizer, problems, num_samples=num_samples,
      max_new_tokens=s.max_new_tokens, temperature=s.temperature, top_p=s.top_p or None,
      rng=key, prompts_per_batch=s.prompts_per_batch, mesh=mesh,
      progress=progress(f"sampling {num_samples} per problem"))
  samples = [verdict_record(task, problem, text, tokens)
             for problem, texts, lengths in zip(problems, solutions.texts, solutions.lengths)
             for text, tokens in zip(texts, lengths)]
  return {"samples": samples, "generated_tokens": solutions.generated_tokens}


def edu_trees(config, task, model_config, params, tokenizer, problems, tau: float,
              leaves: int, rng, mesh, prm=None, prune_threshold: float | None = None) -> dict:
  """`{"trees", "seconds"}`: an EDU tree per problem (`prm_jax.labeling.edu`; settings from
  `config.edu`: max_anchors, min_gap, order, temperature, exclude, queries_per_batch; at
  most `leaves` leaves, anchors above `tau` nats), every leaf with the checker's verdict
  record. With `prm` (`(model_config, params)`) and `prune_threshold`: P-EDU."""
  e = config.edu
  settings = edu_settings(config, tau, leaves, prune_threshold)
  start = time.perf_counter()
  trees = edu.build_trees(model_config, params, tokenizer,
                          [prompt_ids(tokenizer, p) for p in problems], settings, rng=rng,
                          excluded=edu_excluded(config, tokenizer), prm=prm,
                          queries_per_batch=e.queries_per_batch, mesh=mesh,
                          progress=progress(f"EDU trees tau={tau} leaves={leaves}"))
  records = []
  for problem, tree in zip(problems, trees):
    leaves_out = []
    for leaf in tree.leaves:
      text = tokenizer.decode([t for t in leaf.tokens if t != tokenizer.eos_id])
      leaves_out.append({"tokens": leaf.tokens, "anchors": leaf.anchors,
                         "entropies": leaf.entropies, "finished": leaf.finished,
                         "record": verdict_record(task, problem, text, len(leaf.tokens))})
    records.append({"problem": problem, "leaves": leaves_out,
                    "generated_tokens": tree.generated_tokens, "candidates": tree.candidates,
                    "anchors": tree.anchors, "pruned": tree.pruned,
                    "generations": tree.generations})
  return {"trees": records, "seconds": time.perf_counter() - start}


def edu_settings(config, tau: float, leaves: int,
                 prune_threshold: float | None = None) -> edu.EduConfig:
  """The trees' settings (`config.edu`, `config.sampling.max_new_tokens`); a bad value fails
  here, naming it (pipelines call this before any work)."""
  e = config.edu
  return edu.EduConfig(tau=float(tau), max_leaves=int(leaves),
                       max_new_tokens=config.sampling.max_new_tokens,
                       max_anchors=e.max_anchors, min_gap=e.min_gap, order=e.order,
                       temperature=e.temperature, prune_threshold=prune_threshold)


def edu_excluded(config, tokenizer) -> tuple[int, ...]:
  """Token ids never anchors: the default set, or the characters `edu.exclude` names."""
  if config.edu.exclude == "default":
    return edu.excluded_token_ids(tokenizer)
  return tuple(sorted({tokenizer.eos_id, *(i for c in config.edu.exclude
                                            for i in tokenizer.encode(c))}))


def monte_carlo_labels(config, task, model_config, params, tokenizer, samples: Sequence[dict],
                       mesh) -> dict:
  """Math-Shepherd step labels of `samples` (`config.labeling.rollouts` rollouts from every
  step prefix, at `config.sampling`'s temperature): `{"mc_soft", "mc_hard"}` per step, the
  checker's `"oracle"` prefix labels for comparison, the cost (`rollouts`,
  `generated_tokens`, `seconds`), and every rollout's `outcomes` and `rollout_tokens` (from
  which the labels and cost of any smaller budget are read)."""
  lab = config.labeling
  start = time.perf_counter()
  mc = labeling.monte_carlo_labels(
      model_config, params, tokenizer, as_trajectories(samples),
      lambda m, text: task.check(samples[m]["problem"], text).solved,
      rollouts_per_step=lab.rollouts, max_new_tokens=config.sampling.max_new_tokens,
      rng=jax.random.key(config.seed + 2), temperature=config.sampling.temperature,
      rows_per_batch=lab.rows_per_batch, mesh=mesh, progress=progress("Monte Carlo rollouts"))
  oracle = [task.check(s["problem"], s["steps"]).prefix_labels for s in samples]
  return {"mc_soft": mc.soft, "mc_hard": mc.hard, "oracle": oracle, "rollouts": mc.rollouts,
          "generated_tokens": mc.generated_tokens, "seconds": time.perf_counter() - start,
          "outcomes": mc.outcomes, "rollout_tokens": mc.rollout_tokens}


def as_trajectories(samples: Sequence[dict]) -> list[Trajectory]:
  """The samples as unlabelled trajectories (what a reward model scores)."""
  return [Trajectory(problem=s["problem"], steps=s["steps"]) for s in samples]


def reward_data(samples, step_labels=None) -> list[Trajectory]:
  """Reward-model training trajectories: with `step_labels`, every step labelled (PRM);
  without, only the final step, labelled by the outcome (ORM)."""
  data = []
  for index, sample in enumerate(samples):
    steps = sample["steps"]
    labels = (list(step_labels[index]) if step_labels is not None
              else [None] * (len(steps) - 1) + [float(sample["solved"])])
    data.append(Trajectory(problem=sample["problem"], steps=steps, labels=labels))
  return data


def train_reward_model(name: str, config, model_config, tokenizer, data: Sequence[Trajectory],
                       max_steps: int, workdir: str, mesh, init_params, *,
                       step_separator: str = "\n", section: str | None = None):
  """A reward model trained on `data` with the step BCE, initialised from `init_params`
  (the policy), in `workdir/name`; its settings (batch_size, max_length, train) are the
  config section `section` (default: `name`)."""
  section = config[section or name]
  batches = pipeline.prm_batches(data, tokenizer, batch_size=section.batch_size,
                                 max_length=section.max_length, max_steps=max_steps,
                                 seed=config.seed, step_separator=step_separator,
                                 **bucketing(section))
  return train_model(name, model_config, make_prm_loss(model_config), batches, section,
                     workdir, mesh, init_params)


def reward_scores(config, name: str, model_config, params, tokenizer,
                  trajectories: Sequence[Trajectory], max_steps: int, mesh, *,
                  step_separator: str = "\n") -> list[np.ndarray]:
  """Step scores of `trajectories` under the reward model `name` (its batch and length)."""
  section = config[name]
  return score_steps(model_config, params, tokenizer, trajectories,
                     max_length=section.max_length, max_steps=max_steps,
                     batch_size=section.batch_size, step_separator=step_separator, mesh=mesh)


# ----------------------------------------------------------------------------- evaluation


def candidates(groups: Sequence[Sequence[dict]], prm_scores: Sequence[Sequence[np.ndarray]],
               orm_scores: Sequence[Sequence[np.ndarray]] | None = None) -> Candidates:
  """Best-of-N candidates of B problems: `groups[b]` the sample records of problem b (any
  number: groups are padded to the largest with empty candidates, which never win),
  `prm_scores[b][n]` the step scores of its candidate n (`orm_scores`: the outcome model's,
  its last step is the score). Answers are numbered per problem in order of first
  appearance (-1: no final answer)."""
  size = max(len(g) for g in groups)
  width = max([len(x) for scores in prm_scores for x in scores] + [1])
  shape = (len(groups), size)
  answer_ids, correct = np.full(shape, -1), np.zeros(shape, bool)
  step_scores, step_mask = np.zeros(shape + (width,), np.float32), np.zeros(shape + (width,), bool)
  orm = None if orm_scores is None else np.full(shape, -np.inf, np.float32)
  for b, group in enumerate(groups):
    ids: dict[str, int] = {}
    for n, sample in enumerate(group):
      if sample["answer"] is not None:
        answer_ids[b, n] = ids.setdefault(sample["answer"], len(ids))
      correct[b, n] = sample["solved"]
      steps = len(prm_scores[b][n])
      step_scores[b, n, :steps], step_mask[b, n, :steps] = prm_scores[b][n], True
      if orm is not None and len(orm_scores[b][n]):
        orm[b, n] = orm_scores[b][n][-1]
  return Candidates(answer_ids, correct, step_scores, step_mask, orm)


def grouped(values: Sequence, size: int) -> list[list]:
  """`values` in consecutive groups of `size` (the samples of one problem)."""
  return [list(values[i:i + size]) for i in range(0, len(values), size)]


def best_of_n(config, samples: Sequence[dict], prm_scores, orm_scores=None, *,
              methods=None) -> dict:
  """`{"bon": {method: {N: accuracy}}, "policy_accuracy"}` on `sampling.num_samples`
  candidates per problem (`config.eval`: ns, draws, vote_aggregation)."""
  size = config.sampling.num_samples
  c = candidates(grouped(samples, size), grouped(prm_scores, size),
                 None if orm_scores is None else grouped(orm_scores, size))
  e = config.eval
  kwargs = {} if methods is None else {"methods": methods}
  return {"bon": best_of_n_curves(c, tuple(e.ns), draws=e.draws, seed=config.seed,
                                  vote_aggregation=e.vote_aggregation, **kwargs),
          "policy_accuracy": float(c.correct.mean())}


def processbench(config, test_samples, test_scores, train_scores, train_labels) -> dict:
  """Earliest-error F1 of a PRM on the test samples (truth: the oracle's first error).

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
  return json_safe(result)


def oracle_step_auroc(samples: Sequence[dict], scores) -> float:
  """AUROC of step scores against the oracle's prefix labels (1 while the solution is still
  on track, 0 from its first error on): how well a PRM ranks good prefixes above bad."""
  truth = [[i < s["first_error"] or s["first_error"] < 0 for i in range(len(s["steps"]))]
           for s in samples]
  flat_scores = np.concatenate([np.asarray(x, np.float64) for x in scores] + [np.zeros(0)])
  flat_truth = np.concatenate([np.asarray(t, bool) for t in truth] + [np.zeros(0, bool)])
  value = auroc(flat_scores, flat_truth)
  return None if np.isnan(value) else value
