"""ReasonFlux-PRM data: the blank-line step split, thinking/response alignment, the `s1k` and
`reasoning` readers/writers, and synthetic thinking trajectories checked against the tasks."""

import json

import numpy as np
import pytest

from prm_jax.data import formats
from prm_jax.data.formats.thinking import align_steps, split_steps, step_pairing
from prm_jax.data.jsonl import DataFormatError
from prm_jax.data.tasks import (THINKING_KINDS, ArithmeticTask, ListTask, checker_judge,
                                generate_thinking, parse_thinking_step, plan_template,
                                thinking_trajectory)
from prm_jax.labeling.reasonflux import quality_reward

# Step split. ---------------------------------------------------------------------------------


@pytest.mark.parametrize("text, steps", [
    ("a\n\nb", ["a", "b"]),
    ("a\n\n\n\nb", ["a", "b"]),                          # several blank lines: one break
    ("a\n \t \nb", ["a", "b"]),                          # a whitespace-only line is blank
    ("a\nb\n\nc", ["a\nb", "c"]),                        # one line break stays in the step
    ("\n\n  a  \n\n\n", ["a"]),                          # stripped, empty steps dropped
    ("  x y  \n  z", ["x y  \n  z"]),                    # only the step's ends are stripped
    ("", []),
    (" \n\n\t\n ", []),
    ("a\r\n\r\nb\r\nc", ["a", "b\nc"]),                  # Windows line breaks
    ("a\r\rb", ["a", "b"]),                              # old Mac line breaks
    ("a\r\n \r\n\nb", ["a", "b"]),
    ("Ünïcode ✓\n\u3000\n日本 ∑\n\u00a0\n\nπ≈3.14", ["Ünïcode ✓", "日本 ∑", "π≈3.14"]),
])
def test_split_steps_on_blank_lines(text, steps):
  assert split_steps(text) == steps


def _steps(count):
  return [f"s{i}" for i in range(1, count + 1)]


@pytest.mark.parametrize("thinking, response, aligned", [
    # More thinking than response steps: contiguous groups, the first T mod R one longer.
    (7, 3, ["s1\n\ns2\n\ns3", "s4\n\ns5", "s6\n\ns7"]),
    (5, 2, ["s1\n\ns2\n\ns3", "s4\n\ns5"]),
    (6, 3, ["s1\n\ns2", "s3\n\ns4", "s5\n\ns6"]),
    (4, 1, ["s1\n\ns2\n\ns3\n\ns4"]),
    (3, 2, ["s1\n\ns2", "s3"]),
    # As many or fewer thinking steps, or no response: unchanged.
    (4, 4, _steps(4)),
    (2, 5, _steps(2)),
    (3, 0, _steps(3)),
    (0, 2, []),
])
def test_align_steps_merges_extra_thinking_steps(thinking, response, aligned):
  thinking, response = _steps(thinking), [f"a{i}" for i in range(response)]
  before = (list(thinking), list(response))
  result = align_steps(thinking, response)
  assert result == aligned
  assert (thinking, response) == before and result is not thinking  # pure


def test_step_pairing_names_the_group_align_steps_merges_each_step_into():
  for num_thinking in range(0, 12):
    for num_response in range(0, 6):
      thinking = [f"s{t}" for t in range(num_thinking)]
      merged = align_steps(thinking, ["a"] * num_response)
      pairing = step_pairing(num_thinking, num_response)
      if num_response == 0:
        assert pairing == [-1] * num_thinking
        continue
      assert pairing == sorted(pairing) and all(0 <= g < num_response for g in pairing)
      if num_thinking > num_response:
        groups = ["\n\n".join(s for s, g in zip(thinking, pairing) if g == index)
                  for index in range(num_response)]
        assert groups == merged


def test_align_steps_keeps_order_and_every_step():
  for num_thinking in range(12):
    for num_response in range(1, 6):
      thinking = _steps(num_thinking)
      merged = align_steps(thinking, ["a"] * num_response)
      assert len(merged) == min(num_thinking, num_response)
      assert split_steps("\n\n".join(merged)) == thinking
      sizes = [len(split_steps(group)) for group in merged]
      assert sizes == sorted(sizes, reverse=True) and max(sizes, default=0) - min(
          sizes, default=0) <= 1


# Readers and writers. -----------------------------------------------------------------------

RECORDS = {
    "s1k": [
        {"question": "What is 2+2?", "thinking_trajectories": ["Let me add.\n\n2+2=4.\nYes."],
         "attempt": "2+2=4\n\nThe answer is 4.", "solution": "4",
         "cot_type": "math", "metadata": "{'x': 1}"},
        {"question": "Ünïcode ✓ 日本", "thinking_trajectories": ["∑ first\n\nsecond", "other ✓"],
         "attempt": ""},
    ],
    "reasoning": [
        {"prompt": "P?", "reasoning": "think 1\n\nthink 2\n\nthink 3", "response": "r1\n\nr2",
         "answer": "42", "id": 7},
        {"prompt": "Café ∑", "reasoning": "one\nline", "response": "résumé"},
    ],
}


def _write_lines(path, records):
  path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records),
                  encoding="utf-8")
  return path


@pytest.mark.parametrize("name", sorted(RECORDS))
def test_record_round_trip(name, tmp_path):
  source = _write_lines(tmp_path / "in.jsonl", RECORDS[name])
  result = formats.read(source, name)
  assert not result.skipped and len(result.examples) == len(RECORDS[name])
  assert [t.meta["source"] for t in result.examples] == [f"{source}:1", f"{source}:2"]
  formats.write(tmp_path / "out.jsonl", result.examples, name)
  lines = (tmp_path / "out.jsonl").read_text(encoding="utf-8").splitlines()
  assert [json.loads(line) for line in lines] == RECORDS[name]


def test_parsed_fields():
  first, second = (formats.get_format("s1k").parse(r) for r in RECORDS["s1k"])
  assert first.steps == ["Let me add.", "2+2=4.\nYes."]
  assert first.response == ["2+2=4", "The answer is 4."] and first.answer == "4"
  assert first.meta == {"extra": {"cot_type": "math", "metadata": "{'x': 1}"}}
  assert second.steps == ["∑ first", "second"] and second.response is None
  assert second.answer is None and second.meta == {"other_thinking_trajectories": ["other ✓"]}
  reasoning = formats.get_format("reasoning").parse(RECORDS["reasoning"][0])
  assert reasoning.problem == "P?" and reasoning.steps == ["think 1", "think 2", "think 3"]
  assert reasoning.response == ["r1", "r2"] and reasoning.answer == "42"
  assert reasoning.meta == {"extra": {"id": 7}}


def test_non_canonical_texts_read_to_the_same_steps():
  s1k = formats.get_format("s1k")
  bare = s1k.parse({"question": "q", "thinking_trajectories": " a\r\n\r\n\r\n b \n\t\n",
                    "attempt": "x\r\n\r\ny", "solution": "y"})
  assert bare.steps == ["a", "b"] and bare.response == ["x", "y"]
  assert s1k.render(bare) == {"question": "q", "thinking_trajectories": ["a\n\nb"],
                              "attempt": "x\n\ny", "solution": "y"}


@pytest.mark.parametrize("name, record, reason", [
    ("s1k", {"thinking_trajectories": ["t"], "attempt": "a"}, "missing field 'question'"),
    ("s1k", {"question": "q", "attempt": "a"}, "missing field 'thinking_trajectories'"),
    ("s1k", {"question": "q", "thinking_trajectories": ["t"]}, "missing field 'attempt'"),
    ("s1k", {"question": "q", "thinking_trajectories": [], "attempt": "a"}, "empty list"),
    ("s1k", {"question": "q", "thinking_trajectories": ["t", 3], "attempt": "a"},
     "thinking_trajectories[1] must be a string"),
    ("s1k", {"question": "q", "thinking_trajectories": 5, "attempt": "a"},
     "field 'thinking_trajectories' must be list"),
    ("s1k", {"question": "q", "thinking_trajectories": [" \n\n "], "attempt": "a"},
     "field 'thinking_trajectories' has no step"),
    ("s1k", {"question": "q", "thinking_trajectories": ["t"], "attempt": "a", "solution": 4},
     "field 'solution' must be str"),
    ("reasoning", {"prompt": "p", "reasoning": "", "response": "r"},
     "field 'reasoning' has no step"),
    ("reasoning", {"prompt": "p", "reasoning": "t"}, "missing field 'response'"),
    ("reasoning", {"prompt": 1, "reasoning": "t", "response": "r"}, "field 'prompt' must be str"),
    ("reasoning", {"prompt": "p", "reasoning": ["t"], "response": "r"},
     "field 'reasoning' must be str"),
    ("reasoning", {"prompt": "p", "reasoning": "t", "response": "r", "answer": None},
     "field 'answer' must be str"),
])
def test_malformed_record_names_file_and_line(name, record, reason, tmp_path):
  path = _write_lines(tmp_path / "bad.jsonl", [RECORDS[name][0], record])
  with pytest.raises(DataFormatError) as error:
    formats.read(path, name)
  assert str(error.value).startswith(f"{path}:2: ") and reason in str(error.value)
  result = formats.read(path, name, skip_bad=True)
  assert len(result.examples) == 1 and [e.line for e in result.skipped] == [2]


@pytest.mark.parametrize("name", sorted(RECORDS))
def test_writer_rejects_steps_that_would_not_read_back(name, tmp_path):
  good = formats.get_format(name).parse(RECORDS[name][0])
  for steps, response in ((["a\n\nb"], None), ([" a"], None), ([], None), (["a"], [""])):
    bad = formats.get_format(name).parse(RECORDS[name][0])
    bad.steps, bad.response = steps, response
    with pytest.raises(ValueError, match="example 1: "):
      formats.write(tmp_path / "out.jsonl", [good, bad], name)
    assert not (tmp_path / "out.jsonl").exists()  # nothing half-written


# Synthetic thinking trajectories. ----------------------------------------------------------

TASKS = {
    "arithmetic": ArithmeticTask(),
    "arithmetic_hard": ArithmeticTask(min_ops=5, max_ops=8, min_operand=0, max_operand=20),
    "lists": ListTask(),
    "lists_hard": ListTask(min_ops=4, max_ops=6, min_length=2, max_length=7, max_value=3),
}
QUALITY = {"clean": 1.0, "redundant": 0.9, "exploration": 0.8, "unrecovered": 0.0,
           "unsupported": 0.0}


def _generate(name, count=200, seed=0):
  task = TASKS[name]
  return task, generate_thinking(task, task.problems(count, seed=seed), seed=seed)


def test_generation_is_deterministic_by_seed():
  assert _generate("arithmetic", 50)[1] == _generate("arithmetic", 50)[1]
  task, pairs = _generate("lists", 50)
  assert pairs != generate_thinking(task, task.problems(50, seed=0), seed=1)


@pytest.mark.parametrize("name", sorted(TASKS))
def test_every_kind_appears(name):
  _, pairs = _generate(name)
  counts = {kind: sum(p.meta["kind"] == kind for p in pairs) for kind in THINKING_KINDS}
  # Round robin; a kind that cannot occur on a problem (rare) falls back to clean.
  assert all(count >= 30 for count in counts.values()), counts
  assert counts["exploration"] == counts["redundant"] == 40


def _committed(pair):
  """(index, line) of the thinking's committed moves (not retracted, checks or re-derived)."""
  return [(i, parse_thinking_step(step)[1]) for i, step in enumerate(pair.steps)
          if pair.meta["step_roles"][i] == "move"]


@pytest.mark.parametrize("name", sorted(TASKS))
def test_ground_truth_agrees_with_the_checker(name):
  task, pairs = _generate(name)
  for pair in pairs:
    meta, steps = pair.meta, pair.steps
    roles, quality = meta["step_roles"], meta["step_quality"]
    assert pair.labels == quality and len(roles) == len(steps) == len(meta["step_supports"])
    assert split_steps("\n\n".join(steps)) == steps and pair.answer == task.answer(pair.problem)
    response = task.check(pair.problem, pair.response)
    assert meta["response_correct"] == response.solved
    assert response.solved == (meta["kind"] != "unrecovered")
    # The committed moves form a solution whose checker labels are exactly their quality.
    committed = _committed(pair)
    thought = task.check(pair.problem, [line for _, line in committed])
    assert thought.prefix_labels == [quality[i] for i, _ in committed], pair
    assert committed[-1][0] == len(steps) - 1 and thought.final_answer is not None
    assert thought.solved == (meta["kind"] not in ("unrecovered", "unsupported"))
    if meta["kind"] == "unrecovered":  # The response follows the wrong thinking.
      assert [line for _, line in committed] == pair.response and thought.first_error >= 0
    for index, (role, step) in enumerate(zip(roles, steps)):
      form, line = parse_thinking_step(step)
      assert form == {"retracted": "move"}.get(role, role)
      before = [text for i, text in committed if i < index]
      if role == "retracted":  # A wrong move, rejected by the next step.
        assert not task.check(pair.problem, before + [line]).step_correct[-1]
        assert roles[index + 1] == "check" and parse_thinking_step(steps[index + 1])[1] == line
        assert quality[index] == 0.0
      elif role == "check":
        assert quality[index] == 1.0
      elif role == "again":  # A correct step derived a second time.
        assert line == before[-1] and quality[index] == 0.5


@pytest.mark.parametrize("name", ["arithmetic", "lists"])
def test_clean_thinking_checks_correct_and_supports_the_response(name):
  task, pairs = _generate(name, 50)
  for pair in pairs:
    lines = [line for _, line in _committed(pair)]
    supports = pair.meta["step_supports"]
    if pair.meta["kind"] in ("clean", "redundant", "exploration"):
      verdict = task.check(pair.problem, lines)
      assert all(verdict.step_correct) and verdict.solved and lines == pair.response
      # Only a retracted attempt disagrees with the response (its check agrees: it rejects it).
      assert all(ok or role == "retracted" for ok, role in zip(supports, pair.meta["step_roles"]))
    elif pair.meta["kind"] == "unsupported":  # The thinking ends on another answer.
      assert lines[-1] not in pair.response and not supports[-1]
    if pair.meta["kind"] == "clean":
      assert pair.labels == [1.0] * len(pair.steps)


@pytest.mark.parametrize("name", ["arithmetic", "lists"])
def test_trajectory_quality_orders_the_kinds(name):
  _, pairs = _generate(name, 100)
  for pair in pairs:
    assert pair.meta["trajectory_quality"] == pytest.approx(QUALITY[pair.meta["kind"]])
  mean = {kind: np.mean([p.meta["trajectory_quality"] for p in pairs if p.meta["kind"] == kind])
          for kind in THINKING_KINDS}
  assert mean["clean"] > mean["redundant"] > mean["exploration"] > mean["unsupported"]


def test_generated_pairs_round_trip_through_the_text_formats(tmp_path):
  _, pairs = _generate("lists", 20)
  for name in ("reasoning", "s1k", "prm_jax"):
    formats.write(tmp_path / f"{name}.jsonl", pairs, name)
    read = formats.read(tmp_path / f"{name}.jsonl", name).examples
    fields = lambda t: (t.problem, t.steps, t.response, t.answer)
    assert [fields(t) for t in read] == [fields(t) for t in pairs]
    if name == "prm_jax":  # The native format keeps the labels and the ground truth in meta.
      assert [(t.labels, t.meta) for t in read] == [
          (p.labels, {**p.meta, "source": f"{tmp_path / 'prm_jax.jsonl'}:{i}"})
          for i, p in enumerate(pairs, start=1)]


def test_unknown_kinds_are_rejected():
  task = ArithmeticTask()
  with pytest.raises(ValueError, match="kinds must be a non-empty subset"):
    generate_thinking(task, task.problems(3, seed=0), seed=0, kinds=("clean", "sloppy"))
  with pytest.raises(ValueError, match="error_kinds must be a non-empty subset"):
    generate_thinking(task, task.problems(3, seed=0), seed=0, error_kinds=("typo",))
  with pytest.raises(ValueError, match="unknown thinking kind 'sloppy'"):
    thinking_trajectory(task, task.problems(1, seed=0)[0], "sloppy", np.random.default_rng(0))


@pytest.mark.parametrize("name", sorted(TASKS))
def test_error_kinds_limit_the_injected_errors(name):
  task = TASKS[name]
  pairs = generate_thinking(task, task.problems(100, seed=0), seed=0, error_kinds=("misread",))
  assert {p.meta["error_kind"] for p in pairs} == {None, "misread"}


# Exact targets: the checker's judge and the plan template. ----------------------------------


@pytest.mark.parametrize("name", sorted(TASKS))
def test_checker_judge_gives_back_the_known_step_quality(name):
  """The judge sees only x, s_<t and s_t, and must still recover every constructed label:
  retracted attempts (0 before their check is seen), checks, re-derivations, wrong tracks."""
  task, pairs = _generate(name)
  judge = checker_judge(task)
  for pair in pairs:
    quality = quality_reward(judge, pair.problem, pair.steps, pair.response)
    assert list(quality) == pair.meta["step_quality"], (pair.meta["kind"], pair.steps)


def test_checker_judge_scores_checks_and_repeats_by_what_they_claim():
  task = ArithmeticTask()
  judge = checker_judge(task)
  problem = "7+5-3=?"
  first = "First, 7+5=12."
  assert judge(problem, [], first, []) == 1.0
  assert judge(problem, [], "First, 7+5=13.", []) == 0.0
  assert judge(problem, [first], "Check: 7+5=12 is wrong, redo.", []) == 0.0  # It was right.
  assert judge(problem, ["First, 7+5=13."], "Check: 7+5=13 is wrong, redo.", []) == 1.0
  assert judge(problem, [first], "Check: 12-3=9 is wrong, redo.", []) == 0.0  # Not stated.
  assert judge(problem, [first], "Again: 7+5=12.", []) == 0.5
  assert judge(problem, [first], "Again: 12-3=9.", []) == 0.0  # Nothing to repeat.
  # After a rejected attempt the track continues from the committed lines.
  earlier = ["First, 7+5=13.", "Check: 7+5=13 is wrong, redo.", first]
  assert judge(problem, earlier, "Then 12-3=9.", []) == 1.0
  assert judge(problem, earlier + ["Then 12-3=9."], "So the answer is #### 9.", []) == 1.0


@pytest.mark.parametrize("name", sorted(TASKS))
def test_plan_template_is_right_exactly_when_the_plan_is(name):
  """Solving the template reaches the gold answer iff the response applied the problem's
  operations: misread and skipped operations break the plan, slips and misapplied
  operators (a result off, the right operation named) do not."""
  task, pairs = _generate(name)
  for pair in pairs:
    template = plan_template(task, pair.problem, pair.response)
    plan_right = task.check(pair.problem, task.solve(template)).solved
    error = pair.meta["error_kind"] if pair.meta["kind"] == "unrecovered" else None
    assert plan_right == (error not in ("misread", "skip_step")), (pair.response, template)
  assert plan_template(task, pairs[0].problem, ["no step here", "#### 3"]) == ""

