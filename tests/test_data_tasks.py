"""Synthetic tasks: the exact checker accepts clean solutions and finds injected errors."""

import numpy as np
import pytest

from prm_jax.data import CharTokenizer
from prm_jax.data.tasks import (ERROR_KINDS, ArithmeticTask, ListTask, generate_corpus, get_task,
                                label_solution, split_of)

TASKS = {
    "arithmetic": ArithmeticTask(),
    "arithmetic_hard": ArithmeticTask(min_ops=5, max_ops=8, min_operand=0, max_operand=20),
    "lists": ListTask(),
    "lists_hard": ListTask(min_ops=4, max_ops=6, min_length=2, max_length=7, max_value=3),
}


@pytest.mark.parametrize("name", sorted(TASKS))
def test_checker_accepts_every_clean_solution(name):
  task = TASKS[name]
  for problem in task.problems(300, seed=0):
    steps = task.solve(problem)
    assert steps[-1] == "#### " + task.answer(problem)
    for solution in (steps, "\n".join(steps) + "\n"):
      verdict = task.check(problem, solution)
      assert verdict.first_error == -1 and all(verdict.step_correct), (problem, steps)
      assert verdict.solved and verdict.final_answer == task.answer(problem)
      assert verdict.prefix_labels == [1.0] * len(steps)


@pytest.mark.parametrize("kind", sorted(ERROR_KINDS))
@pytest.mark.parametrize("name", sorted(TASKS))
def test_checker_flags_exactly_the_injected_first_error(name, kind):
  task, rng = TASKS[name], np.random.default_rng(1)
  injected = 0
  for problem in task.problems(200, seed=1):
    flawed = task.flawed(problem, kind, rng)
    if flawed is None:
      continue
    injected += 1
    verdict = task.check(problem, flawed.steps)
    assert verdict.first_error == flawed.first_error, (problem, flawed)
    assert verdict.prefix_labels == [float(i < flawed.first_error)
                                     for i in range(len(flawed.steps))]
    if kind != "misread":  # A misread can look like a skip to the checker, later on.
      # The error propagates: every later step builds correctly on the wrong result.
      assert verdict.step_correct.count(False) == 1, (problem, flawed, verdict)
    if ERROR_KINDS[kind].systematic:
      assert not verdict.solved
  assert injected >= 100  # Every kind applies to most problems.


@pytest.mark.parametrize("name", ["arithmetic", "lists"])
def test_systematic_errors_repeat_and_random_ones_vary(name):
  task = TASKS[name]
  problems = task.problems(50, seed=2)
  for kind, error in ERROR_KINDS.items():
    answers = [{tuple(f.steps) if (f := task.flawed(p, kind, np.random.default_rng(seed)))
                else None for seed in range(5)} for p in problems]
    if error.systematic:
      assert all(len(a) == 1 for a in answers), kind
    else:
      assert sum(len(a) > 1 for a in answers) > 25, kind


def test_checker_reads_free_text():
  task = TASKS["arithmetic"]
  problem = "7+5*3-4=?"
  check = lambda text: task.check(problem, text)
  assert check("7+5=12\n12*3=36\n36-4=32\n#### 32").solved
  assert check(" 7+5=12 \n12*3=36\n36-4=32\n####32\n").first_error == -1  # Spacing is lenient.
  assert check("7+5 is 12\n12*3=36\n36-4=32\n#### 32").first_error == 0  # Unparseable.
  assert check("7+5=12\n12*3=36\n36-4=32\n#### 32\n7+1=8").first_error == 4  # After the end.
  assert check("7+5=12\n#### 12").first_error == 1  # Answers before the work is done.
  assert check("7+5=12\n12*3=36\n36-4=33\n#### 33").first_error == 2
  assert check("7+5=12\n12*3=36\n36-4=32\n#### 31").first_error == 3  # Misstated answer.
  assert check("7+5=12\n12*4=48\n48-4=44\n#### 44").first_error == 1  # Wrong operand.
  assert check("7+5=12\n13*3=39\n39-4=35\n#### 35").first_error == 1  # Miscopied value.
  incomplete = check("7+5=12\n12*3=36")
  assert incomplete.first_error == -1 and incomplete.final_answer is None
  assert not incomplete.solved
  empty = check("")
  assert empty.steps == () and not empty.solved
  with pytest.raises(ValueError, match="not an arithmetic chain problem"):
    task.check("7+5*3-4", "#### 32")
  lists = TASKS["lists"]
  assert lists.check("[3,1,2] sort rot1=?", "sort:[1,2,3]\nrot1:[2,3,1]\n#### [2,3,1]").solved
  assert lists.check("[3,1,2] sort rot1=?", "rev:[2,1,3]\nrot1:[1,3,2]\n#### [1,3,2]"
                     ).first_error == 0


def test_problems_are_seeded_distinct_and_split_disjoint():
  task = TASKS["arithmetic"]
  train = task.problems(500, seed=7)
  assert train == task.problems(500, seed=7) != task.problems(500, seed=8)
  test = task.problems(100, seed=7, split="test")
  assert len(set(train)) == 500 and len(set(test)) == 100
  assert not set(train) & set(test)
  assert {split_of(p) for p in train} == {"train"} and {split_of(p) for p in test} == {"test"}
  tiny = ArithmeticTask(min_ops=1, max_ops=1, min_operand=1, max_operand=1, operators="+")
  with pytest.raises(ValueError, match="found only 1 distinct train problems"):
    tiny.problems(2, seed=0)


@pytest.mark.parametrize("name", ["arithmetic", "lists"])
def test_corpus_error_rate_labels_and_size(name):
  task = get_task(name)
  corpus = generate_corpus(task, 400, seed=0, error_rate=0.3)
  assert [t.to_dict() for t in corpus] == [
      t.to_dict() for t in generate_corpus(task, 400, seed=0, error_rate=0.3)]
  flawed = [t for t in corpus if t.meta["error_kind"]]
  assert 0.22 < len(flawed) / len(corpus) < 0.38
  assert {t.meta["error_kind"] for t in flawed} == set(ERROR_KINDS)
  for trajectory in corpus:
    first_error = trajectory.meta["first_error"]
    assert (first_error >= 0) == bool(trajectory.meta["error_kind"])
    assert trajectory.labels == [float(first_error < 0 or i < first_error)
                                 for i in range(len(trajectory.steps))]
    assert trajectory.answer == task.answer(trajectory.problem)
  # Short enough for a character-level policy to learn in minutes.
  lengths = [len(t.problem) + sum(len(s) + 1 for s in t.steps) for t in corpus]
  assert np.mean(lengths) < 80 and max(lengths) <= 110
  tokenizer = CharTokenizer()
  assert all(tokenizer.decode(tokenizer.encode(t.problem + "\n".join(t.steps))) for t in corpus)


def test_label_solution_of_a_sampled_text():
  task = get_task("arithmetic")
  trajectory = label_solution(task, "2*3+1=?", "2*3=6\n6+1=8\n#### 8\n", sample=3)
  assert trajectory.steps == ["2*3=6", "6+1=8", "#### 8"]
  assert trajectory.labels == [1.0, 0.0, 0.0] and trajectory.answer == "7"
  assert trajectory.meta == {"task": "arithmetic", "first_error": 1, "solved": False,
                             "sample": 3}


@pytest.mark.parametrize("factory,knobs,message", [
    (ArithmeticTask, dict(min_ops=3, max_ops=2), "min_ops <= max_ops"),
    (ArithmeticTask, dict(operators="+/"), "subset of '\\+-\\*'"),
    (ArithmeticTask, dict(min_operand=-1), "0 <= min_operand"),
    (ListTask, dict(min_length=1), "2 <= min_length"),
    (ListTask, dict(operations=("sort", "pop")), "subset of"),
])
def test_bad_knobs_are_named(factory, knobs, message):
  with pytest.raises(ValueError, match=message):
    factory(**knobs)
  with pytest.raises(ValueError, match="unknown task 'chess'"):
    get_task("chess")
