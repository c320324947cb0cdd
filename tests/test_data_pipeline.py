"""TFDS array_record builds read back by `tfds.data_source`; grain batches: seeded,
sharded, bucketed, and resumable from a saved iterator state."""

import json

import numpy as np
import pytest

from prm_jax.data import CharTokenizer, DataFormatError, formats, tfds_builder
from prm_jax.data.pipeline import prm_batches
from prm_jax.data.tasks import generate_corpus, get_task
from tests.test_data_formats import RECORDS

TOKENIZER = CharTokenizer()
CORPUS = generate_corpus(get_task("arithmetic"), 96, seed=3, error_rate=0.5)


def _write(path, records):
  path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records),
                  encoding="utf-8")
  return path


@pytest.mark.parametrize("name", sorted(RECORDS))
def test_tfds_build_reads_back_the_same_trajectories(name, tmp_path):
  train = _write(tmp_path / "train.jsonl", RECORDS[name])
  test = _write(tmp_path / "test.jsonl", RECORDS[name][:1])
  tfds_builder.build_dataset({"train": [train, train], "test": test}, name, tmp_path / "tfds",
                             name=f"{name}_data")
  expected = {"train": formats.read(train, name).examples * 2,
              "test": formats.read(test, name).examples}
  for split, want in expected.items():
    source = tfds_builder.data_source(tmp_path / "tfds", split, name=f"{name}_data")
    assert [tfds_builder.from_features(source[i]) for i in range(len(source))] == want


@pytest.fixture(scope="module")
def corpus_source(tmp_path_factory):
  """(JSONL path, TFDS data source) of CORPUS written in the native format and built."""
  folder = tmp_path_factory.mktemp("corpus")
  path = folder / "corpus.jsonl"
  formats.write(path, CORPUS, "prm_jax")
  tfds_builder.build_dataset({"train": path}, "prm_jax", folder / "tfds")
  return path, tfds_builder.data_source(folder / "tfds", "train")


def test_tfds_build_of_a_labelled_corpus(corpus_source):
  path, source = corpus_source
  read = [tfds_builder.from_features(source[i]) for i in range(len(source))]
  assert read == formats.read(path, "prm_jax").examples
  assert [dict(t.to_dict(), meta={}) for t in read] == [
      dict(t.to_dict(), meta={}) for t in CORPUS]


def test_tfds_build_skip_bad(tmp_path):
  path = _write(tmp_path / "mixed.jsonl", RECORDS["trl"])
  with open(path, "a", encoding="utf-8") as f:
    f.write('{"prompt": "p", "completions": ["a"], "labels": [0.5]}\n')
  with pytest.raises(DataFormatError, match=f"{path}:4: labels"):
    tfds_builder.build_dataset({"train": path}, "trl", tmp_path / "strict")
  builder = tfds_builder.build_dataset({"train": path}, "trl", tmp_path / "lenient",
                                       skip_bad=True)
  assert builder.info.metadata["skipped_lines/train"] == 1
  assert len(tfds_builder.data_source(tmp_path / "lenient", "train")) == len(RECORDS["trl"])


def _batches(iterator, count):
  return [next(iterator) for _ in range(count)]


def _assert_same(batches, others):
  assert len(batches) == len(others)
  for batch, other in zip(batches, others):
    assert batch.keys() == other.keys()
    for key in batch:
      np.testing.assert_array_equal(batch[key], other[key])


def _problems(batch):
  """The problem text of every real row (as in TRL, the first step follows the prompt)."""
  rows = [ids[mask] for ids, mask in zip(batch["input_ids"], batch["attention_mask"])]
  return [TOKENIZER.decode(row).split("=?")[0] + "=?" for row in rows if len(row)]


KWARGS = dict(batch_size=4, max_length=64, max_steps=8, bucket_lengths=(32, 48), bucket_window=3,
              shard_index=0, shard_count=1)


def test_resumes_exactly_from_a_saved_state():
  ds = prm_batches(CORPUS, TOKENIZER, seed=1, **KWARGS)
  iterator = iter(ds)
  _batches(iterator, 30)  # Past the first epoch (24 batches), so epoch 2's shuffle resumes.
  state = iterator.get_state()
  expected = _batches(iterator, 10)
  resumed = iter(ds)
  resumed.set_state(json.loads(json.dumps(state)))  # States survive a JSON checkpoint.
  _assert_same(_batches(resumed, 10), expected)


def test_seeded_shuffle_reshuffles_every_epoch():
  def epochs(seed):
    batches = list(prm_batches(CORPUS, TOKENIZER, seed=seed, num_epochs=2, **KWARGS))
    return [p for b in batches[:24] for p in _problems(b)], [
        p for b in batches[24:] for p in _problems(b)]
  first, second = epochs(seed=1)
  assert sorted(first) == sorted(second) == sorted(t.problem for t in CORPUS)
  assert first != second
  assert epochs(seed=1) == (first, second) and epochs(seed=2)[0] != first


@pytest.mark.parametrize("count", [2, 3])
def test_processes_see_disjoint_shards_that_cover_the_data(count):
  seen = []
  for index in range(count):
    ds = prm_batches(CORPUS, TOKENIZER, seed=5, num_epochs=1, drop_remainder=False,
                     **dict(KWARGS, shard_index=index, shard_count=count))
    seen.append([p for batch in ds for p in _problems(batch)])
  assert sum(map(len, seen)) == len(CORPUS)
  assert sorted(p for shard in seen for p in shard) == sorted(t.problem for t in CORPUS)


def test_drop_remainder_drops_only_the_partial_batch():
  ds = prm_batches(CORPUS[:30], TOKENIZER, seed=5, num_epochs=1, **KWARGS)
  assert sum(len(_problems(batch)) for batch in ds) == 28  # 7 full batches of 4.


def test_batches_are_bucketed_with_static_shapes():
  batches = _batches(iter(prm_batches(CORPUS, TOKENIZER, seed=0, **KWARGS)), 24)
  assert {b["input_ids"].shape for b in batches} <= {(4, 32), (4, 48), (4, 64)}
  assert len({b["input_ids"].shape for b in batches}) > 1
  assert {b["step_positions"].shape for b in batches} == {(4, 8)}
  for batch in batches:  # Each batch gets the shortest bucket that fits it.
    longest = batch["attention_mask"].sum(1).max()
    assert batch["input_ids"].shape[1] == min(n for n in (32, 48, 64) if n >= longest)


def test_reads_a_tfds_source_and_names_a_too_long_example(corpus_source):
  _, source = corpus_source
  from_tfds = _batches(iter(prm_batches(source, TOKENIZER, seed=4, **KWARGS)), 5)
  _assert_same(from_tfds, _batches(iter(prm_batches(CORPUS, TOKENIZER, seed=4, **KWARGS)), 5))
  with pytest.raises(ValueError, match=r"\(.*corpus.jsonl:\d+\) has \d+ tokens > max_length=16"):
    next(iter(prm_batches(source, TOKENIZER, **dict(KWARGS, max_length=16, bucket_lengths=()))))
  truncated = next(iter(prm_batches(source, TOKENIZER, truncate=True,
                                    **dict(KWARGS, max_length=16, bucket_lengths=()))))
  assert truncated["input_ids"].shape == (4, 16)


@pytest.mark.slow
def test_worker_processes_give_the_same_batches():
  single = _batches(iter(prm_batches(CORPUS, TOKENIZER, seed=1, **KWARGS)), 12)
  iterator = iter(prm_batches(CORPUS, TOKENIZER, seed=1, num_workers=2, **KWARGS))
  try:
    _assert_same(_batches(iterator, 12), single)
  finally:
    iterator.close()
