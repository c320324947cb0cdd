"""The test-time search pipeline end to end through launch.py
(`experiments/test_time_search.py:smoke`): every artefact, Best-of-N's cost recomputed from
the samples, a rerun that reuses every stage, and bad settings named before any work."""

import os
import re

import numpy as np
import pytest

from experiments import test_time_search
from prm_jax import files
from prm_jax.pipelines.test_time_search import check_settings
from tests.launch_helper import launch

SMOKE = ("--config", os.path.join("experiments", "test_time_search.py:smoke"))


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("search")
  done = launch(*SMOKE, workdir=workdir)
  assert done.returncode == 0, done.stderr[-3000:]
  return workdir


def test_smoke_run_writes_every_artefact_and_counts_cost(smoke_run):
  for name in ("tasks.json", "samples.json", "labels.json", "search_bon.json",
               "search_beam.json", "search_dvts.json", "search_edu.json", "results.json",
               "results.md", "search_curve.png"):
    assert os.path.isfile(smoke_run / name), name
  config = test_time_search.get_config("smoke")
  results = files.read_json(smoke_run / "results.json")
  assert set(results["methods"]) == {"bon", "beam", "dvts", "edu"}
  samples = files.read_json(smoke_run / "samples.json")["test"]["samples"]
  n = config.search.ns[0]
  tokens = [sum(s["tokens"] for s in samples[p * n:(p + 1) * n]) for p in range(len(samples) // n)]
  bon = results["methods"]["bon"][str(n)]
  assert bon["tokens"] == pytest.approx(np.mean(tokens)) and bon["prm_calls"] == n
  s = config.search
  for method in ("beam", "dvts"):
    r = results["methods"][method][str(n)]
    # At least the first depth's n children; at most n children per depth, every one scored.
    assert n <= r["tokens"] <= n * s.max_steps * s.max_step_tokens
    assert 0 < r["prm_calls"] <= n * s.max_steps
    assert all(0 <= r["accuracy"][rule] <= 1 for rule in ("vote", "best"))
    # Best-of-N measured at one N only here: the search's tokens are compared with it.
    equal = results["at_equal_tokens"][method][str(n)]
    assert equal["bon"]["vote"] == bon["accuracy"]["vote"]
    assert equal["inside"] == (r["tokens"] == bon["tokens"])
  # EDU trees: at most N leaves, one PRM call each, every leaf at least one token and at
  # most max_new_tokens (a child shares its parent's prefix: never more than that).
  edu = results["methods"]["edu"][str(n)]
  assert 1 <= edu["leaves"] <= n and edu["prm_calls"] == edu["leaves"]
  assert edu["leaves"] <= edu["tokens"] <= edu["leaves"] * config.sampling.max_new_tokens
  assert 0 <= edu["root_accuracy"] <= 1
  first_table = (smoke_run / "results.md").read_text().split("\n\n")[1].splitlines()
  assert [line.split(" | ")[0] for line in first_table[2:]] == [
      "| Best-of-N", "| beam search", "| DVTS", "| EDU trees"]


def test_rerun_reuses_every_stage(smoke_run):
  before = files.read_json(smoke_run / "results.json")
  done = launch(*SMOKE, workdir=smoke_run)
  assert done.returncode == 0, done.stderr[-3000:]
  assert "stage results.json: done before" in done.stderr
  assert files.read_json(smoke_run / "results.json") == before


@pytest.mark.parametrize("override,message", [
    ("--config.search.ns=(5,)", r"N=5 is not divisible by search.width=2"),
    ("--config.search.methods=('mcts',)", r"search.methods has \['mcts'\]"),
    ("--config.edu.tau=-1.0", r"EduConfig.tau=-1.0: must be > 0"),
    ("--config.sft.max_length=20",
     r"sft.max_length=20 cannot hold SFT example 0 .*: \d+ tokens"),
    ("--config.search.max_steps=40", r"is \d+ > the model's max_seq_len=128"),
])
def test_bad_settings_fail_with_one_line(tmp_path, override, message):
  done = launch(*SMOKE, override, workdir=tmp_path)
  assert done.returncode == 1
  last = done.stderr.strip().splitlines()[-1]
  assert last.startswith("launch.py: error: ") and re.search(message, last), last
  assert not os.path.exists(tmp_path / "policy")  # Nothing was trained.


@pytest.mark.parametrize("variant", ["", "smoke", "smollm2"])
def test_variants_are_consistent(variant):
  config = test_time_search.get_config(variant)
  check_settings(config)
  assert config.pipeline == "test_time_search" and "seed" in config
