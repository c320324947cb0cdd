"""The `reasonflux` pipeline end to end through launch.py (`experiments/reasonflux.py:smoke`):
every artefact, figures in range and consistent with the data they were read from, the
selections' composition recomputed from pairs.json, a rerun that skips finished stages,
and bad settings failing before any work."""

import json
import os

import numpy as np
import pytest

from prm_jax.data import Trajectory
from prm_jax.objectives.reasonflux import pair_score
from prm_jax.pipelines import reasonflux
from tests.launch_helper import launch

CONFIG = ("--config", os.path.join("experiments", "reasonflux.py:smoke"))


def _read(workdir, name):
  with open(os.path.join(workdir, name), encoding="utf-8") as f:
    return json.load(f)


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("reasonflux")
  run = launch(*CONFIG, workdir=workdir)
  assert run.returncode == 0, run.stderr[-3000:]
  return workdir


SMOKE_SELECTORS = ("random", "reasonflux", "oracle", "step_prm")  # experiments/reasonflux.py


def test_smoke_run_writes_every_artefact(smoke):
  for path in ("tasks.json", "pairs.json", "targets.json", "scores.json", "results.json",
               "results.md", "selection.png", "policy/metrics.jsonl",
               "reasonflux_prm/metrics.jsonl", "step_prm/metrics.jsonl",
               "step_prm_scores.json", "grpo/results.md", "grpo/rl_curves.png",
               *(f"grpo/grpo_{r}/results.json" for r in ("outcome", "mix")),
               *(f"student_{s}.json" for s in SMOKE_SELECTORS),
               *(f"student_{s}/metrics.jsonl" for s in SMOKE_SELECTORS)):
    assert os.path.isfile(smoke / path), path
  results = _read(smoke, "results.json")
  assert set(results["students"]) == set(SMOKE_SELECTORS)
  for name, student in results["students"].items():
    for metric in ("greedy_accuracy", "sampled_accuracy", "response_correct",
                   "trajectory_quality"):
      assert 0 <= student[metric] <= 1, (name, metric)
  assert set(results["bon"]) == set(reasonflux.BON_SELECTORS)
  assert all(0 <= b["accuracy"] <= 1 for b in results["bon"].values())
  assert results["template_tokens"] > 0
  with open(smoke / "results.md", encoding="utf-8") as f:
    report = f.read()
  assert "| reasonflux |" in report and "Best-of-4" in report and "| grpo_mix |" in report


def test_grpo_runs_use_their_reward(smoke):
  """Rule-only and mixed GRPO: the logged training reward is the outcome, resp. (1 - beta)
  outcome + beta times ReasonFlux-PRM's reward (`rollout_prm_reward`, logged in both runs)."""
  results = _read(smoke, "results.json")["grpo"]
  assert set(results["runs"]) == {"grpo_outcome", "grpo_mix"}
  for name, beta in (("grpo_outcome", 0.0), ("grpo_mix", 0.5)):
    run = results["runs"][name]
    assert run["steps"] == 4 and run["generated_tokens"] > 0
    assert 0 <= run["final"]["prm_reward"] <= 1
    records = [json.loads(line) for line in open(smoke / "grpo" / name / "metrics.jsonl")]
    train = [r for r in records if "train/rollout_reward" in r]
    assert len(train) == 4, name
    for r in train:
      assert r["train/rollout_reward"] == pytest.approx(
          (1 - beta) * r["train/rollout_outcome"] + beta * r["train/rollout_prm_reward"],
          abs=1e-5), name


def test_step_prm_scores_every_response(smoke):
  pairs, step_prm = _read(smoke, "pairs.json"), _read(smoke, "step_prm_scores.json")
  assert len(step_prm["pool"]) == len(pairs["pool"])
  assert [len(g) for g in step_prm["bon"]] == [len(g) for g in pairs["bon"]]
  assert all(0 <= v <= 1 for v in step_prm["pool"])


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
  pairs, scores, step_prm, results = (_read(smoke, n) for n in (
      "pairs.json", "scores.json", "step_prm_scores.json", "results.json"))
  pool = [Trajectory.from_dict(x) for x in pairs["pool"]]
  k = results["top_k"]
  for selector in ("oracle", "reasonflux", "step_prm"):
    keys = {"oracle": np.array([x.meta["trajectory_quality"] for x in pool]),
            "reasonflux": np.array([pair_score(s, 1.0) for s in scores["pool"]]),
            "step_prm": np.array(step_prm["pool"])}[selector]
    chosen = reasonflux.select(selector, pool, scores["pool"], step_prm["pool"], k, 1.0,
                               seed=0)
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
  run = launch(*CONFIG, workdir=smoke)
  assert run.returncode == 0, run.stderr[-3000:]
  assert "stage results.json: done before" in run.stderr
  assert _read(smoke, "results.json") == before


@pytest.mark.parametrize("override,message", [
    ("--config.selection.selectors=('random','best')", "unknown selector 'best'"),
    ("--config.reasonflux_prm.max_length=64", "reasonflux_prm.max_length=64 cannot hold a pair"),
    ("--config.selection.top_k=0", "selection.top_k=0 must be in"),
    ("--config.targets.negativez=3", "negativez"),
    ("--config.targets.judge=oracle", "targets.judge='oracle' is not one of"),
])
def test_bad_settings_fail_naming_the_field(override, message, tmp_path):
  run = launch(*CONFIG, override, workdir=tmp_path)
  assert run.returncode != 0
  assert message in run.stderr, run.stderr[-2000:]
  assert not os.path.exists(tmp_path / "policy")  # Failed before training anything.
