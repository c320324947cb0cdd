"""Monte Carlo step labels: batched bookkeeping equals one-rollout-at-a-time sampling."""

import jax
import numpy as np
import pytest

from prm_jax import models, sampling
from prm_jax.data import CharTokenizer, Trajectory, tokenize_stepwise
from prm_jax.labeling import monte_carlo_labels

TOKENIZER = CharTokenizer()
TRAJECTORIES = [
    Trajectory(problem="7+5*3=?", steps=["7+5=12", "12*3=36", "#### 36"], answer="36"),
    Trajectory(problem="9-4=?", steps=["9-4=5", "#### 5"], answer="5"),
    Trajectory(problem="2*3+1-4=?", steps=["2*3=6", "6+1=7", "7-4=3", "#### 3"], answer="3"),
]


def _is_correct(index: int, text: str) -> bool:
  # Any deterministic function of the text will do: what matters is that the labels
  # aggregate exactly the rollouts the reference draws. Final answers: the real check.
  if text.endswith(f"#### {TRAJECTORIES[index].answer}\n"):
    return True
  return text.count("1") % 2 == 0


@pytest.fixture(scope="module")
def model():
  config = models.get_model_config("tiny", vocab_size=TOKENIZER.vocab_size)
  return config, models.init_params(config, jax.random.key(0))


def test_labels_equal_rollouts_sampled_one_at_a_time(model):
  config, params = model
  k, rng = 3, jax.random.key(42)
  labels = monte_carlo_labels(config, params, TOKENIZER, TRAJECTORIES, _is_correct,
                              rollouts_per_step=k, max_new_tokens=12, rng=rng,
                              rows_per_batch=2 * k)  # Small batches: rows span several.
  tokens = 0
  for m, trajectory in enumerate(TRAJECTORIES):
    encoded = tokenize_stepwise(TOKENIZER, trajectory)
    prompt = np.asarray(encoded["input_ids"])[None]
    for s in range(len(trajectory.steps) - 1):
      hits = 0
      for j in range(k):
        key = jax.random.fold_in(jax.random.fold_in(jax.random.fold_in(rng, m), s), j)
        out = sampling.continue_prefixes(
            config, params, prompt, sources=[0], prefix_lengths=[encoded["step_ends"][s] + 1],
            max_new_tokens=12, temperature=1.0, stop_tokens=(TOKENIZER.eos_id,),
            pad_id=TOKENIZER.pad_id, rng=key[None])
        length = int(out["lengths"][0])
        tokens += length
        rollout = [int(t) for t in out["tokens"][0, :length] if t != TOKENIZER.eos_id]
        text = "".join(step + "\n" for step in trajectory.steps[:s + 1])
        hits += _is_correct(m, text + TOKENIZER.decode(rollout))
      assert labels.successes[m][s] == hits, (m, s)
    # The final answer step is the trajectory's own outcome, without rollouts.
    assert labels.successes[m][-1] == k
  assert labels.generated_tokens == tokens
  assert labels.rollouts == k * sum(len(t.steps) - 1 for t in TRAJECTORIES)
  for soft, hard, hits in zip(labels.soft, labels.hard, labels.successes):
    assert soft == [h / k for h in hits] and hard == [float(h > 0) for h in hits]


def test_rows_per_batch_must_be_a_multiple_of_k(model):
  config, params = model
  with pytest.raises(ValueError, match="rows_per_batch=5 must be a positive multiple of "
                                       "rollouts_per_step=2"):
    monte_carlo_labels(config, params, TOKENIZER, TRAJECTORIES, _is_correct,
                       rollouts_per_step=2, max_new_tokens=4, rng=jax.random.key(0),
                       rows_per_batch=5)
