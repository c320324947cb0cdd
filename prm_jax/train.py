"""The trainer: state, optimizer, one sharded train step, and the loop around it.

Any objective plugs in as `loss_fn(params, batch, rng) -> (loss, metrics)` (see
`prm_jax.objectives`). The step is a pure function `(state, batch) -> (state, metrics)`,
jitted with explicit shardings and the state donated. `train_loop` is the one loop every
pipeline runs, linear and readable (big_vision style):

    mesh -> restore the workdir's checkpoint, or initialise -> for each step:
    global batch (read, or sampled with the current parameters by an online source) ->
    jitted step -> metrics (jsonl, TensorBoard, console) -> checkpoint -> evaluators

It keeps no global state, so a pipeline may call it several times in one process (one
workdir each), and returns the final state and the records it logged.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from typing import Any, Callable, Iterator, Mapping, NamedTuple, Protocol, runtime_checkable

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from jax.sharding import Mesh

from prm_jax import checkpoint, models, parallel
from prm_jax.metric_writer import MetricWriter

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


def make_lr_schedule(*, learning_rate: float, total_steps: int, warmup_steps: int = 0,
                     final_lr_fraction: float = 0.1) -> optax.Schedule:
  """Linear warmup from 0 to `learning_rate`, then cosine decay to `final_lr_fraction` of it."""
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=learning_rate, warmup_steps=warmup_steps,
      decay_steps=max(total_steps, warmup_steps + 1), end_value=learning_rate * final_lr_fraction)


def make_optimizer(*, learning_rate: float, total_steps: int, warmup_steps: int = 0,
                   final_lr_fraction: float = 0.1, weight_decay: float = 0.0, b1: float = 0.9,
                   b2: float = 0.999, eps: float = 1e-8, clip_norm: float | None = 1.0
                   ) -> optax.GradientTransformation:
  """AdamW on `make_lr_schedule`, global-norm clipping first.

  Weight decay skips norm scales and biases (decaying them only hurts).
  """
  schedule = make_lr_schedule(learning_rate=learning_rate, total_steps=total_steps,
                              warmup_steps=warmup_steps, final_lr_fraction=final_lr_fraction)

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
                       rng: jax.Array, mesh: Mesh, rules=parallel.LOGICAL_AXIS_RULES, *,
                       params=None) -> TrainState:
  """Initialise params and optimizer state directly into their shardings.

  With `params` (e.g. a fine-tuning start), those are placed instead of fresh ones; the
  state's RNG is the same either way.
  """
  shardings = state_shardings(config, tx, mesh, rules)
  replicated = parallel.replicated(mesh)
  if params is None:
    def init(key):
      param_key, state_key = jax.random.split(key)
      return init_state(models.init_params(config, param_key), tx, state_key)

    return parallel.sharded_jit(init, mesh, in_shardings=replicated,
                                out_shardings=shardings, rules=rules)(rng)

  def wrap(params, key):
    return init_state(params, tx, jax.random.split(key)[1])

  params = jax.device_put(params, shardings.params)
  return parallel.sharded_jit(wrap, mesh, in_shardings=(shardings.params, replicated),
                              out_shardings=shardings, rules=rules)(params, rng)


def jit_train_step(train_step, shardings: TrainState, batch_example, mesh: Mesh,
                   rules=parallel.LOGICAL_AXIS_RULES):
  """Jit `train_step` with explicit state/batch shardings; the input state is donated.

  `batch_example`: a batch tree (arrays or `ShapeDtypeStruct`s) giving the layout.
  """
  return parallel.sharded_jit(
      train_step, mesh, in_shardings=(shardings, parallel.batch_shardings(batch_example, mesh,
                                                                          rules)),
      out_shardings=(shardings, parallel.replicated(mesh)), donate_argnums=0, rules=rules)


# ----------------------------------------------------------------------------- the loop

Evaluator = Callable[[Any], Mapping[str, float]]
"""`evaluator(params) -> {metric name: value}`, run every `TrainConfig.eval_every` steps."""


@runtime_checkable
class OnlineBatches(Protocol):
  """A batch source that needs the current parameters: `next_batch(params)` returns this
  process's rows of the next global batch (e.g. sampled with `params`: RL, `prm_jax.online`).
  With `get_state()` / `set_state(state)` its state is checkpointed like a data position."""

  def next_batch(self, params) -> dict:
    ...


CHECKPOINT_DIR = "checkpoints"


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """Optimizer, schedule and cadence of one run (an experiment's `config.train`).

  Attributes:
    total_steps: optimizer updates in the whole run (also the schedule's length).
    learning_rate: peak learning rate, reached after `warmup_steps`.
    warmup_steps: linear warmup from 0.
    final_lr_fraction: the cosine decay ends at `learning_rate * final_lr_fraction`.
    weight_decay: decoupled (AdamW) weight decay; norm scales and biases are exempt.
    b1, b2, eps: Adam moment decays and epsilon.
    clip_norm: global gradient-norm clip; 0 turns clipping off.
    grad_accum_steps: micro-batches per update; the global batch must divide by it.
    seed: seeds initialisation and the per-step RNG (`fold_in(rng, step)`).
    log_every: steps per metrics record; train metrics are averaged over them.
    eval_every: steps between evaluator runs; 0 = only after the last step.
    checkpoint_every: steps between checkpoints; 0 = only after the last step.
    keep_checkpoints: newest checkpoints kept on disk.
    async_checkpointing: write checkpoints in a background thread.
    init_from: checkpoint to take the initial parameters from (a step directory, a
      checkpoint root or another run's workdir) when the workdir has none of its own;
      "" = fresh initialisation.
    progress_every_s: minimum seconds between console progress lines.
  """

  total_steps: int = 1000
  learning_rate: float = 3e-4
  warmup_steps: int = 0
  final_lr_fraction: float = 0.1
  weight_decay: float = 0.0
  b1: float = 0.9
  b2: float = 0.999
  eps: float = 1e-8
  clip_norm: float = 1.0
  grad_accum_steps: int = 1
  seed: int = 0
  log_every: int = 10
  eval_every: int = 0
  checkpoint_every: int = 500
  keep_checkpoints: int = 3
  async_checkpointing: bool = True
  init_from: str = ""
  progress_every_s: float = 10.0

  def __post_init__(self):
    for name in ("total_steps", "grad_accum_steps", "log_every", "keep_checkpoints"):
      if getattr(self, name) < 1:
        raise ValueError(f"train.{name} must be >= 1, got {getattr(self, name)!r}")
    for name in ("warmup_steps", "eval_every", "checkpoint_every", "weight_decay",
                 "clip_norm", "progress_every_s"):
      if getattr(self, name) < 0:
        raise ValueError(f"train.{name} must be >= 0, got {getattr(self, name)!r}")
    if not self.learning_rate > 0:
      raise ValueError(f"train.learning_rate must be > 0, got {self.learning_rate!r}")

  def lr_schedule(self) -> optax.Schedule:
    return make_lr_schedule(learning_rate=self.learning_rate, total_steps=self.total_steps,
                            warmup_steps=self.warmup_steps,
                            final_lr_fraction=self.final_lr_fraction)

  def optimizer(self) -> optax.GradientTransformation:
    return make_optimizer(learning_rate=self.learning_rate, total_steps=self.total_steps,
                          warmup_steps=self.warmup_steps,
                          final_lr_fraction=self.final_lr_fraction,
                          weight_decay=self.weight_decay, b1=self.b1, b2=self.b2,
                          eps=self.eps, clip_norm=self.clip_norm or None)


class TrainResult(NamedTuple):
  """What `train_loop` returns.

  state: the final `TrainState` (sharded over the run's mesh).
  history: the metric records this call logged, in order (`{"step": int, name: value}`);
    a resumed call holds only the records after the restored step (the workdir's
    `metrics.jsonl` holds them all).
  """

  state: TrainState
  history: list[dict]


class NonFiniteError(RuntimeError):
  """A step produced a non-finite loss or gradient; training stopped."""


def checkpoint_items(state: TrainState) -> dict:
  """The checkpoint items of a state: `params` alone (restorable by itself) and the rest."""
  return {checkpoint.PARAMS_ITEM: state.params,
          "train_state": {"step": state.step, "opt_state": state.opt_state, "rng": state.rng}}


def state_from_items(items: Mapping[str, Any]) -> TrainState:
  rest = items["train_state"]
  return TrainState(step=rest["step"], params=items[checkpoint.PARAMS_ITEM],
                    opt_state=rest["opt_state"], rng=rest["rng"])


def train_loop(model_config: models.ModelConfig, loss_fn: LossFn,
               batches: Iterator[dict] | OnlineBatches, *,
               config: TrainConfig, workdir: str, mesh: Mesh | None = None,
               evaluators: Mapping[str, Evaluator] | None = None, init_params=None,
               rules=parallel.LOGICAL_AXIS_RULES) -> TrainResult:
  """Train `model_config` on `loss_fn` until `config.total_steps`; resumable from `workdir`.

  Args:
    model_config: the model (its `dtype` is the compute dtype: bf16 compute with fp32
      params is `dtype="bfloat16", param_dtype="float32"`).
    loss_fn: `loss_fn(params, batch, rng) -> (loss, metrics)`, traced once.
    batches: iterator of *this process's rows* of each global batch, dicts of `[b, ...]`
      numpy arrays (`parallel.make_global_batch` assembles the global batch), or an
      `OnlineBatches` source, asked for each batch with the current parameters. A grain
      iterator's position, or the state of a source with `get_state` / `set_state`, is
      checkpointed and restored; if the batches run out, training stops early. Every
      batch must have the same shapes (one compilation).
    config: optimizer, schedule and cadence.
    workdir: checkpoints (`checkpoints/`), `metrics.jsonl` and `tensorboard/` go here;
      if it holds a checkpoint, training resumes from it exactly (params, optimizer
      state, step, RNG, data position).
    mesh: default: all devices on the data axis.
    evaluators: `{name: evaluator(params) -> {metric: value}}`, logged as `name/metric`.
    init_params: initial parameters (any placement) when the workdir has no checkpoint;
      takes precedence over `config.init_from`.
    rules: the logical-axis rule table.

  Returns:
    `TrainResult(state, history)`.

  Raises:
    NonFiniteError: a step's loss or gradient was NaN/Inf; names the step. That update
      was not applied, nothing after the last checkpoint is saved, and the last good
      checkpoint stays in place.
    checkpoint.CheckpointError: the workdir's checkpoints are all unreadable, or
      `config.init_from` names no readable checkpoint.
  """
  mesh = parallel.make_mesh() if mesh is None else mesh
  evaluators = dict(evaluators or {})
  tx = config.optimizer()
  shardings = state_shardings(model_config, tx, mesh, rules)
  schedule = config.lr_schedule()
  train_step = make_train_step(loss_fn, tx, grad_accum_steps=config.grad_accum_steps)
  with contextlib.ExitStack() as cleanup:  # Pending saves finish however the loop ends.
    checkpointer = cleanup.enter_context(checkpoint.Checkpointer(
        os.path.join(workdir, CHECKPOINT_DIR), max_to_keep=config.keep_checkpoints,
        async_save=config.async_checkpointing))
    state = _restore_or_init(model_config, tx, shardings, mesh, rules, checkpointer, batches,
                             config, init_params)
    start = int(parallel.fetch_replicated(state.step))
    if start >= config.total_steps:
      logging.info("already at step %d of %d; nothing to train", start, config.total_steps)
    writer = cleanup.enter_context(MetricWriter(
        workdir, resume_step=start, total_steps=config.total_steps,
        progress_every_s=config.progress_every_s))
    step_fn, tokens_per_step = None, 0
    pending: list[tuple[int, dict]] = []  # (step, device metrics) not yet in a record.
    history: list[dict] = []
    done = {"log": start, "checkpoint": start, "eval": start}  # Last step each happened.

    def check_finite():
      """Fetch the pending steps' NaN flags; stop at the first bad step (never saved)."""
      flags = parallel.fetch_replicated([m["nonfinite"] for _, m in pending])
      bad = next((step for (step, _), flag in zip(pending, flags) if flag), None)
      if bad is not None:
        last = checkpointer.latest_step()
        kept = (f"the last good checkpoint, {checkpointer.step_directory(last)}, is kept"
                if last is not None else "no checkpoint had been saved")
        raise NonFiniteError(f"non-finite loss or gradient at step {bad} (the update was "
                             f"not applied); training stopped, {kept}")

    def write_train_record(step):
      check_finite()
      values = parallel.fetch_replicated([m for _, m in pending])
      scalars = {f"train/{name}": float(np.mean([v[name] for v in values], dtype=np.float64))
                 for name in values[0] if name != "nonfinite"}
      scalars["train/learning_rate"] = float(schedule(step - 1))
      history.append(writer.write(step, scalars))
      pending.clear()
      summary = ", ".join(f"{k.split('/', 1)[1]} {v:.4g}" for k, v in scalars.items()
                          if k != "train/learning_rate")
      writer.progress(step, summary, tokens_per_step=tokens_per_step)

    def at_step_end(step, final):
      """Log, checkpoint and evaluate when due (`final`: all three, once per step)."""
      if (step % config.log_every == 0 or final) and done["log"] < step:
        write_train_record(step)
        done["log"] = step
      if _due(step, config.checkpoint_every, final) and done["checkpoint"] < step:
        check_finite()
        checkpointer.save(step, checkpoint_items(state), batches)
        done["checkpoint"] = step
      if evaluators and _due(step, config.eval_every, final) and done["eval"] < step:
        check_finite()
        scalars = {f"{name}/{metric}": value for name, evaluate in evaluators.items()
                   for metric, value in evaluate(state.params).items()}
        history.append(writer.write(step, scalars))
        logging.info("step %d eval: %s", step,
                     ", ".join(f"{k} {v:.4g}" for k, v in scalars.items()))
        done["eval"] = step

    for step in range(start + 1, config.total_steps + 1):
      try:
        local_batch = (batches.next_batch(state.params) if isinstance(batches, OnlineBatches)
                       else next(batches))
      except StopIteration:
        logging.warning("the data ran out after step %d of %d; stopping there", step - 1,
                        config.total_steps)
        if step - 1 > start:
          at_step_end(step - 1, final=True)
        break
      batch = parallel.make_global_batch(local_batch, mesh, rules)
      if step_fn is None:
        step_fn = jit_train_step(train_step, shardings, batch, mesh, rules)
        tokens_per_step = int(batch["input_ids"].size) if "input_ids" in batch else 0
        compile_start = time.perf_counter()
      state, metrics = step_fn(state, batch)
      pending.append((step, metrics))
      if step == start + 1:  # The rate excludes compilation.
        jax.block_until_ready(metrics)
        logging.info("first step (compilation included) took %.1fs",
                     time.perf_counter() - compile_start)
        writer.start_timer(step)
      at_step_end(step, final=step == config.total_steps)
  return TrainResult(state, history)


def _due(step: int, every: int, final: bool) -> bool:
  return final or (every > 0 and step % every == 0)


def _restore_or_init(model_config, tx, shardings, mesh, rules, checkpointer, batches,
                     config: TrainConfig, init_params) -> TrainState:
  """The workdir's newest readable checkpoint, else a fresh state (or `init_params`)."""
  abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                          abstract_state(model_config, tx), shardings)
  restored = checkpointer.restore_latest(checkpoint_items(abstract), batches)
  if restored is not None:
    step, items = restored
    logging.info("resumed from %s", checkpointer.step_directory(step))
    return state_from_items(items)
  if init_params is None and config.init_from:
    init_params = checkpoint.restore_params(config.init_from, abstract.params)
    logging.info("initial parameters from %s", config.init_from)
  return init_state_sharded(model_config, tx, jax.random.PRNGKey(config.seed), mesh, rules,
                            params=init_params)
