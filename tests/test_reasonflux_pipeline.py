"""The `reasonflux` pipeline end to end through launch.py (`experiments/reasonflux.py:smoke`):
every artefact, figures in range and consistent with the data they were read from, the
selections' composition recomputed from pairs.json, a rerun that skips finished stages,
and bad settings failing before any work."""

import json
import os
import subprocess

import numpy as np
import pytest

from prm_jax.data import Trajectory
from prm_jax.objectives.reasonflux import pair_score
from prm_jax.pipelines import reasonflux
from tests.launch_helper import ROOT, launch_command, launch_env

CONFIG = ("--config", os.path.join("experiments", "reasonflux.py:smoke"))


def _launch(*args, workdir):
  return subprocess.run(launch_command(*args, workdir=workdir), capture_output=True, text=True,
                        env=launch_env(), cwd=ROOT, timeout=600)


def _read(workdir, name):
  with open(os.path.join(workdir, name), encoding="utf-8") as f:
    return json.load(f)


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("reasonflux")
  run = _launch(*CONFIG, workdir=workdir)
  assert run.returncode == 0, run.stderr[-3000:]
  return workdir


def test_smoke_run_writes_every_artefact(smoke):
  for path in ("tasks.json", "pairs.json", "targets.json", "scores.json", "results.json",
               "results.md", "selection.png", "policy/metrics.jsonl",
               "reasonflux_prm/metrics.jsonl",
               *(f"student_{s}.json" for s in reasonflux.SELECTORS),
               *(f"student_{s}/metrics.jsonl" for s in reasonflux.SELECTORS)):
    assert os.path.isfile(smoke / path), path
  results = _read(smoke, "results.json")
  assert set(results["students"]) == set(reasonflux.SELECTORS)
  for name, student in results["students"].items():
    for metric in ("greedy_accuracy", "sampled_accuracy", "response_correct",
                   "trajectory_quality"):
      assert 0 <= student[metric] <= 1, (name, metric)
  assert set(results["bon"]) == set(reasonflux.BON_SELECTORS)
  assert all(0 <= b["accuracy"] <= 1 for b in results["bon"].values())
  assert results["template_tokens"] > 0
  with open(smoke / "results.md", encoding="utf-8") as f:
    report = f.read()
  assert "| reasonflux |" in report and "Best-of-4" in report


def test_targets_and_scores_have_a_value_per_step(smoke):
  pairs, targets, scores = (_read(smoke, n) for n in ("pairs.json", "targets.json", "scores.json"))
  prm = [Trajectory.from_dict(x) for x in pairs["prm"]]
  for name in ("alignment", "quality", "coherence", "r"):
    assert [len(v) for v in targets["steps"][name]] == [len(x.steps) for x in prm], name
    assert all(0 <= v <= 1 for values in targets["steps"][name] for v in values), name
  # The checker's judge gives back the known step quality.
  assert targets["steps"]["quality"] == [x.meta["step_quality"] for x in prm]
  assert all(0 <= v <= 1 for v in targets["final"]) and len(targets["final"]) == len(prm)
  pool = [Trajectory.from_dict(x) for x in pairs["pool"]]
  assert [len(s) for s in scores["pool"]] == [len(x.steps) + 1 for x in pool]
  assert [len(g) for g in scores["bon"]] == [4] * len(pairs["bon"])


def test_selections_are_the_top_k_by_each_selector(smoke):
  """Recompute what each student was given from pairs.json and scores.json."""
  pairs, scores, results = (_read(smoke, n) for n in ("pairs.json", "scores.json",
                                                      "results.json"))
  pool = [Trajectory.from_dict(x) for x in pairs["pool"]]
  k = results["top_k"]
  for selector in ("oracle", "reasonflux"):
    if selector == "oracle":
      keys = np.array([x.meta["trajectory_quality"] for x in pool])
    else:
      keys = np.array([pair_score(s, 1.0) for s in scores["pool"]])
    chosen = reasonflux.select(selector, pool, scores["pool"], k, 1.0, seed=0)
    assert len(chosen) == k
    # Every kept pair scores at least as high as every dropped one.
    dropped = np.setdiff1d(np.arange(len(pool)), chosen)
    assert keys[chosen].min() >= keys[dropped].max()
    student = results["students"][selector]
    assert student["trajectory_quality"] == pytest.approx(
        np.mean([pool[i].meta["trajectory_quality"] for i in chosen]))
  assert results["students"]["oracle"]["trajectory_quality"] >= max(
      s["trajectory_quality"] for s in results["students"].values()) - 1e-12


def test_rerun_skips_finished_stages(smoke):
  before = _read(smoke, "results.json")
  run = _launch(*CONFIG, workdir=smoke)
  assert run.returncode == 0, run.stderr[-3000:]
  assert "stage results.json: done before" in run.stderr
  assert _read(smoke, "results.json") == before


@pytest.mark.parametrize("override,message", [
    ("--config.selection.selectors=('random','best')", "unknown selector 'best'"),
    ("--config.reasonflux_prm.max_length=64", "reasonflux_prm.max_length=64 cannot hold a pair"),
    ("--config.selection.top_k=0", "selection.top_k=0 must be in"),
    ("--config.targets.negativez=3", "negativez"),
])
def test_bad_settings_fail_naming_the_field(override, message, tmp_path):
  run = _launch(*CONFIG, override, workdir=tmp_path)
  assert run.returncode != 0
  assert message in run.stderr, run.stderr[-2000:]
  assert not os.path.exists(tmp_path / "policy")  # Failed before training anything.
