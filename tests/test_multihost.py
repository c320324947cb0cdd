"""Two processes on localhost (4 CPU devices each) == one process on the global batch."""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from prm_jax import metric_writer, parallel
from tests.multihost_step import run_one_step, run_train_loop

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _run_two_processes(*extra_args) -> dict:
  """Start two workers (4 CPU devices each); process 0's RESULT."""
  port = _free_port()
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  workers = [subprocess.Popen(
      [sys.executable, os.path.join(ROOT, "tests", "multihost_worker.py"), str(port), str(i), "2",
       *extra_args],
      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT)
      for i in range(2)]
  outputs = []
  for worker in workers:
    out, _ = worker.communicate(timeout=300)
    outputs.append(out)
    assert worker.returncode == 0, out[-3000:]
  line = next(l for l in outputs[0].splitlines() if l.startswith("RESULT "))
  return json.loads(line[len("RESULT "):])


def test_two_processes_compute_the_same_step_as_one():
  two_process = _run_two_processes()

  # The same step in this process: one host, 8 devices, same mesh shape.
  one_process = run_one_step(parallel.make_mesh(data=2, fsdp=2, tensor=2))
  for key, value in one_process.items():
    np.testing.assert_allclose(two_process[key], float(np.asarray(value)), rtol=1e-5, err_msg=key)


@pytest.mark.slow
def test_two_processes_train_and_checkpoint_like_one(tmp_path):
  two_process = _run_two_processes(str(tmp_path / "two"))
  assert sorted(os.listdir(tmp_path / "two" / "checkpoints")) == ["3", "6"]
  assert [r["step"] for r in metric_writer.read_metrics(str(tmp_path / "two"))] == list(
      range(1, 7))  # Written once (by process 0), not once per process.
  one_process = run_train_loop(parallel.make_mesh(data=2, fsdp=2, tensor=2), str(tmp_path / "one"))
  np.testing.assert_allclose(two_process["losses"], one_process["losses"], rtol=1e-5)
  np.testing.assert_allclose(two_process["param_checksum"], one_process["param_checksum"],
                             rtol=1e-5)
  # Started again, both processes restore step 6 (their shards) and have nothing to do.
  restarted = _run_two_processes(str(tmp_path / "two"))
  assert restarted["losses"] == []
  assert restarted["param_checksum"] == two_process["param_checksum"]
