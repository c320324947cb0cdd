"""Throughput of `prm_jax.kernels.token_stats` against its peers, as GB/s of logits read.

    python benchmarks/bench_kernels.py                      # CPU, the issue's four configs
    python benchmarks/bench_kernels.py --shapes 4096x32768 --dtypes float32 --repeats 5

Per `[tokens, V]` and dtype, one table row:
  * ours: `token_stats(logits, tokens)` under `jax.jit` (entropy, logsumexp, logprob,
    top-2 ids and probabilities), logits row-sharded over `--devices` host devices;
  * GB/s: bytes of logits (read once) per second, and its ratio to the memory-copy
    bandwidth measured in the same run ((bytes read + bytes written) / s of a large
    NumPy copy);
  * cores: CPU seconds per wall second of our run (2.0 = both cores busy), and GB of
    logits per CPU second, a figure that other load on a shared machine disturbs less;
  * scratch: XLA's temporary buffers of our compiled function per device (peak extra
    memory; on CPU it includes, for bf16, one copy of the logits at their own width);
  * x naive: speed-up over the naive jitted `-sum(exp(log_softmax(x)) * log_softmax(x))`;
  * x torch: speed-up over `torch.distributions.Categorical(logits=x).entropy()` (CPU;
    1024 rows per call, as it holds ~4 logits-sized temporaries).
Times are medians. Both peers compute only the entropy; ours computes all statistics.
"""

from __future__ import annotations

import argparse
import os
import sys

# The host device count must be fixed before JAX starts, so `--devices` is read here.
_ARGS = " ".join(sys.argv[1:]).replace("=", " ").split()
_DEVICES = int(_ARGS[_ARGS.index("--devices") + 1]) if "--devices" in _ARGS else 2
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           f" --xla_force_host_platform_device_count={_DEVICES}")

import resource  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P  # noqa: E402

from prm_jax.kernels import token_stats  # noqa: E402
from worker import machine  # noqa: E402


def cpu_seconds() -> float:
  usage = resource.getrusage(resource.RUSAGE_SELF)
  return usage.ru_utime + usage.ru_stime


def measure(fn, repeats: int) -> tuple[float, float]:
  """(median wall seconds, CPU seconds per wall second) of `fn()` after one warm-up call."""
  fn()
  walls, cpus = [], []
  for _ in range(repeats):
    wall, cpu = time.perf_counter(), cpu_seconds()
    fn()
    walls.append(time.perf_counter() - wall)
    cpus.append(cpu_seconds() - cpu)
  return float(np.median(walls)), float(np.sum(cpus) / np.sum(walls))


def copy_bandwidth(nbytes: int = 1 << 30) -> float:
  """(bytes read + bytes written) / s of the best of five 1 GiB NumPy copies."""
  src = np.ones(nbytes // 4, np.float32)
  dst = np.empty_like(src)
  best = min(measure(lambda: np.copyto(dst, src), 1)[0] for _ in range(5))
  return 2 * nbytes / best


def naive_entropy(x):
  log_p = jax.nn.log_softmax(x.astype(jnp.float32), axis=-1)
  return -jnp.sum(jnp.exp(log_p) * log_p, axis=-1)


def make_logits(tokens: int, vocab: int, dtype: str) -> np.ndarray:
  """The same random `[tokens, V]` logits on every call (so no copy needs to be kept)."""
  rng = np.random.default_rng(0)
  return (rng.standard_normal((tokens, vocab), np.float32) * 3).astype(jnp.dtype(dtype))


def torch_entropy(logits: torch.Tensor, rows: int = 1024):
  """The torch peer, `rows` at a time: Categorical holds ~4 logits-sized temporaries."""
  return [torch.distributions.Categorical(logits=block).entropy()
          for block in torch.split(logits, rows)]


def bench(tokens: int, vocab: int, dtype: str, devices: int, repeats: int, peer_repeats: int):
  mesh = Mesh(np.array(jax.devices()[:devices]), ("rows",))
  logits = jax.device_put(make_logits(tokens, vocab, dtype), NamedSharding(mesh, P("rows", None)))
  ids = np.random.default_rng(1).integers(0, vocab, tokens).astype(np.int32)
  ids = jax.device_put(ids, NamedSharding(mesh, P("rows")))
  nbytes = logits.size * logits.dtype.itemsize

  ours = jax.jit(lambda x, t: token_stats(x, t))
  scratch = ours.lower(logits, ids).compile().memory_analysis().temp_size_in_bytes
  ours_s, cores = measure(lambda: jax.block_until_ready(ours(logits, ids)), repeats)

  naive = jax.jit(naive_entropy)
  naive_s, _ = measure(lambda: jax.block_until_ready(naive(logits)), peer_repeats)
  del logits

  host = make_logits(tokens, vocab, "float32")
  torch_logits = torch.from_numpy(host).to(getattr(torch, dtype))
  torch_s, _ = measure(lambda: torch_entropy(torch_logits), peer_repeats)
  return {"time_ms": ours_s * 1e3, "gbps": nbytes / ours_s / 1e9, "cores": cores,
          "scratch_mb": scratch / 2**20, "naive_gbps": nbytes / naive_s / 1e9,
          "torch_gbps": nbytes / torch_s / 1e9, "x_naive": naive_s / ours_s,
          "x_torch": torch_s / ours_s}


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--shapes", nargs="+", default=["4096x32768", "4096x151936"],
                      help="[tokens]x[V] pairs")
  parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
  parser.add_argument("--devices", type=int, default=_DEVICES,
                      help="host devices the rows are sharded over (CPU: one per core)")
  parser.add_argument("--repeats", type=int, default=5, help="timed calls of ours")
  parser.add_argument("--peer-repeats", type=int, default=2, help="timed calls of each peer")
  args = parser.parse_args()

  copy = copy_bandwidth()
  print(f"machine: {machine()}; "
        f"jax {jax.__version__} on {args.devices} {jax.default_backend()} device(s); "
        f"torch {torch.__version__} with {torch.get_num_threads()} threads")
  print(f"memory copy: {copy / 1e9:.1f} GB/s (read + write)\n")
  header = ("| tokens x V | dtype | ours ms | ours GB/s | / copy | cores | GB/cpu-s "
            "| scratch MiB/dev | naive GB/s | torch GB/s | x naive | x torch |")
  print(header)
  print("|" + "---|" * (header.count("|") - 1))
  for shape in args.shapes:
    tokens, vocab = map(int, shape.split("x"))
    for dtype in args.dtypes:
      r = bench(tokens, vocab, dtype, args.devices, args.repeats, args.peer_repeats)
      print(f"| {tokens} x {vocab} | {dtype} | {r['time_ms']:.0f} | {r['gbps']:.2f} "
            f"| {r['gbps'] * 1e9 / copy:.2f} | {r['cores']:.1f} | {r['gbps'] / r['cores']:.2f} "
            f"| {r['scratch_mb']:.0f} "
            f"| {r['naive_gbps']:.2f} | {r['torch_gbps']:.2f} | {r['x_naive']:.1f} "
            f"| {r['x_torch']:.1f} |", flush=True)


if __name__ == "__main__":
  main()
