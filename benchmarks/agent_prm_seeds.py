"""AgentPRM's and InversePRM's claims over several seeds, on ALFWorld in miniature.

    python benchmarks/agent_prm_seeds.py --seeds 0 1 2 --workdir runs/agent_seeds [--config.x=y]

Runs `launch.py --config experiments/agent_prm.py --config.seed=S` per seed for AgentPRM
(`<workdir>/agent_prm/seed_S`), then InversePRM (`<workdir>/inverse_prm/seed_S`, which starts
from a copy of the AgentPRM run's games, demonstrations and SFT policy: the same pi_0, so the
two methods differ only in how Q is learned); an interrupted sweep resumes. Writes
`<workdir>/summary.md` (printed too): success on valid_seen / valid_unseen per row of the
paper's table, mean ± spread (max - min) over seeds, and the claims:

  1. success rises over AgentPRM iterations (greedy policy: last iteration vs SFT);
  2. Best-of-N(pi, Q) > pi (largest N vs the same policy's greedy and single sample);
  3. InversePRM, from demonstrations alone, approaches AgentPRM (its iterations vs AgentPRM's
     last), the paper: near-expert in one iteration;
plus the reward-hacking check (Q of chosen actions, won vs lost episodes) and wall times.
"""

from __future__ import annotations

import os
import shutil
import sys

import numpy as np

from seed_sweep import run_seed
from worker import machine

SHARED = ("games", "games.json", "demos.json", "policy_0", "eval_0.json")


def _stats(values) -> str:
  values = np.asarray([v for v in values if v is not None], float)
  if not len(values):
    return "n/a"
  return f"{values.mean():.3f} ± {np.ptp(values):.3f}"


def _mean(values) -> float:
  return float(np.mean(values))


def rows(results: list[dict]) -> list[tuple[str, str, str]]:
  """(label, iteration, actor) of every table row present in the runs."""
  out = []
  for i in sorted(results[0]["evals"], key=int):
    for key in results[0]["evals"][i]:
      if key.endswith("/valid_seen"):
        out.append((i, key.split("/")[0]))
  return out


def table(name: str, results: list[dict]) -> list[str]:
  lines = [f"### {name}", "", "| policy | seen | unseen | invalid (seen) | turns (seen) |",
           "|---|---|---|---|---|"]
  for i, actor in rows(results):
    per = [r["evals"][i] for r in results]
    label = ("SFT" if int(i) == 0 else f"iter {i}") + ("" if actor == "greedy" else
                                                        f", Best-of-{actor.split('_')[1]}")
    lines.append(f"| {label} | {_stats([p[f'{actor}/valid_seen']['success'] for p in per])} | "
                 f"{_stats([p[f'{actor}/valid_unseen']['success'] for p in per])} | "
                 f"{_stats([p[f'{actor}/valid_seen']['invalid_rate'] for p in per])} | "
                 f"{_mean([p[f'{actor}/valid_seen']['mean_turns'] for p in per]):.1f} |")
  return lines + [""]


def success(results, i, actor, split) -> np.ndarray:
  return np.array([r["evals"][str(i)][f"{actor}/{split}"]["success"] for r in results])


def claims(agent: list[dict], inverse: list[dict]) -> list[str]:
  last = max(int(i) for i in agent[0]["evals"])
  largest = max(int(k.split("/")[0].split("_")[1]) for k in agent[0]["evals"][str(last)]
                if k.startswith("bon_"))
  lines = ["Claims (mean over seeds; spread = max - min):"]
  for split in ("valid_seen", "valid_unseen"):
    sft, final = success(agent, 0, "greedy", split), success(agent, last, "greedy", split)
    trend = [success(agent, i, "greedy", split).mean() for i in range(last + 1)]
    gain = final - sft
    verdict = ("holds" if gain.mean() > np.ptp(sft) and gain.min() > 0 else "does NOT hold")
    lines.append(f"1. {split}: AgentPRM greedy success by iteration "
                 f"{' -> '.join(f'{t:.3f}' for t in trend)}; last - SFT {gain.mean():+.3f} "
                 f"(per seed {', '.join(f'{g:+.3f}' for g in gain)}): {verdict}.")
  for split in ("valid_seen", "valid_unseen"):
    for i in range(1, last + 1):
      bon, one = success(agent, i, f"bon_{largest}", split), success(agent, i, "bon_1", split)
      greedy = success(agent, i, "greedy", split)
      diff = bon - np.maximum(one, greedy)
      verdict = "holds" if diff.mean() > 0 and diff.min() >= 0 else "does NOT hold"
      lines.append(f"2. {split}, iter {i}: Best-of-{largest} {bon.mean():.3f} vs one sample "
                   f"{one.mean():.3f}, greedy {greedy.mean():.3f}: {verdict}.")
  for split in ("valid_seen", "valid_unseen"):
    target = success(agent, last, "greedy", split)
    improved = target.mean() > success(agent, 0, "greedy", split).mean()
    for i in range(1, max(int(k) for k in inverse[0]["evals"]) + 1):
      ours = success(inverse, i, "greedy", split)
      # Approaching a baseline that did not improve on the SFT policy says nothing.
      verdict = ("cannot be judged: AgentPRM did not improve on the SFT policy" if not improved
                 else "approaches" if ours.mean() >= target.mean() - np.ptp(target)
                 else "does NOT approach")
      lines.append(f"3. {split}: InversePRM iter {i} greedy {ours.mean():.3f} vs AgentPRM iter "
                   f"{last} {target.mean():.3f} (spread {np.ptp(target):.3f}): {verdict}.")
  return lines


def hacking(name: str, results: list[dict]) -> list[str]:
  lines = []
  for i in sorted((k for k in results[0]["evals"] if k != "0"), key=int):
    for split in ("valid_seen", "valid_unseen"):
      h = [r["evals"][i]["hacking"][split] for r in results]
      lines.append(f"- {name} iter {i} {split}: Q of chosen actions, won episodes "
                   f"{_stats([x['q_won'] for x in h])}, lost {_stats([x['q_lost'] for x in h])};"
                   f" AUROC of episode mean Q for success {_stats([x['q_success_auroc'] for x in h])}")
  return lines


def main():
  import argparse
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
  parser.add_argument("--workdir", default="runs/agent_seeds")
  args, overrides = parser.parse_known_args()
  agent, inverse = [], []
  for seed in args.seeds:
    agent.append(run_seed(seed, os.path.join(args.workdir, "agent_prm"), overrides,
                          "agent_prm.py"))
    source = os.path.join(args.workdir, "agent_prm", f"seed_{seed}")
    target = os.path.join(args.workdir, "inverse_prm", f"seed_{seed}")
    if not os.path.exists(target):
      os.makedirs(target)
      for name in SHARED:
        path = os.path.join(source, name)
        (shutil.copytree if os.path.isdir(path) else shutil.copy)(path, os.path.join(target, name))
    inverse.append(run_seed(seed, os.path.join(args.workdir, "inverse_prm"),
                            ["--config.method=inverse_prm", *overrides], "agent_prm.py"))
  timing = lambda results: ", ".join(
      f"{k} {_mean([r['timings'][k] for r in results]):.0f}" for k in results[0]["timings"])
  lines = [f"AgentPRM / InversePRM on ALFWorld in miniature over {len(args.seeds)} seeds "
           f"({', '.join(map(str, args.seeds))}; {machine()})", ""]
  lines += table("AgentPRM", agent) + table("InversePRM", inverse)
  lines += claims(agent, inverse) + ["", "Reward-hacking check:"]
  lines += hacking("AgentPRM", agent) + hacking("InversePRM", inverse)
  lines += ["", f"Wall time per seed (s), AgentPRM: {timing(agent)}; InversePRM (from AgentPRM's "
            f"SFT policy): {timing(inverse)}"]
  text = "\n".join(lines) + "\n"
  with open(os.path.join(args.workdir, "summary.md"), "w", encoding="utf-8") as f:
    f.write(text)
  sys.stdout.write(text)


if __name__ == "__main__":
  main()
