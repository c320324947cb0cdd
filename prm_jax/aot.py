"""Ahead-of-time compile of a PRM or GRPO train step for a mesh you do not have.

Compiles with abstract (unallocated) parameters, optimizer state and batch, and reports
XLA's per-device memory analysis. This is how pod-scale configs are checked on a laptop:

    XLA_FLAGS=--xla_force_host_platform_device_count=64 python -m prm_jax.aot \\
        --model qwen2_5_7b --fsdp 16 --tensor 4 --batch 64 --seq 2048 \\
        --dtype bfloat16 --remat full [--objective grpo --completion 1536]

prints one JSON line with the byte counts and `peak_bytes_per_device`
(arguments + outputs - donated aliases + temporaries).

`--objective grpo` compiles the two programs of a GRPO step with a KL reference: the
train step (GRPO loss on `[batch, seq]` rows whose last `--completion` tokens are the
completion) and the reference policy's log-prob pass (`online.logprobs_program`, the
reference parameters held on the mesh with the policy's shardings). Each runs while the
other's resident arrays stay on the device, so the step needs, per device,
`grpo_peak_bytes_per_device` = max(train step peak + reference parameters, reference
pass peak + train state).
"""

from __future__ import annotations

import argparse
import json
import math

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from prm_jax import models, online, parallel, train
from prm_jax.objectives import grpo
from prm_jax.objectives.prm import make_prm_loss


def abstract_prm_batch(batch_size: int, seq_len: int, max_steps: int) -> dict:
  """Shapes of a PRM batch (layout of `prm_jax.objectives.prm`)."""
  sds = jax.ShapeDtypeStruct
  return {"input_ids": sds((batch_size, seq_len), jnp.int32),
          "attention_mask": sds((batch_size, seq_len), jnp.bool_),
          "step_positions": sds((batch_size, max_steps), jnp.int32),
          "step_labels": sds((batch_size, max_steps), jnp.float32),
          "step_mask": sds((batch_size, max_steps), jnp.bool_)}


def abstract_grpo_batch(batch_size: int, seq_len: int, completion_len: int) -> dict:
  """Shapes of a GRPO batch with a KL reference (layout of `prm_jax.objectives.grpo`)."""
  sds = jax.ShapeDtypeStruct
  tokens = lambda dtype: sds((batch_size, completion_len), dtype)
  return {"input_ids": sds((batch_size, seq_len), jnp.int32),
          "attention_mask": sds((batch_size, seq_len), jnp.bool_),
          "completion_mask": tokens(jnp.bool_), "advantages": tokens(jnp.float32),
          "old_logprobs": tokens(jnp.float32), "ref_logprobs": tokens(jnp.float32),
          "tokens_per_row": sds((batch_size,), jnp.float32)}


def _with_sharding(x, sharding):
  return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)


def compile_train_step(config: models.ModelConfig, mesh: Mesh, batch: dict,
                       tx: optax.GradientTransformation, loss_fn, *, grad_accum_steps: int = 1):
  """Lower and compile the sharded train step of `loss_fn` on abstract inputs; returns
  `Compiled`."""
  shardings = train.state_shardings(config, tx, mesh)
  step = train.jit_train_step(
      train.make_train_step(loss_fn, tx, grad_accum_steps=grad_accum_steps),
      shardings, batch, mesh)
  state = jax.tree.map(_with_sharding, train.abstract_state(config, tx), shardings)
  batch = jax.tree.map(_with_sharding, batch, parallel.batch_shardings(batch, mesh))
  return step.lower(state, batch).compile()


def compile_prm_train_step(config: models.ModelConfig, mesh: Mesh, batch: dict,
                           tx: optax.GradientTransformation, *, grad_accum_steps: int = 1):
  """Lower and compile the sharded PRM train step on abstract inputs; returns `Compiled`."""
  return compile_train_step(config, mesh, batch, tx, make_prm_loss(config),
                            grad_accum_steps=grad_accum_steps)


def compile_reference_logprobs(config: models.ModelConfig, mesh: Mesh, batch: dict):
  """Lower and compile the reference policy's log-prob pass of a GRPO batch; `Compiled`."""
  width = batch["completion_mask"].shape[1]
  program = online.logprobs_program(config, mesh, width, 1.0)
  params = jax.tree.map(_with_sharding, models.abstract_params(config),
                        parallel.param_shardings(config, mesh))
  rows = parallel.batch_sharding(mesh, 2)
  return program.lower(params, _with_sharding(batch["input_ids"], rows),
                       _with_sharding(batch["attention_mask"], rows)).compile()


def _bytes_per_device(abstract_tree, shardings) -> int:
  """Bytes one device holds of a tree of shapes placed with `shardings`."""
  return sum(math.prod(s.shard_shape(x.shape)) * x.dtype.itemsize
             for x, s in zip(jax.tree.leaves(abstract_tree), jax.tree.leaves(shardings)))


def memory_report(compiled) -> dict:
  """Per-device byte counts from XLA's memory analysis of a compiled step."""
  analysis = compiled.memory_analysis()
  report = {name: int(getattr(analysis, f"{name}_size_in_bytes")) for name in
            ("argument", "output", "alias", "temp", "generated_code")}
  report["peak_bytes_per_device"] = (report["argument"] + report["output"] - report["alias"]
                                     + report["temp"])
  return report


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--model", default="qwen2_5_7b")
  parser.add_argument("--data", type=int, default=1)
  parser.add_argument("--fsdp", type=int, default=-1)
  parser.add_argument("--tensor", type=int, default=1)
  parser.add_argument("--batch", type=int, default=64, help="global batch (sequences)")
  parser.add_argument("--seq", type=int, default=2048)
  parser.add_argument("--steps", type=int, default=32, help="max PRM steps per sequence")
  parser.add_argument("--grad-accum", type=int, default=1)
  parser.add_argument("--dtype", default="bfloat16")
  parser.add_argument("--remat", default="full")
  parser.add_argument("--objective", default="prm", choices=["prm", "grpo"])
  parser.add_argument("--completion", type=int, default=1536,
                      help="grpo: completion tokens of each row (the rest is the prompt)")
  args = parser.parse_args(argv)
  config = models.get_model_config(args.model, dtype=args.dtype, remat=args.remat,
                                   max_seq_len=max(args.seq, 1))
  mesh = parallel.make_mesh(data=args.data, fsdp=args.fsdp, tensor=args.tensor)
  tx = train.make_optimizer(learning_rate=1e-5, total_steps=1000, warmup_steps=10)
  report = dict(model=args.model, mesh=dict(mesh.shape), batch=args.batch, seq=args.seq,
                dtype=args.dtype, remat=args.remat, objective=args.objective)
  if args.objective == "prm":
    compiled = compile_prm_train_step(config, mesh, abstract_prm_batch(args.batch, args.seq,
                                                                       args.steps), tx,
                                      grad_accum_steps=args.grad_accum)
    report.update(memory_report(compiled))
  else:
    batch = abstract_grpo_batch(args.batch, args.seq, args.completion)
    loss_fn = grpo.make_grpo_loss(config, grpo.GRPOConfig(kl_coef=1e-3))
    step = memory_report(compile_train_step(config, mesh, batch, tx, loss_fn,
                                            grad_accum_steps=args.grad_accum))
    reference = memory_report(compile_reference_logprobs(config, mesh, batch))
    shardings = train.state_shardings(config, tx, mesh)
    state_bytes = _bytes_per_device(train.abstract_state(config, tx), shardings)
    reference_bytes = _bytes_per_device(models.abstract_params(config), shardings.params)
    report.update(step, completion=args.completion, reference=reference,
                  reference_params_bytes=reference_bytes, state_bytes=state_bytes,
                  grpo_peak_bytes_per_device=max(
                      step["peak_bytes_per_device"] + reference_bytes,
                      reference["peak_bytes_per_device"] + state_bytes))
  print(json.dumps(report))
  return report


if __name__ == "__main__":
  main()
