"""grain input pipeline: trajectories -> fixed-shape PRM batches, sharded and resumable.

    source = tfds_builder.data_source(data_dir, "train", name="my_prm_data")
    ds = prm_batches(source, tokenizer, batch_size=32, max_length=512, max_steps=16, seed=0)
    it = iter(ds)
    batch = next(it)               # the `prm_jax.data.batching.collate_prm` layout
    state = it.get_state()         # save with the checkpoint ...
    it.set_state(state)            # ... and a fresh iterator continues exactly there

Stages, all index-based (`grain.MapDataset`), so the whole pipeline is a pure function of
the source, the arguments and the position, which is what makes resuming exact:

 1. shard: process `i` of `n` takes records `i, i+n, i+2n, ...` (default: this JAX
    process's index and count), so hosts read disjoint shards that cover the data;
 2. shuffle by `seed`, reshuffled every epoch; repeat `num_epochs` (None = forever);
 3. tokenize (`tokenize_stepwise`, TRL semantics);
 4. bucketing: take windows of `bucket_window * batch_size` examples, sort each window by
    length, cut it into batches (whose order is then shuffled by `seed`), and pad every
    batch to the smallest of `bucket_lengths` that fits it (default: only `max_length`).
    Few distinct shapes means few recompiles; grouping similar lengths wastes less padding.

Sequence packing is not offered: several examples in one row would need segment-aware
attention, which the model does not take (its mask is one validity bit per token).
`batch_size` is per process: the global batch is `batch_size * shard_count`.
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import grain
import jax
import numpy as np
from absl import flags

from prm_jax.data.batching import collate_prm
from prm_jax.data.schema import Trajectory
from prm_jax.data.tfds_builder import from_features
from prm_jax.data.tokenize import tokenize_stepwise
from prm_jax.data.tokenizer import Tokenizer


def shard(ds: grain.MapDataset, index: int, count: int) -> grain.MapDataset:
  """Records `index, index + count, ...`: disjoint across `index`, together covering `ds`."""
  if not 0 <= index < count:
    raise ValueError(f"shard index {index} is not in [0, {count})")
  return ds[index::count]


def _tokenize(record: Trajectory | dict[str, Any], *, tokenizer: Tokenizer,
              options: dict[str, Any]) -> dict[str, Any]:
  trajectory = record if isinstance(record, Trajectory) else from_features(record)
  example = tokenize_stepwise(tokenizer, trajectory, **options)
  example["source"] = trajectory.meta.get("source")
  return example


def _bucket_length(examples: Sequence[dict[str, Any]], lengths: Sequence[int]) -> int:
  longest = max(len(e["input_ids"]) for e in examples)
  # Longer than every bucket: the last (= max_length) one, where collate raises or truncates.
  return next((length for length in lengths if length >= longest), lengths[-1])


def _window_batches(window_index: int, examples: list[dict[str, Any]], *, batch_size: int,
                    lengths: Sequence[int], max_steps: int, pad_id: int, truncate: bool,
                    drop_remainder: bool, seed: int | None) -> list[dict[str, np.ndarray]]:
  """Cut one window into length-sorted batches, in a seeded order, each padded to a bucket."""
  examples = sorted(examples, key=lambda e: len(e["input_ids"]))
  groups = [examples[i:i + batch_size] for i in range(0, len(examples), batch_size)]
  if drop_remainder and groups and len(groups[-1]) < batch_size:
    groups.pop()
  if seed is not None:
    order = np.random.default_rng([seed, window_index]).permutation(len(groups))
    groups = [groups[i] for i in order]
  return [collate_prm(group, pad_id=pad_id, max_length=_bucket_length(group, lengths),
                      max_steps=max_steps, truncate=truncate) for group in groups]


class _Unpack(grain.experimental.FlatMapTransform):
  """A window's list of batches -> the batches, one element each."""

  def __init__(self, max_fan_out: int):
    self.max_fan_out = max_fan_out

  def flat_map(self, batches):
    return batches


def prm_batches(source: Sequence[Any], tokenizer: Tokenizer, *, batch_size: int,
                max_length: int, max_steps: int, seed: int = 0, shuffle: bool = True,
                num_epochs: int | None = None, shard_index: int | None = None,
                shard_count: int | None = None, step_separator: str = "\n",
                max_prompt_length: int | None = None, train_on_last_step_only: bool = False,
                truncate: bool = False, bucket_lengths: Sequence[int] = (),
                bucket_window: int = 1, drop_remainder: bool = True, pad_id: int | None = None,
                num_threads: int = 4, num_workers: int = 0) -> grain.IterDataset:
  """PRM training batches from a random-access source (see module docstring).

  Args:
    source: `len` + `[i]` giving `Trajectory`s or TFDS feature dicts (`tfds_builder`).
    tokenizer: a `prm_jax.data.tokenizer.Tokenizer`.
    batch_size: examples per batch, per process.
    max_length: T of the longest bucket; longer examples raise unless `truncate`.
    max_steps: S of every batch; examples with more steps raise unless `truncate`.
    seed: shuffling seed (record order and batch order).
    shuffle: shuffle records and batches; False keeps source order (but for the length
      sorting within each window).
    num_epochs: passes over the data; None repeats forever.
    shard_index, shard_count: this process's shard; default `jax.process_index()` and
      `jax.process_count()` (so build the pipeline after `jax.distributed.initialize`).
    step_separator, max_prompt_length, train_on_last_step_only: as `tokenize_stepwise`.
    truncate: cut over-long examples (to `max_length` tokens, `max_steps` steps).
    bucket_lengths: shorter padded lengths to use when a batch fits (ascending).
    bucket_window: batches per length-sorting window (1 = no grouping by length).
    drop_remainder: drop a final partial batch (keeps the batch size static).
    pad_id: padding id; default the tokenizer's `pad_id`, else its `eos_id`.
    num_threads: reader threads of this process.
    num_workers: worker processes (`mp_prefetch`); 0 = in this process.

  Returns:
    A `grain.IterDataset` of `collate_prm` batches; its iterators have `get_state` /
    `set_state` for checkpointing.
  """
  if batch_size < 1 or bucket_window < 1:
    raise ValueError(f"batch_size={batch_size} and bucket_window={bucket_window} must be >= 1")
  lengths = sorted(set(bucket_lengths) | {max_length})
  if lengths[-1] != max_length:
    raise ValueError(f"bucket_lengths {list(bucket_lengths)} exceed max_length={max_length}")
  if pad_id is None:
    pad_id = tokenizer.pad_id if tokenizer.pad_id is not None else tokenizer.eos_id
  if pad_id is None:
    raise ValueError("the tokenizer has neither a pad nor an eos token: pass pad_id")
  shard_index = jax.process_index() if shard_index is None else shard_index
  shard_count = jax.process_count() if shard_count is None else shard_count

  ds = shard(grain.MapDataset.source(source), shard_index, shard_count)
  if shuffle:
    ds = ds.shuffle(seed=seed)
  ds = ds.repeat(num_epochs).map(functools.partial(
      _tokenize, tokenizer=tokenizer,
      options=dict(step_separator=step_separator, max_prompt_length=max_prompt_length,
                   train_on_last_step_only=train_on_last_step_only,
                   max_length=max_length if truncate else None)))
  # The last window may be short; `_window_batches` drops only its partial batch, and
  # the flat map's empty slots (None) are skipped by `to_iter_dataset`.
  ds = ds.batch(bucket_window * batch_size, batch_fn=list)
  ds = ds.map_with_index(functools.partial(
      _window_batches, batch_size=batch_size, lengths=lengths, max_steps=max_steps,
      pad_id=pad_id, truncate=truncate, drop_remainder=drop_remainder,
      seed=seed if shuffle else None))
  ds = grain.experimental.FlatMapMapDataset(ds, _Unpack(bucket_window))
  ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=num_threads))
  if num_workers:
    # grain's workers read absl flags; outside an absl app (tests, notebooks) nothing has
    # parsed them, so take their defaults. An absl app's own parse still wins.
    if not flags.FLAGS.is_parsed():
      flags.FLAGS.mark_as_parsed()
    ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers))
  return ds
