"""A PRM's step scores for many trajectories, in fixed-shape jitted batches."""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import numpy as np

from prm_jax import models, parallel
from prm_jax.data.batching import collate_prm
from prm_jax.data.schema import Trajectory
from prm_jax.data.tokenize import tokenize_stepwise
from prm_jax.data.tokenizer import Tokenizer


def score_steps(config: models.ModelConfig, params, tokenizer: Tokenizer,
                trajectories: Sequence[Trajectory], *, max_length: int, max_steps: int,
                batch_size: int = 64, step_separator: str = "\n", mesh=None
                ) -> list[np.ndarray]:
  """P(step correct) `[len(steps)]` (float32) for every trajectory.

  Trajectories are tokenized as the PRM was trained (`tokenize_stepwise`) and padded to
  `[batch_size, max_length]` with `max_steps` steps (one compilation); longer ones raise.
  A trajectory without steps gets an empty array. `mesh`: shard the batch over it;
  multi-host, every process passes the same trajectories and feeds its own rows.
  """
  mesh = parallel.make_mesh(devices=jax.devices()[:1]) if mesh is None else mesh
  rows = -(-batch_size // parallel.batch_parallelism(mesh)) * parallel.batch_parallelism(mesh)
  shardings = parallel.param_shardings(config, mesh)
  forward = _forward(config, mesh)
  params = jax.device_put(params, shardings)
  examples = [tokenize_stepwise(tokenizer, t, step_separator=step_separator)
              for t in trajectories]
  for index, example in enumerate(examples):
    example["source"] = f"trajectory {index}"
  scores = []
  for start in range(0, len(examples), rows):
    chunk = examples[start:start + rows]
    batch = collate_prm(chunk + [chunk[0]] * (rows - len(chunk)), pad_id=tokenizer.pad_id or 0,
                        max_length=max_length, max_steps=max_steps)
    local = jax.tree.map(lambda x: x[parallel.process_batch_slice(rows)], batch)
    batch = parallel.make_global_batch(local, mesh)
    step_scores = np.asarray(forward(params, batch))
    scores += [step_scores[i, :len(e["step_ends"])] for i, e in enumerate(chunk)]
  return scores


@functools.lru_cache(maxsize=16)
def _forward(config: models.ModelConfig, mesh):
  """The jitted scoring step (built once per model and mesh: pipelines score many sets)."""
  return parallel.sharded_jit(
      lambda p, b: models.forward(config, p, b["input_ids"], attention_mask=b["attention_mask"],
                                  step_positions=b["step_positions"],
                                  lm_logits="none")["step_scores"],
      mesh, in_shardings=(parallel.param_shardings(config, mesh), None),
      out_shardings=parallel.replicated(mesh))
