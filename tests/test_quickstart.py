"""The main job end to end, through launch.py (`experiments/quickstart.py:smoke`): the
artefacts, the Best-of-N ordering, and an interrupted run finishing with the same results."""

import json
import os
import shutil
import signal
import struct
import subprocess
import time

import pytest

from tests.launch_helper import ROOT, launch, launch_command, launch_env

SMOKE = ("--config", os.path.join("experiments", "quickstart.py:smoke"))
METHODS = ("majority", "prm_vote", "prm_min", "prm_prod", "prm_last", "orm", "oracle", "random")
TIMINGS = ("wall_seconds", "labeling_seconds")  # The only entries a rerun may change.


def _run(workdir):
  return launch(*SMOKE, workdir=workdir)


def _kill_once_exists(workdir, path: str, timeout: float = 300):
  """Start the run; SIGKILL it as soon as `workdir/path` exists (a stage is underway)."""
  process = subprocess.Popen(launch_command(*SMOKE, workdir=workdir), stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, env=launch_env(), cwd=ROOT)
  deadline = time.monotonic() + timeout
  try:
    while not os.path.exists(os.path.join(workdir, path)):
      assert process.poll() is None, f"the run ended before {path} appeared"
      assert time.monotonic() < deadline, f"{path} did not appear in {timeout}s"
      time.sleep(0.05)
  finally:
    process.send_signal(signal.SIGKILL)
    process.wait()


def _results(workdir):
  with open(os.path.join(workdir, "results.json"), encoding="utf-8") as f:
    return json.load(f)


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("quickstart")
  start = time.perf_counter()
  done = _run(workdir)
  assert done.returncode == 0, done.stderr[-3000:]
  return workdir, done.stderr, time.perf_counter() - start


def test_smoke_run_writes_every_artefact(smoke_run):
  # No time bound: speed is the benchmarks' business (README, benchmarks/RESULTS.md). The
  # same smoke run took 100 s on the 2-core AMD EPYC VM and 130-185 s on the 2-core Intel
  # Xeon VM, so any bound here would fail on a slower or busier machine.
  workdir, log, seconds = smoke_run
  for stage in ("config.json", "tasks.json", "samples.json", "labels.json", "results.json",
                "results.md", "policy/metrics.jsonl", "prm/metrics.jsonl", "orm/metrics.jsonl"):
    assert os.path.isfile(workdir / stage), stage
  results = _results(workdir)
  ns = ["1", "2", "4", "8"]
  for method in METHODS:
    assert sorted(results["bon"][method], key=int) == ns, method
    assert all(0.0 <= results["bon"][method][n] <= 1.0 for n in ns), method
  assert 0.0 <= results["processbench_f1"] <= 1.0
  assert 0.5 <= results["mc_oracle_agreement"] <= 1.0
  assert results["labeling_tokens"] > 0 and results["labeling_rollouts"] > 0
  assert 0 < results["wall_seconds"] < seconds
  assert results["config"]["pipeline"] == "quickstart"
  with open(workdir / "results.md", encoding="utf-8") as f:
    table = f.read()
  assert "| majority vote |" in table and "| processbench_f1 |" in table
  with open(workdir / "bon_curve.png", "rb") as f:
    header = f.read(24)
  assert header[:8] == b"\x89PNG\r\n\x1a\n"
  width, height = struct.unpack(">II", header[16:24])
  assert width > 200 and height > 200
  # Progress is visible: training rate and ETA, sampling and rollout counts.
  for line in ("steps/s", "ETA", "sampling 8 per problem", "Monte Carlo rollouts"):
    assert line in log, line


def test_best_of_8_ordering_oracle_prm_random(smoke_run):
  bon = _results(smoke_run[0])["bon"]
  oracle, prm_best, random = bon["oracle"]["8"], bon["prm_min"]["8"], bon["random"]["8"]
  assert oracle >= prm_best >= random, bon
  assert oracle > random  # Not a degenerate policy (all right or all wrong).


def test_interrupted_run_finishes_with_the_same_results(smoke_run, tmp_path):
  # A run stopped mid-SFT: its first stage and the SFT checkpoint of step 300 (of 400), as
  # the smoke run wrote them (copied rather than re-trained: the suite's time; killing a
  # training stage is the next step). It resumes SFT, is SIGKILLed mid-PRM training (just
  # after a checkpoint), then runs to the end.
  workdir = smoke_run[0]
  shutil.copy(workdir / "tasks.json", tmp_path)
  shutil.copytree(workdir / "policy" / "checkpoints" / "300",
                  tmp_path / "policy" / "checkpoints" / "300")
  _kill_once_exists(tmp_path, os.path.join("prm", "checkpoints", "40"))
  with open(tmp_path / "policy" / "metrics.jsonl", encoding="utf-8") as f:
    assert [json.loads(line)["step"] for line in f] == [350, 400]  # Resumed at 300.
  assert not os.path.exists(tmp_path / "results.json")
  done = _run(tmp_path)
  assert done.returncode == 0, done.stderr[-3000:]
  assert "stage samples.json: done before" in done.stderr
  resumed, straight = _results(tmp_path), _results(workdir)
  for key in TIMINGS:
    del resumed[key], straight[key]
  assert resumed == straight
