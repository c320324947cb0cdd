"""The quickstart over several seeds: Best-of-N accuracy per method, spread, and the claim.

    python benchmarks/quickstart_seeds.py --seeds 0 1 2 --workdir runs/quickstart_seeds \
        [--config.prm.labels=oracle ...]

Runs `launch.py --config experiments/quickstart.py --config.seed=S` once per seed (one
workdir each, so an interrupted sweep resumes), then prints a markdown summary (also
written to `<workdir>/summary.md`): accuracy at the largest N per method and seed, the
mean and the spread (max - min over seeds), ProcessBench F1, policy accuracy, labeling
cost, wall time, and whether the PRM-weighted vote beats majority vote and the ORM by more
than the seed-to-seed spread (of either method).
"""

from __future__ import annotations

import os

import numpy as np

from prm_jax import files
from seed_sweep import sweep
from worker import machine

METHODS = ("majority", "prm_vote", "prm_min", "prm_prod", "prm_last", "prm_mean", "orm",
           "oracle", "random")
SCALARS = ("processbench_f1", "mc_oracle_agreement", "policy_accuracy", "labeling_tokens",
           "labeling_rollouts", "wall_seconds")


def beats(results: list[dict], n: str, winner: str, loser: str) -> tuple[float, float, bool]:
  """(mean margin, largest spread of the two methods, margin > spread and > 0 per seed)."""
  a = np.array([r["bon"][winner][n] for r in results])
  b = np.array([r["bon"][loser][n] for r in results])
  spread = max(np.ptp(a), np.ptp(b))
  margin = float(np.mean(a - b))
  return margin, float(spread), bool(margin > spread and np.all(a > b))


def summary(seeds: list[int], results: list[dict]) -> str:
  n = str(max(int(k) for k in results[0]["bon"]["majority"]))
  head = " | ".join(f"seed {s}" for s in seeds)
  lines = [f"Best-of-{n} accuracy on {len(results)} seeds "
           f"({machine()})", "",
           f"| method | {head} | mean | spread |", "|---" * (len(seeds) + 3) + "|"]
  for method in METHODS:
    values = np.array([r["bon"][method][n] for r in results])
    lines.append(f"| {method} | " + " | ".join(f"{v:.3f}" for v in values)
                 + f" | {values.mean():.3f} | {np.ptp(values):.3f} |")
  for key in SCALARS:
    values = np.array([r[key] for r in results], float)
    fmt = (lambda v: f"{v:,.0f}") if values.max() > 100 else (lambda v: f"{v:.3f}")
    lines.append(f"| {key} | " + " | ".join(fmt(v) for v in values)
                 + f" | {fmt(values.mean())} | {fmt(np.ptp(values))} |")
  lines.append("")
  for loser in ("majority", "orm"):
    margin, spread, ok = beats(results, n, "prm_vote", loser)
    lines.append(f"prm_vote - {loser} at N={n}: mean margin {margin:+.3f}, largest spread "
                 f"{spread:.3f}: {'beats it by more than the spread' if ok else 'NOT shown'}")
  f1 = min(r["processbench_f1"] for r in results)
  lines.append(f"ProcessBench F1 of the PRM: min over seeds {f1:.3f} "
               f"({'>= 0.7' if f1 >= 0.7 else 'below 0.7'})")
  return "\n".join(lines) + "\n"


def main():
  args, results = sweep(__doc__, "quickstart.py", "runs/quickstart_seeds")
  text = summary(args.seeds, results)
  files.write_text(os.path.join(args.workdir, "summary.md"), text)
  print(text)


if __name__ == "__main__":
  main()
