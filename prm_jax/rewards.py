"""Rewards for online policy optimisation: sampled completions in, `online.Scores` out.

A scorer (`make_scorer`) reads a rollout's rows as text once (`read_samples`: the decoded
completion, its steps, where each step ends, and the task checker's verdict), computes the
reward named by `RewardSettings.name`, and adds the reward-hacking monitor's statistics
(`monitor`). The rewards (`REWARDS`, each `reward(samples, settings)`):

  outcome    1 if the task's verifier accepts the final answer, else 0            `[R]`
  prm        the reward model's score of the completion, in [0, 1]                 `[R]`
  mix        (1 - beta) * outcome + beta * prm (ReasonFlux-PRM's RL reward)       `[R]`
  prm_steps  every step's PRM score: dense step rewards for GRPO's process-
             supervised advantages (`objectives.grpo.process_advantages`)        `StepRewards`

Two reward models fill `RewardSettings.prm`: `PRM`, a step PRM whose completion score is
its step scores aggregated by min / last / mean / prod; and `ReasonFluxPRM`, whose score is
ReasonFlux-PRM's step and trajectory score of the completion read as a thinking + response
pair, `(mean_t R(s_t) + alpha R(x, y)) / (1 + alpha)` (so `mix` with it is the paper's RL
reward with the trajectory term, not only the first step's score). The forward passes and
the aggregation are jitted (`evaluate.prm_scores.StepScorer`, `kernels.aggregate_step_
scores`); reading text and the verifier are Python.

A new reward is a function of the samples and the settings, registered by name:

    from prm_jax import rewards

    @rewards.register("short_and_right")
    def short_and_right(samples, settings):
      lengths = np.array([len(text) for text in samples.texts])
      return rewards.outcome(samples, settings) - 0.002 * lengths

and is then chosen with `--config.reward.name=short_and_right` (register it in a module
the experiment imports). Return `[R]` floats for a sequence reward or a `StepRewards`.

The monitor. With an exact checker, a PRM reward can be compared with the truth on every
rollout: `prm_reward` (the PRM's aggregated score, computed whatever the training reward
is) next to `outcome` (solved) and the checker's step verdicts (`step_accuracy`: share of
steps right; `process_correct`: no wrong step), `prm_step_agreement` (PRM step score >= 0.5
== the checker's verdict) and `prm_gap` = prm_reward - outcome. A policy that learns to
please the PRM without solving more problems shows a growing gap; response length and
entropy (`online.OnlineSource`'s statistics) show collapse or verbosity.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import numpy as np

from prm_jax import checkpoint, models, online, parallel
from prm_jax.data.schema import Trajectory
from prm_jax.data.tasks.base import ChainTask, Verdict
from prm_jax.data.tokenizer import Tokenizer
from prm_jax.evaluate.prm_scores import StepScorer
from prm_jax.data.tasks.thinking import straight_thinking
from prm_jax.data.tokenize import tokenize_stepwise
from prm_jax.kernels.scoring import AGGREGATIONS, aggregate_step_scores
from prm_jax.objectives.reasonflux import pair_score, reasonflux_example


@dataclasses.dataclass
class Samples:
  """R rollout rows as text (read once per rollout; rewards and the monitor share them).

  problems: `[R]` the problem each row answers.
  texts: `[R]` completions decoded up to (not including) the stop token.
  steps: `[R]` lists of steps (the completion's lines, as the task checker splits them).
  step_ends: `[R]` int arrays `[len(steps)]`: completion-token index of each step's last
    token (the token holding its separator; the last step also takes any tokens after
    its separator, the stop token included, so stopping is credited to it).
  verdicts: `[R]` the task checker's verdicts.
  cache: per-rollout memo (the PRM's step scores are computed once).
  """

  problems: list[str]
  texts: list[str]
  steps: list[list[str]]
  step_ends: list[np.ndarray]
  verdicts: list[Verdict]
  cache: dict = dataclasses.field(default_factory=dict)

  def __len__(self) -> int:
    return len(self.texts)


@dataclasses.dataclass(frozen=True)
class StepRewards:
  """Dense rewards: `values`, `mask` (real steps), `ends` (completion-token index of each
  step's last token), all `[R, S]`."""

  values: np.ndarray
  mask: np.ndarray
  ends: np.ndarray


def read_samples(rollouts: online.Rollouts, problems: Sequence[str], tokenizer: Tokenizer,
                 task: ChainTask, *, separator: str = "\n") -> Samples:
  """The rollout rows as text: `problems[rollouts.prompt_index[r]]` is row r's problem."""
  texts, steps, ends, verdicts, row_problems = [], [], [], [], []
  stop = tokenizer.eos_id
  for row in range(len(rollouts.tokens)):
    tokens = [int(t) for t in rollouts.tokens[row, :rollouts.lengths[row]]]
    text_tokens = tokens[:-1] if tokens and tokens[-1] == stop else tokens
    text = tokenizer.decode(text_tokens)
    lines = text.rstrip(separator).split(separator)
    lines = [] if lines == [""] else lines
    # Each separator in a token's text ends a step; a last step without one ends at the
    # completion's last token.
    separators = [i for i, t in enumerate(text_tokens)
                  for _ in range(tokenizer.decode([t]).count(separator))][:len(lines)]
    row_ends = np.asarray(separators + [len(tokens) - 1] * (len(lines) - len(separators)),
                          np.int32)
    if len(row_ends):
      row_ends[-1] = len(tokens) - 1
    problem = problems[int(rollouts.prompt_index[row])]
    texts.append(text)
    steps.append(lines)
    ends.append(row_ends)
    verdicts.append(task.check(problem, lines))
    row_problems.append(problem)
  return Samples(row_problems, texts, steps, ends, verdicts)


class PRM:
  """A trained step PRM as a reward model: step scores of samples (cached per rollout).

  max_length must hold a prompt plus a whole completion (tokens); max_steps the most steps
  a completion can have.
  """

  def __init__(self, model_config: models.ModelConfig, params, tokenizer: Tokenizer, *,
               max_length: int, max_steps: int, batch_size: int = 64, mesh=None):
    self.scorer = StepScorer(model_config, params, tokenizer, max_length=max_length,
                             max_steps=max_steps, batch_size=batch_size, mesh=mesh)

  @classmethod
  def from_checkpoint(cls, path: str, model_config: models.ModelConfig, tokenizer: Tokenizer,
                      *, mesh, **kwargs) -> "PRM":
    """The PRM whose parameters are in the checkpoint at `path` (a run's workdir, its
    checkpoint root or a step directory; `checkpoint.restore_params`)."""
    params = checkpoint.restore_params(path, parallel.abstract_sharded_params(model_config, mesh))
    return cls(model_config, params, tokenizer, mesh=mesh, **kwargs)

  def step_scores(self, samples: Samples) -> list[np.ndarray]:
    """`[len(steps)]` P(step correct) per row."""
    if "prm" not in samples.cache:
      samples.cache["prm"] = self.scorer([Trajectory(problem=p, steps=s) for p, s in
                                          zip(samples.problems, samples.steps)])
    return samples.cache["prm"]

  def sequence_scores(self, samples: Samples, aggregation: str) -> np.ndarray:
    """`[R]` the step scores aggregated; a completion without steps scores 0."""
    return aggregate(self.step_scores(samples), aggregation)

  def score_trajectories(self, trajectories: Sequence[Trajectory], aggregation: str
                         ) -> np.ndarray:
    """`[R]` the same score of trajectories (an evaluator's samples)."""
    return aggregate(self.scorer(trajectories), aggregation)


class ReasonFluxPRM:
  """ReasonFlux-PRM (`objectives.reasonflux`) as a reward model for a policy that writes a
  response without a separate thinking phase: the completion's lines are the response, and
  `thinking(lines)` is read as its thinking trajectory (default `straight_thinking`: the
  lines phrased as the synthetic pairs' moves, i.e. the policy thought its answer through
  once). Per row, `[T + 1]` scores: one per thinking step (one per line), then the
  trajectory score. Rows without lines, with more than `max_steps - 1` lines, or whose pair
  does not fit `max_length` tokens get no scores (their reward is 0, like a completion
  without steps; `unscored` in the monitor counts them).
  """

  def __init__(self, model_config: models.ModelConfig, params, tokenizer: Tokenizer, *,
               max_length: int, max_steps: int, alpha: float = 1.0, batch_size: int = 64,
               mesh=None, thinking: Callable[[Sequence[str]], list[str]] = straight_thinking):
    if alpha < 0:
      raise ValueError(f"alpha={alpha} must be >= 0")
    self.scorer = StepScorer(model_config, params, tokenizer, max_length=max_length,
                             max_steps=max_steps, batch_size=batch_size, mesh=mesh)
    self.tokenizer, self.max_length, self.max_steps = tokenizer, max_length, max_steps
    self.alpha, self.thinking = alpha, thinking

  def pair_scores(self, problems: Sequence[str], steps: Sequence[Sequence[str]]
                  ) -> list[np.ndarray | None]:
    """`[T + 1]` scores per completion (None: not scored, see the class docstring)."""
    examples = {}
    for row, (problem, lines) in enumerate(zip(problems, steps)):
      if not lines or len(lines) + 1 > self.max_steps:
        continue
      example = reasonflux_example(Trajectory(problem=problem, steps=self.thinking(lines),
                                              response=list(lines)))
      if len(tokenize_stepwise(self.tokenizer, example)["input_ids"]) <= self.max_length:
        examples[row] = example
    scored = dict(zip(examples, self.scorer(list(examples.values()))))
    return [scored.get(row) for row in range(len(steps))]

  def _rows(self, samples: Samples) -> list[np.ndarray | None]:
    if "reasonflux" not in samples.cache:
      samples.cache["reasonflux"] = self.pair_scores(samples.problems, samples.steps)
    return samples.cache["reasonflux"]

  def step_scores(self, samples: Samples) -> list[np.ndarray]:
    """`[len(steps)]` the thinking steps' scores per row (empty when not scored)."""
    return [np.zeros(0, np.float32) if s is None else s[:-1] for s in self._rows(samples)]

  def _normalised(self, rows: Sequence[np.ndarray | None]) -> np.ndarray:
    return np.array([0.0 if s is None else pair_score(s, self.alpha) / (1 + self.alpha)
                     for s in rows], np.float32)

  def sequence_scores(self, samples: Samples, aggregation: str) -> np.ndarray:
    """`[R]` `(mean_t R(s_t) + alpha R(x, y)) / (1 + alpha)` in [0, 1] (the aggregation is
    the paper's mean: `aggregation` is not used)."""
    del aggregation
    return self._normalised(self._rows(samples))

  def score_trajectories(self, trajectories: Sequence[Trajectory], aggregation: str
                         ) -> np.ndarray:
    del aggregation
    return self._normalised(self.pair_scores([t.problem for t in trajectories],
                                             [t.steps for t in trajectories]))

  def unscored(self, samples: Samples) -> np.ndarray:
    """`[R]` 1 for rows the PRM could not score."""
    return np.array([s is None for s in self._rows(samples)], np.float32)


@dataclasses.dataclass(frozen=True)
class RewardSettings:
  """An experiment's `config.reward` (plus the PRM, built by the pipeline).

  name: a key of `REWARDS`.
  aggregation: how a `PRM`'s step scores become one score in `prm` / `mix`
    (`kernels.AGGREGATIONS`).
  beta: weight of the PRM in `mix`, in [0, 1].
  prm: the reward model (`PRM` or `ReasonFluxPRM`), needed by every reward that reads one,
    and by the monitor.
  """

  name: str = "outcome"
  aggregation: str = "min"
  beta: float = 0.5
  prm: "PRM | ReasonFluxPRM | None" = None

  def __post_init__(self):
    if self.name not in REWARDS:
      raise ValueError(f"reward.name={self.name!r} is not a registered reward; known: "
                       f"{sorted(REWARDS)}")
    if self.aggregation not in AGGREGATIONS:
      raise ValueError(f"reward.aggregation={self.aggregation!r} is not one of {AGGREGATIONS}")
    if not 0 <= self.beta <= 1:
      raise ValueError(f"reward.beta={self.beta!r} must be in [0, 1]")


Reward = Callable[[Samples, RewardSettings], "np.ndarray | StepRewards"]
REWARDS: dict[str, Reward] = {}


def register(name: str) -> Callable[[Reward], Reward]:
  """Decorator: make `reward(samples, settings)` available as `reward.name=<name>`."""
  def add(reward: Reward) -> Reward:
    REWARDS[name] = reward
    return reward
  return add


def _needs_prm(settings: RewardSettings) -> "PRM | ReasonFluxPRM":
  if settings.prm is None:
    raise ValueError(f"reward.name={settings.name!r} needs a PRM, and none was given")
  return settings.prm


def aggregate(steps: Sequence[np.ndarray], aggregation: str) -> np.ndarray:
  """`[R]` solution scores from ragged step scores (`kernels.aggregate_step_scores`); a
  solution without steps scores 0."""
  padded, mask = _pad(steps, np.float32)
  score = np.asarray(aggregate_step_scores(padded, mask, aggregation))
  return np.where(np.isfinite(score), score, 0.0).astype(np.float32)


def _pad(rows: Sequence[np.ndarray], dtype) -> tuple[np.ndarray, np.ndarray]:
  """Ragged rows as `([R, S], mask [R, S])`, S = the longest row (at least 1)."""
  width = max(1, max((len(r) for r in rows), default=1))
  padded = np.zeros((len(rows), width), dtype)
  mask = np.zeros(padded.shape, bool)
  for index, row in enumerate(rows):
    padded[index, :len(row)] = row
    mask[index, :len(row)] = True
  return padded, mask


@register("outcome")
def outcome(samples: Samples, settings: RewardSettings) -> np.ndarray:
  del settings
  return np.array([v.solved for v in samples.verdicts], np.float32)


@register("prm")
def prm(samples: Samples, settings: RewardSettings) -> np.ndarray:
  return _needs_prm(settings).sequence_scores(samples, settings.aggregation)


@register("mix")
def mix(samples: Samples, settings: RewardSettings) -> np.ndarray:
  return ((1 - settings.beta) * outcome(samples, settings)
          + settings.beta * prm(samples, settings)).astype(np.float32)


@register("prm_steps")
def prm_steps(samples: Samples, settings: RewardSettings) -> StepRewards:
  steps = _needs_prm(settings).step_scores(samples)
  values, mask = _pad(steps, np.float32)
  ends, _ = _pad([e[:len(s)] for e, s in zip(samples.step_ends, steps)], np.int32)
  return StepRewards(values, mask, ends)


def monitor(samples: Samples, settings: RewardSettings) -> dict[str, np.ndarray]:
  """Per-row statistics of the hacking monitor (module docstring), `[R]` each."""
  verdicts = samples.verdicts
  stats = {
      "outcome": np.array([v.solved for v in verdicts], np.float32),
      "step_accuracy": np.array([np.mean(v.step_correct) if v.step_correct else 0.0
                                 for v in verdicts], np.float32),
      "process_correct": np.array([bool(v.steps) and v.first_error < 0 for v in verdicts],
                                  np.float32),
      "steps": np.array([len(s) for s in samples.steps], np.float32)}
  if settings.prm is not None:
    stats["prm_reward"] = settings.prm.sequence_scores(samples, settings.aggregation)
    stats["prm_gap"] = stats["prm_reward"] - stats["outcome"]
    step_scores = settings.prm.step_scores(samples)
    stats["prm_step_agreement"] = np.array(
        [np.mean((np.asarray(s) >= 0.5) == np.asarray(v.step_correct)) if len(s) else 0.0
         for s, v in zip(step_scores, verdicts)], np.float32)
    if isinstance(settings.prm, ReasonFluxPRM):
      stats["unscored"] = settings.prm.unscored(samples)
  return stats


def make_scorer(settings: RewardSettings, *, problems: Sequence[str], tokenizer: Tokenizer,
                task: ChainTask) -> online.ScoreFn:
  """`score(rollouts) -> online.Scores`: the reward `settings.name` and the monitor.
  `problems[i]` is the text of the source's prompt i."""
  reward = REWARDS[settings.name]

  def score(rollouts: online.Rollouts) -> online.Scores:
    samples = read_samples(rollouts, problems, tokenizer, task)
    value = reward(samples, settings)
    stats = monitor(samples, settings)
    if isinstance(value, StepRewards):
      return online.Scores(step_rewards=value.values, step_mask=value.mask,
                           step_ends=value.ends, stats=stats)
    return online.Scores(rewards=np.asarray(value, np.float32), stats=stats)

  return score
