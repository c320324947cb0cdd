"""The computation both the two-process test and its one-process reference run."""

import jax
import jax.numpy as jnp
import numpy as np

from prm_jax import models, parallel, train
from prm_jax.objectives.prm import make_prm_loss

GLOBAL_BATCH, LENGTH, STEPS = 8, 24, 4


def global_batch() -> dict:
  """The same deterministic global batch in every process."""
  rng = np.random.default_rng(7)
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
  checksum = parallel.sharded_jit(
      lambda p: sum(jnp.sum(x.astype(jnp.float32) ** 2) for x in jax.tree.leaves(p)), mesh,
      in_shardings=(shardings.params,), out_shardings=parallel.replicated(mesh))(state.params)
  replicated_value = lambda x: x.addressable_data(0)
  return {"loss": replicated_value(metrics["loss"]),
          "grad_norm": replicated_value(metrics["grad_norm"]),
          "param_checksum": replicated_value(checksum)}
