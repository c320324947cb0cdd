"""The report of online policy optimisation runs (`pipelines.policy_rl`): a markdown table
and `rl_curves.png` (test accuracy against steps; the reward-hacking monitor: the PRM's
reward next to the checker's outcome on the training rollouts; response length; entropy)."""

from __future__ import annotations

import os

from prm_jax import files


def _fmt(value, digits: int = 3) -> str:
  if value is None:
    return "-"
  if isinstance(value, float):
    return f"{value:.{digits}f}"
  return f"{value:,}" if isinstance(value, int) else str(value)


def markdown(results: dict) -> str:
  """`results` (`{"runs": {name: run results}, "policy": SFT figures}`) as markdown."""
  policy = results["policy"]
  lines = ["# Online policy optimisation on held-out problems", "",
           f"SFT policy: sampled accuracy {_fmt(policy['sampled_accuracy'])}, greedy "
           f"{_fmt(policy['greedy_accuracy'])}, process-correct "
           f"{_fmt(policy['process_correct'])}, PRM reward {_fmt(policy.get('prm_reward'))}.",
           "", "| run | steps | sampled acc. | greedy acc. | process-correct | steps to target "
           "| test PRM gap | train outcome | train PRM reward | length | gen. tokens | wall s |",
           "|---|" + "---|" * 11]
  for name, run in results["runs"].items():
    final, train = run["final"], run["curves"]["train"]
    last = lambda key: train[key][-1] if train.get(key) else None
    target = (f"{_fmt(run['steps_to_target'])} (>= {run['target_accuracy']:g})")
    lines.append(
        f"| {name} | {run['steps']} | {_fmt(final.get('sampled_accuracy'))} | "
        f"{_fmt(final.get('greedy_accuracy'))} | {_fmt(final.get('process_correct'))} | "
        f"{target} | {_fmt(final.get('prm_gap'))} | {_fmt(last('rollout_outcome'))} | "
        f"{_fmt(last('rollout_prm_reward'))} | {_fmt(last('rollout_length'), 1)} | "
        f"{_fmt(run['generated_tokens'])} | {_fmt(run['wall_seconds'], 0)} |")
  lines += ["", "Test figures are the last evaluation; train figures the last logged "
            "rollouts. PRM gap = mean PRM reward - accuracy on the test samples (a growing "
            "gap: the policy pleases the PRM without solving more)."]
  return "\n".join(lines) + "\n"


def plot(results: dict, path: str) -> None:
  """Four panels, one line per run (module docstring), saved as a PNG."""
  import matplotlib
  matplotlib.use("Agg")  # No display needed.
  import matplotlib.pyplot as plt

  fig, axes = plt.subplots(2, 2, figsize=(11, 7.5))
  colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
  policy = results["policy"]
  for index, (name, run) in enumerate(results["runs"].items()):
    color = colors[index % len(colors)]
    test, train = run["curves"]["test"], run["curves"]["train"]
    steps = [0] + test.get("step", [])
    axes[0, 0].plot(steps, [policy["sampled_accuracy"]] + test.get("sampled_accuracy", []),
                    "-o", color=color, markersize=3, label=f"{name} sampled")
    axes[0, 0].plot(steps, [policy["greedy_accuracy"]] + test.get("greedy_accuracy", []),
                    "--", color=color, label=f"{name} greedy")
    if "rollout_prm_reward" in train:
      axes[0, 1].plot(train["step"], train["rollout_prm_reward"], "--", color=color,
                      label=f"{name} PRM reward")
    axes[0, 1].plot(train["step"], train["rollout_outcome"], "-", color=color,
                    label=f"{name} checker: solved")
    axes[1, 0].plot(train["step"], train["rollout_length"], "-", color=color, label=name)
    axes[1, 1].plot(train["step"], train["rollout_entropy"], "-", color=color, label=name)
  titles = [("test accuracy (solid: sampled, dashed: greedy)", "accuracy"),
            ("hacking monitor, training rollouts", "PRM reward (dashed) / solved (solid)"),
            ("response length", "tokens"), ("policy entropy", "nats per token")]
  for ax, (title, ylabel) in zip(axes.flat, titles):
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, loc="best")
  fig.tight_layout()
  files.atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
  plt.close(fig)


def write_report(results: dict, workdir: str) -> None:
  """`results.md` and `rl_curves.png` in `workdir`."""
  files.write_text(os.path.join(workdir, "results.md"), markdown(results))
  plot(results, os.path.join(workdir, "rl_curves.png"))
