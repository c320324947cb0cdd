"""The EDU-PRM pipeline end to end through launch.py (`experiments/edu_prm.py:smoke`): every
artefact, the cost accounting, a rerun that reuses every stage, and bad budgets named."""

import json
import os
import re
import struct

import pytest

from experiments import edu_prm
from prm_jax.pipelines.edu_prm import check_budgets
from tests.launch_helper import launch

SMOKE = ("--config", os.path.join("experiments", "edu_prm.py:smoke"))


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("edu_prm")
  done = launch(*SMOKE, workdir=workdir)
  assert done.returncode == 0, done.stderr[-3000:]
  return workdir


def _json(path):
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def _png_size(path):
  with open(path, "rb") as f:
    header = f.read(24)
  assert header[:8] == b"\x89PNG\r\n\x1a\n"
  return struct.unpack(">II", header[16:24])


def test_smoke_run_writes_every_artefact(smoke_run):
  workdir = smoke_run
  for name in ("tasks.json", "samples.json", "labels_mc.json", "labels_edu_tau0.3_leaves4.json",
               "labels_pedu_tau0.3_leaves4_n128.json", "results.json", "results.md"):
    assert os.path.isfile(workdir / name), name
  results = _json(workdir / "results.json")
  assert set(results["methods"]) == {"mc_k4_n128", "edu_tau0.3_leaves4_n32",
                                     "pedu_tau0.3_leaves4_n128"}
  for name, method in results["methods"].items():
    assert os.path.isfile(workdir / "prms" / name / "metrics.jsonl"), name
    assert method["labeling_tokens"] > 0 and method["train_trajectories"] > 0
    for m in ("prm_vote", "prm_min", "majority", "oracle", "random"):
      assert 0 <= method["bon"][m]["8"] <= 1
    assert method["step_auroc"] is None or 0 <= method["step_auroc"] <= 1
  tt = results["test_time"]
  assert set(tt["edu"]["0.3"]) == {"4", "8"}
  for by_n in tt["edu"].values():
    for n, result in by_n.items():
      assert 1 <= result["leaves"] <= int(n) and result["tokens"] > 0
  assert sorted(tt["ht"]["tokens"], key=int) == ["1", "2", "4", "8"]
  for name in ("labeling_curve.png", "test_time.png"):
    width, height = _png_size(workdir / name)
    assert width > 200 and height > 200
  with open(workdir / "results.md", encoding="utf-8") as f:
    assert "| mc_k4_n128 |" in f.read()


def test_labeling_tokens_are_the_generated_tokens(smoke_run):
  results = _json(smoke_run / "results.json")
  samples = _json(smoke_run / "samples.json")["prm"]["samples"]
  mc = _json(smoke_run / "labels_mc.json")
  # Monte Carlo: the labelled samples themselves plus their k = 4 rollouts per step.
  expected = sum(s["tokens"] for s in samples[:128]) + sum(
      sum(lengths) for per_sample in mc["rollout_tokens"][:128] for lengths in per_sample)
  assert results["methods"]["mc_k4_n128"]["labeling_tokens"] == expected
  # EDU: each tree's distinct tokens; P-EDU adds its pruner's (the EDU budget's) cost.
  trees = _json(smoke_run / "labels_edu_tau0.3_leaves4.json")["trees"]
  edu_tokens = sum(t["generated_tokens"] for t in trees[:32])
  assert results["methods"]["edu_tau0.3_leaves4_n32"]["labeling_tokens"] == edu_tokens
  pruned = _json(smoke_run / "labels_pedu_tau0.3_leaves4_n128.json")["trees"]
  assert len(pruned) == 128 - 32
  assert results["methods"]["pedu_tau0.3_leaves4_n128"]["labeling_tokens"] == edu_tokens + sum(
      t["generated_tokens"] for t in pruned)
  pedu = results["methods"]["pedu_tau0.3_leaves4_n128"]
  assert pedu["pruned_children"] == sum(t["pruned"] for t in pruned)
  for tree in trees:
    assert tree["generated_tokens"] <= sum(len(leaf["tokens"]) for leaf in tree["leaves"])
    assert len(tree["leaves"]) == tree["anchors"] + 1 <= 4


def test_rerun_reuses_every_stage(smoke_run):
  before = _json(smoke_run / "results.json")
  done = launch(*SMOKE, workdir=smoke_run)
  assert done.returncode == 0, done.stderr[-3000:]
  assert "stage results.json: done before" in done.stderr
  assert _json(smoke_run / "results.json") == before


@pytest.mark.parametrize("override,message", [
    ("--config.mc.budgets=((8,128),)", r"mc.budgets=.*every k must be in \[1, "
                                       r"labeling.rollouts=4\]"),
    ("--config.edu.budgets=((0.3,4,5000),)", r"edu.budgets=.*every n must be in \[1, "
                                             r"data.prm_problems=384\]"),
    ("--config.p_edu.pruner=3", "p_edu.pruner=3: must index edu.budgets"),
    ("--config.edu.min_gap=0", r"EduConfig.min_gap=0: must be an int >= 1"),
    ("--config.test_time.ns=(4,16)", r"test_time.ns=\(4, 16\): need values in \[1, "
                                     r"test_time.samples=8\]"),
])
def test_bad_budgets_fail_with_one_line(tmp_path, override, message):
  done = launch(*SMOKE, override, workdir=tmp_path)
  assert done.returncode == 1
  last = done.stderr.strip().splitlines()[-1]
  assert last.startswith("launch.py: error: ")
  assert re.search(message, last), last
  assert not os.path.exists(tmp_path / "tasks.json")  # Nothing was done.


@pytest.mark.parametrize("variant", ["", "smoke", "gsm8k"])
def test_variants_have_consistent_budgets(variant):
  config = edu_prm.get_config(variant)
  check_budgets(config)
  assert config.pipeline == "edu_prm" and "seed" in config
  assert edu_prm.get_config("smollm2").pipeline == "edu_profile"
