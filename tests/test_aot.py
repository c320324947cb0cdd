"""Pod-scale configs without a pod: AOT-compile the qwen2_5_7b PRM train step for 64 devices."""

import json
import os
import subprocess
import sys

from prm_jax import models

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUDGET_BYTES = 16 * 2**30  # Per device, bf16 compute + full remat.


def test_qwen2_5_7b_prm_train_step_compiles_for_64_devices_within_budget():
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=64",
             JAX_PLATFORMS="cpu")
  command = [sys.executable, "-m", "prm_jax.aot", "--model", "qwen2_5_7b", "--data", "1",
             "--fsdp", "16", "--tensor", "4", "--batch", "64", "--seq", "2048",
             "--dtype", "bfloat16", "--remat", "full"]
  done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]
  report = json.loads(done.stdout.strip().splitlines()[-1])
  assert report["mesh"] == {"data": 1, "fsdp": 16, "tensor": 4}
  assert 0 < report["peak_bytes_per_device"] <= BUDGET_BYTES, report
  # Parameters + both Adam moments in fp32, split 64 ways: proof the state is sharded.
  config = models.get_model_config("qwen2_5_7b")
  state_bytes = 3 * 4 * (config.num_params() + config.hidden_size * 2 + 2)
  assert abs(report["argument"] - state_bytes / 64) < 0.01 * state_bytes / 64, report
  # The donated state is reused in place.
  assert report["alias"] >= 0.99 * state_bytes / 64, report


def test_qwen2_5_7b_grpo_step_with_reference_compiles_for_64_devices_within_budget():
  """Policy train step (GRPO loss, bf16 compute, full remat) and the frozen reference's
  log-prob pass, 64 rows of 512 prompt + 1536 completion tokens, on data=1 x fsdp=16 x
  tensor=4: both resident together within a TPU v5e chip's 16 GiB."""
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=64",
             JAX_PLATFORMS="cpu")
  command = [sys.executable, "-m", "prm_jax.aot", "--model", "qwen2_5_7b", "--data", "1",
             "--fsdp", "16", "--tensor", "4", "--batch", "64", "--seq", "2048",
             "--completion", "1536", "--dtype", "bfloat16", "--remat", "full",
             "--objective", "grpo"]
  done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]
  report = json.loads(done.stdout.strip().splitlines()[-1])
  assert report["objective"] == "grpo" and report["completion"] == 1536
  assert 0 < report["grpo_peak_bytes_per_device"] <= BUDGET_BYTES, report
  # The reference parameters (fp32) and the train state are sharded 64 ways.
  params = models.get_model_config("qwen2_5_7b").num_params()
  assert abs(report["reference_params_bytes"] - 4 * params / 64) < 0.01 * 4 * params / 64, report
  assert abs(report["state_bytes"] - 12 * params / 64) < 0.01 * 12 * params / 64, report
  assert report["alias"] >= 0.99 * report["state_bytes"], report  # The state is donated.
