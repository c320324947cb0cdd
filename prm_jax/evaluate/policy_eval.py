"""A policy's accuracy on held-out problems, greedy and sampled, with the PRM next to the
checker (the reward-hacking monitor on test problems): an evaluator for `train_loop`."""

from __future__ import annotations

from typing import Callable, Sequence

import jax
import numpy as np

from prm_jax import models, policy
from prm_jax.data.schema import Trajectory
from prm_jax.data.tasks.base import ChainTask
from prm_jax.data.tokenizer import Tokenizer


def make_policy_evaluator(model_config: models.ModelConfig, tokenizer: Tokenizer,
                          task: ChainTask, problems: Sequence[str], *, max_new_tokens: int,
                          temperature: float, samples_per_problem: int, seed: int,
                          prompts_per_batch: int = 64, mesh=None, prm_scores=None
                          ) -> Callable[[dict], dict[str, float]]:
  """`evaluate(params) -> metrics` on `problems`:

    greedy_accuracy     one greedy solution per problem, solved
    sampled_accuracy    `samples_per_problem` samples at `temperature` (pass@1)
    process_correct     sampled solutions with every step right (the checker)
    length              mean sampled completion length, characters
    prm_reward, prm_gap with `prm_scores(trajectories) -> [R]` (an aggregated PRM score):
                        its mean on the samples, and that minus sampled_accuracy

  Every call samples with the same keys (from `seed`): curves over training steps then
  differ by the policy only (common random numbers).
  """
  def solutions(params, num_samples, temp, key):
    return policy.sample_solutions(
        model_config, params, tokenizer, problems, num_samples=num_samples,
        max_new_tokens=max_new_tokens, rng=key, temperature=temp,
        prompts_per_batch=prompts_per_batch, mesh=mesh)

  def evaluate(params) -> dict[str, float]:
    greedy = solutions(params, 1, 0.0, jax.random.key(seed))
    sampled = solutions(params, samples_per_problem, temperature, jax.random.key(seed + 1))
    greedy_solved = [task.check(p, texts[0]).solved for p, texts in zip(problems, greedy.texts)]
    pairs = [(p, text) for p, texts in zip(problems, sampled.texts) for text in texts]
    verdicts = [task.check(p, text) for p, text in pairs]
    metrics = {"greedy_accuracy": float(np.mean(greedy_solved)),
               "sampled_accuracy": float(np.mean([v.solved for v in verdicts])),
               "process_correct": float(np.mean([bool(v.steps) and v.first_error < 0
                                                 for v in verdicts])),
               "length": float(np.mean([len(text) for _, text in pairs]))}
    if prm_scores is not None:
      scores = prm_scores([Trajectory(problem=p, steps=list(v.steps))
                           for (p, _), v in zip(pairs, verdicts)])
      metrics["prm_reward"] = float(np.mean(scores))
      metrics["prm_gap"] = metrics["prm_reward"] - metrics["sampled_accuracy"]
    return metrics

  return evaluate
