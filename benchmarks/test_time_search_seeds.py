"""PRM-guided search vs Best-of-N over several seeds: accuracy per generated token.

    python benchmarks/test_time_search_seeds.py --seeds 0 1 2 --workdir runs/search_seeds

Runs `launch.py --config experiments/test_time_search.py --config.seed=S` once per seed (one
workdir each; an interrupted sweep resumes), then writes `<workdir>/summary.md` and
`<workdir>/search_curve.png` (mean over seeds, min-max band): per method and N the accuracy
(PRM-weighted vote and best PRM score), generated tokens and PRM calls per problem, and the
claim of the test-time scaling studies: beam search / DVTS beat Best-of-N at equal
generated tokens at small budgets (and EDU-PRM's: EDU trees match high-temperature
Best-of-N with fewer tokens). A search point beats Best-of-N when its vote accuracy
exceeds Best-of-N's at the same tokens (linear between measured N) on every seed and by
more than the seed-to-seed spread of either; a point with fewer tokens than Best-of-N's
smallest N is compared with that N (which costs more).
"""

from __future__ import annotations

import os

import numpy as np

from prm_jax import files
from prm_jax.evaluate.report import SEARCH_NAMES, plot_search
from seed_sweep import sweep
from worker import machine


def summary(seeds: list[int], results: list[dict]) -> str:
  head = " | ".join(f"seed {s}" for s in seeds)
  lines = [f"Test-time search over {len(results)} seeds ({', '.join(map(str, seeds))}; "
           f"{machine()}); accuracy by PRM-weighted vote", "",
           f"| method | N | {head} | mean | spread | tokens / problem | PRM calls / problem |",
           "|---" * (len(seeds) + 6) + "|"]
  first = results[0]["methods"]
  for method, by_n in first.items():
    for n in sorted(by_n, key=int):
      acc = np.array([r["methods"][method][n]["accuracy"]["vote"] for r in results])
      tokens = np.mean([r["methods"][method][n]["tokens"] for r in results])
      calls = np.mean([r["methods"][method][n]["prm_calls"] for r in results])
      lines.append(f"| {SEARCH_NAMES[method]} | {n} | " + " | ".join(f"{a:.3f}" for a in acc)
                   + f" | {acc.mean():.3f} | {np.ptp(acc):.3f} | {tokens:.0f} | {calls:.1f} |")
  if "edu" in first:  # What the trees add to the policy's own (greedy) solution.
    n = next(iter(first["edu"]))  # The root path does not depend on N.
    roots = [r["methods"]["edu"][n]["root_accuracy"] for r in results]
    lines += ["", "EDU trees' root path (the policy's greedy solution) alone: "
              + ", ".join(f"{a:.3f}" for a in roots) + f" (mean {np.mean(roots):.3f})"]
  lines += ["", "At equal generated tokens (Best-of-N interpolated at the search's tokens):", ""]
  for method, by_n in results[0]["at_equal_tokens"].items():
    for n in sorted(by_n, key=int):
      search = np.array([r["methods"][method][n]["accuracy"]["vote"] for r in results])
      bon = np.array([r["at_equal_tokens"][method][n]["bon"]["vote"] for r in results])
      inside = all(r["at_equal_tokens"][method][n]["inside"] for r in results)
      fewer = all(r["methods"][method][n]["tokens"]
                  < min(b["tokens"] for b in r["methods"]["bon"].values()) for r in results)
      margin, spread = float(np.mean(search - bon)), float(max(np.ptp(search), np.ptp(bon)))
      if margin > spread and np.all(search > bon):
        verdict = "beats Best-of-N by more than the spread"
      elif margin < -spread and np.all(search < bon):
        verdict = "below Best-of-N by more than the spread"
      else:
        verdict = "no difference shown"
      if fewer:  # Best-of-N's fewest tokens stand in: a search level with it costs less.
        verdict = f"fewer tokens than Best-of-N's smallest N; against it: {verdict}"
      elif not inside:
        verdict = "not comparable (more tokens than Best-of-N's largest N)"
      lines.append(f"- {SEARCH_NAMES[method]} N={n}: {search.mean():.3f} vs Best-of-N "
                   f"{bon.mean():.3f} at equal tokens (margin {margin:+.3f}, spread "
                   f"{spread:.3f}): {verdict}")
  wall = [r["wall_seconds"] / 60 for r in results]
  lines += ["", "Wall time per seed (min): " + ", ".join(f"{w:.1f}" for w in wall)]
  return "\n".join(lines) + "\n"


def main():
  args, results = sweep(__doc__, "test_time_search.py", "runs/search_seeds")
  text = summary(args.seeds, results)
  files.write_text(os.path.join(args.workdir, "summary.md"), text)
  plot_search(results, os.path.join(args.workdir, "search_curve.png"))
  print(text)


if __name__ == "__main__":
  main()
