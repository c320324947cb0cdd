"""Human-readable results of a Best-of-N evaluation: a markdown table and a plot."""

from __future__ import annotations

import os

import numpy as np

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
  plt = _pyplot()
  fig, ax = plt.subplots(figsize=(7, 4.5))
  for method, by_n in results["bon"].items():
    ns = [int(n) for n in by_n]
    style = "--" if method in ("oracle", "random") else "-"
    ax.plot(ns, list(by_n.values()), style, marker="o", label=METHOD_NAMES.get(method, method))
  ax.set_xscale("log", base=2)
  ax.set_xticks(ns, [str(n) for n in ns])
  _finish(fig, ax, path, "N (solutions sampled per problem)", "accuracy",
          "Best-of-N on held-out problems")


def write_report(results: dict, workdir: str) -> None:
  """`results.md` and `bon_curve.png` in `workdir`."""
  files.write_text(os.path.join(workdir, "results.md"), markdown(results))
  plot(results, os.path.join(workdir, "bon_curve.png"))


FAMILY_NAMES = {"mc": "uniform Monte Carlo", "edu": "EDU trees", "p_edu": "P-EDU trees"}
SEARCH_NAMES = {"bon": "Best-of-N", "beam": "beam search", "dvts": "DVTS", "edu": "EDU trees"}


def _pyplot():
  import matplotlib
  matplotlib.use("Agg")  # No display needed.
  import matplotlib.pyplot as plt
  return plt


def _finish(fig, ax, path: str, xlabel: str, ylabel: str, title: str) -> None:
  """Label, grid and legend the axes; write the figure to `path` (PNG, atomically)."""
  ax.set_xlabel(xlabel)
  ax.set_ylabel(ylabel)
  ax.set_title(title)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8, loc="best")
  fig.tight_layout()
  files.atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120))
  _pyplot().close(fig)


def plot_labeling_curves(runs: list[dict], path: str, method: str = "prm_vote") -> None:
  """Best-of-N accuracy (`method`, largest N) of each labeling budget's PRM against its
  labeling tokens, one curve per label family; with several runs (seeds) the mean, and the
  min-max spread as a band. `runs`: `edu_prm` results."""
  plt = _pyplot()
  first = runs[0]["methods"]
  n = str(max(int(k) for k in next(iter(first.values()))["bon"][method]))
  fig, ax = plt.subplots(figsize=(7, 4.5))
  # One curve per family, and per threshold for the tree families (budget = (tau, ...)).
  curves = {}
  for name, m in first.items():
    key = (m["family"], None if m["family"] == "mc" else m["budget"][0])
    curves.setdefault(key, []).append(name)
  for (family, tau), names in sorted(curves.items(), key=lambda x: (x[0][0], x[0][1] or 0)):
    names.sort(key=lambda k: np.mean([r["methods"][k]["labeling_tokens"] for r in runs]))
    tokens = np.array([np.mean([r["methods"][k]["labeling_tokens"] for r in runs]) for k in names])
    accuracy = np.array([[r["methods"][k]["bon"][method][n] for r in runs] for k in names])
    label = FAMILY_NAMES[family] + ("" if tau is None else f" (tau={tau:g})")
    line, = ax.plot(tokens, accuracy.mean(1), marker="o", label=label)
    if len(runs) > 1:
      ax.fill_between(tokens, accuracy.min(1), accuracy.max(1), alpha=0.2, color=line.get_color())
  for reference, style in (("majority", ":"), ("oracle", "--")):
    value = np.mean([next(iter(r["methods"].values()))["bon"][reference][n] for r in runs])
    ax.axhline(value, linestyle=style, color="gray", label=METHOD_NAMES[reference])
  ax.set_xscale("log")
  _finish(fig, ax, path, "labeling tokens generated",
          f"Best-of-{n} accuracy ({METHOD_NAMES[method]})",
          f"PRM quality vs labeling cost ({len(runs)} seed{'s' * (len(runs) > 1)})")


def plot_test_time(runs: list[dict], path: str, method: str = "prm_vote") -> None:
  """Accuracy (`method`) against generated tokens per problem: high-temperature sampling
  at every N, EDU tree sampling at each leaf budget (mean over runs)."""
  plt = _pyplot()
  fig, ax = plt.subplots(figsize=(7, 4.5))
  ht = runs[0]["test_time"]["ht"]
  ns = sorted(ht["tokens"], key=int)
  ax.plot([np.mean([r["test_time"]["ht"]["tokens"][n] for r in runs]) for n in ns],
          [np.mean([r["test_time"]["ht"]["bon"][method][n] for r in runs]) for n in ns],
          marker="o", label="high-temperature samples, N = " + ", ".join(ns))
  for tau, by_n in runs[0]["test_time"]["edu"].items():
    xs = [np.mean([r["test_time"]["edu"][tau][n]["tokens"] for r in runs]) for n in by_n]
    ys = [np.mean([r["test_time"]["edu"][tau][n]["bon"][method] for r in runs]) for n in by_n]
    ax.plot(xs, ys, marker="s", label=f"EDU trees, tau={tau}, leaves <= " + ", ".join(by_n))
  ax.set_xscale("log")
  _finish(fig, ax, path, "generated tokens per problem", f"accuracy ({METHOD_NAMES[method]})",
          "Test-time sampling at equal compute")


def plot_search(runs: list[dict], path: str, rule: str = "vote") -> None:
  """Accuracy (answer `rule`) against generated tokens per problem, one curve per search
  method through its N values; with several runs (seeds) the mean, and the min-max spread
  of the accuracy as a band. `runs`: `test_time_search` results."""
  plt = _pyplot()
  fig, ax = plt.subplots(figsize=(7, 4.5))
  for method, by_n in runs[0]["methods"].items():
    ns = sorted(by_n, key=int)
    tokens = [np.mean([r["methods"][method][n]["tokens"] for r in runs]) for n in ns]
    accuracy = np.array([[r["methods"][method][n]["accuracy"][rule] for r in runs] for n in ns])
    line, = ax.plot(tokens, accuracy.mean(1), marker="o",
                    label=f"{SEARCH_NAMES.get(method, method)}, N = " + ", ".join(ns))
    if len(runs) > 1:
      ax.fill_between(tokens, accuracy.min(1), accuracy.max(1), alpha=0.2, color=line.get_color())
  ax.set_xscale("log")
  _finish(fig, ax, path, "generated tokens per problem", f"accuracy (PRM answer rule: {rule})",
          f"PRM-guided search at equal compute ({len(runs)} seed{'s' * (len(runs) > 1)})")


def plot_selection(runs: list[dict], path: str) -> None:
  """ReasonFlux-PRM data selection: test accuracy (greedy) of the policy trained on each
  selector's top-K, one bar per selector; with several runs (seeds) the mean, and the
  min-max spread as an error bar. `runs`: `reasonflux` results."""
  plt = _pyplot()
  names = list(runs[0]["students"])
  accuracy = np.array([[r["students"][k]["greedy_accuracy"] for r in runs] for k in names])
  mean = accuracy.mean(1)
  fig, ax = plt.subplots(figsize=(7, 4.5))
  ax.bar(names, mean, yerr=[mean - accuracy.min(1), accuracy.max(1) - mean], capsize=4,
         label=f"top {runs[0]['top_k']} of the pool")
  _finish(fig, ax, path, "selector", "test accuracy (greedy) after SFT",
          f"SFT data selection ({len(runs)} seed{'s' * (len(runs) > 1)})")

