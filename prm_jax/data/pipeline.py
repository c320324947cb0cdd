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

from prm_jax.data.batching import collate_prm, collate_sft
from prm_jax.data.schema import Trajectory
from prm_jax.data.tfds_builder import from_features
from prm_jax.data.tokenize import tokenize_sft, tokenize_stepwise
from prm_jax.data.tokenizer import Tokenizer


def shard(ds: grain.MapDataset, index: int, count: int) -> grain.MapDataset:
  """Records `index, index + count, ...`: disjoint across `index`, together covering `ds`."""
  if not 0 <= index < count:
    raise ValueError(f"shard index {index} is not in [0, {count})")
  return ds[index::count]


def records(source: Sequence[Any], *, seed: int, shuffle: bool, num_epochs: int | None,
            shard_index: int | None, shard_count: int | None) -> grain.MapDataset:
  """Stages 1-2: this process's shard of `source`, shuffled by `seed` (every epoch anew),
  repeated `num_epochs` times (None: forever). Shard default: this JAX process."""
  shard_index = jax.process_index() if shard_index is None else shard_index
  shard_count = jax.process_count() if shard_count is None else shard_count
  ds = shard(grain.MapDataset.source(source), shard_index, shard_count)
  if shuffle:
    ds = ds.shuffle(seed=seed)
  return ds.repeat(num_epochs)


def _trajectory(record: Trajectory | dict[str, Any]) -> Trajectory:
  return record if isinstance(record, Trajectory) else from_features(record)


def _tokenize(record: Trajectory | dict[str, Any], *, tokenizer: Tokenizer,
              options: dict[str, Any]) -> dict[str, Any]:
  trajectory = _trajectory(record)
  example = tokenize_stepwise(tokenizer, trajectory, **options)
  example["source"] = trajectory.meta.get("source")
  return example


def _tokenize_sft(record: Trajectory | dict[str, Any], *, tokenizer: Tokenizer,
                  step_separator: str) -> dict[str, Any]:
  trajectory = _trajectory(record)
  example = tokenize_sft(tokenizer, trajectory, step_separator=step_separator)
  example["source"] = trajectory.meta.get("source")
  return example


def _pad_id(tokenizer: Tokenizer, pad_id: int | None) -> int:
  """The given id, else the tokenizer's pad, else its eos (padding is never attended)."""
  if pad_id is None:
    pad_id = tokenizer.pad_id if tokenizer.pad_id is not None else tokenizer.eos_id
  if pad_id is None:
    raise ValueError("the tokenizer has neither a pad nor an eos token: pass pad_id")
  return pad_id


def _bucket_length(examples: Sequence[dict[str, Any]], lengths: Sequence[int]) -> int:
  longest = max(len(e["input_ids"]) for e in examples)
  # Longer than every bucket: the last (= max_length) one, where collate raises or truncates.
  return next((length for length in lengths if length >= longest), lengths[-1])


def _window_batches(window_index: int, examples: list[dict[str, Any]], *, batch_size: int,
                    lengths: Sequence[int], collate, drop_remainder: bool,
                    seed: int | None) -> list[dict[str, np.ndarray]]:
  """Cut one window into length-sorted batches, in a seeded order, each padded to a bucket
  (`collate(group, max_length)`)."""
  examples = sorted(examples, key=lambda e: len(e["input_ids"]))
  groups = [examples[i:i + batch_size] for i in range(0, len(examples), batch_size)]
  if drop_remainder and groups and len(groups[-1]) < batch_size:
    groups.pop()
  if seed is not None:
    order = np.random.default_rng([seed, window_index]).permutation(len(groups))
    groups = [groups[i] for i in order]
  return [collate(group, max_length=_bucket_length(group, lengths)) for group in groups]


def _bucketed(ds: grain.MapDataset, collate, *, batch_size: int, max_length: int,
              bucket_lengths: Sequence[int], bucket_window: int, drop_remainder: bool,
              seed: int | None, num_threads: int) -> grain.IterDataset:
  """Stage 4 (module docstring) on tokenized examples: batches of `batch_size`, each padded
  to the smallest bucket that fits it."""
  if batch_size < 1 or bucket_window < 1:
    raise ValueError(f"batch_size={batch_size} and bucket_window={bucket_window} must be >= 1")
  lengths = sorted(set(bucket_lengths) | {max_length})
  if lengths[-1] != max_length:
    raise ValueError(f"bucket_lengths {list(bucket_lengths)} exceed max_length={max_length}")
  # The last window may be short; `_window_batches` drops only its partial batch, and
  # the flat map's empty slots (None) are skipped by `to_iter_dataset`.
  ds = ds.batch(bucket_window * batch_size, batch_fn=list)
  ds = ds.map_with_index(functools.partial(
      _window_batches, batch_size=batch_size, lengths=lengths, collate=collate,
      drop_remainder=drop_remainder, seed=seed))
  ds = grain.experimental.FlatMapMapDataset(ds, _Unpack(bucket_window))
  return ds.to_iter_dataset(grain.ReadOptions(num_threads=num_threads))


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
  pad_id = _pad_id(tokenizer, pad_id)
  ds = records(source, seed=seed, shuffle=shuffle, num_epochs=num_epochs,
               shard_index=shard_index, shard_count=shard_count)
  ds = ds.map(functools.partial(
      _tokenize, tokenizer=tokenizer,
      options=dict(step_separator=step_separator, max_prompt_length=max_prompt_length,
                   train_on_last_step_only=train_on_last_step_only,
                   max_length=max_length if truncate else None)))
  collate = functools.partial(collate_prm, pad_id=pad_id, max_steps=max_steps,
                              truncate=truncate)
  ds = _bucketed(ds, collate, batch_size=batch_size, max_length=max_length,
                 bucket_lengths=bucket_lengths, bucket_window=bucket_window,
                 drop_remainder=drop_remainder, seed=seed if shuffle else None,
                 num_threads=num_threads)
  if num_workers:
    # grain's workers read absl flags; outside an absl app (tests, notebooks) nothing has
    # parsed them, so take their defaults. An absl app's own parse still wins.
    if not flags.FLAGS.is_parsed():
      flags.FLAGS.mark_as_parsed()
    ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers))
  return ds


def sft_batches(source: Sequence[Any], tokenizer: Tokenizer, *, batch_size: int,
                max_length: int, seed: int = 0, shuffle: bool = True,
                num_epochs: int | None = None, shard_index: int | None = None,
                shard_count: int | None = None, step_separator: str = "\n",
                bucket_lengths: Sequence[int] = (), bucket_window: int = 1,
                pad_id: int | None = None, num_threads: int = 4) -> grain.IterDataset:
  """Policy training batches (`collate_sft` layout, `[batch_size, max_length]`) from
  trajectories: stages 1-2 as `prm_batches`, then `tokenize_sft` (prompt, steps, EOS).
  With `bucket_lengths`, stage 4 as `prm_batches`: windows of `bucket_window` batches
  sorted by length, each batch padded to the smallest bucket that fits it (less padding
  for a corpus of short and long examples, one compilation per bucket).

  A final partial batch is dropped (static shapes); an over-long solution raises.
  Iterators have `get_state` / `set_state`.
  """
  if batch_size < 1:
    raise ValueError(f"batch_size={batch_size} must be >= 1")
  pad_id = _pad_id(tokenizer, pad_id)
  ds = records(source, seed=seed, shuffle=shuffle, num_epochs=num_epochs,
               shard_index=shard_index, shard_count=shard_count)
  ds = ds.map(functools.partial(_tokenize_sft, tokenizer=tokenizer,
                                step_separator=step_separator))
  if bucket_lengths:
    return _bucketed(ds, functools.partial(collate_sft, pad_id=pad_id), batch_size=batch_size,
                     max_length=max_length, bucket_lengths=bucket_lengths,
                     bucket_window=bucket_window, drop_remainder=True,
                     seed=seed if shuffle else None, num_threads=num_threads)
  ds = ds.batch(batch_size, drop_remainder=True,
                batch_fn=functools.partial(collate_sft, pad_id=pad_id, max_length=max_length))
  return ds.to_iter_dataset()
