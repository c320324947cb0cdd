"""launch.py end to end: config errors are one clear line; the toy PRM experiment learns."""

import os

import pytest

from prm_jax import metric_writer
from tests.launch_helper import launch

TOY = os.path.join("experiments", "prm_toy.py")


@pytest.mark.parametrize("args,message", [
    ((f"--config={TOY}", "--config.train.learning_rat=1"),
     "unknown config key 'train.learning_rat' (did you mean 'train.learning_rate'?)"),
    ((f"--config={TOY}", "--config.trian.seed=1"),
     "unknown config key 'trian' (did you mean 'train'?)"),
    ((f"--config={TOY}", "--config.train.learning_rate=abc"),
     "bad value 'abc' for config key 'train.learning_rate': could not convert string to "
     "float: 'abc'"),
    ((f"--config={TOY}", "--config.train.total_steps=1.5"),
     "bad value '1.5' for config key 'train.total_steps'"),
    (("--config=experiments/no_such.py",), "config file 'experiments/no_such.py' does not exist"),
])
def test_config_errors_exit_with_one_clear_line(args, message):
  done = launch(*args, workdir="unused")  # Fails before using it.
  assert done.returncode == 2
  assert done.stderr.count("\n") == 1, done.stderr
  assert done.stderr.startswith(f"launch.py: error: {message}"), done.stderr


def test_invalid_value_names_the_field(tmp_path):
  done = launch(f"--config={TOY}", "--config.train.total_steps=0", workdir=tmp_path)
  assert done.returncode == 1
  assert done.stderr.splitlines()[-1] == (
      "launch.py: error: train.total_steps must be >= 1, got 0"), done.stderr


def test_toy_prm_reaches_95_percent_step_accuracy(tmp_path):
  """experiments/prm_toy.py's claim (soft labels, a shorter run), through launch.py."""
  done = launch(f"--config={TOY}:soft", "--config.train.total_steps=150",
                 "--config.train.eval_every=0", workdir=tmp_path)
  assert done.returncode == 0, done.stderr[-3000:]
  final = metric_writer.read_metrics(str(tmp_path))[-1]
  assert final["step"] == 150
  assert final["eval/step_accuracy"] >= 0.95, final
  assert final["eval/auroc"] >= 0.99, final
  assert "steps/s" in done.stderr and "ETA" in done.stderr  # Console progress.
  assert os.path.isdir(tmp_path / "checkpoints" / "150")
  assert os.listdir(tmp_path / "tensorboard")
