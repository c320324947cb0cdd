"""The online source on the one train loop: GRPO learns a reward, a stopped run resumes
bitwise (prompt position, rollout RNG and the rollout batch being served), the KL is zero
while the policy is its reference, an 8-device step equals the 1-device step, bad scores
name the field."""

import dataclasses
import os

import jax
import numpy as np
import optax
import pytest

from prm_jax import metric_writer, models, online, parallel, train
from prm_jax.objectives import dpo, grpo
from tests.tree_helper import assert_trees_equal

# Every train_loop call jits anew (as a restarted process does): compiles cached on disk.
pytestmark = pytest.mark.usefixtures("persistent_compilation_cache")

VOCAB, TARGET = 16, 5
MODEL = models.get_model_config("tiny", vocab_size=VOCAB, max_seq_len=64)
PROMPTS = [list(np.random.default_rng(i).integers(3, VOCAB, 2 + i % 4)) for i in range(24)]


class Preempted(Exception):
  pass


def _target_share(rollouts: online.Rollouts) -> online.Scores:
  """Reward: the share of the completion's tokens that are TARGET; dense variant per token."""
  hits = (rollouts.tokens == TARGET) & rollouts.completion_mask
  share = hits.sum(axis=1) / np.maximum(rollouts.lengths, 1)
  return online.Scores(rewards=share, stats={"hits": hits.sum(axis=1).astype(np.float32)})


def _mesh1():
  return parallel.make_mesh(devices=jax.devices()[:1])


def _mesh8():
  return parallel.make_mesh(data=2, fsdp=2, tensor=2)


def _source(objective, mesh, rollout=None, reference=None):
  rollout = rollout or online.RolloutConfig(prompts_per_step=4, group_size=4, max_new_tokens=6)
  return online.OnlineSource(MODEL, PROMPTS, _target_share, objective, rollout, mesh=mesh,
                             reference_params=reference, stop_tokens=(2,))


def _loss(objective, rollout):
  if isinstance(objective, dpo.DPOConfig):
    return dpo.make_dpo_loss(MODEL, objective)
  return grpo.make_grpo_loss(MODEL, objective, temperature=rollout.temperature)




def test_grpo_raises_a_reward_that_prefers_one_token_to_0_9_within_40_steps(tmp_path):
  objective = grpo.GRPOConfig(aggregation="token")
  rollout = online.RolloutConfig(prompts_per_step=4, group_size=8, max_new_tokens=8, seed=0)
  config = train.TrainConfig(total_steps=40, learning_rate=3e-3, log_every=5,
                             checkpoint_every=0, progress_every_s=0.0)
  result = train.train_loop(MODEL, _loss(objective, rollout), _source(objective, _mesh1(),
                                                                       rollout),
                            config=config, workdir=str(tmp_path), mesh=_mesh1())
  rewards = [r["train/rollout_reward"] for r in result.history]
  # Rollouts of steps 1-5 come from the initial policy (1/16 by chance), 36-40 from the
  # policy after 35 updates.
  assert rewards[0] < 0.25, rewards
  assert rewards[-1] >= 0.9, rewards


# Every piece of state matters here: minibatches x epochs (a checkpoint lands mid-rollout),
# dynamic sampling / DPO's filter (the prompt position moves by a varying amount), a
# temperature (recomputed behaviour log-probs) and a KL reference.
RESUME_CASES = {
    "grpo": (grpo.GRPOConfig(eps_high=0.28, aggregation="token", kl_coef=0.05,
                             dynamic_sampling=True),
             online.RolloutConfig(prompts_per_step=4, group_size=4, max_new_tokens=6,
                                  temperature=0.8, minibatches=2, epochs=2, seed=3)),
    "dpo": (dpo.DPOConfig(beta=0.2),
            online.RolloutConfig(prompts_per_step=4, group_size=4, max_new_tokens=6,
                                 minibatches=2, epochs=2, seed=3)),
}
RESUME_TRAIN = train.TrainConfig(total_steps=20, learning_rate=3e-3, log_every=1,
                                 checkpoint_every=5, keep_checkpoints=5, progress_every_s=0.0)


def _resume_run(case, workdir, *, preempt_at=None):
  objective, rollout = RESUME_CASES[case]
  initial = models.init_params(MODEL, jax.random.key(1))
  config, evaluators = RESUME_TRAIN, None
  if preempt_at:
    def preempt(params):
      raise Preempted
    config = dataclasses.replace(config, eval_every=preempt_at)
    evaluators = {"preempt": preempt}
  source = _source(objective, _mesh1(), rollout, reference=initial)
  result = train.train_loop(MODEL, _loss(objective, rollout), source, config=config,
                            workdir=str(workdir), mesh=_mesh1(), init_params=initial,
                            evaluators=evaluators)
  return result, source


@pytest.mark.parametrize("case", sorted(RESUME_CASES))
def test_stopped_run_resumes_bitwise(case, tmp_path):
  straight, straight_source = _resume_run(case, tmp_path / "straight")
  # Killed after the step-10 checkpoint, mid-rollout (a rollout serves steps 9-12).
  with pytest.raises(Preempted):
    _resume_run(case, tmp_path / "stopped", preempt_at=10)
  assert sorted(os.listdir(tmp_path / "stopped" / "checkpoints")) == ["10", "5"]
  resumed, resumed_source = _resume_run(case, tmp_path / "stopped")  # A fresh source object.
  assert [r["step"] for r in resumed.history] == list(range(11, 21))
  assert_trees_equal(resumed.state.params, straight.state.params)
  assert_trees_equal(resumed.state.opt_state, straight.state.opt_state)
  assert_trees_equal(resumed_source.get_state(), straight_source.get_state())
  records = lambda d: [r for r in metric_writer.read_metrics(str(d)) if "train/loss" in r]
  assert records(tmp_path / "stopped") == records(tmp_path / "straight")
  if case == "grpo":
    first = records(tmp_path / "straight")[0]
    # Step 1 runs with the policy equal to its reference: k3 is 0 up to the rounding
    # between two compiled forward passes (it is exactly 0 for equal log-probs:
    # tests/test_grpo.py).
    assert abs(first["train/kl"]) < 1e-6, first
    assert first["train/rollout_kept_groups"] < 1  # The filter dropped some groups.
  else:
    assert 0 < records(tmp_path / "straight")[0]["train/pairs"] <= 2


def test_grpo_step_on_8_devices_equals_the_1_device_step():
  objective = grpo.GRPOConfig(aggregation="sequence", kl_coef=0.1)
  rollout = online.RolloutConfig(prompts_per_step=4, group_size=4, max_new_tokens=6,
                                 temperature=0.9)
  params = models.init_params(MODEL, jax.random.key(2))
  results = {}
  for name, mesh in (("1", _mesh1()), ("8", _mesh8())):
    batch = _source(objective, mesh, rollout, reference=params).next_batch(
        jax.device_put(params, parallel.param_shardings(MODEL, mesh)))
    tx = optax.sgd(1e-2)  # Adam's first step, ~lr * sign(g), would magnify rounding in tiny g.
    shardings = train.state_shardings(MODEL, tx, mesh)
    state = train.init_state_sharded(MODEL, tx, jax.random.PRNGKey(0), mesh, params=params)
    global_batch = parallel.make_global_batch(batch, mesh)
    step = train.jit_train_step(train.make_train_step(_loss(objective, rollout), tx), shardings,
                                global_batch, mesh)
    state, metrics = step(state, global_batch)
    results[name] = (batch, jax.device_get(state.params), jax.device_get(metrics))
  (batch1, params1, metrics1), (batch8, params8, metrics8) = results["1"], results["8"]
  # The sharded sampler draws the same tokens; log-probs agree to rounding.
  np.testing.assert_array_equal(batch8["input_ids"], batch1["input_ids"])
  np.testing.assert_allclose(batch8["old_logprobs"], batch1["old_logprobs"], atol=2e-6)
  np.testing.assert_allclose(batch8["advantages"], batch1["advantages"], atol=1e-6)
  for name in ("loss", "kl", "grad_norm"):
    np.testing.assert_allclose(metrics8[name], metrics1[name], rtol=2e-5, atol=1e-7)
  assert metrics1["grad_norm"] > 0
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-8),
               params8, params1)


@pytest.mark.parametrize("scores,message", [
    (online.Scores(rewards=np.zeros(3)),
     r"Scores.rewards has shape \(3,\), expected \[R\] = \(16,\)"),
    (online.Scores(step_rewards=np.zeros((16, 2)), step_mask=np.ones((16, 2), bool),
                   step_ends=np.zeros((16, 3))),
     r"Scores.step_ends has shape \(16, 3\), expected step_rewards' \(16, 2\)"),
    (online.Scores(rewards=np.zeros(16), stats={"prm": np.zeros(8)}),
     r"Scores.stats\['prm'\] has shape \(8,\)"),
])
def test_scores_of_the_wrong_shape_name_the_field(scores, message):
  source = online.OnlineSource(MODEL, PROMPTS, lambda rollouts: scores, grpo.GRPOConfig(),
                               online.RolloutConfig(prompts_per_step=4, group_size=4,
                                                    max_new_tokens=4), mesh=_mesh1())
  with pytest.raises(ValueError, match=message):
    source.next_batch(models.init_params(MODEL, jax.random.key(0)))


@pytest.mark.parametrize("make,message", [
    (lambda: online.RolloutConfig(group_size=1), "rollout.group_size must be >= 2"),
    (lambda: online.RolloutConfig(temperature=0.7, behaviour_logprobs="sampler"),
     "rollout.behaviour_logprobs='sampler' needs temperature 1"),
    (lambda: _source(grpo.GRPOConfig(), _mesh1(), online.RolloutConfig(
        prompts_per_step=3, group_size=3, minibatches=2)),
     "rollout.minibatches=2 does not divide the 9 rows of a rollout batch"),
    (lambda: _source(grpo.GRPOConfig(kl_coef=0.1), _mesh1()),
     "reference_params are needed for online DPO and for GRPO with grpo.kl_coef > 0"),
    (lambda: _source(grpo.GRPOConfig(), _mesh8(), online.RolloutConfig(
        prompts_per_step=3, group_size=2)),
     "a minibatch of 6 rows is not divisible by the 4-way batch sharding"),
])
def test_bad_settings_name_the_field(make, message):
  with pytest.raises(ValueError, match=message):
    make()


def test_keeps_no_reference_without_kl():
  params = models.init_params(MODEL, jax.random.key(0))
  source = _source(grpo.GRPOConfig(kl_coef=0.0), _mesh1(), reference=params)
  assert source._reference is None  # pylint: disable=protected-access
  assert "ref_logprobs" not in source.next_batch(params)


def test_kept_groups_of_rounds_with_different_step_counts_are_padded():
  """Dynamic sampling with step rewards gathers groups from rounds whose widest completion
  has different numbers of steps: the step fields are padded, not concatenated ragged."""
  source = object.__new__(online.OnlineSource)
  source.config = online.RolloutConfig(group_size=2)

  def round_(steps, value):
    rollouts = online.Rollouts(
        prompt_index=np.arange(4), tokens=np.full((4, 3), value, np.int32),
        lengths=np.full(4, 3, np.int32), finished=np.ones(4, bool),
        logprobs=np.zeros((4, 3), np.float32), entropy=np.zeros((4, 3), np.float32))
    scores = online.Scores(step_rewards=np.full((4, steps), value, np.float32),
                           step_mask=np.ones((4, steps), bool),
                           step_ends=np.zeros((4, steps), np.int32))
    return rollouts, scores

  rollouts, scores = source._gather([round_(2, 1), round_(3, 2)],  # pylint: disable=protected-access
                                    [(0, 1), (1, 0)])
  np.testing.assert_array_equal(rollouts.tokens[:, 0], [1, 1, 2, 2])
  np.testing.assert_array_equal(scores.step_rewards, [[1, 1, 0], [1, 1, 0], [2, 2, 2], [2, 2, 2]])
  np.testing.assert_array_equal(scores.step_mask.sum(axis=1), [2, 2, 3, 3])
  assert scores.rewards is None
