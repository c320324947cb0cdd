"""The trainer loop: exact resume, interrupted/corrupt checkpoints, cross-mesh restore, NaN stop.

One uninterrupted 20-step run (module fixture, 8 devices) is the reference the other
runs are compared with, bitwise: same compiled program, same inputs, same bits on CPU.
Every `train_loop` call jits its step anew (as a restarted process does); JAX's
persistent compilation cache makes the repeats cheap.
"""

import dataclasses
import logging
import os
import shutil

import grain
import jax
import numpy as np
import pytest

from prm_jax import checkpoint, metric_writer, models, parallel, train
from prm_jax.objectives.prm import make_prm_loss
from prm_jax.pipelines import toy_data
from tests.tree_helper import assert_trees_equal

# Every train_loop call jits anew (as a restarted process does): compiles cached on disk.
pytestmark = pytest.mark.usefixtures("persistent_compilation_cache")

MODEL = models.get_model_config("tiny", max_seq_len=32)
CONFIG = train.TrainConfig(total_steps=20, learning_rate=3e-3, warmup_steps=3, log_every=1,
                           checkpoint_every=5, keep_checkpoints=5, progress_every_s=0.0)
EXAMPLES = toy_data.make_examples(64, seq_len=32, max_steps=4, step_len=4, prompt_len=3,
                                  vocab_size=MODEL.vocab_size, soft_labels=True, seed=0)


class Preempted(Exception):
  pass


def _with(config, **changes):
  return dataclasses.replace(config, **changes)


def _batches():
  """A fresh grain iterator over the same shuffled, repeated data (8 rows a batch)."""
  return iter(grain.MapDataset.source(EXAMPLES).shuffle(seed=0).repeat().batch(8))


def _mesh8():
  return parallel.make_mesh(data=2, fsdp=2, tensor=2)


def _mesh1():
  return parallel.make_mesh(devices=jax.devices()[:1])


def _train(workdir, mesh, **kwargs):
  return train.train_loop(MODEL, make_prm_loss(MODEL), kwargs.pop("batches", _batches()),
                          config=kwargs.pop("config", CONFIG), workdir=str(workdir),
                          mesh=mesh, **kwargs)


def _preempt_after_step_10(params):
  """An evaluator (run after the step-10 checkpoint) that simulates a preemption."""
  raise Preempted


def _train_interrupted(workdir):
  """Steps 1..10, checkpoints at 5 and 10, then the process "dies"."""
  with pytest.raises(Preempted):
    _train(workdir, _mesh8(), config=_with(CONFIG, eval_every=10),
           evaluators={"preempt": _preempt_after_step_10})


def _losses(workdir):
  return [(r["step"], r["train/loss"]) for r in metric_writer.read_metrics(str(workdir))
          if "train/loss" in r]




@pytest.fixture(scope="module")
def interrupted(tmp_path_factory):
  """A run killed right after its step-10 checkpoint; tests work on copies."""
  workdir = tmp_path_factory.mktemp("interrupted")
  _train_interrupted(workdir)
  assert sorted(os.listdir(workdir / "checkpoints")) == ["10", "5"]
  return workdir


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
  """The uninterrupted reference run: (workdir, final state)."""
  workdir = tmp_path_factory.mktemp("straight")
  result = _train(workdir, _mesh8())
  assert [r["step"] for r in result.history] == list(range(1, 21))
  return workdir, result.state


def test_resumed_run_equals_uninterrupted_run_bitwise(straight, interrupted, tmp_path):
  straight_dir, straight_state = straight
  shutil.copytree(interrupted, tmp_path, dirs_exist_ok=True)
  resumed = _train(tmp_path, _mesh8())  # Same command, same workdir, fresh data iterator.
  assert int(resumed.state.step) == 20
  assert [r["step"] for r in resumed.history] == list(range(11, 21))
  assert_trees_equal(resumed.state.params, straight_state.params)
  assert_trees_equal(resumed.state.opt_state, straight_state.opt_state)
  assert _losses(tmp_path) == _losses(straight_dir)  # 1..20, each once.
  assert os.listdir(tmp_path / "tensorboard")


def test_half_written_and_corrupt_checkpoints_are_skipped(straight, interrupted, tmp_path,
                                                          caplog):
  straight_dir, straight_state = straight
  shutil.copytree(interrupted, tmp_path, dirs_exist_ok=True)
  ckpt = tmp_path / "checkpoints"
  # A save killed half-way leaves orbax's tmp directory ...
  (ckpt / "15.orbax-checkpoint-tmp-1234" / "params").mkdir(parents=True)
  # ... and a finalized checkpoint can still lose data (truncated file).
  data_files = [os.path.join(root, f) for root, _, files in os.walk(ckpt / "10" / "params")
                for f in files if os.sep + "d" + os.sep in os.path.join(root, f)]
  with open(max(data_files, key=os.path.getsize), "r+b") as f:
    f.truncate(10)

  with caplog.at_level(logging.WARNING):
    resumed = _train(tmp_path, _mesh8())
  warnings = " ".join(r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING)
  assert "15.orbax-checkpoint-tmp-1234 (a save was interrupted)" in warnings
  assert f"checkpoint {ckpt / '10'} is unreadable" in warnings
  assert (ckpt / ("10" + checkpoint.UNREADABLE_SUFFIX)).is_dir()  # Kept, set aside.
  assert not (ckpt / "15.orbax-checkpoint-tmp-1234").exists()
  # Resumed from step 5 (data position included): the same run as the straight one.
  assert [r["step"] for r in resumed.history] == list(range(6, 21))
  assert_trees_equal(resumed.state.params, straight_state.params)
  assert _losses(tmp_path) == _losses(straight_dir)


def test_checkpoints_restore_across_meshes(straight, tmp_path):
  straight_dir, straight_state = straight
  # 8 devices -> 1: the finished run restores onto one device and has nothing left to do.
  on_one = _train(straight_dir, _mesh1())
  assert on_one.history == []
  leaf = on_one.state.params["layers"]["mlp"]["up"]["kernel"]
  assert leaf.sharding.mesh.devices.size == 1
  assert_trees_equal(on_one.state.params, straight_state.params)
  # 1 device -> 8.
  one_device = _train(tmp_path, _mesh1()).state
  on_eight = _train(tmp_path, _mesh8()).state
  assert on_eight.params["layers"]["mlp"]["up"]["kernel"].sharding.spec == (
      parallel.param_shardings(MODEL, _mesh8())["layers"]["mlp"]["up"]["kernel"].spec)
  assert_trees_equal(on_eight.params, one_device.params)
  assert_trees_equal(on_eight.opt_state, one_device.opt_state)


def test_params_restore_alone_and_bad_paths_are_named(straight, tmp_path):
  straight_dir, straight_state = straight
  abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                          models.abstract_params(MODEL), parallel.param_shardings(MODEL, _mesh1()))
  assert_trees_equal(checkpoint.restore_params(str(straight_dir), abstract),
                      straight_state.params)
  missing = tmp_path / "nowhere"
  with pytest.raises(checkpoint.CheckpointError, match=f"no checkpoint at {missing}"):
    checkpoint.restore_params(str(missing), abstract)
  with pytest.raises(checkpoint.CheckpointError, match=f"no checkpoint at {missing}"):
    _train(tmp_path / "run", _mesh1(), config=_with(CONFIG, init_from=str(missing)))


def test_nonfinite_step_stops_and_keeps_the_last_good_checkpoint(tmp_path):
  def batches():  # A plain generator (not grain): its position is not checkpointed.
    for i, batch in enumerate(_batches(), start=1):
      if i == 7:
        batch = dict(batch, step_labels=np.full_like(batch["step_labels"], np.nan))
      yield batch

  config = _with(CONFIG, log_every=4)  # The NaN is found at step 8's record ...
  with pytest.raises(train.NonFiniteError, match=r"at step 7 .*checkpoints/5, is kept"):
    _train(tmp_path, _mesh1(), batches=batches(), config=config)
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["5"]
  assert [r["step"] for r in metric_writer.read_metrics(str(tmp_path))] == [4]  # ... unlogged.
