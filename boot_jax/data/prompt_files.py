"""Prompt files: formats, streamed reading, deduplication (small files).

* `.txt`: one prompt a line (blank lines skipped);
* `.jsonl`: one JSON object a line, the prompt under `column`;
* `.csv`: a header row, the prompt under `column`;
* `.parquet`: the prompt under `column` (needs pyarrow), read one record
  batch at a time.

`iter_chunks` yields a file's raw prompts a chunk at a time (training
prepares them into a `prompts.PromptIndex`); `read_prompts` deduplicates a
small file in memory (e.g. `sample --prompts_file`).
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
from collections.abc import Iterator

from boot_jax.runtime import paths

FORMATS = (".txt", ".jsonl", ".csv", ".parquet")
# Prompts read per chunk.
CHUNK = 65536


class PromptError(ValueError):
  """A prompt source that cannot be read."""


def check_source(path: str) -> str:
  """The lower-case extension of a readable prompt file (or PromptError)."""
  if not path:
    raise PromptError("no prompt file given (teacher.prompts)")
  if not os.path.isfile(path):
    raise PromptError(f"prompt file {path!r} does not exist")
  ext = os.path.splitext(path)[1].lower()
  if ext not in FORMATS:
    raise PromptError(
      f"{path}: unknown prompt file type {ext!r}; expected one of {FORMATS}"
    )
  return ext


def normalise(text) -> str:
  return " ".join(str(text).split())


def iter_chunks(path: str, column: str = "prompt") -> Iterator[list[str]]:
  """The file's raw prompts in order, a chunk (list) at a time."""
  ext = check_source(path)
  try:
    yield from _READERS[ext](path, column)
  except UnicodeDecodeError as e:
    raise PromptError(f"{path} is not UTF-8 text: {e.reason}") from None


def remote_prompt_file(path: str) -> str:
  """A local copy of a `gs://` prompt file (the path itself if local)."""
  if not paths.is_remote(path):
    return path
  if not paths.isfile(path):
    raise PromptError(f"prompt file {path} does not exist")
  return paths.local_copy(path)


def read_prompts(path: str, column: str = "prompt") -> list[str]:
  """The deduplicated prompts of a small file, in memory (e.g. `sample
  --prompts_file`); training uses `PromptIndex`."""
  path = remote_prompt_file(path)
  seen, prompts = set(), []
  for chunk in iter_chunks(path, column):
    for p in chunk:
      p = normalise(p)
      if p and p not in seen:
        seen.add(p)
        prompts.append(p)
  if not prompts:
    raise PromptError(f"{path} holds no prompts")
  return prompts


def _batched(rows, size=CHUNK):
  chunk = []
  for row in rows:
    chunk.append(row)
    if len(chunk) == size:
      yield chunk
      chunk = []
  if chunk:
    yield chunk


def _read_txt(path, column):
  del column
  with open(path, encoding="utf-8") as f:
    yield from _batched(line.rstrip("\r\n") for line in f)


def _read_jsonl(path, column):
  def rows(f):
    for n, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        row = json.loads(line)
      except json.JSONDecodeError as e:
        raise PromptError(f"{path}:{n} is not JSON: {e.msg}") from None
      if not isinstance(row, dict) or column not in row:
        raise PromptError(f"{path}:{n} has no {column!r} field")
      value = row[column]
      if not isinstance(value, str):
        raise PromptError(
          f"{path}:{n}: the {column!r} field is {json.dumps(value)[:40]}, "
          "not a string"
        )
      yield value

  with open(path, encoding="utf-8") as f:
    yield from _batched(rows(f))


# The largest CSV field read (Python's csv stops at 128 KiB by default); a
# long prompt is cut to its first words before tokenising anyway.
CSV_FIELD_LIMIT = 64 * 2**20


def _read_csv(path, column):
  csv.field_size_limit(max(csv.field_size_limit(), CSV_FIELD_LIMIT))
  with open(path, encoding="utf-8", newline="") as f:
    reader = csv.DictReader(f)
    try:
      names = reader.fieldnames or []
      if column not in names:
        raise PromptError(
          f"{path} has no {column!r} column; its columns: {', '.join(names)}"
        )
      yield from _batched(row[column] or "" for row in reader)
    except csv.Error as e:
      # The record that failed starts on the line after the last one read.
      raise PromptError(f"{path} line {reader.line_num + 1}: {e}") from None


def _read_parquet(path, column):
  try:
    import pyarrow.parquet as pq  # noqa: PLC0415 - optional dependency
  except ImportError:
    raise PromptError(
      "reading .parquet prompt files needs pyarrow (pip install pyarrow)"
    ) from None
  try:
    f = pq.ParquetFile(path)
  except Exception as e:  # noqa: BLE001 - pyarrow raises several types
    raise PromptError(f"{path} is not a Parquet file: {e}") from None
  names = f.schema_arrow.names
  if column not in names:
    raise PromptError(
      f"{path} has no {column!r} column; its columns: {', '.join(names)} "
      "(set teacher.prompt_column)"
    )
  for batch in f.iter_batches(batch_size=CHUNK, columns=[column]):
    yield [p or "" for p in batch.column(0).to_pylist()]


_READERS = {
  ".txt": _read_txt,
  ".jsonl": _read_jsonl,
  ".csv": _read_csv,
  ".parquet": _read_parquet,
}


def file_hash(path: str) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      h.update(block)
  return h.hexdigest()
