"""Pipeline `processbench`: a PRM on ProcessBench as published (Zheng et al. 2024, arXiv
2412.06559).

A sample is a problem, the steps of one model-written solution and the index of its
earliest wrong step (-1: none). The PRM scores every step; the predicted earliest error is
the first step scoring below a threshold. Per subset: the accuracy on erroneous samples
(exact index), on error-free ones (predicting -1), and their harmonic mean F1; the headline
is the average F1 over subsets (`evaluate.benchmark_f1`). Both at the official threshold
`eval.threshold` (0.5) and at a calibrated one that never sees the subset it is reported
for: `eval.calibration = "leave_one_out"` picks each subset's threshold on the other subsets
pooled; a folder path instead picks one threshold on that folder's subset files (a separate
labelled set, e.g. CHAMP converted, for the four ProcessBench subsets).

Config sections:
  seed   the parameters of a `scratch` PRM
  data   `source`: "folder" (the subset files of `dir`, see `processbench.subset_files`) or
         "champ" (CHAMP's annotations converted into `workdir/champ/`,
         `prm_jax.data.formats.champ`); `subsets`: the names to evaluate (empty: every file);
         `limit`: evaluate the first this-many samples of each subset (0: all)
  prm    `init`, `path`, `model` as `stages.load_model`: "scratch" is a random PRM over
         characters (printable ASCII plus every other character of the samples), a floor
         for the metric; "checkpoint" a prm_jax checkpoint of the `model` fields (character
         tokenizer: a sample with another character is an error naming it); "hf" a
         `*ForTokenClassification` PRM folder; "gguf" a language model whose PRM head is
         fresh (a floor too). `format`: "" (prm_jax's layout: `step_separator` appended to
         every step, the PRM scores its last token) or a published PRM's format
         (`models.published.FORMATS`: "qwen-math-prm", "reasonflux-prm", "math-shepherd",
         "rlhflow"; needs `init="hf"`): its head, text layout and score positions.
         `max_length`: tokens of one sample (a longer sample is an error naming it);
         `batch_size`
  eval   `threshold`, `calibration`
  mesh, distributed

Writes into the workdir: `champ/` (source "champ"), `scores.json` (every step score, a
stage: a rerun with the same workdir reuses them, and fails if the PRM settings or the
samples changed), `results.json` and `results.md` (atomically, process 0).
"""

from __future__ import annotations

import functools
import json
import os

import jax
import ml_collections
from absl import logging

from prm_jax import config_lib, files, parallel
from prm_jax.data import Trajectory, formats
from prm_jax.data.formats import champ, processbench
from prm_jax.data.tokenize import tokenize_stepwise
from prm_jax.data.tokenizer import DEFAULT_ALPHABET, CharTokenizer
from prm_jax.evaluate import benchmark_f1
from prm_jax.evaluate.prm_scores import StepScorer
from prm_jax.models import published
from prm_jax.pipelines import stages

SOURCES = ("folder", "champ")
LEAVE_ONE_OUT = "leave_one_out"


def data_folder(config: ml_collections.ConfigDict, workdir: str) -> str:
  """The folder of subset files: `data.dir`, or CHAMP converted into `workdir/champ/`."""
  data = config.data
  if data.source not in SOURCES:
    raise ValueError(f"data.source={data.source!r} is not one of {SOURCES}")
  if data.source == "folder":
    if not data.dir:
      raise ValueError("data.dir is empty: name the folder of ProcessBench subset files")
    return data.dir
  if data.dir:
    raise ValueError(f"data.dir={data.dir!r} is set but data.source='champ' converts CHAMP")
  folder = os.path.join(workdir, "champ")
  # Every process converts (the same bytes, written atomically): no process waits on a file
  # another host may not see.
  counts = champ.write_subsets(folder)
  logging.info("CHAMP: %d annotations in %s (%s)", sum(counts.values()), folder, counts)
  return folder


def read_subsets(folder: str, names=(), limit: int = 0) -> dict[str, list[Trajectory]]:
  """`{subset: samples}` of a folder's subset files (the first `limit` of each; 0: all)."""
  if limit < 0:
    raise ValueError(f"data.limit={limit} must be >= 0 (0: every sample)")
  subsets = {}
  for name, path in processbench.subset_files(folder, tuple(names)).items():
    samples = formats.read(path, "processbench").examples
    subsets[name] = samples[:limit] if limit else samples
    logging.info("subset %s: %d samples from %s", name, len(subsets[name]), path)
  return subsets


def calibration_set(config: ml_collections.ConfigDict, folder: str
                    ) -> dict[str, list[Trajectory]]:
  """The calibration samples of `eval.calibration` (a folder), `{}` for leave-one-out."""
  setting = config.eval.calibration
  if setting == LEAVE_ONE_OUT:
    return {}
  if os.path.realpath(setting) == os.path.realpath(folder):
    raise ValueError(f"eval.calibration={setting!r} is the evaluated folder: a threshold "
                     "tuned on the reported samples (use 'leave_one_out' or another folder)")
  return {f"calibration/{name}": samples
          for name, samples in read_subsets(setting).items()}


def load_prm(config: ml_collections.ConfigDict, samples: list[Trajectory], mesh):
  """(model config, params, tokenizer, encode) of `config.prm`: `encode(trajectory)` lays a
  sample out as the PRM reads it. A `scratch` PRM is initialised from `config.seed` with
  characters of `samples` beyond printable ASCII in its alphabet."""
  section = config.prm
  if section.format:
    if section.init != "hf":
      raise ValueError(f"prm.format={section.format!r} reads a Hugging Face folder: set "
                       f"prm.init='hf' (it is {section.init!r})")
    if published.get_format(section.format).layout == "last_token":
      raise ValueError(f"prm.format={section.format!r} scores whole solutions, not steps: "
                       "ProcessBench needs a score per step")
    if not section.path:
      raise ValueError("prm.path is empty: prm.format loads the PRM from it")
    prm = published.load(section.format, section.path, mesh=mesh)
    model_config, params, tokenizer, encode = prm.config, prm.params, prm.tokenizer, prm.encode
  else:
    model_config, params, tokenizer = stages.load_model(section, "prm", mesh)
    encode = None
  if params is None:
    texts = {char for t in samples for text in [t.problem, *t.steps] for char in text}
    tokenizer = CharTokenizer(DEFAULT_ALPHABET + "".join(sorted(texts - set(DEFAULT_ALPHABET))))
    if tokenizer.vocab_size > model_config.vocab_size:
      raise ValueError(f"prm.model.vocab_size={model_config.vocab_size} is smaller than the "
                       f"{tokenizer.vocab_size} characters (and special tokens) of the samples")
    params = parallel.init_params_sharded(model_config, jax.random.key(config.seed), mesh)
  if section.max_length > model_config.max_seq_len:
    raise ValueError(f"prm.max_length={section.max_length} exceeds the model's "
                     f"max_seq_len={model_config.max_seq_len}")
  encode = encode or functools.partial(tokenize_stepwise, tokenizer,
                                       step_separator=section.step_separator)
  return model_config, params, tokenizer, encode


def check_lengths(samples: list[Trajectory], encode, section: ml_collections.ConfigDict
                  ) -> int:
  """The most steps of any sample; one `encode` cannot lay out or longer than
  `section.max_length` tokens raises naming its file and line."""
  for sample in samples:
    try:
      ids = encode(sample)
    except ValueError as err:
      raise ValueError(f"{sample.meta['source']}: {err}") from None
    if len(ids["input_ids"]) > section.max_length:
      raise ValueError(f"{sample.meta['source']}: {len(ids['input_ids'])} tokens (problem and "
                       f"steps) do not fit prm.max_length={section.max_length}")
  return max([len(s.steps) for s in samples] + [1])


def _names(samples: list[Trajectory]) -> list[str]:
  """`<file>:<line>` of every sample, without the folder (the workdir may move)."""
  return [os.path.basename(s.meta["source"]) for s in samples]


def score(scorer: StepScorer, groups: dict[str, list[Trajectory]], settings: dict) -> dict:
  """`{"settings", "groups": {name: {"samples": [<file>:<line>], "scores": [[S_i]]}}}`."""
  total, done = sum(len(g) for g in groups.values()), 0
  report = stages.progress("scoring samples")
  result = {}
  for name, samples in groups.items():
    scores = []
    for start in range(0, len(samples), scorer.rows):
      chunk = samples[start:start + scorer.rows]
      scores += [s.tolist() for s in scorer(chunk)]
      done += len(chunk)
      report(done, total)
    result[name] = {"samples": _names(samples), "scores": scores}
  return {"settings": settings, "groups": result}


def _settings(config: ml_collections.ConfigDict) -> dict:
  """What the scores depend on besides the samples."""
  return {"prm": config.prm.to_dict(), "seed": config.seed}


def _check_stage(saved: dict, groups: dict[str, list[Trajectory]], settings: dict,
                 path: str) -> None:
  """Fail if the saved scores are of other samples or another PRM (a reused workdir)."""
  names = {name: _names(samples) for name, samples in groups.items()}
  # Compared as JSON reads them back (tuples become lists).
  if json.loads(json.dumps(settings)) != saved["settings"] or names != {
      name: group["samples"] for name, group in saved["groups"].items()}:
    raise ValueError(f"{path} holds the scores of other samples or another PRM setting; "
                     "evaluate into a new workdir (or delete the file)")


def results_of(config, folder: str, groups, scores: dict) -> dict:
  """The metrics (`benchmark_f1`) with what they were computed on; undefined ones null."""
  truth = {name: [processbench.earliest_error(s) for s in samples]
           for name, samples in groups.items()}
  evaluated = [name for name in groups if not name.startswith("calibration/")]
  calibration = None
  if config.eval.calibration != LEAVE_ONE_OUT:
    held_out = [name for name in groups if name.startswith("calibration/")]
    calibration = ([s for name in held_out for s in scores[name]["scores"]],
                   [t for name in held_out for t in truth[name]])
  report = benchmark_f1({name: scores[name]["scores"] for name in evaluated},
                        {name: truth[name] for name in evaluated},
                        threshold=config.eval.threshold, calibration=calibration)
  for subset in report["subsets"].values():
    for kind in ("official", "calibrated"):
      if subset[kind] is not None:
        subset[kind] = stages.json_safe(subset[kind])
  return {"prm": {"init": config.prm.init, "path": config.prm.path}, "data": folder,
          "threshold": config.eval.threshold,
          "calibration": ("leave one subset out" if calibration is None
                          else f"one threshold chosen on {config.eval.calibration}"),
          "subsets": report["subsets"],
          "average_f1": stages.json_safe(report["average_f1"])}


def markdown(results: dict) -> str:
  """`results` as a table: one row per subset, then the average F1."""
  def fmt(value) -> str:
    return "-" if value is None else f"{value:.3f}"

  prm, metrics = results["prm"], ("error_accuracy", "correct_accuracy", "f1")
  lines = [f"# ProcessBench: PRM `{prm['init']}` {prm['path']}".rstrip(), "",
           f"Samples: `{results['data']}`. Earliest-error accuracy on erroneous samples, "
           "accuracy on correct samples and their harmonic mean (F1), at the official "
           f"threshold {results['threshold']} and at a calibrated one "
           f"({results['calibration']}).", "",
           "| subset | n (erroneous) | error acc. | correct acc. | F1 | calibrated threshold | "
           "error acc. | correct acc. | F1 |", "|---|---|---|---|---|---|---|---|---|"]
  for name, subset in results["subsets"].items():
    calibrated = subset["calibrated"] or {}
    cells = [name, f"{subset['n']} ({subset['num_error']})",
             *(fmt(subset["official"][k]) for k in metrics),
             *(fmt(calibrated.get(k)) for k in ("threshold", *metrics))]
    lines.append("| " + " | ".join(cells) + " |")
  total = sum(s["n"] for s in results["subsets"].values())
  average = results["average_f1"]
  lines.append(f"| **average F1** | {total} | | | {fmt(average['official'])} | | | | "
               f"{fmt(average['calibrated'])} |")
  return "\n".join(lines) + "\n"


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  mesh = config_lib.make_mesh(config.mesh)
  folder = data_folder(config, workdir)
  groups = read_subsets(folder, config.data.subsets, config.data.limit)
  groups.update(calibration_set(config, folder))
  settings, path = _settings(config), os.path.join(workdir, "scores.json")
  if os.path.exists(path):
    _check_stage(files.read_json(path), groups, settings, path)
  samples = [s for group in groups.values() for s in group]
  model_config, params, tokenizer, encode = load_prm(config, samples, mesh)
  max_steps = check_lengths(samples, encode, config.prm)
  scores = stages.stage(workdir, "scores.json", lambda: score(
      StepScorer(model_config, params, tokenizer, max_length=config.prm.max_length,
                 max_steps=max_steps, batch_size=config.prm.batch_size, mesh=mesh,
                 encode=encode), groups, settings))
  results = results_of(config, folder, groups, scores["groups"])
  if jax.process_index() == 0:
    files.write_json(os.path.join(workdir, "results.json"), results)
    files.write_text(os.path.join(workdir, "results.md"), markdown(results))
  logging.info("ProcessBench average F1: %s at %s, %s calibrated",
               results["average_f1"]["official"], config.eval.threshold,
               results["average_f1"]["calibrated"])
  return results
