"""Meshes, the logical-axis rule table, shardings, and multi-host setup.

Every parameter and key activation names its dimensions with *logical* axes (`batch`,
`length`, `embed`, `mlp`, `heads`, `kv_heads`, `head_dim`, `vocab`, `layers`, `norm`).
`LOGICAL_AXIS_RULES` is the one table that maps them to the mesh axes
`("data", "fsdp", "tensor")`:

  * `batch` -> (data, fsdp): data parallelism over both axes (FSDP shards the batch too);
  * `embed` -> fsdp: parameters are sharded along their model dimension (ZeRO-3 style);
    in activations `batch` has already taken `fsdp`, so their `embed` stays whole;
  * `heads`, `kv_heads`, `mlp`, `vocab` -> tensor: Megatron-style tensor parallelism.

Rules are applied in order and a mesh axis is used at most once per array, which is why
`batch` comes first. A dimension that a mesh axis does not divide (e.g. 2 kv heads on
tensor=4) is replicated instead of sharded; that is the one implicit fallback.

Jitted steps go through `sharded_jit`, which binds the rule table while tracing and
passes explicit `in_shardings`/`out_shardings`/`donate_argnums` to `jax.jit`.
"""

from __future__ import annotations

import math
import os
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import numpy as np
import optax
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from prm_jax import models

MESH_AXES = ("data", "fsdp", "tensor")

LOGICAL_AXIS_RULES: tuple[tuple[str, Any], ...] = (
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("layers", None),
    ("norm", None),
)

Rules = Sequence[tuple[str, Any]]


# ----------------------------------------------------------------------------- meshes


def make_mesh(data: int = -1, fsdp: int = 1, tensor: int = 1, *,
              devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A `("data", "fsdp", "tensor")` mesh over `devices` (default: all, every process).

  One axis may be -1: it takes whatever the others leave. Axis types are `Auto` (the
  default `Explicit` breaks linen's implicit sharding propagation).
  """
  devices = list(jax.devices() if devices is None else devices)
  sizes = {"data": data, "fsdp": fsdp, "tensor": tensor}
  for name, size in sizes.items():
    if not isinstance(size, int) or (size < 1 and size != -1):
      raise ValueError(f"mesh.{name}={size!r} must be a positive int or -1 (fill)")
  fill = [name for name, size in sizes.items() if size == -1]
  if len(fill) > 1:
    raise ValueError(f"only one mesh axis may be -1, got {fill}")
  fixed = math.prod(size for size in sizes.values() if size != -1)
  if fill:
    if len(devices) % fixed:
      raise ValueError(f"mesh axes {sizes} leave mesh.{fill[0]}=-1 no whole size: "
                       f"{len(devices)} devices are not divisible by {fixed}")
    sizes[fill[0]] = len(devices) // fixed
  if math.prod(sizes.values()) != len(devices):
    culprit = next((n for n, s in sizes.items() if len(devices) % s), "data")
    raise ValueError(f"mesh {sizes} needs {math.prod(sizes.values())} devices but "
                     f"{len(devices)} are available (check mesh.{culprit})")
  shape = tuple(sizes[a] for a in MESH_AXES)
  return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES),
                       devices=devices)


# ----------------------------------------------------------------------------- shardings


def _check_logical_names(spec: P, rules: Rules) -> None:
  known = {name for name, _ in rules}
  for entry in spec:
    for name in (entry if isinstance(entry, tuple) else (entry,)):
      if name is not None and name not in known:
        raise ValueError(f"logical axis {name!r} has no entry in the rule table "
                         f"(known: {sorted(known)})")


def logical_to_sharding(spec: P, mesh: Mesh, shape: Sequence[int] | None = None,
                        rules: Rules = LOGICAL_AXIS_RULES) -> NamedSharding:
  """`NamedSharding` for an array whose dimensions carry the logical names in `spec`.

  With `shape`, mesh axes that do not divide their dimension are dropped (replicated).
  """
  _check_logical_names(spec, rules)
  mesh_spec = list(nn.logical_to_mesh_axes(tuple(spec), rules))
  if shape is not None:
    for i, (axes, dim) in enumerate(zip(mesh_spec, shape)):
      names = (axes,) if isinstance(axes, str) else tuple(axes or ())
      kept = []
      for name in names:
        if dim % (math.prod(mesh.shape[a] for a in kept) * mesh.shape[name]) == 0:
          kept.append(name)
      mesh_spec[i] = tuple(kept) if len(kept) > 1 else (kept[0] if kept else None)
  return NamedSharding(mesh, P(*mesh_spec))


def tree_shardings(logical_specs, abstract_tree, mesh: Mesh, rules: Rules = LOGICAL_AXIS_RULES):
  """Map `logical_to_sharding` over a tree of logical specs and matching shaped leaves."""
  return jax.tree.map(lambda spec, x: logical_to_sharding(spec, mesh, x.shape, rules),
                      logical_specs, abstract_tree,
                      is_leaf=lambda x: isinstance(x, P))


def param_shardings(config: models.ModelConfig, mesh: Mesh, rules: Rules = LOGICAL_AXIS_RULES):
  """`NamedSharding` tree for the parameters of `config`."""
  return tree_shardings(models.param_logical_axes(config), models.abstract_params(config),
                        mesh, rules)


def abstract_sharded_params(config: models.ModelConfig, mesh: Mesh,
                            rules: Rules = LOGICAL_AXIS_RULES):
  """`ShapeDtypeStruct` tree (with shardings) of the parameters of `config`: what a
  checkpoint restore needs to place them on `mesh`."""
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      models.abstract_params(config), param_shardings(config, mesh, rules))


def cache_shardings(cache, mesh: Mesh, rules: Rules = LOGICAL_AXIS_RULES):
  """`NamedSharding` tree for a KV cache (or its abstract shape)."""
  return tree_shardings(models.cache_logical_axes(cache), cache, mesh, rules)


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def opt_state_shardings(tx: optax.GradientTransformation, abstract_params, params_shardings,
                        mesh: Mesh):
  """Shardings of `tx.init(params)`: parameter-shaped moments follow their parameter,
  everything else (counts, schedule state) is replicated."""
  abstract_state = jax.eval_shape(tx.init, abstract_params)
  return optax.tree_map_params(
      tx, lambda _, sharding: sharding, abstract_state, params_shardings,
      transform_non_params=lambda _: replicated(mesh),
      is_leaf=lambda x: isinstance(x, NamedSharding))


def batch_sharding(mesh: Mesh, ndim: int = 1, rules: Rules = LOGICAL_AXIS_RULES) -> NamedSharding:
  """Sharding of a batch array `[B, ...]`: B over the `batch` rule's mesh axes."""
  return logical_to_sharding(P("batch", *([None] * (ndim - 1))), mesh, rules=rules)


def batch_shardings(batch, mesh: Mesh, rules: Rules = LOGICAL_AXIS_RULES):
  """Tree of `batch_sharding`s for a tree of `[B, ...]` arrays (or shapes)."""
  return jax.tree.map(lambda x: batch_sharding(mesh, len(x.shape), rules), batch)


def batch_parallelism(mesh: Mesh, rules: Rules = LOGICAL_AXIS_RULES) -> int:
  """How many ways the batch dimension is split (global batch must be a multiple)."""
  spec = batch_sharding(mesh, 1, rules).spec[0]
  names = (spec,) if isinstance(spec, str) else tuple(spec or ())
  return math.prod(mesh.shape[a] for a in names)


def sharded_jit(fn: Callable, mesh: Mesh, *, in_shardings, out_shardings,
                donate_argnums: int | Sequence[int] = (), static_argnums=(),
                rules: Rules = LOGICAL_AXIS_RULES):
  """`jax.jit(fn)` with explicit shardings, tracing `fn` under the logical rule table.

  The activation constraints inside the model resolve against `mesh` and `rules`
  whatever context the caller is in.
  """

  def traced(*args, **kwargs):
    with jax.sharding.use_abstract_mesh(mesh.abstract_mesh), nn.logical_axis_rules(rules):
      return fn(*args, **kwargs)

  return jax.jit(traced, in_shardings=in_shardings, out_shardings=out_shardings,
                 donate_argnums=donate_argnums, static_argnums=static_argnums)


def init_params_sharded(config: models.ModelConfig, rng: jax.Array, mesh: Mesh,
                        rules: Rules = LOGICAL_AXIS_RULES):
  """Initialise parameters directly into their shardings (never whole on one device)."""
  init = sharded_jit(lambda key: models.init_params(config, key), mesh,
                     in_shardings=replicated(mesh),
                     out_shardings=param_shardings(config, mesh, rules), rules=rules)
  return init(rng)


# ----------------------------------------------------------------------------- multi-host


def initialize_distributed(coordinator_address: str | None = None,
                           num_processes: int | None = None, process_id: int | None = None,
                           cpu_collectives: str | None = None) -> bool:
  """Join a multi-process JAX job; returns True if one was joined.

  Arguments left None are read from `PRM_JAX_COORDINATOR_ADDRESS`, `PRM_JAX_NUM_PROCESSES`,
  `PRM_JAX_PROCESS_ID` and `PRM_JAX_CPU_COLLECTIVES`. With no coordinator anywhere this
  is a single-process run and nothing happens; on managed clusters (TPU pods, SLURM)
  set `PRM_JAX_COORDINATOR_ADDRESS=auto` to let JAX detect everything. `cpu_collectives`
  ("gloo") enables cross-process collectives on CPU devices.
  """
  env = os.environ
  coordinator_address = coordinator_address or env.get("PRM_JAX_COORDINATOR_ADDRESS")
  if not coordinator_address:
    return False
  cpu_collectives = cpu_collectives or env.get("PRM_JAX_CPU_COLLECTIVES")
  if cpu_collectives:
    jax.config.update("jax_cpu_collectives_implementation", cpu_collectives)
  if coordinator_address == "auto":
    jax.distributed.initialize()
    return True
  if num_processes is None and "PRM_JAX_NUM_PROCESSES" in env:
    num_processes = int(env["PRM_JAX_NUM_PROCESSES"])
  if process_id is None and "PRM_JAX_PROCESS_ID" in env:
    process_id = int(env["PRM_JAX_PROCESS_ID"])
  if num_processes is None or process_id is None:
    raise ValueError("distributed.coordinator_address is set but num_processes/process_id "
                     "are not (set them or PRM_JAX_NUM_PROCESSES / PRM_JAX_PROCESS_ID)")
  jax.distributed.initialize(coordinator_address=coordinator_address,
                             num_processes=num_processes, process_id=process_id)
  return True


def process_batch_slice(global_batch_size: int) -> slice:
  """Rows of the global batch this process loads (each process reads only its shard)."""
  count, index = jax.process_count(), jax.process_index()
  if global_batch_size % count:
    raise ValueError(f"global batch size {global_batch_size} is not divisible by the "
                     f"{count} processes")
  per_process = global_batch_size // count
  return slice(index * per_process, (index + 1) * per_process)


def fetch_replicated(tree):
  """NumPy copies of replicated arrays (metrics, eval outputs), read from a local device.

  Unlike `jax.device_get`, this also works when the arrays span several processes.
  """
  return jax.tree.map(lambda x: np.asarray(x.addressable_data(0)), tree)


def make_global_batch(local_batch, mesh: Mesh, rules: Rules = LOGICAL_AXIS_RULES):
  """Assemble global `jax.Array`s from this process's rows (`process_batch_slice`).

  Single-process: the local batch is the global batch, placed with `batch_sharding`.
  """
  parallelism = batch_parallelism(mesh, rules)

  def to_global(x):
    x = np.asarray(x)
    global_rows = x.shape[0] * jax.process_count()
    if global_rows % parallelism:
      raise ValueError(f"global batch size {global_rows} is not divisible by the "
                       f"{parallelism}-way batch sharding of mesh {dict(mesh.shape)}")
    sharding = batch_sharding(mesh, x.ndim, rules)
    return jax.make_array_from_process_local_data(sharding, x, (global_rows, *x.shape[1:]))

  return jax.tree.map(to_global, local_batch)
