"""Ahead-of-time compile of a PRM train step for a mesh you do not have.

Compiles with abstract (unallocated) parameters, optimizer state and batch, and reports
XLA's per-device memory analysis. This is how pod-scale configs are checked on a laptop:

    XLA_FLAGS=--xla_force_host_platform_device_count=64 python -m prm_jax.aot \\
        --model qwen2_5_7b --fsdp 16 --tensor 4 --batch 64 --seq 2048 \\
        --dtype bfloat16 --remat full

prints one JSON line with the byte counts and `peak_bytes_per_device`
(arguments + outputs - donated aliases + temporaries).
"""

from __future__ import annotations

import argparse
import json

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from prm_jax import models, parallel, train
from prm_jax.objectives.prm import make_prm_loss


def abstract_prm_batch(batch_size: int, seq_len: int, max_steps: int) -> dict:
  """Shapes of a PRM batch (layout of `prm_jax.objectives.prm`)."""
  sds = jax.ShapeDtypeStruct
  return {"input_ids": sds((batch_size, seq_len), jnp.int32),
          "attention_mask": sds((batch_size, seq_len), jnp.bool_),
          "step_positions": sds((batch_size, max_steps), jnp.int32),
          "step_labels": sds((batch_size, max_steps), jnp.float32),
          "step_mask": sds((batch_size, max_steps), jnp.bool_)}


def compile_prm_train_step(config: models.ModelConfig, mesh: Mesh, batch: dict,
                           tx: optax.GradientTransformation, *, grad_accum_steps: int = 1):
  """Lower and compile the sharded PRM train step on abstract inputs; returns `Compiled`."""
  shardings = train.state_shardings(config, tx, mesh)
  step = train.jit_train_step(
      train.make_train_step(make_prm_loss(config), tx, grad_accum_steps=grad_accum_steps),
      shardings, batch, mesh)
  with_sharding = lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s)
  state = jax.tree.map(with_sharding, train.abstract_state(config, tx), shardings)
  batch = jax.tree.map(with_sharding, batch, parallel.batch_shardings(batch, mesh))
  return step.lower(state, batch).compile()


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
  args = parser.parse_args(argv)
  config = models.get_model_config(args.model, dtype=args.dtype, remat=args.remat,
                                   max_seq_len=max(args.seq, 1))
  mesh = parallel.make_mesh(data=args.data, fsdp=args.fsdp, tensor=args.tensor)
  tx = train.make_optimizer(learning_rate=1e-5, total_steps=1000, warmup_steps=10)
  compiled = compile_prm_train_step(config, mesh, abstract_prm_batch(args.batch, args.seq,
                                                                     args.steps), tx,
                                    grad_accum_steps=args.grad_accum)
  report = dict(memory_report(compiled), model=args.model, mesh=dict(mesh.shape),
                batch=args.batch, seq=args.seq, dtype=args.dtype, remat=args.remat)
  print(json.dumps(report))
  return report


if __name__ == "__main__":
  main()
