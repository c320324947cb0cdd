"""Test setup: 8 virtual CPU devices (unless the caller chose otherwise), before JAX starts."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pytest  # noqa: E402  (after the environment: nothing here may start JAX first)


@pytest.fixture(autouse=True, scope="module")
def release_compiled_programs():
  """Drop every compiled program after each test module.

  XLA:CPU maps memory for the code of every program it compiles (about 5 maps each), and
  jit caches keep them all: the whole suite in one process passes the kernel's limit on
  memory maps (`vm.max_map_count`, 65530 by default) and the next compile dies (SIGSEGV or
  abort inside `backend_compile`). Clearing costs a module only the compiles of programs
  an earlier module had compiled too."""
  yield
  import gc  # pylint: disable=import-outside-toplevel
  import jax  # pylint: disable=import-outside-toplevel
  jax.clear_caches()
  gc.collect()


@pytest.fixture(scope="module")
def persistent_compilation_cache(tmp_path_factory):
  """Every `train_loop` call jits anew (as a restarted process does): cache the compiles on
  disk for the module, and restore JAX's settings after it."""
  import jax  # pylint: disable=import-outside-toplevel
  from jax.experimental.compilation_cache import compilation_cache  # pylint: disable=import-outside-toplevel
  options = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs")
  saved = {name: getattr(jax.config, name) for name in options}
  jax.config.update(options[0], str(tmp_path_factory.mktemp("xla_cache")))
  jax.config.update(options[1], 0)
  compilation_cache.reset_cache()  # Re-read the settings (they are read once).
  yield
  for name, value in saved.items():
    jax.config.update(name, value)
  compilation_cache.reset_cache()
