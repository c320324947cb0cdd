"""Hugging Face checkpoints in and out: Llama / Qwen2 safetensors <-> `(ModelConfig, params)`.

    config, params = load_pretrained("ckpt/Qwen2.5-0.5B")         # fp32, one device
    config, params = load_pretrained(path, mesh=parallel.make_mesh(tensor=2))  # into shards
    save_pretrained(config, params, "out/")          # transformers' from_pretrained loads it

Layout. HF keeps every projection as a torch `Linear` weight `[out, in]`, one tensor per layer;
prm_jax keeps `[in, ...out]` kernels with the heads split out and layers stacked on `[L]`:

    model.layers.{i}.self_attn.q_proj.weight [H*Dh, D]  <->  layers/attn/q_kernel [L, D, H, Dh]
    model.layers.{i}.self_attn.o_proj.weight [D, H*Dh]  <->  layers/attn/o_kernel [L, H, Dh, D]
    model.layers.{i}.mlp.down_proj.weight    [D, F]     <->  layers/mlp/down/kernel [L, F, D]
    lm_head.weight [V, D] (untied only)                 <->  lm_head [D, V]
    score.{weight [C, D], bias [C]} (*ForTokenClassification)  <->  prm_head/{kernel, bias}
    score.0.{weight, bias} [D, D], score.2.{weight, bias} [2, D] (Qwen2ForProcessRewardModel)
                                        <->  prm_hidden/{kernel, bias}, prm_head/{kernel, bias}
    v_head.summary.{weight [1, D], bias [1]} (TRL value head)   <->  value_head/{kernel, bias}
      (or a scalar prm_head, for a value-head PRM: `load_pretrained(value_head_as_prm=True)`)

`tensor_specs` states this once (`TensorSpec`: the HF name and which of our dimensions each HF
axis holds); loading and saving both read that one table, so they cannot disagree.

Heads. A causal-LM checkpoint carries no PRM head, a token-classification PRM checkpoint (TRL's
`PRMTrainer` output: a linear `score` head with 2 or 1 labels) no LM head when untied: a head
the checkpoint lacks is freshly initialised (normal(`init_std`) kernel, zero bias) from `seed`,
so a load is deterministic. A backbone tensor that is missing is an error.

Placement. No host ever holds the whole model: every leaf is created with
`jax.make_array_from_callback`, whose callback reads from the files only the block one device
holds (`safe_open(...).get_slice`), one leaf at a time. Any object with the `TensorSource`
methods (`shape`, `read`, `where`) can feed `load_params`; the GGUF loader is another one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import pathlib
import zlib
from typing import Any, Protocol

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util
from jax.experimental import multihost_utils
from safetensors import safe_open
from safetensors.numpy import save_file

from prm_jax import files, parallel
from prm_jax.models.config import ModelConfig
from prm_jax.models.model import abstract_params

# Architecture name -> (model_type, which head the checkpoint carries).
ARCHITECTURES = {
    "LlamaForCausalLM": ("llama", "lm"),
    "Qwen2ForCausalLM": ("qwen2", "lm"),
    "LlamaForTokenClassification": ("llama", "prm"),
    "Qwen2ForTokenClassification": ("qwen2", "prm"),
    # Qwen2.5-Math-PRM, ReasonFlux-PRM-7B: the `score` head is Linear -> ReLU -> Linear(2).
    "Qwen2ForProcessRewardModel": ("qwen2", "prm"),
    # Mistral is the Llama layout plus a sliding window (accepted only when it never slides).
    "MistralForCausalLM": ("mistral", "lm"),
}
TWO_LAYER_PRM = "Qwen2ForProcessRewardModel"
REWARD_HEAD = "reward_head"
HEADS = ("lm", "prm")
PRM_HEAD_BY_LABELS = {2: "two_class", 1: "scalar"}
INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"

Path = str | os.PathLike


class CheckpointError(ValueError):
  """A checkpoint that cannot be read as the model it claims to be (the message says why)."""


# ----------------------------------------------------------------------------- configs


def config_from_hf(hf_config: dict, **overrides) -> tuple[ModelConfig, str]:
  """`(ModelConfig, head)` from a `config.json` dict of transformers 4 or 5.

  `head` is "lm" for `*ForCausalLM`, "prm" for `*ForTokenClassification` (2 labels ->
  `prm_head="two_class"`, 1 -> "scalar") and `Qwen2ForProcessRewardModel` (two classes
  behind a hidden ReLU layer of width D). `overrides` set any `ModelConfig` field. Raises
  `CheckpointError` for an architecture or feature prm_jax does not implement (other models,
  rope scaling, a sliding window narrower than `max_seq_len`, o/MLP biases, non-SiLU
  activations).
  """
  architectures = hf_config.get("architectures") or []
  if architectures:
    if architectures[0] not in ARCHITECTURES:
      raise CheckpointError(f"unsupported architecture {architectures[0]!r} (supported: "
                            f"{sorted(ARCHITECTURES)})")
    model_type, head = ARCHITECTURES[architectures[0]]
  else:
    model_type, head = hf_config.get("model_type"), "lm"
    if model_type not in ("llama", "qwen2", "mistral"):
      raise CheckpointError(f"unsupported model_type {model_type!r} (supported: llama, qwen2, "
                            "mistral)")

  def unsupported(what):
    raise CheckpointError(f"{architectures[0] if architectures else model_type}: {what} is not "
                          "implemented by prm_jax")

  if hf_config.get("hidden_act", "silu") != "silu":
    unsupported(f"hidden_act={hf_config['hidden_act']!r}")
  if hf_config.get("mlp_bias"):
    unsupported("mlp_bias=true")
  if model_type != "qwen2" and hf_config.get("attention_bias"):
    unsupported("attention_bias=true (Llama also puts a bias on o_proj)")
  if hf_config.get("use_sliding_window"):
    unsupported("use_sliding_window=true")
  # transformers 4 writes `rope_theta` (+ `rope_scaling`), 5 writes `rope_parameters`.
  rope = dict(hf_config.get("rope_parameters") or {})
  scaling = hf_config.get("rope_scaling") or {}
  rope_type = rope.get("rope_type") or scaling.get("rope_type") or scaling.get("type") or "default"
  if rope_type != "default":
    unsupported(f"rope scaling of type {rope_type!r}")
  theta = rope.get("rope_theta", hf_config.get("rope_theta", 10_000.0))

  heads = hf_config["num_attention_heads"]
  fields = dict(
      vocab_size=hf_config["vocab_size"], hidden_size=hf_config["hidden_size"],
      num_layers=hf_config["num_hidden_layers"], num_heads=heads,
      num_kv_heads=hf_config.get("num_key_value_heads") or heads,
      head_dim=hf_config.get("head_dim") or hf_config["hidden_size"] // heads,
      mlp_dim=hf_config["intermediate_size"], rope_theta=float(theta),
      norm_eps=float(hf_config.get("rms_norm_eps", 1e-6)), qkv_bias=model_type == "qwen2",
      tie_embeddings=bool(hf_config.get("tie_word_embeddings", False)),
      max_seq_len=int(hf_config.get("max_position_embeddings", 4096)),
      init_std=float(hf_config.get("initializer_range", 0.02)))
  if head == "prm":
    labels = hf_config.get("num_labels") or len(hf_config.get("id2label") or {0: 0, 1: 1})
    if labels not in PRM_HEAD_BY_LABELS:
      unsupported(f"a token-classification head with {labels} labels (PRM heads have 1 or 2)")
    fields["prm_head"] = PRM_HEAD_BY_LABELS[labels]
  if architectures and architectures[0] == TWO_LAYER_PRM:
    # Its modeling code fixes the head: Linear(D, D) -> ReLU -> Linear(D, 2), whatever
    # `num_labels` says.
    fields.update(prm_head="two_class", prm_head_hidden=fields["hidden_size"])
  config = ModelConfig(**fields).replace(**overrides)
  window = hf_config.get("sliding_window") if model_type == "mistral" else None
  if window is not None and window < config.max_seq_len:
    raise CheckpointError(
        f"{architectures[0] if architectures else model_type}: sliding_window={window} is "
        f"smaller than max_seq_len={config.max_seq_len}, and prm_jax has no sliding-window "
        f"attention; load with max_seq_len={window} (or less): up to the window the "
        "attention is exact")
  return config, head


def hf_config_from(config: ModelConfig, head: str = "lm", dtype: str | None = None) -> dict:
  """The `config.json` dict transformers (4 and 5) builds `config`'s model from.

  Qwen2 when the config has q/k/v biases, Llama otherwise; `head` "lm" -> `*ForCausalLM`,
  "prm" -> `*ForTokenClassification` with `config.num_prm_logits` labels, or
  `Qwen2ForProcessRewardModel` for a two-layer head (that layout exists for Qwen2 only).
  """
  if head not in HEADS:
    raise ValueError(f"head={head!r} is not one of {HEADS}")
  model_type = "qwen2" if config.qkv_bias else "llama"
  architecture = next(name for name, value in ARCHITECTURES.items()
                      if value == (model_type, head))
  if head == "prm" and config.prm_head_hidden:
    if (model_type, config.prm_head, config.prm_head_hidden) != (
        "qwen2", "two_class", config.hidden_size):
      raise ValueError(
          "a PRM head with a hidden layer is written only as Qwen2ForProcessRewardModel "
          "(q/k/v biases, prm_head='two_class', prm_head_hidden=hidden_size); this config has "
          f"qkv_bias={config.qkv_bias}, prm_head={config.prm_head!r}, "
          f"prm_head_hidden={config.prm_head_hidden}")
    architecture = TWO_LAYER_PRM
  dtype = dtype or config.param_dtype
  hf = {
      "architectures": [architecture], "model_type": model_type,
      "vocab_size": config.vocab_size, "hidden_size": config.hidden_size,
      "intermediate_size": config.mlp_dim, "num_hidden_layers": config.num_layers,
      "num_attention_heads": config.num_heads, "num_key_value_heads": config.num_kv_heads,
      "head_dim": config.head_dim, "hidden_act": "silu",
      "max_position_embeddings": config.max_seq_len, "rms_norm_eps": config.norm_eps,
      # Both spellings: transformers 4 reads `rope_theta`, 5 `rope_parameters`.
      "rope_theta": config.rope_theta,
      "rope_parameters": {"rope_type": "default", "rope_theta": config.rope_theta},
      "tie_word_embeddings": config.tie_embeddings, "initializer_range": config.init_std,
      "dtype": dtype, "torch_dtype": dtype,
  }
  if model_type == "llama":
    hf.update(attention_bias=False, mlp_bias=False)
  else:
    hf.update(use_sliding_window=False)
  if head == "prm":
    labels = config.num_prm_logits
    hf.update(num_labels=labels, id2label={str(i): f"LABEL_{i}" for i in range(labels)},
              label2id={f"LABEL_{i}": i for i in range(labels)})
  return hf


# ----------------------------------------------------------------------------- name table


@dataclasses.dataclass(frozen=True)
class TensorSpec:
  """Where one parameter leaf lives in a HF checkpoint.

  name: HF tensor name; per-layer tensors contain `{layer}` (the leaf then has a leading `[L]`).
  axes: for each HF axis, the per-layer dims of our leaf it holds, merged row-major. E.g.
    q_proj `[H*Dh, D]` for q_kernel `[D, H, Dh]` is `((1, 2), (0,))`.
  """

  name: str
  axes: tuple[tuple[int, ...], ...]

  def hf_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
    """HF shape of one tensor, given the per-layer shape of our leaf."""
    return tuple(math.prod(shape[d] for d in group) for group in self.axes)

  def to_hf(self, x: np.ndarray) -> np.ndarray:
    """Our per-layer array -> the HF tensor."""
    order = [d for group in self.axes for d in group]
    return np.ascontiguousarray(x.transpose(order).reshape(self.hf_shape(x.shape)))


def tensor_specs(config: ModelConfig, prefix: str = "model.", prm_tensor: str = "score"
                 ) -> dict[tuple[str, ...], TensorSpec]:
  """Flattened param path -> `TensorSpec`, for every leaf `config`'s params can have.

  `prm_tensor` names the PRM head's HF tensors (`score` of token classification,
  `v_head.summary` for a value-head PRM, `reward_head` for a separately stored head); a
  two-layer head is the torch `Sequential` `{prm_tensor}.0` (hidden) and `.2` (output).
  """
  layer = f"{prefix}layers.{{layer}}."
  linear = ((1,), (0,))  # torch `[out, in]` <-> our `[in, out]`.
  specs = {
      ("embedding",): TensorSpec(f"{prefix}embed_tokens.weight", ((0,), (1,))),
      ("final_norm", "scale"): TensorSpec(f"{prefix}norm.weight", ((0,),)),
      ("layers", "attn_norm", "scale"): TensorSpec(layer + "input_layernorm.weight", ((0,),)),
      ("layers", "mlp_norm", "scale"): TensorSpec(layer + "post_attention_layernorm.weight",
                                                  ((0,),)),
      ("layers", "attn", "o_kernel"): TensorSpec(layer + "self_attn.o_proj.weight", ((2,), (0, 1))),
      ("lm_head",): TensorSpec("lm_head.weight", linear),
      ("prm_hidden", "kernel"): TensorSpec(f"{prm_tensor}.0.weight", linear),
      ("prm_hidden", "bias"): TensorSpec(f"{prm_tensor}.0.bias", ((0,),)),
      ("value_head", "kernel"): TensorSpec("v_head.summary.weight", linear),
      ("value_head", "bias"): TensorSpec("v_head.summary.bias", ((0,),)),
  }
  out = f"{prm_tensor}.2" if config.prm_head_hidden else prm_tensor
  specs[("prm_head", "kernel")] = TensorSpec(f"{out}.weight", linear)
  specs[("prm_head", "bias")] = TensorSpec(f"{out}.bias", ((0,),))
  for name in "qkv":
    specs[("layers", "attn", f"{name}_kernel")] = TensorSpec(
        layer + f"self_attn.{name}_proj.weight", ((1, 2), (0,)))
    specs[("layers", "attn", f"{name}_bias")] = TensorSpec(
        layer + f"self_attn.{name}_proj.bias", ((0, 1),))
  for name in ("gate", "up", "down"):
    specs[("layers", "mlp", name, "kernel")] = TensorSpec(layer + f"mlp.{name}_proj.weight", linear)
  return specs


def _is_layered(path: tuple[str, ...]) -> bool:
  return path[0] == "layers"


# ----------------------------------------------------------------------------- sources


class TensorSource(Protocol):
  """HF-named tensors in HF layout, read block by block."""

  def shape(self, name: str) -> tuple[int, ...] | None:
    """Shape of tensor `name`, None if the checkpoint has no such tensor."""

  def read(self, name: str, index: tuple[slice, ...]) -> np.ndarray:
    """The block `index` (one slice per axis) of tensor `name`."""

  def where(self) -> str:
    """The checkpoint, for error messages."""


class SafetensorsSource:
  """The tensors of a HF folder: `model.safetensors`, or shards listed in the index file."""

  def __init__(self, folder: Path, stack: contextlib.ExitStack, *,
               head_file: Path | None = None):
    """`head_file`: a safetensors file holding a head stored apart from the model (ReasonFlux-
    PRM-1.5B's `reward_head`: `weight [1, D]`, `bias [1]`); its tensors are read as
    `reward_head.<name>`."""
    self.folder = pathlib.Path(folder)
    index = self.folder / INDEX_FILE
    if index.exists():
      self._file_of = dict(_read_json(index)["weight_map"])
    elif (self.folder / SINGLE_FILE).exists():
      self._file_of = None
    else:
      raise CheckpointError(f"{self.folder}: neither {SINGLE_FILE} nor {INDEX_FILE} found")
    self._stack = stack
    self._handles: dict[str, Any] = {}
    if self._file_of is None:
      self._file_of = {name: SINGLE_FILE for name in self._handle(SINGLE_FILE).keys()}
    self._key = {}  # Our name -> the tensor's name in its file, where they differ.
    if head_file is not None:
      head_file = pathlib.Path(head_file).absolute()
      if not head_file.exists():
        raise CheckpointError(f"{head_file} not found (the reward head)")
      for key in self._handle(str(head_file)).keys():
        self._file_of[f"{REWARD_HEAD}.{key}"] = str(head_file)
        self._key[f"{REWARD_HEAD}.{key}"] = key

  def _handle(self, filename: str):
    if filename not in self._handles:
      file = self.folder / filename
      if not file.exists():
        raise CheckpointError(f"{self.folder / INDEX_FILE} lists {filename}, which does not exist")
      self._handles[filename] = self._stack.enter_context(safe_open(str(file), framework="numpy"))
    return self._handles[filename]

  def shape(self, name):
    if name not in self._file_of:
      return None
    return tuple(self._slice(name).get_shape())

  def read(self, name, index):
    return self._slice(name)[index]

  def _slice(self, name):
    return self._handle(self._file_of[name]).get_slice(self._key.get(name, name))

  def where(self):
    return str(self.folder)


def _read_json(file: pathlib.Path) -> dict:
  try:
    return json.loads(file.read_text())
  except FileNotFoundError:
    raise CheckpointError(f"{file} not found") from None
  except json.JSONDecodeError as error:
    raise CheckpointError(f"{file} is not valid JSON: {error}") from None


# ----------------------------------------------------------------------------- loading


def read_block(source: TensorSource, name: str, spec: TensorSpec, shape: tuple[int, ...],
               bounds: tuple[tuple[int, int], ...]) -> np.ndarray:
  """Block `bounds` (`(start, stop)` per dim) of our per-layer array of `shape`, from `name`.

  Each HF axis is read over the row-major range its first dim spans (its other dims whole),
  then the remaining dims are cut in memory: a block never reads more than its own rows.
  """
  hf_index, cut, expanded = [], [], []
  for group in spec.axes:
    (start, stop), rest = bounds[group[0]], [shape[d] for d in group[1:]]
    inner = math.prod(rest)
    hf_index.append(slice(start * inner, stop * inner))
    expanded += [stop - start, *rest]
    cut += [slice(None), *(slice(*bounds[d]) for d in group[1:])]
  block = np.asarray(source.read(name, tuple(hf_index))).reshape(expanded)[tuple(cut)]
  order = [d for group in spec.axes for d in group]
  return block.transpose(np.argsort(order))


def _leaf_from_source(source: TensorSource, path, spec: TensorSpec, shape, dtype, sharding):
  """One leaf as a `jax.Array` on `sharding`, each device's block read separately."""
  layered = _is_layered(path)
  per_layer = shape[1:] if layered else shape
  blocks: dict[tuple, np.ndarray] = {}  # Devices holding the same block share one read.

  def callback(index):
    bounds = tuple(s.indices(n)[:2] for s, n in zip(index, shape))
    if bounds not in blocks:
      if layered:
        (first, last), inner = bounds[0], bounds[1:]
        block = np.stack([read_block(source, spec.name.format(layer=i), spec, per_layer, inner)
                          for i in range(first, last)])
      else:
        block = read_block(source, spec.name, spec, per_layer, bounds)
      blocks[bounds] = block.astype(dtype)
    return blocks[bounds]

  return jax.make_array_from_callback(shape, sharding, callback)


def _fresh_leaf(config: ModelConfig, path, shape, dtype, sharding, seed: int):
  """A head leaf the checkpoint lacks: normal(init_std) kernel, zero bias; keyed by its path."""
  key = jax.random.fold_in(jax.random.key(seed), zlib.crc32("/".join(path).encode()))
  if path[-1] == "bias":
    init = lambda _: jnp.zeros(shape, dtype)
  else:
    init = lambda k: (config.init_std * jax.random.normal(k, shape, jnp.float32)).astype(dtype)
  return jax.jit(init, out_shardings=sharding)(key)


def load_params(config: ModelConfig, source: TensorSource, *,
                optional=("prm_head", "prm_hidden", "value_head"),
                prefix: str = "model.", prm_tensor: str = "score", mesh=None,
                rules=parallel.LOGICAL_AXIS_RULES, seed: int = 0) -> dict:
  """The parameter tree of `config` from `source`, placed on `mesh` (None: default device).

  Leaves under the top-level names in `optional` are freshly initialised when `source` lacks
  them; any other missing tensor, or a tensor of the wrong shape, raises `CheckpointError`
  listing every such problem. `prefix`, `prm_tensor`: see `tensor_specs`.
  """
  abstract = traverse_util.flatten_dict(abstract_params(config))
  if mesh is None:
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    shardings = {path: device for path in abstract}
  else:
    shardings = traverse_util.flatten_dict(parallel.param_shardings(config, mesh, rules))
  specs = tensor_specs(config, prefix, prm_tensor)

  problems, present = [], {}
  for path, leaf in abstract.items():
    spec = specs[path]
    layered = _is_layered(path)
    expected = spec.hf_shape(leaf.shape[1:] if layered else leaf.shape)
    names = [spec.name.format(layer=i) for i in range(leaf.shape[0])] if layered else [spec.name]
    shapes = [source.shape(name) for name in names]
    if all(s is None for s in shapes) and path[0] in optional:
      present[path] = False
      continue
    present[path] = True
    for name, found in zip(names, shapes):
      if found is None:
        problems.append(f"missing tensor {name} (expected shape {expected})")
      elif tuple(found) != expected:
        problems.append(f"tensor {name} has shape {tuple(found)}, expected {expected}")
  if problems:
    shown = "\n  ".join(problems[:10]) + (f"\n  ... {len(problems) - 10} more"
                                           if len(problems) > 10 else "")
    raise CheckpointError(f"{source.where()} does not match the model its config describes:"
                          f"\n  {shown}")

  params = {}
  for path, leaf in abstract.items():
    dtype = config.params_dtype
    if present[path]:
      params[path] = _leaf_from_source(source, path, specs[path], leaf.shape, dtype,
                                       shardings[path])
    else:
      params[path] = _fresh_leaf(config, path, leaf.shape, dtype, shardings[path], seed)
  return traverse_util.unflatten_dict(params)


def dtype_fields(dtype, overrides: dict) -> dict:
  """`overrides` with parameter and compute dtype defaulting to `dtype`."""
  name = jnp.dtype(dtype).name
  return {"param_dtype": name, "dtype": name, **overrides}


def load_pretrained(path: Path, dtype=jnp.float32, *, mesh=None, rules=parallel.LOGICAL_AXIS_RULES,
                    seed: int = 0, value_head_as_prm: bool = False,
                    reward_head: Path | None = None, **overrides
                    ) -> tuple[ModelConfig, dict]:
  """Load a Llama / Qwen2 / Mistral HF checkpoint folder (`*ForCausalLM`,
  `*ForTokenClassification` or `Qwen2ForProcessRewardModel`).

  Args:
    path: folder with `config.json` and `model.safetensors` or `model.safetensors.index.json`.
    dtype: parameter and compute dtype (`ModelConfig.param_dtype`, `.dtype`; either can be
      overridden alone); fp32 by default whatever the file holds.
    mesh: place every leaf directly onto its `parallel.param_shardings` (None: one device).
    rules: logical-axis rule table for `mesh`.
    seed: initialises the heads the checkpoint lacks (see module docstring).
    value_head_as_prm: the checkpoint is a value-head PRM (one sigmoid logit per token, read
      at step ends): its TRL value head `v_head.summary` becomes a scalar `prm_head`.
    reward_head: a safetensors file with a linear head stored apart from the model
      (`weight [1, D]`, `bias [1]`; ReasonFlux-PRM-1.5B): it becomes a scalar `prm_head`.
      A torch-pickled head converts once with `python -c "import torch, safetensors.torch
      as st; st.save_file(torch.load('reward_head.pt', weights_only=True),
      'reward_head.safetensors')"`; prm_jax never unpickles at load time.
    **overrides: any `ModelConfig` field (e.g. `max_seq_len`, `dtype`, `prm_head`, `remat`).
  Returns:
    `(config, params)`; `config.value_head` is set when the checkpoint has a TRL value head
    (and `value_head_as_prm` is False).
  """
  folder = pathlib.Path(path)
  hf_config = _read_json(folder / "config.json")
  with contextlib.ExitStack() as stack:
    source = SafetensorsSource(folder, stack, head_file=reward_head)
    has_value_head = source.shape("v_head.summary.weight") is not None
    if value_head_as_prm and reward_head is not None:
      raise ValueError("value_head_as_prm and reward_head both name the PRM head; pass one")
    head_tensor = ("v_head.summary" if value_head_as_prm else
                   REWARD_HEAD if reward_head is not None else "score")
    if head_tensor != "score":
      overrides.setdefault("prm_head", "scalar")
    overrides.setdefault("value_head", has_value_head and not value_head_as_prm)
    config, head = config_from_hf(hf_config, **dtype_fields(dtype, overrides))
    # Base-model checkpoints (`LlamaModel`) name tensors without the `model.` prefix.
    prefix = "model." if source.shape("model.embed_tokens.weight") is not None else ""
    optional = ("value_head",) + (("lm_head",) if head == "prm" else ())
    optional += ("prm_head", "prm_hidden") if head_tensor == "score" else ()
    params = load_params(config, source, optional=optional, prefix=prefix,
                         prm_tensor=head_tensor,
                         mesh=mesh, rules=rules, seed=seed)
  return config, params


# ----------------------------------------------------------------------------- saving


def _to_host(x: jax.Array) -> np.ndarray:
  """The whole of one leaf on this host (gathered from other processes when sharded across)."""
  if getattr(x, "is_fully_addressable", True):
    return np.asarray(x)
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def save_pretrained(config: ModelConfig, params: dict, path: Path, *, head: str = "lm",
                    dtype: str | None = None, max_shard_bytes: int = 4 * 2**30) -> None:
  """Write `params` as a HF checkpoint folder that `transformers` (and `load_pretrained`) load.

  Args:
    head: "lm" writes `*ForCausalLM` (the LM head; the PRM head is not stored), "prm" writes
      `*ForTokenClassification` whose `score` is the PRM head (the LM head is not stored),
      or `Qwen2ForProcessRewardModel` (`score.0`, `score.2`) for a two-layer PRM head.
      A value head is always stored in TRL's `v_head.summary` names.
    dtype: tensor dtype in the files ("float32", "bfloat16", "float16"); default
      `config.param_dtype`.
    max_shard_bytes: above this, tensors are split over `model-0000i-of-0000n.safetensors`
      files listed in `model.safetensors.index.json`, as transformers does.
  Every process must call this (sharded leaves are gathered); process 0 writes. Files are
  written under a temporary name and renamed, so a failed save leaves no half-written file.
  """
  dtype = dtype or config.param_dtype
  hf = hf_config_from(config, head, dtype)  # Raises for what cannot be written, before any file.
  np_dtype = jnp.dtype(dtype)
  flat = traverse_util.flatten_dict(params)
  skip = {"prm": ("lm_head",), "lm": ("prm_head", "prm_hidden")}[head]
  specs = tensor_specs(config)

  # Plan: (HF name, leaf path, layer or None) in leaf order, then cut into files by size.
  plan, sizes = [], []
  for leaf_path, leaf in flat.items():
    if leaf_path[0] in skip:
      continue
    layered = _is_layered(leaf_path)
    per_layer_bytes = math.prod(leaf.shape[1:] if layered else leaf.shape)
    for layer in range(leaf.shape[0]) if layered else [None]:
      plan.append((specs[leaf_path].name.format(layer=layer), leaf_path, layer))
      sizes.append(per_layer_bytes * np_dtype.itemsize)
  shards, current, used = [], [], 0
  for entry, size in zip(plan, sizes):
    if current and used + size > max_shard_bytes:
      shards.append(current)
      current, used = [], 0
    current.append(entry)
    used += size
  shards.append(current)
  names = ([SINGLE_FILE] if len(shards) == 1 else
           [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))])

  writer = jax.process_index() == 0
  folder = pathlib.Path(path)
  if writer:
    folder.mkdir(parents=True, exist_ok=True)
  host_path, host = None, None
  for filename, entries in zip(names, shards):
    tensors = {}
    for name, leaf_path, layer in entries:
      if leaf_path != host_path:  # One leaf on the host at a time.
        host_path, host = leaf_path, _to_host(flat[leaf_path])
      value = host if layer is None else host[layer]
      tensors[name] = specs[leaf_path].to_hf(value.astype(np_dtype))
    if writer:
      files.atomic_write(folder / filename,
                         lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"}))
  if writer:
    if len(shards) > 1:
      index = {"metadata": {"total_size": int(sum(sizes))},
               "weight_map": {name: filename for filename, entries in zip(names, shards)
                              for name, _, _ in entries}}
      files.write_text(folder / INDEX_FILE, json.dumps(index, indent=2))
    files.write_text(folder / "config.json", json.dumps(hf, indent=2))

