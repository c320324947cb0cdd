"""Human-readable results of a Best-of-N evaluation: a markdown table and a plot."""

from __future__ import annotations

import os

from prm_jax import files

METHOD_NAMES = {
    "majority": "majority vote", "prm_vote": "PRM-weighted vote", "prm_min": "PRM min",
    "prm_prod": "PRM product", "prm_last": "PRM last step", "prm_mean": "PRM mean",
    "orm": "ORM", "oracle": "oracle (any correct)", "random": "random pick (pass@1)"}


def markdown(results: dict) -> str:
  """`results` (with `bon[method][N]` and scalar metrics) as a markdown report."""
  bon = results["bon"]
  ns = list(next(iter(bon.values())))
  lines = ["# Best-of-N accuracy on held-out problems", "",
           "| method | " + " | ".join(f"N={n}" for n in ns) + " |",
           "|---|" + "---|" * len(ns)]
  for method, by_n in bon.items():
    lines.append(f"| {METHOD_NAMES.get(method, method)} | "
                 + " | ".join(f"{by_n[n]:.3f}" for n in ns) + " |")
  # Numbers, also one level down (e.g. `processbench.threshold`); not the config.
  flat = {}
  for key, value in results.items():
    if isinstance(value, dict) and key not in ("bon", "config"):
      flat.update({f"{key}.{k}": v for k, v in value.items()})
    else:
      flat[key] = value
  scalars = {k: v for k, v in flat.items()
             if isinstance(v, (int, float)) and not isinstance(v, bool)}
  lines += ["", "| metric | value |", "|---|---|"]
  lines += [f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |"
            for k, v in scalars.items()]
  return "\n".join(lines) + "\n"


def plot(results: dict, path: str) -> None:
  """Accuracy vs N (log2 axis), one line per method, saved as a PNG."""
  import matplotlib
  matplotlib.use("Agg")  # No display needed.
  import matplotlib.pyplot as plt

  fig, ax = plt.subplots(figsize=(7, 4.5))
  for method, by_n in results["bon"].items():
    ns = [int(n) for n in by_n]
    style = "--" if method in ("oracle", "random") else "-"
    ax.plot(ns, list(by_n.values()), style, marker="o", label=METHOD_NAMES.get(method, method))
  ax.set_xscale("log", base=2)
  ax.set_xticks(ns, [str(n) for n in ns])
  ax.set_xlabel("N (solutions sampled per problem)")
  ax.set_ylabel("accuracy")
  ax.set_title("Best-of-N on held-out problems")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8, loc="best")
  fig.tight_layout()
  files.atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120))
  plt.close(fig)


def write_report(results: dict, workdir: str) -> None:
  """`results.md` and `bon_curve.png` in `workdir`."""
  files.write_text(os.path.join(workdir, "results.md"), markdown(results))
  plot(results, os.path.join(workdir, "bon_curve.png"))
