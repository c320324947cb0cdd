"""PRM training throughput: prm_jax's train step vs TRL's `PRMTrainer`, side by side.

    python benchmarks/bench_prm_train.py                       # both shapes, all variants
    python benchmarks/bench_prm_train.py --shapes tiny --steps 20

Same architecture, sequence length, batch and optimizer (AdamW, global-norm clip 1.0) on
both sides; the data is random tokens with a step end every 16 tokens and random 0/1
step labels.

  * TRL: `trl.experimental.prm.PRMTrainer` on a HF `LlamaForTokenClassification`
    (num_labels=2, sdpa attention), pre-tokenized dataset, `default_data_collator`. A
    callback stamps `on_step_end`; a step's time is the gap between consecutive stamps,
    so it includes the data loader, forward, backward, clipping, AdamW and the scheduler.
  * prm_jax: `train.jit_train_step(make_train_step(make_prm_loss))` as `train_loop`
    runs it; a step's time covers `parallel.make_global_batch` (host -> device) and the
    step, blocked on.

The first W steps (compilation, allocator warm-up) are not timed. tokens/s is reported
for the median step and for the fastest step over all repeats: on a shared machine other
jobs only ever slow a step down, so the fastest step is the best estimate of a quiet run,
and the ratios use it.

Every measurement runs in its own subprocess, because the JAX variants need different
`XLA_FLAGS` before JAX starts (the number of host devices). Variants (n = cores):

  trl                 fp32, no gradient checkpointing (like for like with the jax rows)
  trl-bf16            TRL's default precision, `bf16=True` (CPU autocast)
  jax-1dev            one CPU device, fp32, no remat (JAX's and the model's defaults)
  jax-1dev-bf16       ... in bf16 compute (like for like with trl-bf16)
  jax-<n>dev          n host devices, data parallel over the batch
  jax-<n>dev-remat    ... and `remat="full"` (recomputing the block is cheaper on CPU than
                      reading the saved activations back, see benchmarks/RESULTS.md)
  jax-<n>dev-remat-bf16   ... and bf16 compute (fp32 params, softmax, norms and loss)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time

import numpy as np

from worker import machine, run_worker

STEP_EVERY = 16  # Tokens per reasoning step in the synthetic data.

# name -> (registered model or explicit fields, batch, seq)
SHAPES = {
    "tiny": (dict(vocab_size=512, hidden_size=256, num_layers=4, num_heads=4, num_kv_heads=4,
                  head_dim=64, mlp_dim=1024), 16, 256),
    "smollm2_135m": ("smollm2_135m", 4, 512),
}
# Default (timed steps, warm-up steps) per shape: a smollm2_135m step takes seconds on a CPU.
DEFAULT_STEPS = {"tiny": (10, 3), "smollm2_135m": (4, 2)}


def model_config(shape: str, dtype: str = "float32", remat: str = "none"):
  from prm_jax import models  # pylint: disable=import-outside-toplevel
  spec, _, seq = SHAPES[shape]
  if isinstance(spec, str):
    return models.get_model_config(spec, dtype=dtype, remat=remat, max_seq_len=seq)
  return models.ModelConfig(**spec, dtype=dtype, remat=remat, max_seq_len=seq)


def synthetic_data(vocab_size: int, rows: int, seq: int, seed: int = 0) -> dict:
  """Token ids `[rows, seq]`, step ends every STEP_EVERY tokens, random 0/1 labels."""
  rng = np.random.default_rng(seed)
  positions = np.arange(STEP_EVERY - 1, seq, STEP_EVERY, dtype=np.int32)
  return {"input_ids": rng.integers(0, vocab_size, (rows, seq)).astype(np.int32),
          "step_positions": np.tile(positions, (rows, 1)),
          "step_labels": (rng.random((rows, len(positions))) < 0.5).astype(np.float32)}


# ----------------------------------------------------------------------------- workers


def run_jax(shape: str, dtype: str, remat: str, steps: int, warmup: int) -> dict:
  import jax  # pylint: disable=import-outside-toplevel
  from prm_jax import parallel, train  # pylint: disable=import-outside-toplevel
  from prm_jax.objectives.prm import make_prm_loss  # pylint: disable=import-outside-toplevel

  config = model_config(shape, dtype, remat)
  _, batch_size, seq = SHAPES[shape]
  data = synthetic_data(config.vocab_size, batch_size * (warmup + steps), seq)
  batches = [{"input_ids": data["input_ids"][i:i + batch_size],
              "attention_mask": np.ones((batch_size, seq), bool),
              "step_positions": data["step_positions"][i:i + batch_size],
              "step_labels": data["step_labels"][i:i + batch_size],
              "step_mask": np.ones_like(data["step_labels"][i:i + batch_size], bool)}
             for i in range(0, len(data["input_ids"]), batch_size)]
  mesh = parallel.make_mesh(data=-1)
  tx = train.make_optimizer(learning_rate=1e-4, total_steps=warmup + steps, clip_norm=1.0)
  shardings = train.state_shardings(config, tx, mesh)
  state = train.init_state_sharded(config, tx, jax.random.PRNGKey(0), mesh)
  step_fn = train.jit_train_step(train.make_train_step(make_prm_loss(config), tx), shardings,
                                 parallel.make_global_batch(batches[0], mesh), mesh)
  stamps = []
  for batch in batches:
    state, metrics = step_fn(state, parallel.make_global_batch(batch, mesh))
    jax.block_until_ready(metrics)
    stamps.append(time.perf_counter())
  return {"step_seconds": np.diff(stamps[warmup - 1:]).tolist(), "loss": float(metrics["loss"])}


def run_trl(shape: str, bf16: bool, steps: int, warmup: int) -> dict:
  # pylint: disable=import-outside-toplevel
  import datasets
  import torch
  import transformers
  from trl.experimental.prm import PRMConfig, PRMTrainer

  config = model_config(shape)
  _, batch_size, seq = SHAPES[shape]
  data = synthetic_data(config.vocab_size, batch_size * (warmup + steps), seq)
  labels = np.full(data["input_ids"].shape, -100, np.int64)
  np.put_along_axis(labels, data["step_positions"], data["step_labels"].astype(np.int64), 1)
  dataset = datasets.Dataset.from_dict({"input_ids": data["input_ids"].astype(np.int64).tolist(),
                                        "labels": labels.tolist()})
  torch.manual_seed(0)
  model = transformers.LlamaForTokenClassification(transformers.LlamaConfig(
      vocab_size=config.vocab_size, hidden_size=config.hidden_size,
      intermediate_size=config.mlp_dim, num_hidden_layers=config.num_layers,
      num_attention_heads=config.num_heads, num_key_value_heads=config.num_kv_heads,
      head_dim=config.head_dim, rms_norm_eps=config.norm_eps, rope_theta=config.rope_theta,
      max_position_embeddings=seq, tie_word_embeddings=config.tie_embeddings, num_labels=2))
  stamps = []

  class StepTimer(transformers.TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
      stamps.append(time.perf_counter())

  with tempfile.TemporaryDirectory() as output_dir:
    args = PRMConfig(output_dir=output_dir, per_device_train_batch_size=batch_size,
                     max_steps=warmup + steps, learning_rate=1e-4, max_grad_norm=1.0,
                     bf16=bf16, fp16=False, gradient_checkpointing=False, use_cpu=True,
                     logging_steps=10**6, save_strategy="no", report_to=[],
                     disable_tqdm=True, dataloader_num_workers=0, seed=0, max_length=seq)
    trainer = PRMTrainer(model=model, args=args, train_dataset=dataset,
                         data_collator=transformers.default_data_collator,
                         callbacks=[StepTimer()])
    result = trainer.train()
  return {"step_seconds": np.diff(stamps[warmup - 1:]).tolist(),
          "loss": float(result.training_loss), "threads": torch.get_num_threads()}


# ----------------------------------------------------------------------------- driver


def _variants(cores: int) -> dict[str, dict]:
  """Variant name -> worker, host devices, compute dtype, remat policy."""
  variants = {"trl": {"worker": "trl"}, "trl-bf16": {"worker": "trl", "dtype": "bfloat16"},
              "jax-1dev": {"worker": "jax", "devices": 1},
              "jax-1dev-bf16": {"worker": "jax", "devices": 1, "dtype": "bfloat16"}}
  if cores > 1:
    variants[f"jax-{cores}dev"] = {"worker": "jax", "devices": cores}
  variants[f"jax-{cores}dev-remat"] = {"worker": "jax", "devices": cores, "remat": "full"}
  variants[f"jax-{cores}dev-remat-bf16"] = {"worker": "jax", "devices": cores, "remat": "full",
                                            "dtype": "bfloat16"}
  return variants


def _run_worker(shape: str, variant: dict, steps: int, warmup: int) -> dict:
  return run_worker(__file__, ["--worker", variant["worker"], "--shapes", shape, "--steps",
                               str(steps), "--warmup", str(warmup), "--dtype",
                               variant.get("dtype", "float32"), "--remat",
                               variant.get("remat", "none")],
                    devices=variant.get("devices", 1),
                    xla_flags=os.environ.get("BENCH_XLA_FLAGS", ""))


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
  parser.add_argument("--steps", type=int, help="timed steps per measurement "
                      f"(default per shape: {DEFAULT_STEPS})")
  parser.add_argument("--warmup", type=int, help="untimed steps first (default per shape)")
  parser.add_argument("--repeats", type=int, default=1,
                      help="measure each variant this often, round-robin")
  parser.add_argument("--variants", nargs="+", help="subset of the variants (default: all)")
  parser.add_argument("--worker", choices=["jax", "trl"], help=argparse.SUPPRESS)
  parser.add_argument("--dtype", default="float32", help=argparse.SUPPRESS)
  parser.add_argument("--remat", default="none", help=argparse.SUPPRESS)
  args = parser.parse_args()

  if args.worker:
    result = (run_jax(args.shapes[0], args.dtype, args.remat, args.steps, args.warmup)
              if args.worker == "jax" else
              run_trl(args.shapes[0], args.dtype == "bfloat16", args.steps, args.warmup))
    print(json.dumps(result))
    return

  cores = os.cpu_count() or 1
  variants = _variants(cores)
  if args.variants:
    variants = {name: variants[name] for name in args.variants}
  print(f"# {platform.node()} | {machine()} | "
        f"load {os.getloadavg()[0]:.1f} at start | {args.repeats} repeat(s) | XLA_FLAGS extra: "
        f"{os.environ.get('BENCH_XLA_FLAGS', '') or 'none'}")
  print("| shape | batch x seq | variant | steps timed | tokens/s (median step) | "
        "tokens/s (fastest step) | vs TRL, same dtype (fastest) | loss |")
  print("|---|---|---|---|---|---|---|---|")
  for shape in args.shapes:
    _, batch_size, seq = SHAPES[shape]
    steps = args.steps or DEFAULT_STEPS[shape][0]
    warmup = args.warmup or DEFAULT_STEPS[shape][1]
    times: dict[str, list[float]] = {name: [] for name in variants}
    losses = {}
    for _ in range(args.repeats):
      for name, variant in variants.items():
        result = _run_worker(shape, variant, steps, warmup)
        times[name] += result["step_seconds"]
        losses[name] = result["loss"]
    rate = {name: (batch_size * seq / np.median(t), batch_size * seq / np.min(t))
            for name, t in times.items()}
    for name, (median, fastest) in rate.items():
      # bf16 rows are compared with TRL in bf16, fp32 rows with TRL in fp32.
      peer = rate.get("trl-bf16" if name.endswith("bf16") else "trl")
      ratio = f"{fastest / peer[1]:.2f}x" if peer else "-"
      print(f"| {shape} | {batch_size} x {seq} | {name} | {len(times[name])} | {median:,.0f} | "
            f"{fastest:,.0f} | {ratio} | {losses[name]:.4f} |", flush=True)


if __name__ == "__main__":
  main()
