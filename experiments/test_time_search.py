"""PRM-guided test-time search: beam search and DVTS vs Best-of-N at equal generated tokens.

    python launch.py --config experiments/test_time_search.py --workdir runs/search
    python launch.py --config experiments/test_time_search.py:smoke --workdir runs/search_smoke

The quickstart's task, SFT policy and Monte Carlo step PRM (same sections and seed;
`experiments/quickstart.py` documents them), then on the 200 held-out problems, for N in
`search.ns`: Best-of-N over N high-temperature samples, PRM beam search (N children per
depth, N / width kept) and DVTS (N / width subtrees, each greedy by PRM), all at the
sampling temperature, each answer picked by PRM-weighted vote and by the best PRM score
(a solution's score is its last step's), each charged its generated tokens and PRM calls
(`prm_jax/pipelines/test_time_search.py`).

Expected result: `runs/search/results.md` has one row per method and N (accuracy under both
rules, generated tokens and PRM calls per problem) and `search_curve.png` plots accuracy
against tokens per problem; ~20 minutes per seed on a 2-core CPU. Over 3 seeds
(`benchmarks/test_time_search_seeds.py`, README "Test-time search"), PRM vote: Best-of-N
0.815 / 0.920 / 0.937 at N = 4 / 16 / 64, beam search 0.820 / 0.875 / 0.790, DVTS 0.820 /
0.932 / 0.945, all at the same tokens per N: the published advantage of search at small
budgets does not hold here (beam search is below Best-of-N at N = 16 and 64).

`:smoke` (2-operation chains, little training, N = 4, 16 test problems) checks the
machinery end to end (`tests/test_test_time_search.py`), not the result.
"""

import ml_collections

from experiments import edu_prm, quickstart


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  if arg not in (None, "", "smoke"):
    raise ValueError(f"experiments/test_time_search.py takes '' or 'smoke', got {arg!r}")
  smoke = arg == "smoke"
  config = quickstart.get_config("smoke" if smoke else None)
  with config.unlocked():
    config.pipeline = "test_time_search"
    del config["orm"], config["eval"]  # No outcome RM, no Best-of-N curve draws here.
    if smoke:
      config.data.test_problems = 16
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
