"""Pipeline `prm_train`: train a step-level PRM (BCE at step ends) and evaluate it.

Config sections (see `prm_jax.config_lib`): `model`, `train`, `mesh`, and `data`:
  name             dataset (`DATASETS`); its own fields follow
  batch_size       global training batch (rows); every process loads its share
  eval_batch_size  global evaluation batch
  seed             data order (the shuffle reshuffles every epoch)

Writes what `train.train_loop` writes into the workdir; the evaluator `eval` reports
loss, step accuracy and AUROC over the whole evaluation set (`eval/...` in
`metrics.jsonl`).
"""

from __future__ import annotations

import grain
import jax
import ml_collections

from prm_jax import config_lib, train
from prm_jax.objectives import prm
from prm_jax.pipelines import toy_data


def _toy_separable(data: ml_collections.ConfigDict, vocab_size: int):
  """(train, eval) examples of `toy_data` (fields: num_train, num_eval, seq_len, ...)."""

  def make(num, seed):
    return toy_data.make_examples(num, seq_len=data.seq_len, max_steps=data.max_steps,
                                  step_len=data.step_len, prompt_len=data.prompt_len,
                                  vocab_size=vocab_size, soft_labels=data.soft_labels,
                                  seed=seed)

  return make(data.num_train, data.seed), make(data.num_eval, data.seed + 1)


# name -> (data section, vocab size) -> (train examples, eval examples) in the PRM layout.
DATASETS = {"toy_separable": _toy_separable}


def _per_process(global_size: int, name: str) -> int:
  if global_size % jax.process_count():
    raise ValueError(f"data.{name}={global_size} is not divisible by the "
                     f"{jax.process_count()} processes")
  return global_size // jax.process_count()


def run(config: ml_collections.ConfigDict, workdir: str) -> train.TrainResult:
  model_config = config_lib.model_config(config.model)
  mesh = config_lib.make_mesh(config.mesh)
  data = config.data
  if data.name not in DATASETS:
    raise ValueError(f"unknown dataset data.name={data.name!r}; known: {sorted(DATASETS)}")
  train_examples, eval_examples = DATASETS[data.name](data, model_config.vocab_size)
  process, count = jax.process_index(), jax.process_count()
  # Every process must run the same number of evaluation batches: equal shares.
  eval_examples = eval_examples[:len(eval_examples) - len(eval_examples) % count]
  train_batches = iter(grain.MapDataset.source(train_examples)[process::count]
                       .shuffle(seed=data.seed).repeat()
                       .batch(_per_process(data.batch_size, "batch_size"), drop_remainder=True))
  eval_batches = grain.MapDataset.source(eval_examples)[process::count].batch(
      _per_process(data.eval_batch_size, "eval_batch_size"))
  evaluator = prm.make_prm_evaluator(model_config, eval_batches, mesh)
  return train.train_loop(model_config, prm.make_prm_loss(model_config), train_batches,
                          config=config_lib.train_config(config.train), workdir=workdir,
                          mesh=mesh, evaluators={"eval": evaluator})
