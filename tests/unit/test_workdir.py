"""metrics.jsonl on resume: rows after the checkpoint are dropped, a line
cut short by a kill is dropped and said, and every other line that cannot
be read is kept byte for byte and reported with the file and its line."""

import json

from boot_jax.runtime import workdir


def _rows(*steps) -> bytes:
  return b"".join(
    json.dumps({"step": s, "loss": 0.5}).encode() + b"\n" for s in steps
  )


def test_rows_after_the_checkpoint_are_dropped(tmp_path):
  (tmp_path / "metrics.jsonl").write_bytes(_rows(10, 20, 30))
  lines = []
  workdir.truncate_metrics(str(tmp_path), 20, lines.append)
  assert (tmp_path / "metrics.jsonl").read_bytes() == _rows(10, 20)
  assert lines == []


def test_unreadable_lines_are_kept_and_reported(tmp_path):
  path = tmp_path / "metrics.jsonl"
  edited = b'{"step": 15, "note": "my edit"\n'  # not JSON
  bad_byte = b'{"step": 16, "x": "\xff"}\n'  # not UTF-8
  cut = b'{"step": 40, "lo'  # a kill mid-write: no newline
  path.write_bytes(_rows(10) + edited + bad_byte + _rows(20, 30) + cut)
  lines = []
  workdir.truncate_metrics(str(tmp_path), 20, lines.append)
  assert path.read_bytes() == _rows(10) + edited + bad_byte + _rows(20)
  assert lines == [
    f"{path} line 2 is not a JSON object with a step: kept as it is",
    f"{path} line 3 is not a JSON object with a step: kept as it is",
    f"{path} line 6 was cut short: dropped",
  ]


def test_nothing_to_drop_leaves_the_file_untouched(tmp_path):
  path = tmp_path / "metrics.jsonl"
  path.write_bytes(_rows(1, 2) + b"garbage\n")
  before = path.stat().st_mtime_ns
  workdir.truncate_metrics(str(tmp_path), 5, lambda line: None)
  assert path.stat().st_mtime_ns == before


def test_an_unset_default_matches_the_value_it_resolves_to():
  """A run saved with refine.lr = 1e-6 (a 2-D mixture) resumes under a
  config leaving refine.lr unset, which resolves to the same step; a
  different dimension or an explicit other value is still a difference."""
  saved = {"teacher": {"dim": 2}, "refine": {"lr": 1e-6}}
  assert not workdir.config_differences(
    saved, {"teacher": {"dim": 2}, "refine": {"lr": None}}
  )
  assert not workdir.config_differences(
    {"teacher": {"dim": 2}, "refine": {"lr": None}}, saved
  )
  assert workdir.config_differences(
    saved, {"teacher": {"dim": 8}, "refine": {"lr": None}}
  ) == ["refine.lr: 1e-06 -> 2e-06", "teacher.dim: 2 -> 8"]
  assert workdir.config_differences(
    saved, {"teacher": {"dim": 2}, "refine": {"lr": 3e-6}}
  ) == ["refine.lr: 1e-06 -> 3e-06"]


def test_a_key_added_unset_is_no_difference():
  """A run saved before a family grew an unset key (teacher.thresholding:
  None follows the folder) resumes; set to a value, it is a difference."""
  saved = {"teacher": {"name": "if", "path": "/m"}}
  assert not workdir.config_differences(
    saved, {"teacher": {"name": "if", "path": "/m", "thresholding": None}}
  )
  assert workdir.config_differences(
    saved, {"teacher": {"name": "if", "path": "/m", "thresholding": False}}
  ) == ["teacher.thresholding: <absent> -> False"]
