"""The online RL claim over seeds: do PRM-shaped rewards beat the outcome reward?

    python benchmarks/policy_rl_seeds.py --seeds 0 1 2 --workdir runs/policy_rl_seeds \
        [--settings outcome mix prm_only prm_steps dpo] [--config.rl.train.total_steps=100 ...]

For every seed, one workdir (`seed_<S>`: the shared stages, SFT policy and PRM, run once)
and one run per setting, each `launch.py --config experiments/grpo.py` (or
`online_dpo.py`) `--config.seed=S` plus the setting's overrides; a finished run is not
run again, so an interrupted sweep resumes. Then a markdown summary (also written to
`<workdir>/summary.md`): test accuracy (sampled and greedy) of the SFT policy and after the
last step per setting and seed, mean and spread (max - min), the best evaluation, the
first evaluated step at `--target` accuracy, the hacking monitor at the end (test PRM gap; training rollouts'
PRM reward vs solved), generated tokens and wall time; and per PRM setting the verdict on
"beats outcome-only": the mean margin against the larger spread.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import numpy as np

from prm_jax import files
from worker import machine

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# name -> (experiment, overrides)
SETTINGS = {
    "outcome": ("grpo.py", ["--config.reward.name=outcome"]),
    "mix": ("grpo.py", ["--config.reward.name=mix", "--config.reward.beta=0.5"]),
    "prm_only": ("grpo.py", ["--config.reward.name=prm"]),
    "prm_steps": ("grpo.py", ["--config.reward.name=prm_steps"]),
    "dpo": ("online_dpo.py", ["--config.reward.name=prm"]),
}


def run_setting(seed: int, name: str, workdir: str, overrides: list[str]) -> dict:
  folder = os.path.join(workdir, f"seed_{seed}")
  path = os.path.join(folder, name, "results.json")
  if not os.path.exists(path):
    experiment, setting = SETTINGS[name]
    subprocess.run([sys.executable, os.path.join(ROOT, "launch.py"), "--config",
                    os.path.join(ROOT, "experiments", experiment), "--workdir", folder,
                    f"--config.seed={seed}", f"--config.rl.name={name}", *setting,
                    *overrides], check=True)
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def _row(label: str, values, fmt, spread_fmt=None) -> str:
  values = np.asarray(values, float)
  complete = bool(np.all(np.isfinite(values)))
  mean = fmt(values.mean()) if complete else "-"
  spread = (spread_fmt or fmt)(np.ptp(values)) if complete else "-"
  cells = " | ".join(fmt(v) if np.isfinite(v) else "never" for v in values)
  return f"| {label} | {cells} | {mean} | {spread} |"


def steps_to(result: dict, target: float) -> float:
  """First evaluated step with sampled test accuracy >= target (0: the SFT policy; inf:
  never)."""
  if result["initial"]["sampled_accuracy"] >= target:
    return 0
  test = result["curves"]["test"]
  return next((s for s, a in zip(test["step"], test["sampled_accuracy"]) if a >= target),
              np.inf)


def summary(seeds: list[int], runs: dict[str, list[dict]], target: float) -> str:
  first = next(iter(runs.values()))
  steps, every = first[0]["steps"], first[0]["config"]["rl"]["train"]["eval_every"]
  acc = lambda v: f"{v:.3f}"
  signed = lambda v: f"{v:+.3f}"
  head = " | ".join(f"seed {s}" for s in seeds)
  lines = [f"Online RL on {len(seeds)} seeds ({machine()}); test accuracy after {steps} steps",
           "",
           f"| setting | {head} | mean | spread |", "|---" * (len(seeds) + 3) + "|"]
  lines.append(_row("SFT policy, sampled", [r["initial"]["sampled_accuracy"] for r in first],
                    acc))
  lines.append(_row("SFT policy, greedy", [r["initial"]["greedy_accuracy"] for r in first],
                    acc))
  lines.append(_row("SFT policy, test PRM gap", [r["initial"]["prm_gap"] for r in first],
                    signed, acc))
  for name, results in runs.items():
    final = lambda key: [r["final"][key] for r in results]
    best = [max(r["curves"]["test"]["sampled_accuracy"]) for r in results]
    reach = [steps_to(r, target) for r in results]
    train = lambda key: [np.mean(r["curves"]["train"][key][-4:]) for r in results]
    lines += [
        _row(f"{name}: sampled", final("sampled_accuracy"), acc),
        _row(f"{name}: greedy", final("greedy_accuracy"), acc),
        _row(f"{name}: best evaluation, sampled", best, acc),
        _row(f"{name}: steps to sampled >= {target:g} (evaluated every {every})", reach,
             lambda v: f"{v:.0f}"),
        _row(f"{name}: test PRM gap", final("prm_gap"), signed, acc),
        _row(f"{name}: train PRM reward (last 4 logs)", train("rollout_prm_reward"), acc),
        _row(f"{name}: train solved (last 4 logs)", train("rollout_outcome"), acc),
        _row(f"{name}: generated tokens", [r["generated_tokens"] for r in results],
             lambda v: f"{v:,.0f}"),
        _row(f"{name}: wall seconds", [r["wall_seconds"] for r in results],
             lambda v: f"{v:,.0f}")]
  lines.append("")
  if "outcome" in runs:
    base = np.array([r["final"]["sampled_accuracy"] for r in runs["outcome"]])
    for name, results in runs.items():
      if name == "outcome":
        continue
      other = np.array([r["final"]["sampled_accuracy"] for r in results])
      margin, spread = float(np.mean(other - base)), float(max(np.ptp(other), np.ptp(base)))
      wins = int(np.sum(other > base))
      verdict = ("beats outcome-only by more than the spread" if margin > spread and
                 wins == len(seeds) else "worse than outcome-only by more than the spread"
                 if -margin > spread and wins == 0 else "no difference beyond the spread")
      lines.append(f"{name} - outcome, sampled accuracy after {steps} steps: mean margin "
                   f"{margin:+.3f}, larger spread {spread:.3f}, ahead on {wins}/{len(seeds)} "
                   f"seeds: {verdict}")
      reach = [np.mean([steps_to(r, target) for r in rs]) for rs in (results, runs["outcome"])]
      lines.append(f"{name} vs outcome, mean first step at sampled >= {target:g}: "
                   f"{reach[0]:.0f} vs {reach[1]:.0f}")
  return "\n".join(lines) + "\n"


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
  parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
  parser.add_argument("--workdir", default="runs/policy_rl_seeds")
  parser.add_argument("--target", type=float, default=0.9,
                      help="the test accuracy (sampled) whose first step is reported")
  args, overrides = parser.parse_known_args()  # The rest: --config.x=y for every run.
  runs = {name: [run_setting(seed, name, args.workdir, overrides) for seed in args.seeds]
          for name in args.settings}
  text = summary(args.seeds, runs, args.target)
  files.write_text(os.path.join(args.workdir, "summary.md"), text)
  print(text)


if __name__ == "__main__":
  main()
