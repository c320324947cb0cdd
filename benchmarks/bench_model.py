"""Forward+backward throughput and model FLOPs utilisation (MFU) of the decoder.

    python benchmarks/bench_model.py                 # CPU: tiny and smollm2_135m, fp32
    python benchmarks/bench_model.py --models smollm2_135m qwen2_5_0_5b --dtype bfloat16 \\
        --batch 16 --seq 2048                        # GPU

Two jitted steps per config: the PRM train step (forward + backward + AdamW; the LM head
is never computed) and an LM cross-entropy forward+backward. MFU = model FLOPs per second
(`ModelConfig.flops_per_token`, PaLM convention) / peak. On CPU the peak is
XLA's own throughput on a large fp32 matmul, measured in the same run (a nominal figure
would need the boost clock, which varies). On GPU the peak is the device's dense bf16 peak.
"""

from __future__ import annotations

import argparse
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from prm_jax import models, parallel, train
from prm_jax.objectives.prm import make_prm_loss

GPU_BF16_PEAK = {"H100": 989e12, "H200": 989e12, "A100": 312e12}


def timed(fn, warmup: int = 2, repeats: int = 5) -> float:
  """Median seconds per call of `fn()` (after `warmup` calls, outputs blocked on)."""
  for _ in range(warmup):
    jax.block_until_ready(fn())
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return float(np.median(times))


def measured_matmul_peak(dtype) -> float:
  n = 2048
  a = jnp.ones((n, n), dtype)
  f = jax.jit(lambda a, b: a @ b)
  return 2 * n**3 / timed(lambda: f(a, a))


def prm_batch(config, batch, seq, steps=16):
  rng = np.random.default_rng(0)
  return {"input_ids": rng.integers(0, config.vocab_size, (batch, seq)).astype(np.int32),
          "attention_mask": np.ones((batch, seq), bool),
          "step_positions": np.sort(rng.choice(seq, (batch, steps), replace=False), 1)
          .astype(np.int32),
          "step_labels": rng.random((batch, steps)).astype(np.float32),
          "step_mask": np.ones((batch, steps), bool)}


def lm_loss(config):
  def loss_fn(params, batch, rng):
    del rng
    logits = models.forward(config, params, batch["input_ids"])["logits"]
    logp = jax.nn.log_softmax(logits[:, :-1])
    nll = -jnp.take_along_axis(logp, batch["input_ids"][:, 1:, None], -1)
    return nll.mean(), {}
  return loss_fn


def bench(config, batch_size, seq, mesh) -> dict:
  """{step name: (tokens/s, model FLOP/s)} for the PRM train step and LM forward+backward."""
  batch = parallel.make_global_batch(prm_batch(config, batch_size, seq), mesh)
  tx = optax.adamw(1e-4)
  shardings = train.state_shardings(config, tx, mesh)
  state = train.init_state_sharded(config, tx, jax.random.PRNGKey(0), mesh)
  prm_step = train.jit_train_step(train.make_train_step(make_prm_loss(config), tx), shardings,
                                  batch, mesh)
  lm_grad = parallel.sharded_jit(
      jax.grad(lambda p, b: lm_loss(config)(p, b, None)[0]), mesh,
      in_shardings=(shardings.params, parallel.batch_shardings(batch, mesh)),
      out_shardings=shardings.params)

  def run_prm_step():
    nonlocal state  # The state is donated: each call must get the previous call's output.
    state, metrics = prm_step(state, batch)
    return metrics

  tokens = batch_size * seq
  prm_seconds = timed(run_prm_step)
  lm_seconds = timed(lambda: lm_grad(state.params, batch))
  return {"prm_train_step": (tokens / prm_seconds,
                             config.flops_per_token(seq, lm_head=False) * tokens / prm_seconds),
          "lm_fwd_bwd": (tokens / lm_seconds, config.flops_per_token(seq) * tokens / lm_seconds)}


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--models", nargs="+", default=["tiny", "smollm2_135m"])
  parser.add_argument("--batch", type=int, nargs="+", default=[16, 4],
                      help="batch per model (last value repeats)")
  parser.add_argument("--seq", type=int, nargs="+", default=[256, 512])
  parser.add_argument("--dtype", default="float32")
  parser.add_argument("--remat", default="none")
  args = parser.parse_args()

  device = jax.devices()[0]
  on_gpu = device.platform == "gpu"
  if on_gpu:
    kind = next((k for k in GPU_BF16_PEAK if k in device.device_kind), None)
    peaks = {"device bf16 peak": GPU_BF16_PEAK.get(kind, float("nan"))}
  else:
    peaks = {"fp32 matmul": measured_matmul_peak(jnp.float32)}
  mesh = parallel.make_mesh(data=-1)
  print(f"# {platform.node()} {device.device_kind} x{jax.device_count()} | jax "
        f"{jax.__version__} | dtype {args.dtype} | remat {args.remat}")
  print("# peaks: " + ", ".join(f"{k} {v / 1e9:.0f} GFLOP/s" for k, v in peaks.items()))
  header = "| model | batch x seq | step | tokens/s | GFLOP/s | " + " | ".join(
      f"MFU vs {k}" for k in peaks) + " |"
  print(header)
  print("|" + "---|" * (header.count("|") - 1))
  for i, name in enumerate(args.models):
    batch = args.batch[min(i, len(args.batch) - 1)]
    seq = args.seq[min(i, len(args.seq) - 1)]
    config = models.get_model_config(name, dtype=args.dtype, remat=args.remat,
                                     max_seq_len=max(seq, 8))
    for step, (tokens_per_s, flops_per_s) in bench(config, batch, seq, mesh).items():
      mfu = " | ".join(f"{flops_per_s / p:.1%}" for p in peaks.values())
      print(f"| {name} | {batch} x {seq} | {step} | {tokens_per_s:,.0f} | "
            f"{flops_per_s / 1e9:,.1f} | {mfu} |", flush=True)


if __name__ == "__main__":
  main()
