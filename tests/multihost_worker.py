"""One process of the two-process test (run by tests/test_multihost.py, not collected).

usage: python tests/multihost_worker.py PORT PROCESS_ID NUM_PROCESSES [WORKDIR]
Each process has 4 virtual CPU devices and loads only its rows of the global batch.
Without WORKDIR: the loss, gradient norm and updated-parameter checksum of one PRM train
step; with it: the losses and final checksum of a short `train_loop` run checkpointing
into WORKDIR. Process 0 prints them as JSON.
"""

import json
import os
import sys

port, process_id, num_processes = (int(a) for a in sys.argv[1:4])
workdir = sys.argv[4] if len(sys.argv) > 4 else None
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
os.environ["JAX_PLATFORMS"] = "cpu"
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from prm_jax import parallel  # noqa: E402
from tests.multihost_step import run_one_step, run_train_loop  # noqa: E402

parallel.initialize_distributed(f"127.0.0.1:{port}", num_processes, process_id,
                                cpu_collectives="gloo")
assert jax.process_count() == num_processes and jax.device_count() == 4 * num_processes
mesh = parallel.make_mesh(data=2, fsdp=2, tensor=2)
if workdir is None:
  result = {k: float(np.asarray(v)) for k, v in run_one_step(mesh).items()}
else:
  result = run_train_loop(mesh, workdir)
if process_id == 0:
  print("RESULT " + json.dumps(result), flush=True)
