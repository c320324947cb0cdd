"""GRPO training throughput end to end: prm_jax's online source + train loop vs TRL's
`GRPOTrainer`, side by side in one run.

    python benchmarks/bench_grpo.py        # both shapes; variants trl, jax-1dev, jax-<cores>dev
    python benchmarks/bench_grpo.py --shapes policy --steps 6 --repeats 3

The same on both sides: a tiny Llama, randomly initialised, fp32, in one of two shapes:
  policy  the policy `experiments/grpo.py` trains (the quickstart's: vocab 99, hidden 128,
          4 layers, 4 heads of 32, MLP 384; 0.8M parameters);
  tiny    `bench_prm_train.py`'s `tiny` (vocab 512, hidden 256, 4 layers, 4 heads of 64,
          MLP 1024; 4.5M parameters);
8 prompts x G = 8 completions per step, prompts of 32 random tokens, up to 64 completion
tokens (EOS stops a row), temperature 1, no top-p / top-k; reward = the share of
completion tokens equal to one token id (on token ids, a few microseconds);
group-normalised advantages, clipped ratio (eps 0.2), token-level aggregation (TRL's
default `loss_type="dapo"`), no KL (TRL's default `beta=0`), one optimisation step per
rollout; AdamW, global-norm clip 1.0. Both sides run their library's defaults otherwise
(TRL: gradient checkpointing on, as `GRPOConfig` sets it).

A step is everything between two optimizer updates: sampling the 64 completions with the
current weights, the reward, advantages, the loss's forward and backward, AdamW.
  * TRL 1.13: `GRPOTrainer` (transformers `generate` with its KV cache, sdpa attention,
    torch CPU); a callback stamps `on_step_end`, a step is the gap between two stamps.
  * prm_jax: `train.train_loop` on an `online.OnlineSource` (the KV-cache sampler, the
    jitted train step); the source stamps each `next_batch` call (which first waits for
    the previous step's parameters), a step is the gap between two stamps.
The first `--warmup` steps (compilation, allocator warm-up) are not timed; steps/s uses the
median step (and the fastest step, the best estimate on a shared machine).
Every measurement runs in its own subprocess (`XLA_FLAGS` sets the host devices first).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time

import numpy as np

from worker import machine, run_worker

SHAPES = {
    "policy": dict(vocab_size=99, hidden_size=128, num_layers=4, num_heads=4, num_kv_heads=4,
                   head_dim=32, mlp_dim=384),
    "tiny": dict(vocab_size=512, hidden_size=256, num_layers=4, num_heads=4, num_kv_heads=4,
                 head_dim=64, mlp_dim=1024),
}
PROMPTS, GROUP, PROMPT_LEN, COMPLETION_LEN = 8, 8, 32, 64
PAD, BOS, EOS, TARGET = 0, 1, 2, 7


def prompt_ids(vocab_size: int, count: int = 256, seed: int = 0) -> list[list[int]]:
  rng = np.random.default_rng(seed)
  return rng.integers(3, vocab_size, (count, PROMPT_LEN)).tolist()


def target_share(ids) -> float:
  return float(np.mean(np.asarray(ids) == TARGET)) if len(ids) else 0.0


# ----------------------------------------------------------------------------- workers


def run_jax(shape: dict, steps: int, warmup: int) -> dict:
  # pylint: disable=import-outside-toplevel
  from prm_jax import models, online, parallel, train
  from prm_jax.objectives import grpo

  config = models.ModelConfig(**shape, max_seq_len=PROMPT_LEN + COMPLETION_LEN)
  stamps = []

  def score(rollouts):
    rewards = [target_share(row[:n]) for row, n in zip(rollouts.tokens, rollouts.lengths)]
    return online.Scores(rewards=np.asarray(rewards, np.float32))

  class TimedSource(online.OnlineSource):
    def next_batch(self, params):
      stamps.append(time.perf_counter())
      return super().next_batch(params)

  objective = grpo.GRPOConfig(eps_low=0.2, eps_high=0.2, aggregation="token", kl_coef=0.0)
  rollout = online.RolloutConfig(prompts_per_step=PROMPTS, group_size=GROUP,
                                 max_new_tokens=COMPLETION_LEN, temperature=1.0)
  mesh = parallel.make_mesh()
  source = TimedSource(config, prompt_ids(shape["vocab_size"]), score, objective, rollout,
                       mesh=mesh,
                       stop_tokens=(EOS,), pad_id=PAD)
  total = warmup + steps + 1  # The last stamp opens a step that is not timed.
  train_config = train.TrainConfig(total_steps=total, learning_rate=1e-5, clip_norm=1.0,
                                   log_every=total, checkpoint_every=0,
                                   async_checkpointing=False, progress_every_s=3600.0)
  with tempfile.TemporaryDirectory() as workdir:
    result = train.train_loop(config, grpo.make_grpo_loss(config, objective), source,
                              config=train_config, workdir=workdir, mesh=mesh)
  return {"step_seconds": np.diff(stamps[warmup:]).tolist(),
          "loss": result.history[-1]["train/loss"],
          "reward": result.history[-1]["train/rollout_reward"]}


def run_trl(shape: dict, steps: int, warmup: int) -> dict:
  # pylint: disable=import-outside-toplevel
  import datasets
  import tokenizers
  import torch
  import transformers
  from trl import GRPOConfig, GRPOTrainer

  vocab = {"<pad>": PAD, "<bos>": BOS, "<eos>": EOS}
  vocab.update({f"w{i}": i for i in range(3, shape["vocab_size"])})
  word_level = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="<pad>"))
  word_level.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
  tokenizer = transformers.PreTrainedTokenizerFast(
      tokenizer_object=word_level, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>")
  dataset = datasets.Dataset.from_dict(
      {"prompt": [" ".join(f"w{i}" for i in ids) for ids in prompt_ids(shape["vocab_size"])]})
  torch.manual_seed(0)
  model = transformers.LlamaForCausalLM(transformers.LlamaConfig(
      vocab_size=shape["vocab_size"], hidden_size=shape["hidden_size"],
      intermediate_size=shape["mlp_dim"], num_hidden_layers=shape["num_layers"],
      num_attention_heads=shape["num_heads"], num_key_value_heads=shape["num_kv_heads"],
      head_dim=shape["head_dim"], max_position_embeddings=PROMPT_LEN + COMPLETION_LEN,
      tie_word_embeddings=False, pad_token_id=PAD, bos_token_id=BOS, eos_token_id=EOS))
  stamps = []

  class StepTimer(transformers.TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
      stamps.append(time.perf_counter())

  def reward(completion_ids, **kwargs):
    return [target_share(ids) for ids in completion_ids]

  with tempfile.TemporaryDirectory() as output_dir:
    args = GRPOConfig(
        output_dir=output_dir, per_device_train_batch_size=PROMPTS * GROUP,
        num_generations=GROUP, max_completion_length=COMPLETION_LEN, temperature=1.0,
        top_p=1.0, top_k=0, learning_rate=1e-5, max_grad_norm=1.0, beta=0.0,
        num_iterations=1, loss_type="dapo", epsilon=0.2, max_steps=warmup + steps + 1,
        logging_steps=10**6, save_strategy="no", report_to=[], disable_tqdm=True,
        use_cpu=True, bf16=False, fp16=False, seed=0, dataloader_num_workers=0)
    trainer = GRPOTrainer(model=model, reward_funcs=[reward], args=args,
                          train_dataset=dataset, processing_class=tokenizer,
                          callbacks=[StepTimer()])
    result = trainer.train()
  return {"step_seconds": np.diff(stamps[warmup:]).tolist(),
          "loss": float(result.training_loss), "threads": torch.get_num_threads()}


# ----------------------------------------------------------------------------- driver


def _variants(cores: int) -> dict[str, dict]:
  variants = {"trl": {"worker": "trl"}, "jax-1dev": {"worker": "jax", "devices": 1}}
  if cores > 1:
    variants[f"jax-{cores}dev"] = {"worker": "jax", "devices": cores}
  return variants


def _run_worker(shape: str, variant: dict, steps: int, warmup: int) -> dict:
  return run_worker(__file__, ["--worker", variant["worker"], "--shapes", shape, "--steps",
                               str(steps), "--warmup", str(warmup)],
                    devices=variant.get("devices", 1))


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
  parser.add_argument("--steps", type=int, default=8, help="timed steps per measurement")
  parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
  parser.add_argument("--repeats", type=int, default=1,
                      help="measure each variant this often, round-robin")
  parser.add_argument("--variants", nargs="+", help="subset of the variants (default: all)")
  parser.add_argument("--worker", choices=["jax", "trl"], help=argparse.SUPPRESS)
  args = parser.parse_args()

  if args.worker:
    run = run_jax if args.worker == "jax" else run_trl
    print(json.dumps(run(SHAPES[args.shapes[0]], args.steps, args.warmup)))
    return

  cores = os.cpu_count() or 1
  variants = _variants(cores)
  if args.variants:
    variants = {name: variants[name] for name in args.variants}
  print(f"# {platform.node()} | {machine()} | "
        f"load {os.getloadavg()[0]:.1f} at start | {args.repeats} repeat(s) | "
        f"{PROMPTS} prompts x {GROUP} samples, prompt {PROMPT_LEN} + completion "
        f"<= {COMPLETION_LEN} tokens")
  print("| shape | variant | steps timed | s/step (median) | steps/s (median) | "
        "steps/s (fastest) | vs TRL (median) | vs TRL (fastest) |")
  print("|---|---|---|---|---|---|---|---|")
  for shape in args.shapes:
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.repeats):
      for name, variant in variants.items():
        times[name] += _run_worker(shape, variant, args.steps, args.warmup)["step_seconds"]
    trl = times.get("trl")
    for name, t in times.items():
      median, fastest = 1 / np.median(t), 1 / np.min(t)
      ratio = (f"{median * np.median(trl):.2f}x | {fastest * np.min(trl):.2f}x" if trl
               else "- | -")
      print(f"| {shape} | {name} | {len(t)} | {np.median(t):.3f} | {median:.2f} | "
            f"{fastest:.2f} | {ratio} |", flush=True)


if __name__ == "__main__":
  main()
