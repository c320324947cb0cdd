"""`ModelConfig`: the static description of a Llama/Qwen2-family decoder and its heads.

A frozen (hashable) dataclass, so it can be closed over by `jax.jit` and used as a
static argument. Every field is validated on construction; a bad value raises
`ValueError` naming the field.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

PRM_HEADS = ("two_class", "scalar")
REMAT_POLICIES = ("none", "full", "dots", "dots_no_batch")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Shapes and numerics of a decoder-only transformer.

  Attributes:
    vocab_size: V, number of token ids.
    hidden_size: D, width of the residual stream.
    num_layers: L, number of decoder blocks (scanned).
    num_heads: H, query heads.
    num_kv_heads: K, key/value heads; `H % K == 0` (grouped-query attention, K == H is MHA).
    head_dim: Dh, width of one head (explicit: `H * Dh` need not equal D).
    mlp_dim: F, hidden width of the SwiGLU MLP.
    rope_theta: base of the rotary embedding frequencies.
    norm_eps: epsilon of every RMSNorm.
    qkv_bias: bias on the q/k/v projections (Qwen2 has it, Llama does not).
    tie_embeddings: LM head reuses the input embedding matrix.
    max_seq_len: longest sequence (prompt + cache) the model accepts; longer inputs
      are rejected with a clear error rather than silently extrapolated.
    prm_head: "two_class" (2-way logits, p = softmax[1], the TRL/Qwen2.5-Math-PRM token
      classification head) or "scalar" (one logit, p = sigmoid).
    prm_head_hidden: width of a ReLU layer between the final hidden state and the PRM head
      (`Linear(D, P) -> ReLU -> Linear(P, C)`, Qwen2.5-Math-PRM's `score` head with
      P = D); 0 = a linear head.
    value_head: add a scalar value head `values [B, T]`.
    dtype: compute dtype ("float32" or "bfloat16"); softmax, norms, heads stay fp32.
    param_dtype: storage dtype of the parameters.
    remat: rematerialisation policy of each scanned block: "none", "full" (save
      nothing), "dots" (save matmul outputs) or "dots_no_batch" (save weight matmuls only).
    init_std: standard deviation of the normal initialiser of every matrix.
  """

  vocab_size: int
  hidden_size: int
  num_layers: int
  num_heads: int
  num_kv_heads: int
  head_dim: int
  mlp_dim: int
  rope_theta: float = 10_000.0
  norm_eps: float = 1e-6
  qkv_bias: bool = False
  tie_embeddings: bool = False
  max_seq_len: int = 4096
  prm_head: str = "two_class"
  prm_head_hidden: int = 0
  value_head: bool = False
  dtype: str = "float32"
  param_dtype: str = "float32"
  remat: str = "none"
  init_std: float = 0.02

  def __post_init__(self):
    for name in ("vocab_size", "hidden_size", "num_layers", "num_heads", "num_kv_heads",
                 "head_dim", "mlp_dim", "max_seq_len"):
      value = getattr(self, name)
      if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"ModelConfig.{name} must be a positive int, got {value!r}")
    if (not isinstance(self.prm_head_hidden, int) or isinstance(self.prm_head_hidden, bool)
        or self.prm_head_hidden < 0):
      raise ValueError("ModelConfig.prm_head_hidden must be a non-negative int, got "
                       f"{self.prm_head_hidden!r}")
    if self.num_heads % self.num_kv_heads:
      raise ValueError(
          f"ModelConfig.num_heads={self.num_heads} is not divisible by "
          f"ModelConfig.num_kv_heads={self.num_kv_heads} (grouped-query attention needs "
          "a whole number of query heads per key/value head)")
    if self.head_dim % 2:
      raise ValueError(f"ModelConfig.head_dim={self.head_dim} must be even (rotary embeddings)")
    if not self.rope_theta > 0:
      raise ValueError(f"ModelConfig.rope_theta must be > 0, got {self.rope_theta!r}")
    if not self.norm_eps > 0:
      raise ValueError(f"ModelConfig.norm_eps must be > 0, got {self.norm_eps!r}")
    if self.prm_head not in PRM_HEADS:
      raise ValueError(f"ModelConfig.prm_head={self.prm_head!r} is not one of {PRM_HEADS}")
    if self.remat not in REMAT_POLICIES:
      raise ValueError(f"ModelConfig.remat={self.remat!r} is not one of {REMAT_POLICIES}")
    for name in ("dtype", "param_dtype"):
      if getattr(self, name) not in DTYPES:
        raise ValueError(f"ModelConfig.{name}={getattr(self, name)!r} is not one of "
                         f"{tuple(DTYPES)}")

  @property
  def compute_dtype(self):
    return DTYPES[self.dtype]

  @property
  def params_dtype(self):
    return DTYPES[self.param_dtype]

  @property
  def num_prm_logits(self) -> int:
    return 2 if self.prm_head == "two_class" else 1

  def replace(self, **changes) -> "ModelConfig":
    """A copy with `changes` applied (validated like the original); unknown fields raise."""
    unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
    if unknown:
      raise ValueError(f"ModelConfig has no field(s) {sorted(unknown)}")
    return dataclasses.replace(self, **changes)

  def num_params(self) -> int:
    """Number of backbone + LM-head parameters (heads for PRM/value excluded)."""
    d, h, k, dh, f, l = (self.hidden_size, self.num_heads, self.num_kv_heads, self.head_dim,
                         self.mlp_dim, self.num_layers)
    attn = d * h * dh * 2 + d * k * dh * 2 + (self.qkv_bias and (h + 2 * k) * dh)
    block = attn + 3 * d * f + 2 * d
    embed = self.vocab_size * d * (1 if self.tie_embeddings else 2)
    return int(l * block + embed + d)

  def flops_per_token(self, seq_len: int, *, lm_head: bool = True) -> float:
    """Training FLOPs per token (forward + backward = 3x forward) at sequence length `seq_len`.

    Counts every matmul (6 * matmul params per token) plus attention scores and weighted
    values (causal: half of the full T x T square), the PaLM appendix-B convention used
    for model FLOPs utilisation. `lm_head=False` leaves out the vocabulary projection,
    which a PRM training step never computes.
    """
    norms = self.hidden_size * (2 * self.num_layers + 1)
    # The input embedding is a lookup, not a matmul; a tied one is still multiplied once
    # as the LM head, an untied one has its own LM-head matrix (counted in num_params).
    lookup = 0 if self.tie_embeddings else self.vocab_size * self.hidden_size
    matmul_params = self.num_params() - norms - lookup
    if not lm_head:
      matmul_params -= self.vocab_size * self.hidden_size
    attention = 2 * 2 * self.num_layers * self.num_heads * self.head_dim * seq_len / 2
    return 3 * (2 * matmul_params + attention)
