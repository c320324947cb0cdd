"""Two processes on localhost (4 CPU devices each) == one process on the global batch."""

import json
import os
import socket
import subprocess
import sys

import numpy as np

from prm_jax import parallel
from tests.multihost_step import run_one_step

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_two_processes_compute_the_same_step_as_one():
  port = _free_port()
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  workers = [subprocess.Popen(
      [sys.executable, os.path.join(ROOT, "tests", "multihost_worker.py"), str(port), str(i), "2"],
      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT)
      for i in range(2)]
  outputs = []
  for worker in workers:
    out, _ = worker.communicate(timeout=300)
    outputs.append(out)
    assert worker.returncode == 0, out[-3000:]
  line = next(l for l in outputs[0].splitlines() if l.startswith("RESULT "))
  two_process = json.loads(line[len("RESULT "):])

  # The same step in this process: one host, 8 devices, same mesh shape.
  one_process = run_one_step(parallel.make_mesh(data=2, fsdp=2, tensor=2))
  for key, value in one_process.items():
    np.testing.assert_allclose(two_process[key], float(np.asarray(value)), rtol=1e-5, err_msg=key)
