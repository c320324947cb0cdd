"""The `policy_rl` pipeline end to end through launch.py: `experiments/grpo.py:smoke`, then
`experiments/online_dpo.py:smoke` in the same workdir (reusing its stages); artefacts, the
hacking monitor in the metrics and the report, and bad settings failing in one line."""

import json
import os
import struct

import pytest

from prm_jax import metric_writer
from tests.launch_helper import launch

GRPO = ("--config", os.path.join("experiments", "grpo.py:smoke"))
DPO = ("--config", os.path.join("experiments", "online_dpo.py:smoke"))
MONITOR = ("rollout_prm_reward", "rollout_outcome", "rollout_step_accuracy", "rollout_prm_gap",
           "rollout_length", "rollout_entropy")


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("policy_rl")
  grpo = launch(*GRPO, workdir=workdir)
  assert grpo.returncode == 0, grpo.stderr[-3000:]
  dpo = launch(*DPO, workdir=workdir)  # Reuses GRPO's compiled programs (launch_helper).
  assert dpo.returncode == 0, dpo.stderr[-3000:]
  return workdir, grpo.stderr, dpo.stderr


def test_grpo_and_online_dpo_runs_write_every_artefact(smoke):
  workdir, _, dpo_log = smoke
  for path in ("tasks.json", "rl_problems.json", "prm_samples.json", "labels.json",
               "policy_eval.json", "results.json", "results.md", "policy/metrics.jsonl",
               "prm/metrics.jsonl", "grpo_mix_b0.5/results.json", "dpo_prm/results.json",
               "dpo_prm/iter_0/metrics.jsonl", "dpo_prm/iter_1/metrics.jsonl"):
    assert os.path.isfile(workdir / path), path
  assert "stage prm_samples.json: done before" in dpo_log  # Stages shared by the runs.
  with open(workdir / "results.json", encoding="utf-8") as f:
    results = json.load(f)
  assert sorted(results["runs"]) == ["dpo_prm", "grpo_mix_b0.5"]
  for name, run in results["runs"].items():
    test = run["curves"]["test"]
    assert test["step"] == [2, 4], name  # GRPO: 4 steps; DPO: 2 iterations of 2.
    for metric in ("sampled_accuracy", "greedy_accuracy", "process_correct", "prm_reward",
                   "prm_gap"):
      assert all(0 <= v <= 1 for v in test[metric]) or metric == "prm_gap", (name, metric)
    assert run["generated_tokens"] > 0 and run["wall_seconds"] > 0
    assert run["curves"]["train"]["step"] == [1, 2, 3, 4], name
  for metric in MONITOR:
    assert metric in results["runs"]["grpo_mix_b0.5"]["curves"]["train"], metric
  records = metric_writer.read_metrics(str(workdir / "grpo_mix_b0.5"))
  assert all(0 <= r["train/rollout_prm_reward"] <= 1 for r in records if "train/loss" in r)
  assert records[0]["train/kl"] == pytest.approx(0, abs=1e-6)  # Step 1: policy = reference.
  with open(workdir / "results.md", encoding="utf-8") as f:
    table = f.read()
  assert "| grpo_mix_b0.5 | 4 |" in table and "| dpo_prm | 4 |" in table
  with open(workdir / "rl_curves.png", "rb") as f:
    header = f.read(24)
  assert header[:8] == b"\x89PNG\r\n\x1a\n"
  assert min(struct.unpack(">II", header[16:24])) > 300


@pytest.mark.parametrize("override,message", [
    ("--config.reward.beta=1.5", "reward.beta=1.5 must be in [0, 1]"),
    ("--config.rollout.group_size=1", "rollout.group_size must be >= 2"),
    ("--config.reward.name=prm_stepz", "reward.name='prm_stepz' is not a registered reward"),
    ("--config.rl.name=prm", "rl.name='prm' is not a usable run directory"),
])
def test_bad_settings_fail_before_any_work_naming_the_field(override, message, tmp_path):
  done = launch(*GRPO, override, workdir=tmp_path)
  assert done.returncode == 1
  assert done.stderr.splitlines()[-1].startswith(f"launch.py: error: {message}"), done.stderr
  assert not os.path.exists(tmp_path / "tasks.json")
