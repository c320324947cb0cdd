"""Quickstart: a step PRM trained from Monte Carlo labels beats majority voting (CPU, minutes).

    python launch.py --config experiments/quickstart.py --workdir runs/quickstart

A small policy learns arithmetic chains (`7+5*3-4=?`, left to right) from scratch on
solutions with realistic errors: rare on short chains, frequent and systematic on long
ones (a skipped step, a misapplied operator: the same wrong answer every time). It then
samples 16 solutions per held-out problem; a PRM initialised from the policy is trained
on Monte Carlo step labels of its own samples (k rollouts from every step prefix), an
outcome RM on the same samples' final answers.

Expected result (2-core CPU, about 8 minutes): `runs/quickstart/results.md` shows the
PRM-weighted vote at N=16 above plain majority vote and above the ORM (majority locks onto
the systematic wrong answer of long chains; the PRM sees the bad step), ProcessBench F1 of
the PRM >= 0.7, and the oracle above every method. Rerunning the command resumes and skips
finished stages. Variants: `--config.prm.labels=oracle` (exact labels) or `mc_hard`,
`--config.seed=1`, a pretrained policy with `--config.policy.init=hf --config.policy.path=DIR`.
"""

import ml_collections

from prm_jax import config_lib
from prm_jax.data import CharTokenizer


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  del arg
  config = ml_collections.ConfigDict()
  config.pipeline = "quickstart"
  config.seed = 0
  config.task = ml_collections.ConfigDict(dict(
      name="arithmetic", min_ops=2, max_ops=4, min_operand=1, max_operand=9, operators="+-*"))
  config.data = ml_collections.ConfigDict(dict(
      sft_problems=8000,
      # Error rate of SFT solutions with 1, 2, 3, 4+ reasoning steps, and the error kinds.
      error_rates=(0.05, 0.05, 0.2, 0.7), error_kinds=("skip_step", "wrong_operator"),
      prm_problems=384, prm_samples=4, test_problems=200))
  config.policy = ml_collections.ConfigDict(dict(
      init="scratch", path="",
      model=config_lib.model_section(
          "tiny", vocab_size=CharTokenizer().vocab_size, hidden_size=128, num_layers=4,
          num_heads=4, num_kv_heads=4, head_dim=32, mlp_dim=384, max_seq_len=128)))
  config.sft = ml_collections.ConfigDict(dict(
      batch_size=64, max_length=64,
      train=config_lib.train_section(total_steps=1200, learning_rate=3e-3, warmup_steps=100,
                                     weight_decay=0.01, log_every=100, checkpoint_every=400)))
  config.sampling = ml_collections.ConfigDict(dict(
      num_samples=16, temperature=1.0, top_p=0.0, max_new_tokens=48, prompts_per_batch=64))
  config.labeling = ml_collections.ConfigDict(dict(rollouts=4, rows_per_batch=512))
  reward_train = dict(total_steps=600, learning_rate=1e-3, warmup_steps=50, weight_decay=0.01,
                      log_every=100, checkpoint_every=300)
  config.prm = ml_collections.ConfigDict(dict(
      labels="mc_soft", batch_size=64, max_length=64, max_steps=8,
      train=config_lib.train_section(**reward_train)))
  config.orm = ml_collections.ConfigDict(dict(
      batch_size=64, max_length=64, max_steps=8,
      train=config_lib.train_section(**reward_train)))
  config.eval = ml_collections.ConfigDict(dict(
      ns=(1, 2, 4, 8, 16), draws=64, vote_aggregation="min", processbench_threshold=0.5))
  config.mesh = config_lib.mesh_section()
  config.distributed = config_lib.distributed_section()
  config.lock()
  return config
