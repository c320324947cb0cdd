"""Quickstart: a step PRM trained from Monte Carlo labels beats majority voting (CPU, minutes).

    python launch.py --config experiments/quickstart.py --workdir runs/quickstart
    python launch.py --config experiments/quickstart.py:smoke --workdir runs/smoke  # ~2 min

A small policy (a 0.8M-parameter Llama over characters) learns arithmetic chains
(`7+5-3+4=?`, left to right, one step per operation) from scratch, on solutions that
carry a systematic misconception at a rate that grows with the chain length: `a-b`
worked out as `b-a` at the first subtraction (5% of 2-operation solutions, 35% of 3, 80%
of 4). It then samples 16 solutions per held-out problem and one per PRM-training problem;
a PRM initialised from the policy is trained on soft Monte Carlo step labels of those
samples (4 rollouts from every step prefix, Math-Shepherd), and an outcome RM on the same
samples' final answers.

Expected result (2-core CPU, about 5 minutes; `benchmarks/RESULTS.md` has 3 seeds):
`runs/quickstart/results.md` shows a policy right on about 60% of samples, the
PRM-weighted vote at N=16 well above plain majority vote (which locks onto the
misconception's answer on long chains) and above the ORM, ProcessBench F1 of the PRM
>= 0.7, and the oracle above every method. Rerunning the command resumes and skips
finished stages.

Variants: `--config.prm.labels=oracle` (exact labels) or `mc_hard`; `--config.seed=1`;
harder data: `--config.task.operators=+-*`, or every error kind:
`"--config.data.error_kinds=('slip','misread','skip_step','wrong_operator')"`; a pretrained
policy: `--config.policy.init=hf --config.policy.path=DIR` (or `gguf` and a `.gguf` file).
`:smoke` is a reduced run (2-operation chains, less data and training, N up to 8) that
checks the machinery end to end (`tests/test_quickstart.py`), not the result.

`:gsm8k` is the same pipeline on GSM8K-format word problems (steps are lines, checked by
their `<<a*b=c>>` calculator annotations, answers compared as numbers) with a pretrained
policy; name the files and the policy (a GPU-sized run: ~0.1 s per sampled token on CPU):

    python launch.py --config experiments/quickstart.py:gsm8k --workdir runs/gsm8k \
        --config.task.train_path=gsm8k/train.jsonl --config.task.test_path=gsm8k/test.jsonl \
        --config.policy.path=SmolLM2-135M-Instruct.Q4_1.gguf
"""

import ml_collections

from prm_jax import config_lib
from prm_jax.data import CharTokenizer


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  if arg not in (None, "", "smoke", "gsm8k"):
    raise ValueError(f"experiments/quickstart.py takes '', 'smoke' or 'gsm8k', got {arg!r}")
  if arg == "gsm8k":
    return _gsm8k(get_config())
  smoke = arg == "smoke"
  config = ml_collections.ConfigDict()
  config.pipeline = "quickstart"
  config.seed = 0
  config.task = ml_collections.ConfigDict(dict(
      name="arithmetic", min_ops=2, max_ops=2 if smoke else 4, min_operand=1, max_operand=9,
      operators="+-"))
  config.data = ml_collections.ConfigDict(dict(
      sft_problems=2000 if smoke else 8000,
      # Error rate of SFT solutions with 1, 2, 3, 4+ operations, and the error kinds
      # (`prm_jax.data.tasks.ERROR_KINDS`); a solution carries at most one error.
      error_rates=(0.6,) if smoke else (0.05, 0.05, 0.35, 0.8),
      error_kinds=("wrong_operator",), prm_problems=384 if smoke else 1536, prm_samples=1,
      test_problems=32 if smoke else 200))
  config.policy = ml_collections.ConfigDict(dict(
      init="scratch", path="",
      # remat="full" is faster on CPU (smaller working set); see benchmarks/RESULTS.md.
      model=config_lib.model_section(
          "tiny", vocab_size=CharTokenizer().vocab_size, hidden_size=128, num_layers=4,
          num_heads=4, num_kv_heads=4, head_dim=32, mlp_dim=384, max_seq_len=128,
          remat="full")))
  config.sft = ml_collections.ConfigDict(dict(
      batch_size=64, max_length=40 if smoke else 64,
      train=config_lib.train_section(
          total_steps=400 if smoke else 800, learning_rate=3e-3, warmup_steps=30 if smoke else 100,
          weight_decay=0.01, log_every=50 if smoke else 100,
          checkpoint_every=100 if smoke else 400)))
  config.sampling = ml_collections.ConfigDict(dict(
      num_samples=8 if smoke else 16, temperature=1.0, top_p=0.0,
      max_new_tokens=32 if smoke else 48,
      prompts_per_batch=64))
  config.labeling = ml_collections.ConfigDict(dict(rollouts=4, rows_per_batch=512))
  reward_train = dict(total_steps=80 if smoke else 300, learning_rate=2e-3 if smoke else 1e-3,
                      warmup_steps=10 if smoke else 30, weight_decay=0.01,
                      log_every=20 if smoke else 100, checkpoint_every=40 if smoke else 150)
  config.prm = ml_collections.ConfigDict(dict(
      # max_length must hold the longest prompt plus sampling.max_new_tokens (checked);
      # the number of steps per batch row is the most any sample has.
      labels="mc_soft", batch_size=64, max_length=48 if smoke else 64,
      train=config_lib.train_section(**reward_train)))
  config.orm = ml_collections.ConfigDict(dict(
      batch_size=64, max_length=48 if smoke else 64,
      train=config_lib.train_section(**reward_train)))
  config.eval = ml_collections.ConfigDict(dict(
      ns=(1, 2, 4, 8) if smoke else (1, 2, 4, 8, 16), draws=64, vote_aggregation="min",
      # "calibrate": chosen on the PRM's training samples (see `_processbench`), or a number.
      processbench_threshold="calibrate"))
  config.mesh = config_lib.mesh_section()
  config.distributed = config_lib.distributed_section()
  config.lock()
  return config


def shrink_for_machinery(config: ml_collections.ConfigDict, prm: bool = True) -> None:
  """The `:smoke` of a pipeline built on these sections that checks its machinery downstream
  of the SFT policy, not the policy's quality (`experiments/grpo.py`, `reasonflux.py`,
  `test_time_search.py`): few problems, 60 SFT steps, and (`prm`) a 10-step step PRM from
  2 rollouts per step. The quickstart's own `:smoke` keeps a policy good enough for its
  Best-of-N ordering."""
  config.data.update(sft_problems=500, prm_problems=32, test_problems=16)
  config.sft.train.update(total_steps=60, warmup_steps=10, log_every=20, checkpoint_every=30)
  if prm:
    config.labeling.update(rollouts=2)
    config.prm.train.update(total_steps=10, warmup_steps=2, log_every=5, checkpoint_every=10)


def _gsm8k(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The quickstart on GSM8K-format files with a pretrained policy (no errors injected:
  free text has no exact error to inject; the policy's own mistakes are the errors)."""
  with config.unlocked():
    config.task = ml_collections.ConfigDict(dict(name="gsm8k", train_path="", test_path=""))
    config.data.update(sft_problems=2000, error_rates=(0.0,), prm_problems=500,
                       test_problems=200)
    config.policy.update(init="gguf", path="")
    # The longest GSM8K train example (prompt, solution, EOS) is 541 SmolLM2 tokens.
    config.sft.update(batch_size=16, max_length=576)
    config.sft.train.update(total_steps=200, learning_rate=1e-5, warmup_steps=20,
                            checkpoint_every=100, log_every=10)
    config.sampling.update(max_new_tokens=256, prompts_per_batch=16)
    config.labeling.update(rows_per_batch=64)
    for name in ("prm", "orm"):
      config[name].update(batch_size=16, max_length=640)
      config[name].train.update(total_steps=300, learning_rate=2e-5, log_every=10)
  config.lock()
  return config
