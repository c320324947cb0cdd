"""ReasonFlux-PRM's claims over several seeds: data selection for SFT, and Best-of-N.

    python benchmarks/reasonflux_seeds.py --seeds 0 1 2 --workdir runs/reasonflux_seeds \
        [--config.x=y ...]

Runs `launch.py --config experiments/reasonflux.py --config.seed=S` per seed (one workdir
each; an interrupted sweep resumes), then writes `<workdir>/summary.md` (printed too) and
`selection.png` (seed means, min-max error bars):

  * selection -> SFT: per selector, the students' test accuracy (greedy, sampled), mean and
    spread (max - min) over seeds, and what the selection held;
  * Best-of-N over candidate pairs: per selector, accuracy and the pick's trajectory quality;
  * GRPO from the SFT policy: rule-only reward vs the mix with ReasonFlux-PRM, final test
    accuracy and ReasonFlux-PRM's reward (the hacking monitor);
  * the PRM against the known truth on held-out pairs (step / trajectory Pearson, AUROC);
  * verdicts: the claim holds where ReasonFlux-PRM's mean beats the baseline's by more than
    the larger of the two spreads; within it, "no difference shown".
"""

from __future__ import annotations

import os

import numpy as np

from prm_jax import files
from prm_jax.evaluate.report import plot_selection
from seed_sweep import sweep
from worker import machine


def _stats(values) -> tuple[float, float]:
  values = np.asarray(values, float)
  return float(values.mean()), float(np.ptp(values))


def verdict(ours: list[float], theirs: list[float]) -> str:
  """"holds" when our mean beats theirs by more than the larger seed spread; "does not
  hold" when theirs beats ours by that much; else "no difference shown"."""
  (mean, spread), (other, other_spread) = _stats(ours), _stats(theirs)
  margin = max(spread, other_spread)
  if mean - other > margin:
    return f"holds (+{mean - other:.3f} > spread {margin:.3f})"
  if other - mean > margin:
    return f"does not hold ({mean - other:+.3f}, spread {margin:.3f})"
  return f"no difference shown ({mean - other:+.3f} within spread {margin:.3f})"


def grpo_summary(results: list[dict]) -> list[str]:
  """GRPO from the SFT policy: per reward, the final test figures; the verdict of the mixed
  reward against rule-only."""
  runs = results[0]["grpo"]["runs"]
  steps = next(iter(runs.values()))["steps"]
  metrics = ("greedy_accuracy", "sampled_accuracy", "prm_reward", "prm_gap")
  lines = ["", f"GRPO from the SFT policy, {steps} steps; test figures, mean (spread):", "",
           "| reward | greedy | sampled | ReasonFlux reward | gap (reward - sampled acc.) |",
           "|---|---|---|---|---|"]
  rows = {"(SFT policy)": [r["grpo"]["policy"] for r in results]}
  rows.update({name: [r["grpo"]["runs"][name]["final"] for r in results] for name in runs})
  for name, finals in rows.items():
    cells = [_stats([f[m] for f in finals]) for m in metrics]
    lines.append(f"| {name} | " + " | ".join(f"{m:.3f} ({s:.3f})" for m, s in cells) + " |")
  mixed = [n for n in runs if n.endswith("_mix")]
  rule = [n for n in runs if n.endswith("_outcome")]
  if mixed and rule:
    lines.append("")
    for metric in ("sampled_accuracy", "greedy_accuracy"):
      lines.append(f"- GRPO {metric.split('_')[0]} accuracy, mixed reward vs rule-only: "
                   + verdict([f[metric] for f in rows[mixed[0]]],
                             [f[metric] for f in rows[rule[0]]]))
  return lines


def summary(seeds: list[int], results: list[dict]) -> str:
  host = machine()
  first = results[0]
  lines = [f"ReasonFlux-PRM in miniature over {len(results)} seeds ({', '.join(map(str, seeds))};"
           f" {host})", "",
           f"Selection: top {first['top_k']} of {sum(first['pool']['kinds'].values())} pool "
           f"pairs ({first['pool']['response_correct']:.1%} right responses) -> SFT from "
           "scratch; test accuracy, mean (spread):", "",
           "| selector | greedy | sampled | selected: right responses | selected: quality |",
           "|---|---|---|---|---|"]
  students = first["students"]
  for name in students:
    cells = [_stats([r["students"][name][m] for r in results])
             for m in ("greedy_accuracy", "sampled_accuracy", "response_correct",
                       "trajectory_quality")]
    lines.append(f"| {name} | " + " | ".join(f"{m:.3f} ({s:.3f})" for m, s in cells) + " |")
  greedy = {name: [r["students"][name]["greedy_accuracy"] for r in results] for name in students}
  lines += [""] + [f"- SFT, ReasonFlux-PRM vs {name}: {verdict(greedy['reasonflux'], greedy[name])}"
                   for name in students if name != "reasonflux" and "reasonflux" in greedy]
  n = first["bon_n"]
  lines += ["", f"Best-of-{n} over candidate pairs, mean (spread):", "",
            "| selector | accuracy | pick's trajectory quality |", "|---|---|---|"]
  for name in first["bon"]:
    acc, quality = (_stats([r["bon"][name][m] for r in results]) for m in ("accuracy", "quality"))
    lines.append(f"| {name} | {acc[0]:.3f} ({acc[1]:.3f}) | {quality[0]:.3f} ({quality[1]:.3f}) |")
  bon = {name: [r["bon"][name]["accuracy"] for r in results] for name in first["bon"]}
  lines += [""] + [f"- Best-of-{n}, ReasonFlux-PRM vs {name}: "
                   f"{verdict(bon['reasonflux'], bon[name])}"
                   for name in ("random", "majority", "reasonflux_steps", "step_prm")]
  lines += grpo_summary(results)
  metrics = {m: _stats([r["prm_metrics"][m] for r in results if r["prm_metrics"][m] is not None]
                       or [np.nan])
             for m in ("step_pearson", "step_auroc", "final_pearson", "final_auroc")}
  lines += ["", "The PRM on held-out pairs: " + ", ".join(
      f"{m} {v[0]:.3f} ({v[1]:.3f})" for m, v in metrics.items()) + ".",
            f"Wall time per seed: {np.mean([r['wall_seconds'] for r in results]) / 60:.1f} min."]
  return "\n".join(lines) + "\n"


def main():
  args, results = sweep(__doc__, "reasonflux.py", "runs/reasonflux_seeds")
  text = summary(args.seeds, results)
  files.write_text(os.path.join(args.workdir, "summary.md"), text)
  plot_selection(results, os.path.join(args.workdir, "selection.png"))
  print(text)


if __name__ == "__main__":
  main()
