"""GSM8K-format files as a task: problems by split and seed, and the free-text checker."""

import json
import os

import numpy as np
import pytest

from prm_jax.data.tasks import generate_corpus, get_task
from prm_jax.data.tasks.gsm8k import same_answer

GSM8K_DIR = os.environ.get("PRM_JAX_GSM8K_DIR", os.path.join(
    os.path.dirname(__file__), "..", "..", "shared", "data", "gsm8k"))

TRAIN = [{"question": f"Tom has {a} apples and buys {a} more. How many?",
          "answer": f"He has {a}+{a}=<<{a}+{a}={2 * a}>>{2 * a} apples.\n#### {2 * a}"}
         for a in range(1, 9)]
TEST = [{"question": "A box holds 1,200 pens; 300 are sold. How many are left?",
         "answer": "1,200-300=<<1200-300=900>>900 pens are left.\n#### 900"}]


@pytest.fixture
def task(tmp_path):
  paths = {}
  for split, rows in (("train", TRAIN), ("test", TEST)):
    paths[split] = tmp_path / f"{split}.jsonl"
    paths[split].write_text("".join(json.dumps(r) + "\n" for r in rows))
  return get_task("gsm8k", train_path=str(paths["train"]), test_path=str(paths["test"]))


def test_problems_are_seeded_choices_of_their_split(task):
  first = task.problems(5, seed=0)
  assert first == task.problems(5, seed=0) and first != task.problems(5, seed=1)
  assert set(first) <= {r["question"] for r in TRAIN}
  assert task.problems(1, seed=0, split="test") == [TEST[0]["question"]]
  with pytest.raises(ValueError, match="9 train problems asked, 8 in the file"):
    task.problems(9, seed=0)


def test_checker_reads_free_text(task):
  problem = TEST[0]["question"]
  verdict = task.check(problem, TEST[0]["answer"])
  assert verdict.solved and verdict.first_error == -1 and verdict.final_answer == "900"
  slip = task.check(problem, "1200-300=<<1200-300=800>>800 left\n#### 800")
  assert not slip.solved and slip.first_error == 0 and slip.step_correct == (False, False)
  talk = task.check(problem, "Let me think.\nSo 900 remain.\n#### 900.00\nextra")
  assert talk.solved and talk.step_correct == (True, True, True, False)
  assert not task.check(problem, "no answer line").solved
  with pytest.raises(ValueError, match="not a problem of"):
    task.check("What is 2+2?", "#### 4")


def test_numeric_answer_comparison():
  assert same_answer("1,000", "1000") and same_answer("$5", "5") and same_answer("5.0", "5")
  assert not same_answer("5", "6") and not same_answer(None, "5")
  assert same_answer("blue", " blue ")


def test_a_corpus_is_the_reference_solutions(task):
  corpus = generate_corpus(task, 8, seed=0, error_rate=1.0)  # Nothing can be injected.
  assert all(t.labels == [1.0] * len(t.steps) and t.meta["solved"] for t in corpus)


def test_unknown_knob_is_named():
  with pytest.raises(ValueError, match=r"task 'gsm8k' has no knob\(s\) \['min_ops'\]"):
    get_task("gsm8k", train_path="a", test_path="b", min_ops=2)


@pytest.mark.skipif(not os.path.isdir(GSM8K_DIR), reason=f"GSM8K data not found at {GSM8K_DIR}")
def test_real_gsm8k_reference_solutions_all_check():
  task = get_task("gsm8k", train_path=os.path.join(GSM8K_DIR, "train.jsonl"),
                  test_path=os.path.join(GSM8K_DIR, "test.jsonl"))
  problems = task.problems(500, seed=0, split="test")
  verdicts = [task.check(p, task.solve(p)) for p in problems]
  assert all(v.solved for v in verdicts)
  assert np.mean([v.first_error == -1 for v in verdicts]) == 1.0
