"""ReasonFlux-PRM: does a trajectory-aware PRM pick better SFT data and better Best-of-N picks?

    python launch.py --config experiments/reasonflux.py --workdir runs/reasonflux
    python launch.py --config experiments/reasonflux.py:smoke --workdir runs/rf_smoke  # ~2 min
    python benchmarks/reasonflux_seeds.py --seeds 0 1 2        # the claims over 3 seeds

The quickstart's task and SFT policy (same seed: same problems and policy), then
`prm_jax/pipelines/reasonflux.py`: thinking + response pairs of known quality on held-apart
arithmetic problems (clean; exploration with a wrong attempt and a check; redundant;
unrecovered errors; thinking that does not support its response), ReasonFlux-PRM targets for
2000 of them (alignment and coherence from the policy's hidden states, the checker as the
quality judge, the template-guided success rate of 4 policy samples as the trajectory
target), the PRM trained on them (initialised from the policy), a baseline step PRM on the
same pairs' responses (the quickstart's kind, lines labelled by the checker), and the three
uses: keep the top 2000 of a pool of 6000 pairs and train a policy from scratch on their
responses (selectors: random, outcome filter, ReasonFlux-PRM, its step scores alone, oracle,
the step PRM); GRPO from the SFT policy for 100 steps with the rule-only reward and with
`0.5 outcome + 0.5 ReasonFlux-PRM`; Best-of-8 over candidate pairs of every test problem.

Paper's claims (Zou et al. 2025): selection by ReasonFlux-PRM beats other selectors for SFT
(+12.1% on hard benchmarks); as a GRPO reward it beats the rule-based reward (+4.5%);
Best-of-N by it scales better (+6.3%). Expected result here (2-core CPU: ~34 minutes per
seed on an Intel Xeon VM, ~55 on an AMD EPYC VM): step AUROC of the PRM on held-out pairs
~0.78; over 3 seeds (`benchmarks/RESULTS.md`, README) Best-of-8 by ReasonFlux-PRM 0.953 vs
random 0.669 and the step PRM 0.572 (holds), level with majority vote; its SFT selection
no better than random (0.647 vs 0.712: does not hold), its step scores alone 0.938; GRPO
with the mixed reward level with rule-only (0.897 vs 0.947, spread 0.200). `:smoke` checks the machinery end to end
(`tests/test_reasonflux_pipeline.py`), not the result.
"""

import ml_collections

from experiments import grpo, quickstart
from prm_jax import config_lib
from prm_jax.data.tasks import ERROR_KINDS
from prm_jax.pipelines.reasonflux import SELECTORS


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  if arg not in (None, "", "smoke"):
    raise ValueError(f"experiments/reasonflux.py takes '' or 'smoke', got {arg!r}")
  smoke = arg == "smoke"
  config = quickstart.get_config("smoke" if smoke else None)
  with config.unlocked():
    config.pipeline = "reasonflux"
    # The quickstart's reward models and Monte Carlo labels are not used here.
    del config["prm"], config["orm"], config["labeling"], config["eval"]
    # Pairs are up to 201 characters (4-operation chains): the PRM, initialised from the
    # policy, needs the longer positions (RoPE has no parameters: the same policy).
    config.policy.model.max_seq_len = 256
    config.pairs = ml_collections.ConfigDict(dict(
        prm_pairs=128 if smoke else 2000,  # Pairs the PRM is trained on.
        pool_pairs=256 if smoke else 6000,  # Pairs to select SFT data from.
        # Round robin over these kinds (`prm_jax.data.tasks.THINKING_KINDS`): unrecovered
        # twice, so a third of the responses are wrong.
        kinds=("clean", "exploration", "redundant", "unrecovered", "unrecovered",
               "unsupported"),
        error_kinds=tuple(sorted(ERROR_KINDS))))
    config.bon = ml_collections.ConfigDict(dict(n=4 if smoke else 8))
    config.targets = ml_collections.ConfigDict(dict(
        encoder_max_length=40,  # Tokens of a step the encoder reads (steps are <= 32).
        encoder_batch_size=256,
        negatives=8,  # Coherence: steps of other pairs per step.
        temperature=0.1,  # Coherence softmax temperature.
        template_samples=2 if smoke else 4,  # Template-guided samples per pair.
        # Step quality: "checker" (exact, synthetic data) or "lm" (the policy asked by
        # prompt, P(yes)/(P(yes)+P(no)); answers must be one token: " Yes"/" No" for BPE
        # tokenizers, "Y"/"N" for the character-level policy here).
        judge="checker",
        lm_judge=ml_collections.ConfigDict(dict(max_length=256, batch_size=32, yes="Y",
                                                no="N"))))
    config.reasonflux_prm = ml_collections.ConfigDict(dict(
        batch_size=32, max_length=160 if smoke else 224, lambda_step=1.0, lambda_final=1.0,
        train=config_lib.train_section(
            total_steps=20 if smoke else 400, learning_rate=1e-3, warmup_steps=2 if smoke else 40,
            weight_decay=0.01, log_every=10 if smoke else 100,
            checkpoint_every=20 if smoke else 200)))
    config.selection = ml_collections.ConfigDict(dict(
        top_k=96 if smoke else 2000, alpha=1.0,
        # :smoke trains 4 of the 6 students (the 2-minute budget of its test).
        selectors=("random", "reasonflux", "oracle", "step_prm") if smoke else SELECTORS))
    # The baseline step PRM (response lines, the checker's labels), as the quickstart's.
    config.step_prm = ml_collections.ConfigDict(dict(
        batch_size=64, max_length=64, aggregation="min",
        train=config_lib.train_section(
            total_steps=20 if smoke else 300, learning_rate=1e-3, warmup_steps=2 if smoke else 30,
            weight_decay=0.01, log_every=10 if smoke else 100,
            checkpoint_every=20 if smoke else 150)))
    # GRPO from the SFT policy (`experiments/grpo.py`'s sections), one run per reward:
    # `outcome` (rule only) and `mix` = (1 - beta) outcome + beta ReasonFlux-PRM.
    grpo.add_rl_sections(config, smoke)
    config.rl.rewards = ("outcome", "mix")  # Runs `<rl.method>_<reward>` in <workdir>/grpo.
    del config.rl["name"], config.reward["name"]  # Named by rl.rewards instead.
    config.rl.problems = 64 if smoke else 1600
    config.rl.train.update(total_steps=4 if smoke else 100, eval_every=2 if smoke else 25)
    config.student = ml_collections.ConfigDict(dict(
        batch_size=64, max_length=config.sft.max_length, eval_samples=2 if smoke else 4,
        train=config_lib.train_section(
            total_steps=30 if smoke else 600, learning_rate=3e-3,
            warmup_steps=5 if smoke else 60, weight_decay=0.01, log_every=10 if smoke else 200,
            checkpoint_every=30 if smoke else 300)))
    if smoke:
      quickstart.shrink_for_machinery(config, prm=False)  # Its step PRM: its own section.
  config.lock()
  return config
