"""EDU-PRM's claims over several seeds: labeling tokens at equal PRM quality, and EDU tree
sampling vs high-temperature sampling at test time.

    python benchmarks/edu_seeds.py --seeds 0 1 2 --workdir runs/edu_seeds [--config.x=y ...]

Runs `launch.py --config experiments/edu_prm.py --config.seed=S` per seed (one workdir
each; an interrupted sweep resumes), then writes `<workdir>/summary.md` (printed too),
`labeling_curve.png` and `test_time.png` (seed means, min-max bands):

  * per labeling budget: tokens, Best-of-N accuracy (PRM-weighted vote, PRM-min),
    ProcessBench F1 and step AUROC, mean and spread (max - min) over seeds;
  * claim 1: the cheapest EDU (and P-EDU) budget whose PRM matches the largest Monte Carlo
    budget's Best-of-N accuracy within that budget's seed spread (mean >= its mean - its
    spread), and its token saving against it and against the cheapest Monte Carlo budget
    that matches it too (goal >= 40%);
  * claim 2: EDU tree sampling vs HT sampling, at the same N and at equal tokens.
"""

from __future__ import annotations

import os

import numpy as np

from prm_jax import files
from prm_jax.evaluate.report import plot_labeling_curves, plot_test_time
from seed_sweep import sweep
from worker import machine

METHODS = ("prm_vote", "prm_min")


def _stats(values) -> tuple[float, float]:
  values = np.asarray(values, float)
  return float(values.mean()), float(np.ptp(values))


def labeling_claim(results: list[dict], method: str) -> list[str]:
  """Lines: per family, the cheapest budget whose PRM matches the largest Monte Carlo
  budget's accuracy within that budget's seed spread (conservative for the claim: a noisy
  EDU budget does not match by its own spread), and its token saving against that budget and
  against the cheapest Monte Carlo budget that matches it too."""
  methods = results[0]["methods"]
  n = str(max(int(k) for k in next(iter(methods.values()))["bon"][method]))
  tokens = {k: np.mean([r["methods"][k]["labeling_tokens"] for r in results]) for k in methods}
  accuracy = {k: _stats([r["methods"][k]["bon"][method][n] for r in results]) for k in methods}
  reference = max((k for k in methods if methods[k]["family"] == "mc"), key=tokens.get)
  ref_acc, ref_spread = accuracy[reference]
  lines = [f"{method} at N={n}: reference {reference} {ref_acc:.3f} (spread {ref_spread:.3f}) "
           f"with {tokens[reference]:,.0f} labeling tokens."]
  cheapest = {}
  for family in ("mc", "edu", "p_edu"):
    # Within the reference's seed spread (not the candidate's: a noisy budget must not
    # match because it is noisy).
    matches = [k for k in methods if methods[k]["family"] == family
               and accuracy[k][0] >= ref_acc - ref_spread]
    if matches:
      cheapest[family] = min(matches, key=tokens.get)
  for family in ("edu", "p_edu"):
    if family not in cheapest:
      lines.append(f"- {family}: no budget matches the reference within the seed spread.")
      continue
    name = cheapest[family]
    saving = 1 - tokens[name] / tokens[reference]
    mc_saving = 1 - tokens[name] / tokens[cheapest["mc"]]
    verdict = "goal met" if mc_saving >= 0.4 else "goal NOT met"
    lines.append(f"- {family}: cheapest match {name} ({accuracy[name][0]:.3f}, "
                 f"{tokens[name]:,.0f} tokens): {saving:.0%} fewer tokens than the reference, "
                 f"{mc_saving:.0%} fewer than the cheapest matching Monte Carlo budget "
                 f"{cheapest['mc']} ({tokens[cheapest['mc']]:,.0f}): {verdict} (>= 40% fewer).")
  return lines


def summary(seeds: list[int], results: list[dict]) -> str:
  methods = results[0]["methods"]
  n = str(max(int(k) for k in next(iter(methods.values()))["bon"]["prm_vote"]))
  host = machine()
  lines = [f"EDU-PRM in miniature over {len(results)} seeds ({', '.join(map(str, seeds))}; "
           f"{host})", "",
           f"| PRM | labeling tokens | PRM vote @{n} | PRM min @{n} | ProcessBench F1 | "
           "step AUROC |", "|---|---|---|---|---|---|"]
  fmt = lambda values: "{:.3f} ± {:.3f}".format(*_stats(values)) if None not in values else "n/a"
  for name in sorted(methods, key=lambda k: (methods[k]["family"],
                                              methods[k]["labeling_tokens"])):
    per = [r["methods"][name] for r in results]
    lines.append(f"| {name} | {np.mean([m['labeling_tokens'] for m in per]):,.0f} | "
                 f"{fmt([m['bon']['prm_vote'][n] for m in per])} | "
                 f"{fmt([m['bon']['prm_min'][n] for m in per])} | "
                 f"{fmt([m['processbench_f1'] for m in per])} | "
                 f"{fmt([m['step_auroc'] for m in per])} |")
  first = next(iter(methods))
  for reference in ("majority", "oracle", "random"):
    lines.append(f"| ({reference}) | - | "
                 f"{fmt([r['methods'][first]['bon'][reference][n] for r in results])} | | | |")
  lines += ["", "(mean ± spread = max - min over seeds)", "", "Claim 1 (labeling cost):"]
  for method in METHODS:
    lines += labeling_claim(results, method)
  tt = results[0]["test_time"]
  lines += ["", f"Claim 2 (test time, PRM {tt['prm']}): EDU tree sampling vs HT sampling", "",
            "| sampler | N | leaves | tokens / problem | PRM vote | PRM min | majority |",
            "|---|---|---|---|---|---|---|"]
  for n_ in tt["ht"]["tokens"]:
    tokens = np.mean([r["test_time"]["ht"]["tokens"][n_] for r in results])
    lines.append(f"| HT | {n_} | {n_} | {tokens:.0f} | "
                 + " | ".join(fmt([r["test_time"]["ht"]["bon"][m][n_] for r in results])
                              for m in ("prm_vote", "prm_min", "majority")) + " |")
  for tau, by_n in tt["edu"].items():
    for n_ in by_n:
      per = [r["test_time"]["edu"][tau][n_] for r in results]
      lines.append(f"| EDU tau={tau} | {n_} | {np.mean([p['leaves'] for p in per]):.1f} | "
                   f"{np.mean([p['tokens'] for p in per]):.0f} | "
                   + " | ".join(fmt([p["bon"][m] for p in per])
                                for m in ("prm_vote", "prm_min", "majority")) + " |")
      lines.append("| HT at equal tokens | | | | "
                   + " | ".join(fmt([p["ht_at_equal_tokens"][m] for p in per])
                                for m in ("prm_vote", "prm_min", "majority")) + " |")
  lines += [""] + sampling_claim(results)
  return "\n".join(lines) + "\n"


def sampling_claim(results: list[dict], method: str = "prm_vote") -> list[str]:
  """Lines: per EDU threshold (its largest tree), HT at the same N, and the first HT N
  that matches EDU's accuracy within the larger of the two seed spreads (conservative for
  the claim: HT matches as early as the noise allows), with its tokens."""
  tt = results[0]["test_time"]
  ht_ns = sorted(tt["ht"]["tokens"], key=int)
  ht_acc = {n: _stats([r["test_time"]["ht"]["bon"][method][n] for r in results]) for n in ht_ns}
  ht_tokens = {n: np.mean([r["test_time"]["ht"]["tokens"][n] for r in results]) for n in ht_ns}
  lines = [f"Claim 2 verdicts ({method}):"]
  for tau, by_n in tt["edu"].items():
    n = max(by_n, key=int)
    acc, spread = _stats([r["test_time"]["edu"][tau][n]["bon"][method] for r in results])
    tokens = np.mean([r["test_time"]["edu"][tau][n]["tokens"] for r in results])
    same_n = ht_acc.get(n, (float("nan"), 0.0))[0]
    match = next((m for m in ht_ns if ht_acc[m][0] >= acc - max(spread, ht_acc[m][1])), None)
    if match is None:
      tail = "no HT budget up to N=" + ht_ns[-1] + " matches it"
    else:
      saving = 1 - tokens / ht_tokens[match]
      verdict = "holds" if saving > 0 else "does not hold"
      tail = (f"HT needs N={match} ({ht_tokens[match]:,.0f} tokens, {ht_acc[match][0]:.3f}) to "
              f"match it: EDU uses {saving:.0%} fewer tokens (fewer tokens at equal or better "
              f"accuracy: {verdict})")
    lines.append(f"- EDU tau={tau}, leaves <= {n}: {acc:.3f} ± {spread:.3f} with {tokens:,.0f} "
                 f"tokens per problem (HT at N={n}: {same_n:.3f}); {tail}.")
  return lines


def main():
  args, results = sweep(__doc__, "edu_prm.py", "runs/edu_seeds")
  text = summary(args.seeds, results)
  files.write_text(os.path.join(args.workdir, "summary.md"), text)
  plot_labeling_curves(results, os.path.join(args.workdir, "labeling_curve.png"))
  plot_test_time(results, os.path.join(args.workdir, "test_time.png"))
  print(text)


if __name__ == "__main__":
  main()
