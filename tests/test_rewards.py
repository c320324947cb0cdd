"""Rewards: samples read as steps with their last tokens, the checker's outcome, PRM
aggregations, the ReasonFlux mix (with a step PRM and with ReasonFlux-PRM reading the
completion as a thinking + response pair), dense step rewards, the monitor, a registered
reward."""

import jax
import numpy as np
import pytest

from prm_jax import models, online, rewards
from prm_jax.data import CharTokenizer, Trajectory
from prm_jax.data.tasks import get_task, parse_thinking_step, straight_thinking
from prm_jax.data.tokenize import tokenize_stepwise
from prm_jax.objectives.reasonflux import RESPONSE_JOIN

TOKENIZER = CharTokenizer()
TASK = get_task("arithmetic", min_ops=1, max_ops=3, min_operand=1, max_operand=9,
                operators="+-")
PROBLEMS = ["7+5=?", "9-4+1=?"]
WIDTH = 24


def _rollouts(rows):
  """`rows`: (problem index, completion text, stopped)."""
  tokens = np.zeros((len(rows), WIDTH), np.int32)
  lengths = np.zeros(len(rows), np.int32)
  for r, (_, text, stopped) in enumerate(rows):
    ids = TOKENIZER.encode(text) + ([TOKENIZER.eos_id] if stopped else [])
    tokens[r, :len(ids)] = ids[:WIDTH]
    lengths[r] = min(len(ids), WIDTH)
  zeros = np.zeros(tokens.shape, np.float32)
  return online.Rollouts(prompt_index=np.array([p for p, _, _ in rows]), tokens=tokens,
                         lengths=lengths, finished=np.array([s for _, _, s in rows]),
                         logprobs=zeros, entropy=zeros)


ROWS = [(0, "7+5=12\n#### 12\n", True),      # right
        (0, "7+5=13\n#### 13\n", True),      # wrong first step
        (1, "9-4=5\n5+1=6\n#### 6", True),   # right, no newline before EOS
        (1, "9-4=5\n5+1=", False),           # cut off
        (1, "", True)]                       # stopped at once


@pytest.fixture(scope="module")
def prm():
  config = models.get_model_config("tiny", vocab_size=TOKENIZER.vocab_size, max_seq_len=64)
  params = models.init_params(config, jax.random.key(0))
  return rewards.PRM(config, params, TOKENIZER, max_length=48, max_steps=WIDTH, batch_size=8)


def test_samples_are_steps_with_their_last_tokens_and_verdicts():
  samples = rewards.read_samples(_rollouts(ROWS), PROBLEMS, TOKENIZER, TASK)
  assert samples.steps == [["7+5=12", "#### 12"], ["7+5=13", "#### 13"],
                           ["9-4=5", "5+1=6", "#### 6"], ["9-4=5", "5+1="], []]
  # A step ends at its newline; the last step also owns the tokens after it (EOS).
  assert [list(e) for e in samples.step_ends] == [[6, 15], [6, 15], [5, 11, 18], [5, 9], []]
  np.testing.assert_array_equal(rewards.outcome(samples, rewards.RewardSettings()),
                                [1, 0, 1, 0, 0])
  stats = rewards.monitor(samples, rewards.RewardSettings())
  np.testing.assert_allclose(stats["step_accuracy"], [1, 0.5, 1, 0.5, 0])
  np.testing.assert_array_equal(stats["process_correct"], [1, 0, 1, 0, 0])


@pytest.mark.parametrize("aggregation", ["min", "last", "mean", "prod"])
def test_prm_mix_and_dense_rewards(prm, aggregation):
  samples = rewards.read_samples(_rollouts(ROWS), PROBLEMS, TOKENIZER, TASK)
  steps = prm.step_scores(samples)
  assert [len(s) for s in steps] == [2, 2, 3, 2, 0]
  reduce = {"min": np.min, "last": lambda s: s[-1], "mean": np.mean, "prod": np.prod}
  expected = np.array([reduce[aggregation](s) if len(s) else 0.0 for s in steps])
  settings = rewards.RewardSettings(name="mix", aggregation=aggregation, beta=0.3, prm=prm)
  np.testing.assert_allclose(rewards.prm(samples, settings), expected, rtol=1e-5)
  np.testing.assert_allclose(rewards.mix(samples, settings),
                             0.7 * np.array([1, 0, 1, 0, 0]) + 0.3 * expected, rtol=1e-5)
  dense = rewards.prm_steps(samples, settings)
  for row, scores in enumerate(steps):
    np.testing.assert_allclose(dense.values[row, :len(scores)], scores)
    np.testing.assert_array_equal(dense.ends[row, :len(scores)], samples.step_ends[row])
    assert dense.mask[row].sum() == len(scores)
  stats = rewards.monitor(samples, settings)
  np.testing.assert_allclose(stats["prm_gap"], expected - [1, 0, 1, 0, 0], rtol=1e-5,
                             atol=1e-6)


def test_a_registered_reward_drives_the_scorer():
  @rewards.register("short_and_right")
  def short_and_right(samples, settings):
    return rewards.outcome(samples, settings) - 0.01 * np.array([len(t) for t in samples.texts])

  try:
    score = rewards.make_scorer(rewards.RewardSettings(name="short_and_right"),
                                problems=PROBLEMS, tokenizer=TOKENIZER, task=TASK)
    scores = score(_rollouts(ROWS))
  finally:
    del rewards.REWARDS["short_and_right"]
  np.testing.assert_allclose(scores.rewards, [1 - 0.15, -0.15, 1 - 0.18, -0.10, 0], rtol=1e-6)
  assert set(scores.stats) == {"outcome", "step_accuracy", "process_correct", "steps"}


@pytest.mark.parametrize("make,message", [
    (lambda: rewards.RewardSettings(beta=1.5), r"reward.beta=1.5 must be in \[0, 1\]"),
    (lambda: rewards.RewardSettings(beta=-0.1), r"reward.beta=-0.1 must be in \[0, 1\]"),
    (lambda: rewards.RewardSettings(aggregation="max"), "reward.aggregation='max' is not one"),
    (lambda: rewards.RewardSettings(name="prm_stepz"),
     "reward.name='prm_stepz' is not a registered reward"),
    (lambda: rewards.prm(rewards.read_samples(_rollouts(ROWS), PROBLEMS, TOKENIZER, TASK),
                         rewards.RewardSettings(name="prm")),
     "reward.name='prm' needs a PRM, and none was given"),
])
def test_bad_reward_settings_name_the_field(make, message):
  with pytest.raises(ValueError, match=message):
    make()


@pytest.fixture(scope="module")
def reasonflux_model():
  config = models.get_model_config("tiny", vocab_size=TOKENIZER.vocab_size, max_seq_len=160)
  return config, models.init_params(config, jax.random.key(1))


def test_reasonflux_reward_scores_the_completion_as_a_thinking_response_pair(reasonflux_model):
  """Every row against the model run on that row's pair alone: thinking = the lines
  phrased as moves, then the response as one step; the score is the normalised pair score."""
  config, params = reasonflux_model
  alpha, beta = 0.5, 0.4
  reward_model = rewards.ReasonFluxPRM(config, params, TOKENIZER, max_length=128,
                                       max_steps=WIDTH, alpha=alpha, batch_size=4)
  samples = rewards.read_samples(_rollouts(ROWS), PROBLEMS, TOKENIZER, TASK)
  expected_steps, expected = [], []
  for problem, lines in zip(samples.problems, samples.steps):
    if not lines:
      expected_steps.append(np.zeros(0))
      expected.append(0.0)
      continue
    thinking = straight_thinking(lines)
    assert [parse_thinking_step(t) for t in thinking] == [("move", line) for line in lines]
    example = tokenize_stepwise(TOKENIZER, Trajectory(
        problem=problem, steps=[*thinking, RESPONSE_JOIN.join(lines)]))
    out = models.forward(config, params, np.array([example["input_ids"]]),
                         step_positions=np.array([example["step_ends"]]), lm_logits="none")
    scores = np.asarray(out["step_scores"][0], np.float64)
    assert len(scores) == len(lines) + 1
    expected_steps.append(scores[:-1])
    expected.append((scores[:-1].mean() + alpha * scores[-1]) / (1 + alpha))
  settings = rewards.RewardSettings(name="mix", beta=beta, prm=reward_model)
  for got, want in zip(reward_model.step_scores(samples), expected_steps):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(rewards.prm(samples, settings), expected, rtol=1e-4, atol=1e-6)
  outcome = np.array([1, 0, 1, 0, 0])
  np.testing.assert_allclose(rewards.mix(samples, settings),
                             (1 - beta) * outcome + beta * np.array(expected), rtol=1e-4,
                             atol=1e-6)
  stats = rewards.monitor(samples, settings)
  np.testing.assert_array_equal(stats["unscored"], [0, 0, 0, 0, 1])
  np.testing.assert_allclose(stats["prm_reward"], expected, rtol=1e-4, atol=1e-6)
  # The evaluator's path gives the same scores.
  trajectories = [Trajectory(problem=p, steps=s) for p, s in zip(samples.problems, samples.steps)]
  np.testing.assert_allclose(reward_model.score_trajectories(trajectories, "min"), expected,
                             rtol=1e-4, atol=1e-6)


def test_reasonflux_reward_leaves_pairs_that_do_not_fit_unscored(reasonflux_model):
  config, params = reasonflux_model
  samples = rewards.read_samples(_rollouts(ROWS), PROBLEMS, TOKENIZER, TASK)
  # 70 tokens hold the two-line pairs (63 and 44 tokens) but not the three-line one (79).
  short = rewards.ReasonFluxPRM(config, params, TOKENIZER, max_length=70, max_steps=WIDTH)
  assert list(short.unscored(samples)) == [0, 0, 1, 0, 1]
  few_steps = rewards.ReasonFluxPRM(config, params, TOKENIZER, max_length=128, max_steps=3)
  assert list(few_steps.unscored(samples)) == [0, 0, 1, 0, 1]  # 3 lines + the response.
  assert short.sequence_scores(samples, "min")[2] == 0
  with pytest.raises(ValueError, match="alpha=-1"):
    rewards.ReasonFluxPRM(config, params, TOKENIZER, max_length=48, max_steps=4, alpha=-1)
