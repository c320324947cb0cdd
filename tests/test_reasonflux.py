"""ReasonFlux-PRM targets and objective against float64 NumPy written from the formulas:
alignment, coherence (negatives never the positive), quality, the softmax-weighted
combination, the LM judge against unpadded forwards, the template-guided trajectory reward
on a stub policy, the squared-error
objective and its gradient, and the sharded step."""

import jax
import numpy as np
import optax
import pytest

from prm_jax import models, parallel, train
from prm_jax.data import CharTokenizer
from prm_jax.data.schema import Trajectory
from prm_jax.labeling import reasonflux as rf
from prm_jax.objectives import reasonflux as objective

MODEL = models.get_model_config("tiny", max_seq_len=64)


def _cos(a, b):
  return float(np.dot(a, b) / (np.sqrt(np.dot(a, a)) * np.sqrt(np.dot(b, b))))


def _embeddings(seed, *shape):
  return np.random.default_rng(seed).normal(size=shape)


@pytest.mark.parametrize("unit", [False, True])
@pytest.mark.parametrize("num_thinking,num_response,pairing", [
    (5, 3, [0, 0, 1, 1, 2]),  # Merged groups [s1, s2], [s3, s4], [s5] (align_steps).
    (2, 3, [0, 1]),           # Fewer thinking steps: step t with response step t.
])
def test_alignment_is_the_cosine_with_the_paired_response_step(unit, num_thinking,
                                                                num_response, pairing):
  thinking, response = _embeddings(0, num_thinking, 7), _embeddings(1, num_response, 7)
  expected = []
  for t in range(num_thinking):
    cos = _cos(thinking[t], response[pairing[t]])
    expected.append((1 + cos) / 2 if unit else cos)
  np.testing.assert_allclose(rf.alignment_reward(thinking, response, unit=unit), expected,
                             rtol=1e-12)


@pytest.mark.parametrize("unit", [False, True])
def test_coherence_is_the_positive_log_softmax_against_negatives(unit):
  problem, thinking, negatives = _embeddings(2, 6), _embeddings(3, 4, 6), _embeddings(4, 4, 5, 6)
  temperature = 0.3
  expected = []
  for t in range(4):
    previous = problem if t == 0 else thinking[t - 1]
    logits = [_cos(previous, thinking[t]) / temperature]
    logits += [_cos(previous, n) / temperature for n in negatives[t]]
    log_prob = logits[0] - np.log(np.sum(np.exp(logits)))
    expected.append(np.exp(log_prob) if unit else log_prob)
  np.testing.assert_allclose(
      rf.coherence_reward(problem, thinking, negatives, temperature=temperature, unit=unit),
      expected, rtol=1e-10)
  with pytest.raises(ValueError, match="temperature=0 must be > 0"):
    rf.coherence_reward(problem, thinking, negatives, temperature=0)


def test_negatives_never_come_from_the_pair_itself():
  owners = np.repeat(np.arange(5), 3)  # 5 trajectories of 3 steps.
  embeddings = np.arange(15, dtype=np.float64)[:, None] * np.ones((1, 2))
  rng = np.random.default_rng(0)
  for trajectory in range(5):
    drawn = rf.coherence_negatives(owners, embeddings, trajectory, 3, 40, rng)
    assert drawn.shape == (3, 40, 2)
    assert not np.any(owners[drawn[..., 0].astype(int)] == trajectory)
  with pytest.raises(ValueError, match="at least one other trajectory"):
    rf.coherence_negatives(np.zeros(3), embeddings[:3], 0, 2, 4, rng)


def test_combination_weights_each_term_by_its_softmax():
  terms = np.random.default_rng(5).normal(size=(3, 6))
  expected = [sum(np.exp(terms[k, t]) / np.exp(terms[:, t]).sum() * terms[k, t]
                  for k in range(3)) for t in range(6)]
  np.testing.assert_allclose(rf.combine(*terms), expected, rtol=1e-12)
  # Large terms do not overflow.
  np.testing.assert_allclose(rf.combine(np.array([800.0]), np.array([0.0])), [800.0])


def test_step_targets_lie_in_the_unit_interval_and_quality_is_checked():
  targets = rf.step_targets(_embeddings(6, 4), _embeddings(7, 3, 4), _embeddings(8, 2, 4),
                            _embeddings(9, 3, 6, 4), np.array([1.0, 0.0, 0.5]))
  assert set(targets) == {"alignment", "quality", "coherence", "r"}
  assert np.all((targets["r"] >= 0) & (targets["r"] <= 1))
  judge = lambda problem, before, step, response: len(before) / 2  # 0, 0.5, 1, 1.5
  np.testing.assert_array_equal(rf.quality_reward(judge, "x", ["a", "b", "c"], ["y"]),
                                [0.0, 0.5, 1.0])
  with pytest.raises(ValueError, match="outside"):
    rf.quality_reward(judge, "x", ["a", "b", "c", "d"], ["y"])


def test_lm_judge_is_the_renormalised_yes_probability_of_one_unpadded_forward():
  """Batched, left-padded judging against the model run on each prompt alone."""
  tokenizer = CharTokenizer()
  config = models.get_model_config("tiny", vocab_size=tokenizer.vocab_size, max_seq_len=256)
  params = models.init_params(config, jax.random.key(3))
  judge = rf.LMJudge(config, params, tokenizer, max_length=200, batch_size=4, yes="Y", no="N")
  pairs = [("2+3=?", ["First, 2+3=5.", "So the answer is #### 5."], ["2+3=5", "#### 5"]),
           ("7-1=?", ["First, 7-1=6.", "Again: 7-1=6.", "So the answer is #### 6."],
            ["7-1=6", "#### 6"])]
  yes, no = tokenizer.encode("Y")[0], tokenizer.encode("N")[0]
  expected = []
  for problem, thinking, response in pairs:
    for t, step in enumerate(thinking):
      ids = np.array([tokenizer.encode(judge.prompt(problem, thinking[:t], step, response))])
      logits = np.asarray(models.forward(config, params, ids)["logits"][0, -1], np.float64)
      expected.append(np.exp(logits[yes]) / (np.exp(logits[yes]) + np.exp(logits[no])))
  got = rf.quality_rewards(judge, pairs)  # 5 queries: a full batch and a padded one.
  assert [len(g) for g in got] == [2, 3]
  np.testing.assert_allclose(np.concatenate(got), expected, rtol=1e-4, atol=1e-6)
  # A plain callable judge goes step by step and gives the same.
  step_by_step = lambda *query: judge(*query)  # noqa: E731 (no `batch` attribute)
  np.testing.assert_allclose(np.concatenate(rf.quality_rewards(step_by_step, pairs)),
                             expected, rtol=1e-4, atol=1e-6)
  assert "Reasoning so far:\n(none)" in judge.prompt("x", [], "s", ["a"])
  with pytest.raises(ValueError, match="' Yes' is 4 tokens"):
    rf.LMJudge(config, params, tokenizer, max_length=200)
  with pytest.raises(ValueError, match="judge query 0 .* max_length is 20"):
    rf.LMJudge(config, params, tokenizer, max_length=20, yes="Y", no="N").batch(
        [("2+3=?", [], "First, 2+3=5.", ["2+3=5"])])


def test_template_reward_is_the_exact_success_rate_of_a_stub_policy():
  # The stub follows the template's digits: sample j of a problem answers template[j % len].
  def sample(problems, templates, n):
    return [[template[j % len(template)] for j in range(n)] for template in templates]
  solved = lambda problem, text: text == problem
  rates = rf.template_reward(["1122", "1", "2"], ["1", "1", "1"], sample, solved, num_samples=8)
  np.testing.assert_array_equal(rates, [0.5, 1.0, 0.0])
  with pytest.raises(ValueError, match="must return 3 texts"):
    rf.template_reward(["1"], ["1"], lambda p, t, n: [["1"] * 2], solved, num_samples=3)


def _pairs():
  pairs = []
  for i in range(4):
    pair = Trajectory(problem=f"{i}+{i}=?", steps=[f"think {j} of {i}" for j in range(1 + i % 3)],
                      response=[f"{i}+{i}={2 * i}", f"#### {2 * i}"])
    targets = np.linspace(0.1, 0.9, len(pair.steps))
    pairs.append(objective.reasonflux_example(pair, targets, final_target=(i % 2) * 0.8))
  return pairs


def _batch():
  from prm_jax.data.batching import collate_prm
  from prm_jax.data.tokenize import tokenize_stepwise
  from prm_jax.data.tokenizer import CharTokenizer
  tokenizer = CharTokenizer()
  return collate_prm([tokenize_stepwise(tokenizer, p, step_separator="\n") for p in _pairs()],
                     pad_id=0, max_length=64, max_steps=4)


def _reference_loss(scores, batch, lambda_step, lambda_final):
  """float64, pair by pair: lambda_step * mean over the pair's thinking steps + lambda_final *
  its final's squared error, each averaged over the pairs that have it."""
  step_terms, final_terms = [], []
  for row in range(len(scores)):
    count = int((batch["step_positions"][row] >= 0).sum())
    errors = (scores[row, :count] - batch["step_labels"][row, :count]) ** 2
    known = batch["step_mask"][row, :count]
    if known[:-1].any():
      step_terms.append(errors[:-1][known[:-1]].mean())
    if known[-1]:
      final_terms.append(errors[-1])
  return lambda_step * np.mean(step_terms) + lambda_final * np.mean(final_terms)


def test_example_lays_out_thinking_then_the_response_as_the_last_step():
  example = _pairs()[2]
  assert example.steps == ["think 0 of 2", "think 1 of 2", "think 2 of 2", "2+2=4\n\n#### 4"]
  np.testing.assert_allclose(example.labels, [0.1, 0.5, 0.9, 0.0])
  with pytest.raises(ValueError, match="2 step targets for 1 thinking steps"):
    objective.reasonflux_example(Trajectory("x", ["s"], response=["y"]), [0.1, 0.2], 0.5)
  with pytest.raises(ValueError, match="has no response"):
    objective.reasonflux_example(Trajectory("x", ["s"]), [0.1], 0.5)


def test_loss_and_gradient_match_the_float64_reference():
  batch = _batch()
  params = models.init_params(MODEL, jax.random.key(0))
  params["prm_head"]["kernel"] = params["prm_head"]["kernel"] * 30  # Spread the scores.
  lambdas = dict(lambda_step=0.7, lambda_final=1.3)
  loss_fn = objective.make_reasonflux_loss(MODEL, **lambdas)

  def step_scores(p):
    return models.forward(MODEL, p, batch["input_ids"], attention_mask=batch["attention_mask"],
                          step_positions=batch["step_positions"], lm_logits="none")["step_scores"]

  scores, vjp = jax.vjp(step_scores, params)
  scores64 = np.asarray(scores, np.float64)
  loss, metrics = jax.jit(loss_fn)(params, batch, None)
  np.testing.assert_allclose(loss, _reference_loss(scores64, batch, **lambdas), rtol=1e-5)
  assert metrics["num_finals"] == 4 and metrics["num_steps"] == 1 + 2 + 3 + 1
  # The gradient: the reference's d loss / d score, pulled back through the model.
  eps = 1e-6
  d_scores = np.zeros_like(scores64)
  for index in np.ndindex(*scores64.shape):
    bumped = scores64.copy()
    bumped[index] += eps
    d_scores[index] = (_reference_loss(bumped, batch, **lambdas)
                       - _reference_loss(scores64, batch, **lambdas)) / eps
  (expected,) = vjp(d_scores.astype(np.float32))
  grads = jax.grad(lambda p: loss_fn(p, batch, None)[0])(params)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-3, atol=1e-6),
               grads, expected)


def test_bad_weights_are_named():
  with pytest.raises(ValueError, match="lambda_step=0 and lambda_final=0"):
    objective.make_reasonflux_loss(MODEL, lambda_step=0, lambda_final=0)


def test_pair_score_and_metrics_against_their_definitions():
  scores = [np.array([0.2, 0.4, 0.9]), np.array([0.8, 0.1]), np.array([0.6, 0.7, 0.3, 0.5])]
  assert objective.pair_score(scores[0], alpha=0.5) == pytest.approx(0.3 + 0.45)
  truth = [[0.0, 1.0], [1.0], [1.0, 1.0, 0.0]]
  finals = [1.0, 0.0, 1.0]
  metrics = objective.reasonflux_metrics(scores, truth, finals)
  steps = np.array([0.2, 0.4, 0.8, 0.6, 0.7, 0.3])
  flat = np.array([0.0, 1.0, 1.0, 1.0, 1.0, 0.0])
  assert metrics["step_pearson"] == pytest.approx(np.corrcoef(steps, flat)[0, 1])
  # Positives 0.4, 0.8, 0.6, 0.7 against negatives 0.2, 0.3: every pair ordered.
  assert metrics["step_auroc"] == 1.0
  assert metrics["final_auroc"] == 1.0  # 0.9 and 0.5 above 0.1.


def test_sharded_step_on_8_devices_equals_the_1_device_step():
  batch = _batch()
  params = models.init_params(MODEL, jax.random.key(1))
  loss_fn = objective.make_reasonflux_loss(MODEL)
  results = {}
  for name, mesh in (("1", parallel.make_mesh(devices=jax.devices()[:1])),
                     ("8", parallel.make_mesh(data=2, fsdp=2, tensor=2))):
    tx = optax.sgd(1e-1)
    shardings = train.state_shardings(MODEL, tx, mesh)
    state = train.init_state_sharded(MODEL, tx, jax.random.PRNGKey(0), mesh, params=params)
    global_batch = parallel.make_global_batch(batch, mesh)
    step = train.jit_train_step(train.make_train_step(loss_fn, tx), shardings, global_batch, mesh)
    state, metrics = step(state, global_batch)
    results[name] = (jax.device_get(state.params), jax.device_get(metrics))
  (params1, metrics1), (params8, metrics8) = results["1"], results["8"]
  for name in ("loss", "step_mse", "final_mse", "grad_norm"):
    np.testing.assert_allclose(metrics8[name], metrics1[name], rtol=2e-5, atol=1e-7)
  assert metrics1["grad_norm"] > 0
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-8),
               params8, params1)
