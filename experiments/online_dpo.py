"""Online DPO with the PRM on the quickstart's policy (AgentPRM's policy step).

    python launch.py --config experiments/online_dpo.py --workdir runs/grpo   # next to GRPO runs
    python launch.py --config experiments/online_dpo.py:smoke --workdir runs/grpo_smoke

`experiments/grpo.py`'s stages and evaluation, then `rl.iterations` iterations of online
DPO (`prm_jax/objectives/dpo.py`): every step samples K = 8 solutions of each of 16
prompts with the current policy, ranks them by the PRM (min step score), trains on the
best-vs-worst pair of every prompt whose samples differ, with the policy of the previous
iteration as the reference (the first iteration's: the SFT policy). The PRM stays the one
trained on the SFT policy's samples (AgentPRM also refits it each iteration; not here).

Expected result (2-core CPU, ~12 minutes): sampled test accuracy up from the SFT policy's
~0.6; how it compares with GRPO's rewards, over 3 seeds, is in `benchmarks/RESULTS.md`.
"""

import ml_collections

from experiments import grpo


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  if arg not in (None, "", "smoke"):
    raise ValueError(f"experiments/online_dpo.py takes '' or 'smoke', got {arg!r}")
  config = grpo.get_config(arg)
  with config.unlocked():
    config.rl.update(method="dpo", iterations=2 if arg == "smoke" else 3)
    config.reward.update(name="prm")
    if arg != "smoke":
      # DPO's lr, chosen on the training rollouts' solved rate (1e-4 let the PRM's reward
      # climb while the solved rate fell).
      config.rl.train.update(total_steps=50, learning_rate=3e-5, eval_every=25,
                             checkpoint_every=25)
    else:
      config.rl.train.update(total_steps=2)
  config.lock()
  return config
