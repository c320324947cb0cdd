"""GRPO on the quickstart's policy: does a PRM in the reward beat the outcome reward alone?

    python launch.py --config experiments/grpo.py --workdir runs/grpo          # reward: mix
    python launch.py --config experiments/grpo.py --workdir runs/grpo --config.reward.name=outcome
    python launch.py --config experiments/grpo.py:smoke --workdir runs/grpo_smoke   # ~2 min

The quickstart's stages (same seed: same problems, SFT policy and step PRM, which it
trains here too) and then GRPO (`prm_jax/pipelines/policy_rl.py`) from the SFT policy on
held-out train-split arithmetic prompts, 16 prompts x 8 samples per step. The SFT policy
works `a-b` out as `b-a` at the first subtraction on most long chains, so there is room to
improve and an exact checker to tell. Rewards (`--config.reward.name`): `outcome` (the
checker's final answer), `prm` (the PRM's min step score), `mix` (ReasonFlux-PRM's
`(1 - beta) outcome + beta PRM`, `--config.reward.beta`), `prm_steps` (dense per-step PRM
rewards with DeepSeekMath's process-supervised advantages). Runs in one workdir share the
stages and are compared in `results.md` / `rl_curves.png`. GRPO's switches are
`--config.grpo.*` (`prm_jax/objectives/grpo.py`: clip-higher, aggregation, KL, Dr.GRPO,
dynamic sampling); sampling and minibatching `--config.rollout.*`.

Expected result (2-core CPU, one reward setting, about 12 minutes of which ~4 are the
shared stages; `benchmarks/RESULTS.md` has all settings over 3 seeds): test accuracy of
sampled solutions from ~0.6 (SFT) to ~0.9 after 150 steps with every reward; which reward
gets there first and whether the PRM is exploited (the gap between its reward and the
checker's) is what `benchmarks/policy_rl_seeds.py` measures. `:smoke` checks the machinery
end to end (`tests/test_policy_rl.py`), not the result.
"""

import ml_collections

from experiments import quickstart
from prm_jax import config_lib, online
from prm_jax.objectives import dpo, grpo


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  if arg not in (None, "", "smoke"):
    raise ValueError(f"experiments/grpo.py takes '' or 'smoke', got {arg!r}")
  smoke = arg == "smoke"
  config = quickstart.get_config("smoke" if smoke else None)
  with config.unlocked():
    config.pipeline = "policy_rl"
    del config["orm"], config["eval"]  # The quickstart's ORM and Best-of-N: not used here.
    add_rl_sections(config, smoke)
    if smoke:
      quickstart.shrink_for_machinery(config)
  config.lock()
  return config


def add_rl_sections(config: ml_collections.ConfigDict, smoke: bool) -> None:
  """The sections of an online RL run (`pipelines.policy_rl.train_run`): `rl`, `rollout`,
  `grpo`, `dpo`, `reward`; on the quickstart's config (its sampling settings)."""
  with config.unlocked():
    config.rl = ml_collections.ConfigDict(dict(
        method="grpo",
        name="",  # Run directory in the workdir; "" = <method>_<reward>.
        problems=64 if smoke else 2000,  # RL prompts (train split, not SFT/PRM problems).
        iterations=1,  # Online DPO: iterations, the reference = the previous policy.
        eval_samples=2 if smoke else 4,  # Sampled test solutions per problem per evaluation.
        target_accuracy=0.8,  # "Steps to target": first evaluation with sampled acc. >= it.
        train=config_lib.train_section(
            total_steps=4 if smoke else 150, learning_rate=1e-4, warmup_steps=0 if smoke else 10,
            final_lr_fraction=1.0, log_every=1 if smoke else 5, eval_every=2 if smoke else 25,
            checkpoint_every=2 if smoke else 50)))
    config.rollout = config_lib.dataclass_section(
        online.RolloutConfig, prompts_per_step=4 if smoke else 16,
        group_size=4 if smoke else 8, max_new_tokens=config.sampling.max_new_tokens,
        temperature=config.sampling.temperature)
    del config.rollout["seed"]  # The pipeline seeds the rollouts with `config.seed`.
    config.grpo = config_lib.dataclass_section(
        grpo.GRPOConfig, eps_low=0.2, eps_high=0.28, aggregation="token", kl_coef=1e-3)
    config.dpo = config_lib.dataclass_section(dpo.DPOConfig)
    config.reward = ml_collections.ConfigDict(dict(name="mix", aggregation="min", beta=0.5))
