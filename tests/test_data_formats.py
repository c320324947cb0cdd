"""JSONL formats: record -> Trajectory -> record round trips, and malformed-line errors."""

import json

import pytest
from hypothesis import given, settings, strategies as st

from prm_jax.data import formats
from prm_jax.data.jsonl import DataFormatError
from prm_jax.data.schema import Trajectory

# One canonical record per format, with unicode, an extra field, and edge-case steps.
RECORDS = {
    "trl": [
        {"prompt": "Which is larger, 9.8 or 9.11?", "completions": ["11 > 8.", "So 9.11 > 9.8."],
         "labels": [True, False]},
        {"prompt": "Ünïcode ✓ 日本", "completions": ["", "line\nbreak", "ok"],
         "labels": [True, True, False], "id": 7},
        {"prompt": "no steps", "completions": [], "labels": []},
    ],
    "math_shepherd": [
        {"input": "Q: 2+2? Step 1: 2+2 = <<2+2=4>>4 ки\nStep 2: The answer is: 4 ки",
         "label": "Q: 2+2? Step 1: 2+2 = <<2+2=4>>4 +\nStep 2: The answer is: 4 +",
         "task": "GSM8K"},
        {"input": "Café? Step 1: wrong ки\nStep 2: still − wrong ки\nStep 3: end ки",
         "label": "Café? Step 1: wrong -\nStep 2: still − wrong -\nStep 3: end +"},
    ],
    "processbench": [
        {"id": "gsm8k-0", "generator": "m", "problem": "P", "steps": ["a", "b", "c"],
         "final_answer_correct": False, "label": 1},
        {"problem": "Q ∑", "steps": ["x", "y"], "label": -1},
        {"problem": "R", "steps": ["x", "y"], "label": 0},
    ],
    "gsm8k": [
        {"question": "Q?", "answer": "a = <<2*3=6>>6\n\nb\n#### 6"},
        {"question": "Only the answer", "answer": "#### 1,000"},
    ],
    "prm_jax": [  # Native records keep the provenance they carry.
        Trajectory("p", ["a", "b", "c"], [1.0, 1 / 3, None], answer="42", response=["r1"],
                   meta={"k": [1, "x"], "source": "origin.jsonl:9"}).to_dict(),
    ],
}


def _write_lines(path, lines):
  path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
  return path


@pytest.mark.parametrize("name", sorted(RECORDS))
def test_record_schema_record_round_trip(name, tmp_path):
  source = _write_lines(tmp_path / "in.jsonl",
                        [json.dumps(r, ensure_ascii=False) for r in RECORDS[name]])
  result = formats.read(source, name)
  assert not result.skipped and len(result.examples) == len(RECORDS[name])
  if name != "prm_jax":
    assert [t.meta["source"] for t in result.examples] == [
        f"{source}:{i}" for i in range(1, len(RECORDS[name]) + 1)]
  formats.write(tmp_path / "out.jsonl", result.examples, name)
  lines = (tmp_path / "out.jsonl").read_text(encoding="utf-8").splitlines()
  assert [json.loads(line) for line in lines] == RECORDS[name]


def test_parsed_labels_per_format():
  parse = lambda name, i: formats.get_format(name).parse(RECORDS[name][i])
  assert parse("trl", 0).labels == [1.0, 0.0]
  ms = parse("math_shepherd", 1)
  assert ms.problem == "Café?" and ms.steps[1] == "Step 2: still − wrong"
  assert ms.labels == [0.0, 0.0, 1.0]
  assert parse("processbench", 0).labels == [1.0, 0.0, None]
  assert parse("processbench", 1).labels == [1.0, 1.0]
  gsm = parse("gsm8k", 0)
  assert gsm.steps == ["a = <<2*3=6>>6", "", "b", "#### 6"] and gsm.answer == "6"
  assert gsm.labels is None


@settings(max_examples=60, deadline=None)
@given(problem=st.text(), steps=st.lists(st.text(), max_size=5), data=st.data())
def test_any_text_round_trips_through_trl_and_native(problem, steps, data):
  labels = data.draw(st.lists(st.booleans(), min_size=len(steps), max_size=len(steps)))
  trajectory = Trajectory(problem, steps, [float(x) for x in labels])
  for name in ("trl", "prm_jax"):
    fmt = formats.get_format(name)
    record = json.loads(json.dumps(fmt.render(trajectory)))
    assert fmt.parse(record) == trajectory


def test_soft_and_unknown_labels_need_the_native_format(tmp_path):
  soft = Trajectory("p", ["a", "b"], [0.5, None])
  for name in ("trl", "math_shepherd", "processbench"):
    with pytest.raises(ValueError, match="example 0"):
      formats.write(tmp_path / "x.jsonl", [soft], name)
  formats.write(tmp_path / "x.jsonl", [soft], "prm_jax")
  assert formats.read(tmp_path / "x.jsonl", "prm_jax").examples[0].labels == [0.5, None]


def test_processbench_writes_the_earliest_error_of_soft_labels():
  render = formats.get_format("processbench").render
  assert render(Trajectory("p", ["a", "b", "c"], [0.9, 0.2, None]))["label"] == 1
  assert render(Trajectory("p", ["a", "b"], [1.0, 0.7]))["label"] == -1
  with pytest.raises(ValueError, match="step 0 has no label"):
    render(Trajectory("p", ["a", "b"], [None, 0.0]))


def test_failed_write_keeps_the_existing_file(tmp_path):
  path = tmp_path / "data.jsonl"
  path.write_text("precious\n")
  good = Trajectory("p", ["a"], [1.0])
  with pytest.raises(ValueError, match="example 1: TRL"):
    formats.write(path, [good, Trajectory("p", ["a"], [0.5])], "trl")
  assert path.read_text() == "precious\n"
  assert list(tmp_path.iterdir()) == [path]  # No temporary file left behind.


BAD_LINES = [
    ('{"prompt": "p", "completions": ["a"], "labels": [tru', "invalid JSON"),
    ('["not", "an", "object"]', "expected a JSON object, got list"),
    ('{"prompt": "p", "completions": ["a", "b"], "labels": [true]}',
     "1 labels for 2 completions"),
    ('{"prompt": "p", "completions": ["a"], "labels": [1]}', r"labels\[0\] must be true or false"),
    ('{"prompt": "p", "completions": ["a"], "labels": ["yes"]}', "must be true or false"),
    ('{"completions": ["a"], "labels": [true]}', "missing field 'prompt'"),
    ('{"prompt": "p", "labels": [true]}', "missing field 'completions'"),
    ('{"prompt": 3, "completions": ["a"], "labels": [true]}', "field 'prompt' must be str"),
    ('{"prompt": "p", "completions": ["a", 2], "labels": [true, true]}',
     r"completions\[1\] must be a string"),
]


@pytest.mark.parametrize("line,reason", BAD_LINES)
def test_malformed_trl_line_names_file_line_and_reason(line, reason, tmp_path):
  good = json.dumps(RECORDS["trl"][0])
  path = _write_lines(tmp_path / "bad.jsonl", [good, "", line, good])
  with pytest.raises(DataFormatError, match=reason) as info:
    formats.read(path, "trl")
  assert str(info.value).startswith(f"{path}:3: ")  # Blank lines still count as lines.
  assert info.value.line == 3 and info.value.path == str(path)


@pytest.mark.parametrize("name,record,reason", [
    ("math_shepherd", {"input": "Q Step 1: a ки", "label": "Q Step 1: b +"}, "'label' is not"),
    ("math_shepherd", {"input": "Q Step 1: a", "label": "Q Step 1: a"}, "no 'ки' step marker"),
    ("math_shepherd", {"input": "Q a ки", "label": "Q a +"}, "no 'Step 1:'"),
    ("math_shepherd", {"input": "Q Step 1: a ки", "label": "Q Step 1: a x"}, "'label' is not"),
    ("processbench", {"problem": "P", "steps": ["a"], "label": 1}, "neither -1 nor a step"),
    ("processbench", {"problem": "P", "steps": ["a"], "label": True}, "must be int, got bool"),
    ("processbench", {"problem": "P", "steps": ["a"]}, "missing field 'label'"),
    ("gsm8k", {"question": "Q", "answer": "a\nb"}, "must be '#### <final answer>'"),
    ("gsm8k", {"question": "Q"}, "missing field 'answer'"),
    ("prm_jax", {"problem": "P", "steps": ["a"], "labels": [1.5]}, r"labels\[0\] must be"),
    ("prm_jax", {"problem": "P", "steps": ["a"], "lables": [1]}, r"unknown field\(s\)"),
    ("prm_jax", {"problem": "P", "steps": ["a"], "labels": [1, 0]}, "2 labels for 1 steps"),
])
def test_malformed_records_of_other_formats(name, record, reason, tmp_path):
  path = _write_lines(tmp_path / "bad.jsonl", [json.dumps(record, ensure_ascii=False)])
  with pytest.raises(DataFormatError, match=f"^{path}:1: .*{reason}"):
    formats.read(path, name)


def test_skip_bad_counts_and_reports_skipped_lines(tmp_path, caplog):
  good = json.dumps(RECORDS["trl"][0])
  lines = [good] + [line for line, _ in BAD_LINES] + [good]
  result = formats.read(_write_lines(tmp_path / "mixed.jsonl", lines), "trl", skip_bad=True)
  assert len(result.examples) == 2
  assert [e.line for e in result.skipped] == list(range(2, 2 + len(BAD_LINES)))
  assert f"skipped {len(BAD_LINES)} bad lines" in result.summary()
  assert "skipped" in caplog.text


def test_unknown_format_is_named():
  with pytest.raises(ValueError, match="unknown data format 'csv'"):
    formats.read("x.jsonl", "csv")
