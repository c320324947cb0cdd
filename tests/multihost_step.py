"""The computations both the two-process tests and their one-process references run."""

import jax
import jax.numpy as jnp
import numpy as np

from prm_jax import models, parallel, train
from prm_jax.objectives.prm import make_prm_loss

GLOBAL_BATCH, LENGTH, STEPS = 8, 24, 4


def global_batch(seed: int = 7) -> dict:
  """The same deterministic global batch in every process."""
  rng = np.random.default_rng(seed)
  return {"input_ids": rng.integers(0, 256, (GLOBAL_BATCH, LENGTH)).astype(np.int32),
          "attention_mask": np.ones((GLOBAL_BATCH, LENGTH), bool),
          "step_positions": np.tile(np.array([5, 11, 17, 23], np.int32), (GLOBAL_BATCH, 1)),
          "step_labels": (rng.random((GLOBAL_BATCH, STEPS)) < 0.5).astype(np.float32),
          "step_mask": np.ones((GLOBAL_BATCH, STEPS), bool)}


def run_one_step(mesh) -> dict:
  """One sharded PRM train step; each process feeds only its own rows."""
  config = models.get_model_config("tiny")
  tx = train.make_optimizer(learning_rate=1e-3, total_steps=10)
  local = jax.tree.map(lambda x: x[parallel.process_batch_slice(GLOBAL_BATCH)], global_batch())
  batch = parallel.make_global_batch(local, mesh)
  shardings = train.state_shardings(config, tx, mesh)
  step = train.jit_train_step(train.make_train_step(make_prm_loss(config), tx), shardings,
                              batch, mesh)
  state = train.init_state_sharded(config, tx, jax.random.PRNGKey(0), mesh)
  state, metrics = step(state, batch)
  replicated_value = lambda x: x.addressable_data(0)
  return {"loss": replicated_value(metrics["loss"]),
          "grad_norm": replicated_value(metrics["grad_norm"]),
          "param_checksum": replicated_value(_param_checksum(state.params, shardings.params,
                                                             mesh))}


def run_train_loop(mesh, workdir: str) -> dict:
  """Six steps of `train.train_loop` (checkpoints at 3 and 6); each process feeds its rows."""
  config = models.get_model_config("tiny")
  rows = parallel.process_batch_slice(GLOBAL_BATCH)
  batches = (jax.tree.map(lambda x: x[rows], global_batch(seed)) for seed in range(6))
  result = train.train_loop(
      config, make_prm_loss(config), batches, workdir=workdir, mesh=mesh,
      config=train.TrainConfig(total_steps=6, learning_rate=1e-3, log_every=1,
                               checkpoint_every=3, progress_every_s=0.0))
  shardings = parallel.param_shardings(config, mesh)
  return {"losses": [r["train/loss"] for r in result.history],
          "param_checksum": float(np.asarray(_param_checksum(result.state.params, shardings,
                                                             mesh).addressable_data(0)))}


def _param_checksum(params, shardings, mesh) -> jax.Array:
  """Sum of squares of all parameters, replicated."""
  return parallel.sharded_jit(
      lambda p: sum(jnp.sum(x.astype(jnp.float32) ** 2) for x in jax.tree.leaves(p)), mesh,
      in_shardings=(shardings,), out_shardings=parallel.replicated(mesh))(params)
