"""The ALFWorld agent as text: parsing, prompts, demo reasons, the word tokenizer, turn-level
Monte Carlo targets, Best-of-N per turn, and the InversePRM loss against float64 NumPy."""

import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from prm_jax import models
from prm_jax.data.tokenizer import WordTokenizer
from prm_jax.envs import agent, rollout
from prm_jax.labeling import turn_returns
from prm_jax.objectives import inverse_prm

ADMISSIBLE = ("close fridge 1", "go to countertop 1", "go to fridge 1", "look",
              "take egg 1 from fridge 1")


# --- Parsing ---------------------------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("think: find the egg act: take egg 1 from fridge 1", ("take egg 1 from fridge 1", "exact")),
    ("act: look", ("look", "exact")),
    ("look", ("look", "exact")),  # no act: the whole text is the command
    ("think: act: go to fridge 1 act: go to countertop 1", ("go to countertop 1", "exact")),
    ("think: x act:   Go  To Fridge 1.  ", ("go to fridge 1", "normalised")),
    ("think: x act: go to fridge 2", ("go to fridge 2", "invalid")),
    ("think: x act: fly to the moon", ("fly to the moon", "invalid")),
    ("think: x act:   ", ("", "empty")),
    ("", ("", "empty")),
])
def test_parse_action(text, expected):
  parsed = agent.parse_action(text, ADMISSIBLE)
  assert (parsed.command, parsed.kind) == expected
  assert parsed.valid == (expected[1] in ("exact", "normalised"))


def test_parse_action_ambiguous_normalisation_is_invalid():
  parsed = agent.parse_action("act: LOOK", ("look", "Look"))
  assert parsed.kind == "invalid"


def test_state_prompt_keeps_the_last_turns():
  history = [("go to fridge 1", "You arrive at fridge 1.\nThe fridge 1 is closed."),
             ("open fridge 1", "You open the fridge 1."), ("look", "You see things.")]
  prompt = agent.state_prompt("heat some egg and put it in countertop", history, ADMISSIBLE, 2)
  assert prompt == ("Task: heat some egg and put it in countertop.\nVisited: fridge 1\n"
                    "> open fridge 1\nYou open the fridge 1.\n> look\nYou see things.\n"
                    "Actions: " + " | ".join(ADMISSIBLE) + "\n")
  assert agent.state_prompt("g", history, ("look",), 0) == (
      "Task: g.\nVisited: fridge 1\nActions: look\n")
  assert agent.state_prompt("g", [], ("look",), 2) == "Task: g.\nActions: look\n"
  assert "The fridge 1 is closed." in agent.state_prompt("g", history[:1], ("look",), 5)


def test_demo_reasons_follow_the_subgoals():
  params = {"object_target": "Egg", "parent_target": "CounterTop"}
  walk = ["go to fridge 1", "open fridge 1", "take egg 1 from fridge 1", "go to microwave 1",
          "heat egg 1 with microwave 1", "go to countertop 1", "move egg 1 to countertop 1"]
  reasons = [agent.demo_reason(c, params, "pick_heat_then_place_in_recep", walk[:i])
             for i, c in enumerate(walk)]
  assert reasons == ["find the egg", "find the egg", "take the egg",
                     "bring the egg to the microwave", "heat the egg",
                     "bring the egg to the countertop", "put the egg in the countertop"]
  assert agent.demo_reason("use desklamp 1", {"object_target": "Book", "parent_target": ""},
                           "look_at_obj_in_light", ["take book 1 from bed 1"]) == \
      "look at the book under the desklamp"


# --- The word tokenizer ---------------------------------------------------------------------

def test_word_tokenizer_round_trips_and_spells_unknown_words():
  tokenizer = WordTokenizer.from_corpus(["You open the fridge 1.\n", "go to"])
  for text in ("You open the fridge 1.", "go to fridge 11\n", "goto  fridge", "Fridge OPEN"):
    ids = tokenizer.encode(text)
    assert tokenizer.decode(ids) == text
  assert len(tokenizer.encode(" open")) == 1 and len(tokenizer.encode("goto")) == 2
  with pytest.raises(ValueError, match=r"character '@' \(at 3 of"):
    tokenizer.encode("go @home")
  assert tokenizer.decode([tokenizer.bos_id, *tokenizer.encode("go"), tokenizer.eos_id]) == "go"


def test_domain_tokenizer_covers_prompts_and_actions():
  tokenizer = agent.domain_tokenizer()
  prompt = agent.state_prompt("put a clean spatula in diningtable",
                              [("go to sinkbasin 2", "You arrive at sinkbasin 2. On the "
                                "sinkbasin 2, you see a butterknife 1, and a spatula 3.")],
                              ("clean spatula 3 with sinkbasin 2", "help"), 2)
  line = agent.format_action("clean the spatula", "clean spatula 3 with sinkbasin 2")
  for text in (prompt, line, "Nothing happens."):
    ids = tokenizer.encode(text)
    assert tokenizer.decode(ids) == text
    assert len(ids) <= len(text.split()) * 4  # word pieces, not characters


# --- Turn-level Monte Carlo targets ---------------------------------------------------------

def _turn(prompt, command, output=None):
  return {"prompt": prompt, "command": command, "output": output or f"act: {command}"}


def test_turn_targets_by_hand():
  gamma = 0.9
  won = {"won": True, "turns": [_turn("s0", "a"), _turn("s1", "b"), _turn("s2", "c")]}
  lost = {"won": False, "turns": [_turn("s0", "a"), _turn("s1", "x")]}
  # (s1, b) again, as the last turn of a second won episode, with another reason.
  again = {"won": True, "turns": [_turn("s1", "b", "think: other act: b")]}
  records = {(r["prompt"], r["command"]): r for r in
             turn_returns.turn_targets([won, lost, again], gamma)}
  assert set(records) == {("s0", "a"), ("s1", "b"), ("s2", "c"), ("s1", "x")}
  # G_t = gamma^(T-1-t) r: won episode 0.81, 0.9, 1; lost 0, 0; again 1.
  assert records["s0", "a"]["target"] == pytest.approx((0.81 + 0.0) / 2)
  assert records["s0", "a"]["visits"] == 2
  assert records["s1", "b"]["target"] == pytest.approx((0.9 + 1.0) / 2)
  assert records["s1", "b"]["output"] == "act: b"  # the first visit's text
  assert records["s2", "c"]["target"] == pytest.approx(1.0)
  assert records["s1", "x"]["target"] == 0.0
  assert turn_returns.discounted_returns(3, 1.0, 0.5) == [0.25, 0.5, 1.0]
  with pytest.raises(ValueError, match="gamma"):
    turn_returns.turn_targets([won], 0.0)


def test_visit_key_is_stable_across_processes():
  key = turn_returns.visit_key("Task: x.\nActions: look\n", "look")
  code = ("from prm_jax.labeling import turn_returns; "
          "print(turn_returns.visit_key('Task: x.\\nActions: look\\n', 'look'))")
  for seed in ("1", "2"):
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "PYTHONHASHSEED": seed}, check=True)
    assert out.stdout.strip() == key
  # Pinned: a change of the key re-keys every stored target.
  assert key == "c7ea4a42282788b76df06758a681eda8f7c23127441c916f64163b115ecb636f"


# --- Best-of-N per turn ---------------------------------------------------------------------

def _stub_sampler(table):
  """Deterministic: prompt -> its list of outputs (the first n)."""
  return lambda prompts, n, key: [table[p][:n] for p in prompts]


def test_best_of_n_picks_the_highest_q_admissible_sample():
  table = {"p0": ["act: fly", "act: look", "act: go to fridge 1", "act: go to countertop 1"],
           "p1": ["act: fly", "act: swim", "act: run", "act: hop"],
           "p2": ["act: look", "act: look", "act: go to fridge 1", "act: look"]}
  q_values = {"act: look": 0.2, "act: go to fridge 1": 0.7, "act: go to countertop 1": 0.7,
              "act: fly": 9.0}
  calls = []

  def q(prompts, outputs):
    calls.append(list(outputs))
    return np.array([q_values[o] for o in outputs])

  actor = rollout.best_of_n_actor(_stub_sampler(table), q, 4)
  chosen = actor(["p0", "p1", "p2"], [ADMISSIBLE] * 3, jax.random.key(0))
  # p0: fridge and countertop tie at 0.7 -> the earlier sample; "fly" (Q 9) is inadmissible.
  # p1: nothing admissible -> the first sample. p2: the fridge.
  assert chosen == ["act: go to fridge 1", "act: fly", "act: go to fridge 1"]
  assert "act: fly" not in calls[0]  # inadmissible samples are never scored
  assert calls[0].count("act: look") == 2  # once per state: p0's and p2's (scored once)
  policy = rollout.best_of_n_actor(_stub_sampler(table), q, 1)
  assert policy(["p0", "p2"], [ADMISSIBLE] * 2, jax.random.key(0)) == ["act: fly", "act: look"]


# --- InversePRM -----------------------------------------------------------------------------

def _numpy_inverse_loss(q_sa, q_next, terminal, labels, gamma):
  z = q_sa.astype(np.float64) - gamma * np.where(terminal, 0.0, q_next.astype(np.float64))
  return np.mean(np.logaddexp(0.0, z) - labels * z)


def test_inverse_prm_loss_against_float64_numpy():
  config = models.get_model_config("tiny", vocab_size=agent.domain_tokenizer().vocab_size,
                                   hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=2,
                                   head_dim=16, mlp_dim=64, max_seq_len=64)
  params = models.init_params(config, jax.random.key(0))
  tokenizer = agent.domain_tokenizer()
  transitions = [
      {"prompt": "Task: a.\nActions: look\n", "output": "act: look", "label": 1.0,
       "terminal": False, "next_prompt": "Task: a.\n> look\nYou see.\nActions: look | help\n",
       "next_output": "act: help"},
      {"prompt": "Task: b.\nActions: help\n", "output": "think: x act: help", "label": 0.0,
       "terminal": True, "next_prompt": None},
      {"prompt": "Task: c c c.\nActions: look\n", "output": "act: look", "label": 0.0,
       "terminal": False, "next_prompt": "Task: c.\nActions: look\n", "next_output": "act: look"},
  ]
  batch = inverse_prm.pair_batch(tokenizer, transitions, max_length=48)
  gamma = 0.9
  loss, metrics = jax.jit(inverse_prm.make_inverse_prm_loss(config, gamma))(params, batch, None)
  # Reference: each sequence scored on its own (no padding, no pairing) in float64 NumPy.
  def q_alone(prompt, output):
    from prm_jax.data import Trajectory
    from prm_jax.data.tokenize import tokenize_stepwise
    ex = tokenize_stepwise(tokenizer, Trajectory(problem=prompt, steps=[output]))
    out = models.forward(config, params, np.array([ex["input_ids"]]),
                         step_positions=np.array([[ex["step_ends"][-1]]]), lm_logits="none")
    return float(np.asarray(out["step_logits"], np.float64)[0, 0])
  q_sa = np.array([q_alone(t["prompt"], t["output"]) for t in transitions])
  q_next = np.array([0.0 if t["terminal"] else q_alone(t["next_prompt"], t["next_output"])
                     for t in transitions])
  terminal = np.array([t["terminal"] for t in transitions])
  labels = np.array([t["label"] for t in transitions])
  assert float(loss) == pytest.approx(_numpy_inverse_loss(q_sa, q_next, terminal, labels, gamma),
                                      rel=1e-5, abs=1e-6)
  assert float(metrics["expert_q"]) == pytest.approx(q_sa[0], rel=1e-5, abs=1e-6)
  assert float(metrics["policy_q"]) == pytest.approx(q_sa[1:].mean(), rel=1e-5, abs=1e-6)
  # The gradient flows through both Q(s,a) and Q(s',a') (the difference is the reward).
  grads = jax.grad(lambda p: inverse_prm.make_inverse_prm_loss(config, gamma)(p, batch, None)[0])(
      params)
  assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads))


def test_inverse_transition_logits_random_against_numpy():
  rng = np.random.default_rng(0)
  q_sa, q_next = rng.normal(size=64) * 3, rng.normal(size=64) * 3
  terminal, labels = rng.random(64) < 0.3, (rng.random(64) < 0.5).astype(float)
  z = inverse_prm.transition_logits(q_sa, q_next, terminal, 0.95)
  from prm_jax.objectives.prm import step_bce
  ours = float(np.mean(np.asarray(step_bce(z, labels), np.float64)))
  assert ours == pytest.approx(_numpy_inverse_loss(q_sa, q_next, terminal, labels, 0.95),
                               rel=1e-5)
  with pytest.raises(ValueError, match="gamma"):
    inverse_prm.make_inverse_prm_loss(None, 1.5)


def test_inverse_pair_batches_cover_each_epoch_and_resume_exactly():
  transitions = [{"prompt": f"Task: t {i}.\nActions: look\n", "output": "act: look",
                  "label": float(i % 2), "terminal": i % 3 == 0,
                  "next_prompt": None if i % 3 == 0 else "Task: n.\nActions: look\n",
                  "next_output": "act: look"} for i in range(10)]
  tokenizer = agent.domain_tokenizer()
  make = lambda: iter(inverse_prm.pair_batches(tokenizer, transitions, batch_size=5,
                                               max_length=32, seed=3))
  it = make()
  epoch = [next(it) for _ in range(2)]
  labels = sorted(float(x) for b in epoch for x in b["labels"])
  assert labels == sorted(t["label"] for t in transitions)  # One epoch: every transition.
  assert sum(int(b["terminal"].sum()) for b in epoch) == 4
  state = it.get_state()
  expected = [next(it) for _ in range(3)]
  resumed = make()
  resumed.set_state(state)
  for want, got in zip(expected, [next(resumed) for _ in range(3)]):
    for key in want:
      np.testing.assert_array_equal(want[key], got[key])
