"""ProcessBench as published: a PRM's earliest-error F1 per subset and averaged over subsets.

    python launch.py --config experiments/processbench.py --workdir runs/processbench \
        --config.data.dir=ProcessBench/ --config.prm.init=hf --config.prm.path=PRM_DIR
    python launch.py --config experiments/processbench.py:champ --workdir runs/champ \
        --config.prm.init=hf --config.prm.path=PRM_DIR
    python launch.py --config experiments/processbench.py:smoke --workdir runs/pb_smoke  # ~20 s

`data.dir` holds the release's subset files (`gsm8k.json`, `math.json`, `olympiadbench.json`,
`omnimath.json`: JSON lists of `{"id", "generator", "problem", "steps", "label",
"final_answer_correct"}`; `.jsonl` works too). The PRM is any model prm_jax loads
(`prm.init`): a Hugging Face `*ForTokenClassification` PRM folder (`hf`), a prm_jax run's
workdir or checkpoint directory with `prm.model.*` set to its model's fields (`checkpoint`,
character tokenizer), a GGUF language model (`gguf`, fresh PRM head) or a random one
(`scratch`). Set `prm.step_separator` to what the PRM was trained with (it is appended to
every step and scored at its last token) and `prm.max_length` to hold the longest sample.
A published PRM is read in its own layout with `--config.prm.format=` one of
`prm_jax.models.published.FORMATS` (e.g. `qwen-math-prm` for Qwen2.5-Math-PRM-7B,
`math-shepherd`, `rlhflow`, `reasonflux-prm`), which sets its head, chat template, step tag
and score positions.

Expected result: `results.md` has one row per subset (n, accuracy on erroneous samples,
accuracy on correct samples, F1 at the official threshold 0.5, and the same at a threshold
calibrated on the other subsets: leave one subset out), then the average F1 (the
benchmark's headline number; the paper's Table 3 lists published PRMs). Rerunning with the
same workdir reuses `scores.json`; `--config.eval.calibration=DIR` calibrates one threshold
on another folder of subset files instead (e.g. the CHAMP subsets `:champ` writes).

`:champ` evaluates CHAMP's 540 human first-wrong-step annotations of model-written
competition solutions (`pip install champ-dataset`; `prm_jax.data.formats.champ`), converted
into `workdir/champ/` with one subset per problem category.

`:smoke` (CPU, under 30 s) runs a random tiny PRM over characters on the first 4 samples of
three CHAMP subsets: it checks the machinery end to end (`tests/test_processbench.py`), not
a result; a random PRM's F1 is a floor (0 here: its scores sit just above or just below any
threshold, so it flags no step or the first).
"""

import ml_collections

from prm_jax import config_lib


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  if arg not in (None, "", "champ", "smoke"):
    raise ValueError(f"experiments/processbench.py takes '', 'champ' or 'smoke', got {arg!r}")
  champ = arg in ("champ", "smoke")
  smoke = arg == "smoke"
  config = ml_collections.ConfigDict()
  config.pipeline = "processbench"
  config.seed = 0
  config.data = ml_collections.ConfigDict(dict(
      source="champ" if champ else "folder", dir="",
      # Names of the subset files to evaluate; empty: every one in the folder. The smoke's
      # three hold erroneous and correct samples among their first 4 (so every F1 is defined).
      subsets=("combinatorics", "inequality", "polynomial") if smoke else (),
      limit=4 if smoke else 0))  # The first this-many samples of each subset; 0: all.
  config.prm = ml_collections.ConfigDict(dict(
      init="scratch" if smoke else "hf", path="",
      # The model's shapes for `scratch` and `checkpoint` (a loaded model brings its own).
      model=config_lib.model_section("tiny", max_seq_len=4608 if smoke else 16384),
      # Tokens of problem + steps (+ BOS and separators); a longer sample is an error.
      max_length=4608 if smoke else 4096, batch_size=4 if smoke else 8,
      # "" (prm_jax's layout, with `step_separator`) or a published PRM's format, e.g.
      # "qwen-math-prm" (`prm_jax.models.published.FORMATS`; init "hf").
      format="", step_separator="\n\n"))
  config.eval = ml_collections.ConfigDict(dict(
      threshold=0.5,  # The official one.
      # "leave_one_out": each subset's threshold is chosen on the other subsets; or a folder
      # of subset files (not the evaluated one) on which one threshold is chosen.
      calibration="leave_one_out"))
  config.mesh = config_lib.mesh_section()
  config.distributed = config_lib.distributed_section()
  config.lock()
  return config
