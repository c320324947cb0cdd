"""ProcessBench as published: the per-subset and average F1 against hand-computed values, the
release's JSON-list files read with record-located errors, CHAMP's annotations converted
(checked by hand on real records), and the `processbench` pipeline end to end through
launch.py (`experiments/processbench.py:smoke`) with its bad-input errors."""

import importlib.util
import json
import os

import jax
import numpy as np
import pytest

from prm_jax import checkpoint, config_lib, models
from prm_jax.data import formats
from prm_jax.data.formats import champ, processbench as processbench_format
from prm_jax.data.jsonl import DataFormatError
from prm_jax.evaluate import benchmark_f1, earliest_error, pad_steps
from experiments import processbench as experiment
from prm_jax.pipelines import processbench
from tests.launch_helper import launch

SMOKE = ("--config", os.path.join("experiments", "processbench.py:smoke"))
needs_champ = pytest.mark.skipif(importlib.util.find_spec("champ_dataset") is None,
                                 reason="champ-dataset is not installed")

# ----------------------------------------------------------------------------- the metric

# Two subsets with the earliest error each sample's steps predict at 0.5 worked out by hand:
#   A: a1 flags step 1 = truth; a2 none = truth; a3 flags step 0, truth 1; a4 none = truth
#      -> error acc. 1/2, correct acc. 2/2, F1 2/3
#   B: b1 flags step 0 = truth; b2 flags step 1, truth -1; b3 none, truth 1
#      -> error acc. 1/2, correct acc. 0/1, F1 0
SCORES = {"A": [[0.9, 0.2, 0.8], [0.9, 0.9], [0.4, 0.9], [0.6, 0.7]],
          "B": [[0.3], [0.7, 0.45], [0.55, 0.52, 0.9]]}
TRUTH = {"A": [1, -1, 1, -1], "B": [0, -1, 1]}
GRID = (0.35, 0.5, 0.65)


def test_benchmark_f1_at_the_official_threshold():
  report = benchmark_f1(SCORES, TRUTH, grid=GRID)
  a, b = report["subsets"]["A"], report["subsets"]["B"]
  assert (a["n"], a["num_error"], a["num_correct"]) == (4, 2, 2)
  assert (b["n"], b["num_error"], b["num_correct"]) == (3, 2, 1)
  assert a["official"] == pytest.approx(
      {"error_accuracy": 0.5, "correct_accuracy": 1.0, "f1": 2 / 3})
  assert b["official"] == pytest.approx(
      {"error_accuracy": 0.5, "correct_accuracy": 0.0, "f1": 0.0})
  assert report["average_f1"]["official"] == pytest.approx(1 / 3)


def test_benchmark_f1_calibrates_leaving_the_reported_subset_out():
  """A's threshold is chosen on B: F1 on B is 2/3 at 0.35, 0 at 0.5 and at 0.65 -> 0.35,
  where A gets error acc. 1/2 (a3 is missed), correct acc. 1, F1 2/3. B's is chosen on A:
  F1 2/3 at 0.35 and 0.5 (a tie: the smaller wins), 1/2 at 0.65 -> 0.35, where B gets
  b1 and b2 right and misses b3: F1 2/3."""
  report = benchmark_f1(SCORES, TRUTH, grid=GRID)
  for name in ("A", "B"):
    assert report["subsets"][name]["calibrated"] == pytest.approx(
        {"threshold": 0.35, "error_accuracy": 0.5, "correct_accuracy": 1.0, "f1": 2 / 3})
  assert report["average_f1"]["calibrated"] == pytest.approx(2 / 3)
  # The same threshold from a separate calibration set (B's samples): A's row is unchanged.
  given = benchmark_f1({"A": SCORES["A"]}, {"A": TRUTH["A"]}, grid=GRID,
                       calibration=(SCORES["B"], TRUTH["B"]))
  assert given["subsets"]["A"]["calibrated"] == report["subsets"]["A"]["calibrated"]


def test_benchmark_f1_without_calibration_data():
  alone = benchmark_f1({"A": SCORES["A"]}, {"A": TRUTH["A"]}, grid=GRID)
  assert alone["subsets"]["A"]["calibrated"] is None
  assert np.isnan(alone["average_f1"]["calibrated"])
  # Calibration samples without a correct one: F1 is undefined at every threshold.
  lopsided = benchmark_f1({"A": SCORES["A"]}, {"A": TRUTH["A"]}, grid=GRID,
                          calibration=([[0.3]], [0]))
  assert lopsided["subsets"]["A"]["calibrated"] is None


def test_benchmark_f1_agrees_with_the_earliest_error_rule():
  rng = np.random.default_rng(0)
  scores = {name: [rng.random(rng.integers(1, 6)) for _ in range(30)] for name in "xyz"}
  truth = {name: [int(rng.integers(-1, len(s))) for s in rows] for name, rows in scores.items()}
  report = benchmark_f1(scores, truth)
  for name, rows in scores.items():
    predicted = earliest_error(*pad_steps(rows), 0.5)
    labels = np.array(truth[name])
    error = np.mean(predicted[labels >= 0] == labels[labels >= 0])
    correct = np.mean(predicted[labels < 0] == -1)
    assert report["subsets"][name]["official"]["error_accuracy"] == pytest.approx(error)
    assert report["subsets"][name]["official"]["correct_accuracy"] == pytest.approx(correct)


# ----------------------------------------------------------------------------- the reader

RELEASED = [  # The release's layout: a JSON list per subset, indented.
    {"id": "math-0", "generator": "Qwen2-7B-Instruct", "problem": "1+1?",
     "steps": ["1+1 = 3.", "So 3."], "final_answer_correct": False, "label": 0},
    {"id": "math-1", "generator": "Llama-3.1-8B-Instruct", "problem": "2·2?",
     "steps": ["2·2 = 4.", "So 4."], "final_answer_correct": True, "label": -1},
    {"id": "math-2", "generator": "m", "problem": "3+3?", "steps": ["3+3 = 6.", "6/2 = 4.", "4"],
     "final_answer_correct": False, "label": 1},
]


def _write(path, text):
  path.write_text(text, encoding="utf-8")
  return path


def _start_lines(text):
  """1-based line of each `{` that opens a record of an indented list."""
  return [i + 1 for i, line in enumerate(text.splitlines()) if line == "  {"]


def test_reads_the_released_json_list(tmp_path):
  text = json.dumps(RELEASED, indent=2, ensure_ascii=False)
  path = _write(tmp_path / "math.json", text)
  read = formats.read(path, "processbench").examples
  assert [t.steps for t in read] == [r["steps"] for r in RELEASED]
  assert [processbench_format.earliest_error(t) for t in read] == [0, -1, 1]
  assert [t.meta["source"] for t in read] == [f"{path}:{n}" for n in _start_lines(text)]
  assert read[1].meta["extra"] == {"id": "math-1", "generator": "Llama-3.1-8B-Instruct",
                                   "final_answer_correct": True}
  # The same records as JSON lines read the same; an empty list holds no record.
  lines = _write(tmp_path / "math.jsonl", "".join(json.dumps(r) + "\n" for r in RELEASED))
  assert [t.steps for t in formats.read(lines, "processbench").examples] == \
      [t.steps for t in read]
  assert formats.read(_write(tmp_path / "empty.json", " [ ]\n"), "processbench").examples == []


def test_malformed_records_are_named_by_file_line_and_record(tmp_path):
  records = [dict(r) for r in RELEASED]
  records[2]["label"] = 9
  text = json.dumps(records, indent=2)
  path = _write(tmp_path / "math.json", text)
  with pytest.raises(DataFormatError) as error:
    formats.read(path, "processbench")
  assert str(error.value) == (f"{path}:{_start_lines(text)[2]}: record 2: label 9 is neither "
                              "-1 nor a step index (0..2)")
  # skip_bad skips a bad record as it skips a bad line.
  result = formats.read(path, "processbench", skip_bad=True)
  assert len(result.examples) == 2 and result.skipped[0].line == _start_lines(text)[2]
  broken = [("[\n  {\"problem\": \"p\", \"steps\": [], \"label\": -1},\n  {\"problem\": }\n]",
             3, "invalid JSON"),
            ("[{\"problem\": \"p\", \"steps\": [], \"label\": -1}\n {}]", 2, "expected ','"),
            ("[{\"problem\": \"p\", \"steps\": [], \"label\": -1}]\n]", 2, "after the list"),
            ("[\n 3\n]", 2, "record 0: expected a JSON object, got int")]
  for text, line, reason in broken:
    path = _write(tmp_path / "bad.json", text)
    with pytest.raises(DataFormatError, match=reason) as error:
      formats.read(path, "processbench")
    assert str(error.value).startswith(f"{path}:{line}: "), text


def test_subset_files_of_a_folder(tmp_path):
  with pytest.raises(ValueError, match="does not exist"):
    processbench_format.subset_files(str(tmp_path / "missing"))
  with pytest.raises(ValueError, match="no subset files"):
    processbench_format.subset_files(str(tmp_path))
  for name in ("math.json", "gsm8k.jsonl", "notes.txt"):
    _write(tmp_path / name, "[]")
  assert processbench_format.subset_files(str(tmp_path)) == {
      "gsm8k": str(tmp_path / "gsm8k.jsonl"), "math": str(tmp_path / "math.json")}
  assert list(processbench_format.subset_files(str(tmp_path), ("math",))) == ["math"]
  with pytest.raises(ValueError, match=r"no file for subset\(s\) \['omnimath'\]"):
    processbench_format.subset_files(str(tmp_path), ("math", "omnimath"))
  _write(tmp_path / "math.jsonl", "")
  with pytest.raises(ValueError, match="'math' has two files"):
    processbench_format.subset_files(str(tmp_path))


# ----------------------------------------------------------------------------- CHAMP


def test_first_wrong_step_is_the_paragraph_the_span_starts_in():
  text = "First.\n\nSecond, then\na wrong line.\n\n\nThird."
  assert champ.first_wrong_step(text, 0) == 0
  assert champ.first_wrong_step(text, text.index("Second")) == 1
  assert champ.first_wrong_step(text, text.index("a wrong")) == 1  # Mid-paragraph.
  assert champ.first_wrong_step(text, text.index("\n\n\nThird") + 1) == 2  # On blank lines.
  with pytest.raises(ValueError, match="after the solution's last paragraph"):
    champ.first_wrong_step(text, len(text))


@needs_champ
def test_champ_annotations_become_processbench_records():
  subsets = champ.records()
  assert {k: len(v) for k, v in subsets.items()} == {
      "combinatorics": 80, "inequality": 100, "number_theory": 160, "polynomial": 100,
      "sequence": 100}
  rows = {r["id"]: r for rows in subsets.values() for r in rows}
  assert sum(r["label"] == -1 for r in rows.values()) == 96  # "No mistake".
  assert sum(r["truncated"] for r in rows.values()) == 6
  # Checked by hand against the annotation spans:
  # the span starts paragraph 4 ("If the last digit is 1, then ... f(n-2).").
  row = rows["P_Combinatorics_1|GPT-3.5|No C w/o H"]
  assert (row["label"], len(row["steps"]), row["generator"], row["prompt"]) == (
      4, 12, "GPT-3.5", "No C w/o H")
  assert row["steps"][4].startswith("If the last digit is 1, then the second-to-last digit")
  assert row["problem"].startswith("Let a string consist of digit 1, 2, 3.")
  # The span "= (10/5) * (9/3) ..." starts inside paragraph 6, a derivation of 6 lines.
  row = rows["P_Combinatorics_2|GPT-4 Turbo|Direct C w/ H"]
  assert row["label"] == 6 and row["steps"][6].startswith("C(10, 5) = 10! / (5! * (10 - 5)!)")
  assert "= (10/5) * (9/3) * (8/2) * (7/1) * 6" in row["steps"][6]
  assert rows["P_Combinatorics_1|GPT-3.5|Direct C w/ H"]["label"] == -1


@needs_champ
def test_champ_subsets_read_back_through_the_processbench_reader(tmp_path):
  counts = champ.write_subsets(str(tmp_path))
  subsets = champ.records()
  for name, path in processbench_format.subset_files(str(tmp_path)).items():
    read = formats.read(path, "processbench").examples
    assert len(read) == counts[name]
    assert [processbench_format.earliest_error(t) for t in read] == \
        [r["label"] for r in subsets[name]]


# ----------------------------------------------------------------------------- the pipeline


@needs_champ
def test_smoke_run_through_launch(tmp_path):
  workdir = tmp_path / "run"
  run = launch(*SMOKE, workdir=workdir)
  assert run.returncode == 0, run.stderr[-3000:]
  results = json.loads((workdir / "results.json").read_text())
  scores = json.loads((workdir / "scores.json").read_text())["groups"]
  assert list(results["subsets"]) == ["combinatorics", "inequality", "polynomial"]
  # The report is benchmark_f1 of the saved scores against the converted files' labels.
  truth = {name: [r["label"] for r in json.loads((workdir / "champ" / f"{name}.json")
                                                 .read_text())[:4]] for name in scores}
  expected = benchmark_f1({n: g["scores"] for n, g in scores.items()}, truth)
  for name, subset in results["subsets"].items():
    assert subset["n"] == 4 and len(scores[name]["samples"]) == 4
    for kind in ("official", "calibrated"):
      assert subset[kind] == pytest.approx(expected["subsets"][name][kind]), (name, kind)
  assert results["average_f1"] == pytest.approx(expected["average_f1"])
  table = (workdir / "results.md").read_text()
  assert "| combinatorics | 4 (3) |" in table and "| **average F1** | 12 |" in table
  rerun = launch(*SMOKE, workdir=workdir)
  assert rerun.returncode == 0 and "stage scores.json: done before" in rerun.stderr
  bad = launch(*SMOKE, "--config.prm.max_lenght=64", workdir=tmp_path / "bad")
  assert bad.returncode == 2
  assert bad.stderr.strip().splitlines()[-1] == ("launch.py: error: unknown config key "
                                                 "'prm.max_lenght' (did you mean "
                                                 "'prm.max_length'?)")


def _folder_config(folder, **prm):
  """`:smoke` on the subset files of `folder` (ASCII: the default character tokenizer reads
  them), with `prm` fields overridden."""
  config = experiment.get_config("smoke")
  config.data.update(source="folder", dir=str(folder), subsets=(), limit=0)
  config.prm.update({"max_length": 64, "batch_size": 2, **prm})
  return config


def _ascii_subsets(folder):
  os.makedirs(folder, exist_ok=True)
  for name, label in (("gsm8k", 1), ("math", -1)):
    records = [{"problem": "1+1?", "steps": ["1+1 = 2.", "So 2."], "label": -1},
               {"problem": "2+2?", "steps": ["2+2 = 5.", "5-1 = 4.", "So 4."], "label": label}]
    _write(folder / f"{name}.json", json.dumps(records, indent=1))
  return folder


def test_a_checkpoint_prm_scores_as_the_model_it_saved(tmp_path):
  """`prm.init="checkpoint"` restores what a random (`scratch`) PRM of the same seed holds:
  the same step scores, on ASCII samples (the same character tokenizer)."""
  folder = _ascii_subsets(tmp_path / "data")
  scratch = _folder_config(folder)
  processbench.run(scratch, str(tmp_path / "scratch"))
  model_config = config_lib.model_config(scratch.prm.model)
  params = models.init_params(model_config, jax.random.key(scratch.seed))
  with checkpoint.Checkpointer(str(tmp_path / "ckpt"), max_to_keep=1) as saver:
    saver.save(0, {"params": params})
  restored = _folder_config(folder, init="checkpoint", path=str(tmp_path / "ckpt"))
  processbench.run(restored, str(tmp_path / "restored"))

  def scores(name):
    return json.loads((tmp_path / name / "scores.json").read_text())["groups"]
  for group, saved in scores("scratch").items():
    assert saved["samples"] == scores("restored")[group]["samples"]
    for a, b in zip(saved["scores"], scores("restored")[group]["scores"]):
      np.testing.assert_allclose(a, b, rtol=1e-5)


def test_bad_inputs_fail_with_one_clear_error(tmp_path):
  folder = _ascii_subsets(tmp_path / "data")
  workdir = str(tmp_path / "run")
  cases = [
      (dict(), dict(dir=str(tmp_path / "missing")), "does not exist"),
      (dict(), dict(dir=str(tmp_path)), "no subset files"),
      (dict(), dict(source="hub"), "data.source='hub' is not one of"),
      (dict(), dict(limit=-1), "data.limit=-1 must be >= 0"),
      (dict(max_length=20), dict(),
       r"gsm8k.json:2: \d+ tokens \(problem and steps\) do not fit prm.max_length=20"),
      (dict(init="checkpoint", path=str(tmp_path / "none")), dict(), "no checkpoint at"),
      (dict(init="hf"), dict(), "prm.path is empty"),
      (dict(init="hub"), dict(), "prm.init='hub' is not one of"),
      (dict(max_length=8192), dict(), "exceeds the model's max_seq_len=4608"),
  ]
  for prm, data, message in cases:
    config = _folder_config(folder, **prm)
    config.data.update(data)
    with pytest.raises((ValueError, checkpoint.CheckpointError), match=message):
      processbench.run(config, workdir)
  config = _folder_config(folder)
  config.eval.calibration = str(folder)
  with pytest.raises(ValueError, match="is the evaluated folder"):
    processbench.run(config, workdir)
  assert not os.path.exists(os.path.join(workdir, "results.json"))


def test_calibration_folder_and_a_reused_workdir(tmp_path):
  folder = _ascii_subsets(tmp_path / "data")
  other = _ascii_subsets(tmp_path / "other")
  config = _folder_config(folder)
  config.eval.calibration = str(other)
  results = processbench.run(config, str(tmp_path / "run"))
  thresholds = {s["calibrated"]["threshold"] for s in results["subsets"].values()}
  assert len(thresholds) == 1 and results["calibration"].endswith(str(other))
  config.prm.batch_size = 4  # Another PRM setting, the same workdir: refused.
  with pytest.raises(ValueError, match="scores.json holds the scores of other samples"):
    processbench.run(config, str(tmp_path / "run"))
