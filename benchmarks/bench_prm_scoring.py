"""Scoring throughput of a loaded published PRM: prm_jax vs transformers, side by side.

    python benchmarks/bench_prm_scoring.py                          # Qwen2.5-0.5B shape
    python benchmarks/bench_prm_scoring.py --shape tiny --repeats 5

One random `Qwen2ForProcessRewardModel` checkpoint (the Qwen2.5-Math-PRM layout: Qwen2 +
`score` = Linear(D, D) -> ReLU -> Linear(D, 2)) is written once by torch; both sides load
that folder and score the same batch of random token rows with a step end every 16 tokens
(P(step correct) = softmax(score(h))[1] at the step ends), fp32:

  * transformers: `Qwen2Model` (sdpa attention) + the head in torch under
    `torch.inference_mode`, the head on every position then the step ends gathered (as the
    published model computes it), `torch.set_num_threads(cores)`.
  * prm_jax: `hf.load_pretrained` then the jitted scoring forward `StepScorer` runs (the head
    only at the step ends, no LM head), on one CPU device or data-parallel over `cores`
    host devices; the batch is on the device and the result blocked on.

The first call (compilation, allocator warm-up) is not timed; tokens/s is reported for the
fastest of `--repeats` calls (on a shared machine other work only slows a call down).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import numpy as np

from worker import machine, run_worker

STEP_EVERY = 16
# name -> (Qwen2 config fields, batch, sequence length)
SHAPES = {
    "tiny": (dict(vocab_size=512, hidden_size=256, intermediate_size=1024, num_hidden_layers=4,
                  num_attention_heads=4, num_key_value_heads=2), 8, 256),
    # Qwen2.5-0.5B's shape (the smallest Qwen2 a published PRM is built on is 1.5B).
    "qwen2.5_0.5b": (dict(vocab_size=151_936, hidden_size=896, intermediate_size=4864,
                          num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2),
                     4, 256),
}


def _torch_prm(folder: str | None, shape: str):
  """The published architecture in torch; random from seed 0, or loaded from `folder`."""
  import torch
  import transformers

  fields, _, _ = SHAPES[shape]
  config = transformers.Qwen2Config(max_position_embeddings=4096, tie_word_embeddings=True,
                                    attn_implementation="sdpa", **fields)

  class Qwen2PRM(torch.nn.Module):
    def __init__(self):
      super().__init__()
      self.model = transformers.Qwen2Model(config)
      width = config.hidden_size
      self.score = torch.nn.Sequential(torch.nn.Linear(width, width), torch.nn.ReLU(),
                                       torch.nn.Linear(width, 2))

  torch.manual_seed(0)
  model = Qwen2PRM().eval()
  if folder is not None:
    from safetensors.torch import load_file
    model.load_state_dict(load_file(os.path.join(folder, "model.safetensors")))
  return config, model


def write_checkpoint(shape: str, folder: str) -> None:
  from safetensors.torch import save_file

  config, model = _torch_prm(None, shape)
  state = {name: value.contiguous() for name, value in model.state_dict().items()}
  save_file(state, os.path.join(folder, "model.safetensors"), metadata={"format": "pt"})
  hf_config = dict(config.to_dict(), architectures=["Qwen2ForProcessRewardModel"])
  with open(os.path.join(folder, "config.json"), "w") as f:
    json.dump(hf_config, f)


def batch(shape: str) -> tuple[np.ndarray, np.ndarray]:
  """`(input_ids [B, T], step_positions [B, T // 16])`: random tokens, a step every 16."""
  fields, rows, seq = SHAPES[shape]
  ids = np.random.default_rng(0).integers(0, fields["vocab_size"], (rows, seq), np.int32)
  steps = np.tile(np.arange(STEP_EVERY - 1, seq, STEP_EVERY, dtype=np.int32), (rows, 1))
  return ids, steps


def _fastest(call, repeats: int) -> tuple[float, np.ndarray]:
  result = call()  # Compilation / warm-up.
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    result = call()
    times.append(time.perf_counter() - start)
  return min(times), result


def run_transformers(folder: str, shape: str, repeats: int) -> dict:
  import torch

  torch.set_num_threads(os.cpu_count())
  _, model = _torch_prm(folder, shape)
  ids, steps = batch(shape)
  ids_t, steps_t = (torch.as_tensor(x, dtype=torch.long) for x in (ids, steps))

  def call():
    with torch.inference_mode():
      probabilities = model.score(model.model(input_ids=ids_t).last_hidden_state).softmax(-1)
      return torch.take_along_dim(probabilities[..., 1], steps_t, dim=1).numpy()
  seconds, scores = _fastest(call, repeats)
  return {"seconds": seconds, "tokens_per_s": ids.size / seconds, "scores": scores.tolist()}


def run_jax(folder: str, shape: str, repeats: int) -> dict:
  import jax

  from prm_jax import parallel
  from prm_jax.evaluate import prm_scores
  from prm_jax.models import hf

  mesh = parallel.make_mesh()
  config, params = hf.load_pretrained(folder, mesh=mesh)
  ids, steps = batch(shape)
  device_batch = parallel.make_global_batch(
      {"input_ids": ids, "attention_mask": np.ones_like(ids, bool), "step_positions": steps},
      mesh)
  forward = prm_scores._forward(config, mesh)  # What `StepScorer` runs.
  seconds, scores = _fastest(
      lambda: jax.block_until_ready(forward(params, device_batch)), repeats)
  return {"seconds": seconds, "tokens_per_s": ids.size / seconds,
          "scores": np.asarray(scores).tolist(), "devices": len(jax.devices())}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--shape", default="qwen2.5_0.5b", choices=sorted(SHAPES))
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--worker", choices=("write", "transformers", "jax"))
  parser.add_argument("--folder")
  args = parser.parse_args()
  if args.worker == "write":
    write_checkpoint(args.shape, args.folder)
    print(json.dumps({}))
    return
  if args.worker:
    run = {"transformers": run_transformers, "jax": run_jax}[args.worker]
    print(json.dumps(run(args.folder, args.shape, args.repeats)))
    return

  cores = os.cpu_count()
  common = ["--shape", args.shape, "--repeats", str(args.repeats)]
  with tempfile.TemporaryDirectory() as folder:
    run_worker(__file__, ["--worker", "write", "--folder", folder, *common])
    results = {
        "transformers": run_worker(__file__, ["--worker", "transformers", "--folder", folder,
                                              *common]),
        "jax-1dev": run_worker(__file__, ["--worker", "jax", "--folder", folder, *common]),
        f"jax-{cores}dev": run_worker(__file__, ["--worker", "jax", "--folder", folder,
                                                 *common], devices=cores),
    }
  reference = np.asarray(results["transformers"]["scores"])
  _, rows, seq = SHAPES[args.shape]
  print(f"shape {args.shape}: batch {rows} x {seq} tokens, a step end every {STEP_EVERY}; "
        f"{machine()}; fastest of "
        f"{args.repeats}")
  print("| variant | seconds / batch | tokens/s | vs transformers | max |score diff| |")
  print("|---|---|---|---|---|")
  base = results["transformers"]["tokens_per_s"]
  for name, result in results.items():
    diff = np.abs(np.asarray(result["scores"]) - reference).max()
    print(f"| {name} | {result['seconds']:.3f} | {result['tokens_per_s']:,.0f} | "
          f"{result['tokens_per_s'] / base:.2f}x | {diff:.1e} |")


if __name__ == "__main__":
  main()
