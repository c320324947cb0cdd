"""The trainer: state, optimizer, one sharded train step.

Any objective plugs in as `loss_fn(params, batch, rng) -> (loss, metrics)` (see
`prm_jax.objectives`). The step is a pure function `(state, batch) -> (state, metrics)`,
jitted with explicit shardings and the state donated.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.struct
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from prm_jax import models, parallel

LossFn = Callable[[Any, Any, jax.Array], tuple[jax.Array, dict]]


class TrainState(flax.struct.PyTreeNode):
  """Everything a step reads and writes; checkpointed whole.

  step: `[]` int32, number of updates applied.
  params: model parameters (plain nested dict).
  opt_state: optax state.
  rng: `[2]` uint32 raw PRNG key (raw, so checkpoints store plain arrays); step `i`
    uses `fold_in(rng, i)`, which makes a resumed run draw the same numbers.
  """

  step: jax.Array
  params: Any
  opt_state: Any
  rng: jax.Array


def make_optimizer(*, learning_rate: float, total_steps: int, warmup_steps: int = 0,
                   final_lr_fraction: float = 0.1, weight_decay: float = 0.0, b1: float = 0.9,
                   b2: float = 0.999, eps: float = 1e-8, clip_norm: float | None = 1.0
                   ) -> optax.GradientTransformation:
  """AdamW with linear warmup + cosine decay, global-norm clipping first.

  Weight decay skips norm scales and biases (decaying them only hurts).
  """
  schedule = optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=learning_rate, warmup_steps=warmup_steps,
      decay_steps=max(total_steps, warmup_steps + 1), end_value=learning_rate * final_lr_fraction)

  def decay_mask(params):
    def keep(path, _):
      names = [str(getattr(k, "key", k)) for k in path]
      return not any(n == "bias" or n.endswith("norm") for n in names)
    return jax.tree_util.tree_map_with_path(keep, params)

  parts = [optax.clip_by_global_norm(clip_norm)] if clip_norm else []
  parts.append(optax.adamw(schedule, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay,
                           mask=decay_mask))
  return optax.chain(*parts)


def _tree_all_finite(tree) -> jax.Array:
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def make_train_step(loss_fn: LossFn, tx: optax.GradientTransformation, *,
                    grad_accum_steps: int = 1):
  """`train_step(state, batch) -> (state, metrics)`.

  With `grad_accum_steps = A`, the global batch `[A*m, ...]` is split into A strided
  micro-batches of m rows (rows `i, i+A, ...`, so each stays spread over the data-parallel
  devices), gradients and metrics are averaged over them.

  A non-finite loss or gradient leaves params and optimizer state unchanged and reports
  `nonfinite = 1`; the loop decides to stop.
  """
  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

  def loss_metrics_grads(params, batch, rng):
    (loss, metrics), grads = grad_fn(params, batch, rng)
    return loss, metrics, grads

  def split(x):
    rows = x.shape[0] // grad_accum_steps
    return x.reshape(rows, grad_accum_steps, *x.shape[1:]).swapaxes(0, 1)

  def train_step(state: TrainState, batch):
    rng = jax.random.fold_in(state.rng, state.step)
    if grad_accum_steps == 1:
      loss, metrics, grads = loss_metrics_grads(state.params, batch, rng)
    else:
      micro_batches = jax.tree.map(split, batch)

      def accumulate(total, xs):
        index, micro_batch = xs
        out = loss_metrics_grads(state.params, micro_batch, jax.random.fold_in(rng, index))
        return jax.tree.map(jnp.add, total, out), None

      shapes = jax.eval_shape(loss_metrics_grads, state.params,
                              jax.tree.map(lambda x: x[0], micro_batches), rng)
      zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
      total, _ = jax.lax.scan(accumulate, zeros, (jnp.arange(grad_accum_steps), micro_batches))
      loss, metrics, grads = jax.tree.map(lambda x: x / grad_accum_steps, total)

    finite = jnp.isfinite(loss) & _tree_all_finite(grads)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    keep_old = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
    metrics = dict(metrics, grad_norm=optax.global_norm(grads),
                   nonfinite=1 - finite.astype(jnp.int32))
    new_state = state.replace(step=state.step + 1, params=keep_old(params, state.params),
                              opt_state=keep_old(opt_state, state.opt_state))
    return new_state, metrics

  return train_step


def init_state(params, tx: optax.GradientTransformation, rng: jax.Array) -> TrainState:
  """A fresh `TrainState` around `params` (`rng`: raw uint32 key)."""
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                    rng=jnp.asarray(rng, jnp.uint32))


def abstract_state(config: models.ModelConfig, tx: optax.GradientTransformation) -> TrainState:
  """Shape/dtype tree of the `TrainState`, allocating nothing (AOT compiles, restores)."""
  return jax.eval_shape(lambda: init_state(models.abstract_params(config), tx,
                                           jnp.zeros((2,), jnp.uint32)))


def state_shardings(config: models.ModelConfig, tx: optax.GradientTransformation, mesh: Mesh,
                    rules=parallel.LOGICAL_AXIS_RULES) -> TrainState:
  """`NamedSharding`s of every `TrainState` leaf (moments follow their parameter)."""
  params = parallel.param_shardings(config, mesh, rules)
  return TrainState(
      step=parallel.replicated(mesh), params=params, rng=parallel.replicated(mesh),
      opt_state=parallel.opt_state_shardings(tx, models.abstract_params(config), params, mesh))


def init_state_sharded(config: models.ModelConfig, tx: optax.GradientTransformation,
                       rng: jax.Array, mesh: Mesh, rules=parallel.LOGICAL_AXIS_RULES
                       ) -> TrainState:
  """Initialise params and optimizer state directly into their shardings."""
  shardings = state_shardings(config, tx, mesh, rules)

  def init(key):
    param_key, state_key = jax.random.split(key)
    return init_state(models.init_params(config, param_key), tx, state_key)

  return parallel.sharded_jit(init, mesh, in_shardings=parallel.replicated(mesh),
                              out_shardings=shardings, rules=rules)(rng)


def jit_train_step(train_step, shardings: TrainState, batch_example, mesh: Mesh,
                   rules=parallel.LOGICAL_AXIS_RULES):
  """Jit `train_step` with explicit state/batch shardings; the input state is donated.

  `batch_example`: a batch tree (arrays or `ShapeDtypeStruct`s) giving the layout.
  """
  return parallel.sharded_jit(
      train_step, mesh, in_shardings=(shardings, parallel.batch_shardings(batch_example, mesh,
                                                                          rules)),
      out_shardings=(shardings, parallel.replicated(mesh)), donate_argnums=0, rules=rules)
