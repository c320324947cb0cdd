"""EDU trees (`prm_jax.labeling.edu`) against a brute-force reference, their invariants, the
segment labels, P-EDU pruning, and bad settings."""

import dataclasses

import jax
import numpy as np
import pytest

from prm_jax import models, parallel
from prm_jax.data import CharTokenizer, tokenize_stepwise
from prm_jax.data.tokenize import prompt_ids
from prm_jax.labeling import edu
from tests import edu_reference

TOKENIZER = CharTokenizer()
PROBLEMS = ["7+5*3=?", "9-4=?", "2*3+1-4=?", "8*8-1=?", "1+1=?"]
EXCLUDED = edu.excluded_token_ids(TOKENIZER)
NEW_TOKENS = 14


@pytest.fixture(scope="module")
def model():
  config = models.get_model_config("tiny", vocab_size=TOKENIZER.vocab_size)
  params = models.init_params(config, jax.random.key(0))
  # Larger weights than the default init: entropies spread over 2.5-3.5 nats, so a
  # threshold in that range splits positions into candidates and the rest.
  return config, jax.tree.map(lambda x: x * 12 if x.ndim > 1 else x, params)


@pytest.fixture(scope="module")
def prm(model):
  config, params = model
  # A PRM of the same shape (its own random head), scaled like the policy.
  prm_params = models.init_params(config, jax.random.key(1))
  return config, jax.tree.map(lambda x: x * 12 if x.ndim > 1 else x, prm_params)


def _build(model, problems=PROBLEMS, **settings):
  config, params = model
  kwargs = dict(max_new_tokens=NEW_TOKENS, max_leaves=6, max_anchors=3, min_gap=2)
  kwargs.update(settings)
  prm = kwargs.pop("prm", None)
  batch = kwargs.pop("queries_per_batch", 2)
  chunk = kwargs.pop("chunk", 16)
  return edu.build_trees(config, params, TOKENIZER, _prompts(problems),
                         edu.EduConfig(**kwargs), rng=jax.random.key(0), prm=prm,
                         queries_per_batch=batch, chunk=chunk)


def _prompts(problems):
  return [prompt_ids(TOKENIZER, p) for p in problems]


def _reference(model, problem, **settings):
  config, params = model
  kwargs = dict(max_new_tokens=NEW_TOKENS, max_leaves=6, max_anchors=3, min_gap=2)
  kwargs.update(settings)
  return edu_reference.reference_tree(config, params, prompt_ids(TOKENIZER, problem),
                                      eos=TOKENIZER.eos_id, excluded=EXCLUDED, **kwargs)


def _leaves(tree):
  return [(leaf.tokens, leaf.anchors, leaf.finished) for leaf in tree.leaves]


SETTINGS = [
    dict(tau=3.0),
    dict(tau=3.2, max_leaves=3, min_gap=1),
    dict(tau=2.9, max_leaves=16, max_anchors=5, min_gap=3),
    dict(tau=3.1, order="position"),
    dict(tau=3.0, max_leaves=1),
    dict(tau=3.0, max_anchors=0),
]


@pytest.mark.parametrize("settings", SETTINGS, ids=lambda s: ",".join(f"{k}={v}"
                                                                      for k, v in s.items()))
def test_trees_equal_brute_force_reference(model, settings):
  trees = _build(model, **settings)
  for problem, tree in zip(PROBLEMS, trees):
    leaves, generated, _ = _reference(model, problem, **settings)
    assert _leaves(tree) == leaves, problem
    assert tree.generated_tokens == generated, problem
    assert tree.anchors == len(leaves) - 1
  if settings.get("max_leaves", 6) > 1 and settings.get("max_anchors", 3) > 0:
    assert sum(t.anchors for t in trees) >= len(PROBLEMS)  # Branching was exercised.


def test_tree_invariants(model):
  settings = dict(tau=2.9, max_leaves=8, max_anchors=2, min_gap=3)
  for tree in _build(model, **settings):
    assert 1 <= len(tree.leaves) <= 8
    nodes = set()
    for leaf in tree.leaves:
      assert len(leaf.anchors) <= 2
      gaps = np.diff([0] + leaf.anchors)
      assert (gaps >= 3).all(), leaf.anchors
      assert np.all(np.asarray(leaf.entropies) > 2.9)
      nodes.update(tuple(leaf.tokens[:i + 1]) for i in range(len(leaf.tokens)))
    # Every generated token is a distinct node of the tree (nothing decoded twice).
    assert tree.generated_tokens == len(nodes)
    # Siblings: at every anchor, some other leaf shares the prefix and takes another token.
    for leaf in tree.leaves:
      for anchor in leaf.anchors:
        others = {other.tokens[anchor] for other in tree.leaves
                  if other.tokens[:anchor] == leaf.tokens[:anchor]}
        assert len(others) == 2


def test_excluded_top1_is_never_an_anchor(model):
  config, params = model
  # Exclude every id: no candidate can exist, each query is one greedy path.
  trees = edu.build_trees(config, params, TOKENIZER, _prompts(PROBLEMS),
                          edu.EduConfig(tau=0.01, max_leaves=8, max_new_tokens=NEW_TOKENS),
                          rng=jax.random.key(0), excluded=range(TOKENIZER.vocab_size))
  assert all(len(t.leaves) == 1 and t.candidates == 0 for t in trees)
  # With the default set, the top-1 token at every anchor is not excluded.
  for problem, tree in zip(PROBLEMS, _build(model, tau=2.9, max_leaves=16, max_anchors=5)):
    prompt = prompt_ids(TOKENIZER, problem)
    for leaf in tree.leaves:
      for anchor in leaf.anchors:
        _, top1, _ = edu_reference.next_token_stats(config, params, prompt + leaf.tokens[:anchor])
        assert top1 not in EXCLUDED


def test_default_excluded_set_is_formatting_not_math():
  text = {TOKENIZER.decode([i]) for i in EXCLUDED if i >= 3}
  assert {"\n", " ", ".", ",", "?", "#", "(", ")"} <= text
  assert not {"-", "*", "/", "%", "+", "=", "7", "a"} & text
  assert {TOKENIZER.bos_id, TOKENIZER.eos_id, TOKENIZER.pad_id} <= set(EXCLUDED)


def test_trees_do_not_depend_on_batch_composition(model):
  settings = dict(tau=3.0, temperature=0.8)
  batched = _build(model, queries_per_batch=3, **settings)
  # Query q's keys derive from its index in the list, not from its batch-mates.
  alone = _build(model, queries_per_batch=1, **settings)
  assert [_leaves(t) for t in alone] == [_leaves(t) for t in batched]
  greedy = _build(model, tau=3.0, queries_per_batch=3)
  assert _leaves(_build(model, problems=PROBLEMS[2:3], tau=3.0)[0]) == _leaves(greedy[2])
  # Sampling between anchors follows the key: another seed gives other leaves somewhere.
  config, params = model
  other = edu.build_trees(config, params, TOKENIZER, _prompts(PROBLEMS),
                          edu.EduConfig(tau=3.0, max_leaves=6, max_new_tokens=NEW_TOKENS,
                                        max_anchors=3, min_gap=2, temperature=0.8),
                          rng=jax.random.key(1), queries_per_batch=3)
  assert [_leaves(t) for t in other] != [_leaves(t) for t in batched]


@pytest.mark.parametrize("chunk", [1, 5])
def test_trees_do_not_depend_on_the_schedule(model, prm, chunk):
  """Paths advanced a few tokens per sampler call (children starting as their query's
  generation ends, in rows freed by other paths) give the trees of whole-path calls."""
  settings = dict(tau=2.9, max_leaves=16, max_anchors=5, min_gap=3)
  for extra in (dict(), dict(temperature=0.8), dict(prm=prm, prune_threshold=0.5)):
    whole = _build(model, **settings, **extra)
    pieces = _build(model, chunk=chunk, queries_per_batch=3, **settings, **extra)
    assert [_leaves(t) for t in pieces] == [_leaves(t) for t in whole], extra
    assert [t.generated_tokens for t in pieces] == [t.generated_tokens for t in whole]
    assert [[(c.tokens, c.pruned) for c in t.checks] for t in pieces] == [
        [(c.tokens, c.pruned) for c in t.checks] for t in whole]
  assert sum(t.pruned for t in pieces) > 0


def test_sharded_trees_equal_single_device(model):
  config, params = model
  mesh = parallel.make_mesh(data=2, fsdp=2, tensor=2)
  settings = edu.EduConfig(tau=3.0, max_leaves=6, max_new_tokens=NEW_TOKENS, max_anchors=3,
                           min_gap=2)
  placed = jax.device_put(params, parallel.param_shardings(config, mesh))
  sharded = edu.build_trees(config, placed, TOKENIZER, _prompts(PROBLEMS[:3]), settings,
                            rng=jax.random.key(0), queries_per_batch=2, mesh=mesh)
  single = _build(model, problems=PROBLEMS[:3], tau=3.0)
  assert [_leaves(t) for t in sharded] == [_leaves(t) for t in single]


def test_p_edu_prunes_exactly_the_low_scoring_children(model, prm):
  settings = dict(tau=2.9, max_leaves=8, max_anchors=3)
  plain = _build(model, **settings)
  # A threshold inside the spread of the children's scores: some go, some stay.
  probe = _build(model, prm=prm, prune_threshold=0.0, **settings)
  # Midway between the two middle scores, never at one: a score equal to the threshold
  # would be decided by float rounding (cached float32 scoring vs the float64 reference).
  scores = np.unique([c.score for t in probe for c in t.checks])
  middle = len(scores) // 2
  threshold = float(scores[middle - 1] + scores[middle]) / 2
  assert scores[middle] - scores[middle - 1] > 1e-4
  trees = _build(model, prm=prm, prune_threshold=threshold, **settings)
  pruned = 0
  for problem, tree in zip(PROBLEMS, trees):
    leaves, generated, checks = _reference(model, problem, prm=prm, prune_threshold=threshold,
                                           **settings)
    assert _leaves(tree) == leaves
    assert tree.generated_tokens == generated
    prompt = prompt_ids(TOKENIZER, problem)
    for check, (tokens, score, was_pruned) in zip(tree.checks, checks):
      assert check.tokens == tokens
      direct = edu_reference.prm_score(prm, prompt + check.tokens)
      np.testing.assert_allclose(check.score, direct, atol=1e-5)
      assert check.pruned == (direct < threshold) == was_pruned
    # A pruned child's subtree is never generated: no leaf continues its prefix.
    for check in tree.checks:
      if check.pruned:
        assert not any(leaf.tokens[:len(check.tokens)] == check.tokens for leaf in tree.leaves)
    pruned += tree.pruned
  assert pruned > 0
  assert sum(t.generated_tokens for t in trees) != sum(t.generated_tokens for t in plain)


def _leaf(tokens, anchors):
  return edu.Leaf(list(tokens), list(anchors), [1.0] * len(anchors), True)


def test_segment_labels_on_hand_built_trees():
  # One leaf: every segment's subtree is the leaf itself.
  assert edu.segment_labels([_leaf([5, 6, 7], [])], [True]) == [[1.0]]
  assert edu.segment_labels([_leaf([5, 6, 7], [])], [False]) == [[0.0]]
  # Root segment [5, 6]; anchor at 2 splits into 7... (leaves 0, 1) and 8... (leaf 2); leaf 0
  # and 1 split again at 4.
  leaves = [_leaf([5, 6, 7, 1, 3], [2, 4]), _leaf([5, 6, 7, 1, 4], [2, 4]),
            _leaf([5, 6, 8, 2], [2])]
  labels = edu.segment_labels(leaves, [True, False, True])
  assert labels == [[2 / 3, 0.5, 1.0], [2 / 3, 0.5, 0.0], [2 / 3, 1.0]]
  # Ties: an even split gives exactly 0.5; all wrong gives 0 everywhere.
  labels = edu.segment_labels(leaves[:2], [False, True])
  assert labels == [[0.5, 0.5, 0.0], [0.5, 0.5, 1.0]]
  assert edu.segment_labels(leaves, [False] * 3) == [[0.0] * 3, [0.0] * 3, [0.0] * 2]
  with pytest.raises(ValueError, match="2 outcomes for 3 leaves"):
    edu.segment_labels(leaves, [True, False])


def test_tree_trajectories_concatenate_to_the_path(model):
  tree = _build(model, tau=2.9, max_leaves=4)[0]
  correct = [i % 2 == 0 for i in range(len(tree.leaves))]
  trajectories = edu.tree_trajectories(tree, PROBLEMS[0], TOKENIZER, correct)
  labels = edu.segment_labels(tree.leaves, correct)
  for leaf, trajectory, leaf_labels in zip(tree.leaves, trajectories, labels):
    text = TOKENIZER.decode([t for t in leaf.tokens if t != TOKENIZER.eos_id])
    assert "".join(trajectory.steps) == text
    assert trajectory.labels == [label for segment, label in zip(leaf.segments(), leaf_labels)
                                 if TOKENIZER.decode(segment)]
    # Tokenized with an empty separator, each label sits on its segment's last token.
    encoded = tokenize_stepwise(TOKENIZER, trajectory, step_separator="")
    assert encoded["input_ids"] == prompt_ids(TOKENIZER, PROBLEMS[0]) + TOKENIZER.encode(text)
  hard = edu.tree_trajectories(tree, PROBLEMS[0], TOKENIZER, correct, hard=True)
  assert all(set(t.labels) <= {0.0, 1.0} for t in hard)


@pytest.mark.parametrize("kwargs,message", [
    (dict(tau=0.0), r"EduConfig.tau=0.0: must be > 0"),
    (dict(tau=-1.0), r"EduConfig.tau=-1.0: must be > 0"),
    (dict(max_leaves=0), r"EduConfig.max_leaves=0: must be an int >= 1"),
    (dict(min_gap=0), r"EduConfig.min_gap=0: must be an int >= 1"),
    (dict(max_anchors=-1), r"EduConfig.max_anchors=-1: must be an int >= 0"),
    (dict(order="random"), r"EduConfig.order='random': must be one of"),
    (dict(prune_threshold=1.5), r"EduConfig.prune_threshold=1.5"),
])
def test_bad_settings_are_named(kwargs, message):
  settings = dict(tau=1.0, max_leaves=4, max_new_tokens=8)
  settings.update(kwargs)
  with pytest.raises(ValueError, match=message):
    edu.EduConfig(**settings)


def test_tokenizer_without_eos_and_half_p_edu_fail(model):
  config, params = model

  @dataclasses.dataclass
  class NoEos:
    vocab_size: int = TOKENIZER.vocab_size
    bos_id: int = 1
    eos_id: None = None
    pad_id: int = 0
    encode = TOKENIZER.encode
    decode = TOKENIZER.decode

  settings = edu.EduConfig(tau=1.0, max_leaves=4, max_new_tokens=8)
  with pytest.raises(ValueError, match=r"tokenizer with an EOS token \(tokenizer.eos_id is None"):
    edu.build_trees(config, params, NoEos(), _prompts(PROBLEMS), settings,
                    rng=jax.random.key(0))
  with pytest.raises(ValueError, match="P-EDU needs both a PRM"):
    edu.build_trees(config, params, TOKENIZER, _prompts(PROBLEMS), settings,
                    rng=jax.random.key(0), prm=model)
