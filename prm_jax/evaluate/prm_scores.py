"""A PRM's step scores for many trajectories, in fixed-shape jitted batches."""

from __future__ import annotations

import functools
from typing import Callable, Sequence

import jax
import numpy as np

from prm_jax import models, parallel
from prm_jax.data.batching import collate_prm
from prm_jax.data.schema import Trajectory
from prm_jax.data.tokenize import tokenize_stepwise
from prm_jax.data.tokenizer import Tokenizer


class StepScorer:
  """P(step correct) of trajectories under one PRM; the forward pass compiles once, so a
  scorer called again and again (an RL reward, every rollout) pays no recompilation.

  Trajectories are tokenized as the PRM was trained (`tokenize_stepwise` with
  `step_separator`, or `encode`: e.g. a published PRM's layout, `models.published`) and
  padded to `[batch_size, max_length]` with `max_steps` steps (one compilation); longer ones
  raise.
  `mesh`: shard the batch over it; multi-host, every process passes the same trajectories
  and feeds its own rows.
  """

  def __init__(self, config: models.ModelConfig, params, tokenizer: Tokenizer, *,
               max_length: int, max_steps: int, batch_size: int = 64,
               step_separator: str = "\n", mesh=None,
               encode: Callable[[Trajectory], dict] | None = None):
    self.tokenizer, self.max_length, self.max_steps = tokenizer, max_length, max_steps
    self.encode = encode or functools.partial(tokenize_stepwise, tokenizer,
                                              step_separator=step_separator)
    self.mesh = parallel.make_mesh(devices=jax.devices()[:1]) if mesh is None else mesh
    parallelism = parallel.batch_parallelism(self.mesh)
    self.rows = -(-batch_size // parallelism) * parallelism
    shardings = parallel.param_shardings(config, self.mesh)
    self._forward = _forward(config, self.mesh)
    self._params = jax.device_put(params, shardings)

  def __call__(self, trajectories: Sequence[Trajectory]) -> list[np.ndarray]:
    """`[len(step_ends)]` float32 scores per trajectory: one per step (empty for one without
    steps), or what `encode` reads (one for a last-token PRM)."""
    examples = [self.encode(t) for t in trajectories]
    for index, example in enumerate(examples):
      example["source"] = f"trajectory {index}"
    scores = []
    for start in range(0, len(examples), self.rows):
      chunk = examples[start:start + self.rows]
      batch = collate_prm(chunk + [chunk[0]] * (self.rows - len(chunk)),
                          pad_id=self.tokenizer.pad_id or 0, max_length=self.max_length,
                          max_steps=self.max_steps)
      local = jax.tree.map(lambda x: x[parallel.process_batch_slice(self.rows)], batch)
      step_scores = np.asarray(self._forward(self._params,
                                             parallel.make_global_batch(local, self.mesh)))
      scores += [step_scores[i, :len(e["step_ends"])] for i, e in enumerate(chunk)]
    return scores


def score_steps(config: models.ModelConfig, params, tokenizer: Tokenizer,
                trajectories: Sequence[Trajectory], *, max_length: int, max_steps: int,
                batch_size: int = 64, step_separator: str = "\n", mesh=None
                ) -> list[np.ndarray]:
  """P(step correct) `[len(steps)]` (float32) for every trajectory (one `StepScorer` call;
  the compiled forward pass is shared by every scorer of the same model and mesh)."""
  return StepScorer(config, params, tokenizer, max_length=max_length, max_steps=max_steps,
                    batch_size=batch_size, step_separator=step_separator,
                    mesh=mesh)(trajectories)


@functools.lru_cache(maxsize=16)
def _forward(config: models.ModelConfig, mesh):
  """The jitted scoring step, built once per model and mesh: pipelines score many sets with
  many scorers, and a new jitted closure per scorer would compile again."""
  return parallel.sharded_jit(
      lambda p, b: models.forward(config, p, b["input_ids"], attention_mask=b["attention_mask"],
                                  step_positions=b["step_positions"],
                                  lm_logits="none")["step_scores"],
      mesh, in_shardings=(parallel.param_shardings(config, mesh), None),
      out_shardings=parallel.replicated(mesh))
