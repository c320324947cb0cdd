"""prm_jax: process reward models on a pure-functional, sharded JAX/Flax stack."""
