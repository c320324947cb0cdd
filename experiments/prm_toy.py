"""Toy PRM: a tiny Llama learns the step labels of a separable synthetic set.

    python launch.py --config experiments/prm_toy.py --workdir runs/prm_toy
    python launch.py --config experiments/prm_toy.py:soft --workdir runs/prm_toy_soft

Expected result (CPU, under a minute): the last `eval/...` line of
`runs/prm_toy/metrics.jsonl` has `eval/step_accuracy` >= 0.95 and `eval/auroc` >= 0.99
(the labels are a function of the prefix, see `prm_jax.pipelines.toy_data`). `:soft`
trains on soft labels (Monte Carlo-like fractions) with the same expected accuracy.
Running the command again with the same workdir resumes (or, when finished, does
nothing); any field can be overridden, e.g. `--config.train.learning_rate=1e-3`.
"""

import ml_collections

from prm_jax import config_lib


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  if arg not in (None, "", "hard", "soft"):
    raise ValueError(f"experiments/prm_toy.py takes 'hard' or 'soft', got {arg!r}")
  config = ml_collections.ConfigDict()
  config.pipeline = "prm_train"
  config.model = config_lib.model_section("tiny", max_seq_len=64)
  config.train = config_lib.train_section(
      total_steps=300, learning_rate=3e-3, warmup_steps=30, weight_decay=0.01,
      log_every=25, eval_every=100, checkpoint_every=100)
  config.mesh = config_lib.mesh_section()
  config.distributed = config_lib.distributed_section()
  config.data = ml_collections.ConfigDict(dict(
      name="toy_separable", num_train=4096, num_eval=512, seq_len=48, max_steps=6,
      step_len=5, prompt_len=4, soft_labels=arg == "soft", seed=0, batch_size=32,
      eval_batch_size=128))
  config.lock()
  return config
