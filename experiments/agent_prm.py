"""AgentPRM / InversePRM on ALFWorld: SFT on imperfect expert demonstrations, then 3 rounds of
rollouts -> turn-level PRM -> online DPO, evaluated greedy and with Best-of-N per turn.

    python launch.py --config experiments/agent_prm.py --workdir runs/agent_prm
    python launch.py --config experiments/agent_prm.py --workdir runs/inverse_prm \
        --config.method=inverse_prm
    python launch.py --config experiments/agent_prm.py:smoke --workdir runs/agent_smoke  # ~2 min

The real ALFWorld engine (the `alfworld` wheel's PDDL domain and grammar on TextWorld), games
generated locally for all six task types (`prm_jax/envs/alfworld_gen.py`), and a small
Llama over ALFWorld's words (a closed word vocabulary built from the engine's grammar and
names: `envs.agent.domain_tokenizer`) as the agent. See `prm_jax/pipelines/agent_prm.py` for
the stages. A pretrained policy: `--config.policy.init=hf --config.policy.path=DIR` (its own
tokenizer; raise agent.prompt_width / max_new_tokens to its token counts).

Expected result (2-core AMD EPYC VM, ~45 min on 2026-12-07): `results.md`, the
paper-shaped table (rows: SFT, each iteration greedy and with Best-of-N; columns: task
types, seen/unseen). Seed 0 (code of 2026-12-06): the SFT policy solves 1 of 18 games
greedy on each split; at iteration 1 Best-of-16(pi, Q) solves 0.28 / 0.22 against 0.00 /
0.06 greedy; the greedy policy does not improve over the iterations (its training rollouts
fall 0.23 -> 0.14 -> 0.09). pi_0's greedy figure swings between runs (0.00-0.28 for seed
0 with padding-only differences), so read the 3-seed sweep: README ("AgentPRM and
InversePRM") and `benchmarks/RESULTS.md` say what holds and why.
`:smoke` checks the machinery end to end (`tests/test_agent_prm.py`), not the result.
"""

import ml_collections

from prm_jax import config_lib, online
from prm_jax.envs import agent
from prm_jax.objectives import dpo


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  if arg not in (None, "", "smoke"):
    raise ValueError(f"experiments/agent_prm.py takes '' or 'smoke', got {arg!r}")
  smoke = arg == "smoke"
  config = ml_collections.ConfigDict()
  config.pipeline = "agent_prm"
  config.seed = 0
  config.method = "agent_prm"  # or "inverse_prm"
  config.iterations = 1 if smoke else 3
  # `envs.alfworld_gen.GenConfig` fields (but seed): games per split and scene layouts.
  config.games = ml_collections.ConfigDict(dict(
      train=12 if smoke else 192, valid_seen=6 if smoke else 18,
      valid_unseen=6 if smoke else 18, scenes_per_room=6, unseen_scenes_per_room=2,
      max_distractors=4, task_types=("pick_and_place_simple", "look_at_obj_in_light",
                                     "pick_clean_then_place_in_recep",
                                     "pick_heat_then_place_in_recep",
                                     "pick_cool_then_place_in_recep", "pick_two_obj_and_place"),
      max_tries=20))
  # Probability of a random `go to` detour before each expert `go to` in the SFT demos.
  config.demos = ml_collections.ConfigDict(dict(detour_rate=0.3))
  config.agent = ml_collections.ConfigDict(dict(
      max_turns=12 if smoke else 30, history=2, prompt_width=256, max_new_tokens=20,
      batch_size=32 if smoke else 64,  # games played at once (and sampler rows per call)
      processes=0))  # environment worker processes (0: in this process)
  vocab = agent.domain_tokenizer().vocab_size
  config.policy = ml_collections.ConfigDict(dict(
      init="scratch", path="",
      model=config_lib.model_section(
          "tiny", vocab_size=vocab, hidden_size=128, num_layers=2, num_heads=4, num_kv_heads=4,
          head_dim=32, mlp_dim=384, max_seq_len=288, remat="full")))
  # The longest demonstration turn (prompt, action line, EOS) is 236 tokens at seed 0.
  # Batches are padded to the shortest of `bucket_lengths` that fits them (windows of 8
  # batches sorted by length): demonstration turns run 100-236 tokens, mostly ~160.
  config.sft = ml_collections.ConfigDict(dict(
      batch_size=32, max_length=256, bucket_lengths=(160, 192, 224), bucket_window=8,
      train=config_lib.train_section(
          total_steps=20 if smoke else 800, learning_rate=3e-3, warmup_steps=5 if smoke else 40,
          weight_decay=0.01, log_every=10 if smoke else 50,
          checkpoint_every=20 if smoke else 400)))
  config.rollouts = ml_collections.ConfigDict(dict(per_game=1, temperature=1.0))
  config.prm = ml_collections.ConfigDict(dict(
      gamma=0.95, batch_size=32, max_length=288, bucket_lengths=(192, 224, 256),
      bucket_window=8,
      train=config_lib.train_section(
          total_steps=10 if smoke else 100, learning_rate=1e-3, warmup_steps=2 if smoke else 10,
          weight_decay=0.01, log_every=5 if smoke else 50,
          checkpoint_every=10 if smoke else 100)))
  # The policy step: online DPO on states of the rollouts, K samples each ranked by Q_i.
  rollout = config_lib.dataclass_section(
      online.RolloutConfig, prompts_per_step=4 if smoke else 16, group_size=4,
      max_new_tokens=config.agent.max_new_tokens, temperature=1.0)
  del rollout["seed"]  # the pipeline seeds it with `config.seed`
  config.improve = ml_collections.ConfigDict(dict(
      states=64 if smoke else 1024, rollout=rollout,
      train=config_lib.train_section(
          total_steps=2 if smoke else 60, learning_rate=3e-5, warmup_steps=0 if smoke else 5,
          final_lr_fraction=1.0, log_every=1 if smoke else 10,
          checkpoint_every=2 if smoke else 30)))
  config.dpo = config_lib.dataclass_section(dpo.DPOConfig, beta=0.1)
  config.eval = ml_collections.ConfigDict(dict(ns=(1, 4) if smoke else (1, 4, 16),
                                               temperature=1.0))
  config.mesh = config_lib.mesh_section()
  config.distributed = config_lib.distributed_section()
  config.lock()
  return config
