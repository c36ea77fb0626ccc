"""Prompt sources for text-to-image BOOT: read, deduplicate, encode, cache.

Distillation reads prompts only, never images. A prompt source is a file:

* `.txt`: one prompt a line (blank lines skipped);
* `.jsonl`: one JSON object a line, the prompt under `column`;
* `.csv`: a header row, the prompt under `column`;
* `.parquet`: the prompt under `column` (DiffusionDB's metadata has
  `prompt`; needs pyarrow).

Prompts are stripped and deduplicated (first occurrence kept), encoded
once by the frozen text encoder, and cached as safetensors under
`cache_dir`, keyed by the encoder (its config and weight files) and the
prompt file's content hash. Training reads the cache lazily, row by row.

Each step's prompts follow a stable shuffle per epoch: the example with
global position `n = step * batch + i` gets prompt `perm_e(n mod P)` of
epoch `e = n // P`, where `perm_e(k) = (a_e k + b_e) mod P` with `a_e`
coprime to P. It is a permutation of the prompts in every epoch, the same
for any process count, and costs O(1) per example.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os

import numpy as np

FORMATS = (".txt", ".jsonl", ".csv", ".parquet")


class PromptError(ValueError):
  """A prompt source that cannot be read."""


def read_prompts(path: str, column: str = "prompt") -> list[str]:
  """The deduplicated prompts of a file (see the module doc for formats)."""
  if not path:
    raise PromptError("no prompt file given (teacher.prompts)")
  if not os.path.isfile(path):
    raise PromptError(f"prompt file {path!r} does not exist")
  ext = os.path.splitext(path)[1].lower()
  if ext not in FORMATS:
    raise PromptError(
      f"{path}: unknown prompt file type {ext!r}; expected one of {FORMATS}"
    )
  try:
    raw = _READERS[ext](path, column)
  except UnicodeDecodeError as e:
    raise PromptError(f"{path} is not UTF-8 text: {e.reason}") from None
  seen, prompts = set(), []
  for p in raw:
    p = " ".join(str(p).split())
    if p and p not in seen:
      seen.add(p)
      prompts.append(p)
  if not prompts:
    raise PromptError(f"{path} holds no prompts")
  return prompts


def _read_txt(path, column):
  del column
  with open(path, encoding="utf-8") as f:
    return f.read().splitlines()


def _read_jsonl(path, column):
  out = []
  with open(path, encoding="utf-8") as f:
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
      out.append(value)
  return out


def _read_csv(path, column):
  with open(path, encoding="utf-8", newline="") as f:
    reader = csv.DictReader(f)
    if column not in (reader.fieldnames or ()):
      raise PromptError(f"{path} has no {column!r} column")
    return [row[column] or "" for row in reader]


def _read_parquet(path, column):
  try:
    import pyarrow.parquet as pq  # noqa: PLC0415 - optional dependency
  except ImportError:
    raise PromptError(
      "reading .parquet prompt files needs pyarrow (pip install pyarrow)"
    ) from None
  table = pq.read_table(path)
  if column not in table.column_names:
    raise PromptError(f"{path} has no {column!r} column")
  return [p or "" for p in table.column(column).to_pylist()]


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


def encoder_key(encoder_dir: str) -> str:
  """Identifies a text encoder by its config and weight files' contents."""
  h = hashlib.sha256()
  for name in sorted(os.listdir(encoder_dir)):
    p = os.path.join(encoder_dir, name)
    if os.path.isfile(p):
      h.update(name.encode())
      h.update(file_hash(p).encode())
  return h.hexdigest()


class PromptSet:
  """Encoded prompts, read lazily from the safetensors cache.

  Attributes:
    prompts: the deduplicated prompts.
    path: the cache file.
  """

  def __init__(self, prompts: list[str], path: str):
    self.prompts = prompts
    self.path = path
    from safetensors import safe_open  # noqa: PLC0415

    self._file = safe_open(path, framework="numpy")
    self._table = self._file.get_slice("embeddings")

  def __len__(self) -> int:
    return len(self.prompts)

  def rows(self, indices) -> np.ndarray:
    """Embeddings `[len(indices), L, D]` of the given prompt indices."""
    indices = np.asarray(indices, np.int64)
    order = np.argsort(indices, kind="stable")
    out = np.empty((len(indices),) + self.shape, np.float32)
    # Contiguous runs of sorted indices are read as one slice each.
    sorted_idx = indices[order]
    n = len(sorted_idx)
    start = 0
    while start < n:
      stop = start + 1
      while stop < n and sorted_idx[stop] <= sorted_idx[stop - 1] + 1:
        stop += 1
      lo, hi = int(sorted_idx[start]), int(sorted_idx[stop - 1]) + 1
      block = self._table[lo:hi]
      out[order[start:stop]] = block[sorted_idx[start:stop] - lo]
      start = stop
    return out

  def cycled(self, num: int) -> np.ndarray:
    """The embeddings of the first `num` prompts in file order, cycled."""
    return self.rows(np.arange(num) % len(self))

  @property
  def shape(self) -> tuple[int, ...]:
    return tuple(self._table.get_shape()[1:])


def encode_cached(
  prompts_path: str,
  column: str,
  encoder_dir: str,
  encode,
  cache_dir: str,
  batch_size: int = 64,
  printer=print,
) -> PromptSet:
  """Reads, encodes (once) and caches a prompt file's embeddings.

  Args:
    prompts_path: the prompt file.
    column: the prompt field of .jsonl/.csv/.parquet files.
    encoder_dir: the text encoder's folder (its files key the cache).
    encode: `list[str] -> [n, L, D]` embeddings.
    cache_dir: where cache files live.
    batch_size: prompts per encoder call.
    printer: progress lines.
  """
  prompts = read_prompts(prompts_path, column)
  key = hashlib.sha256(
    (encoder_key(encoder_dir) + file_hash(prompts_path) + column).encode()
  ).hexdigest()[:32]
  path = os.path.join(cache_dir, f"prompts_{key}.safetensors")
  if not os.path.isfile(path):
    from safetensors.numpy import save_file  # noqa: PLC0415

    os.makedirs(cache_dir, exist_ok=True)
    printer(f"encoding {len(prompts)} prompts from {prompts_path} (cached)")
    chunks = []
    for i in range(0, len(prompts), batch_size):
      chunks.append(np.asarray(encode(prompts[i : i + batch_size]), np.float32))
    tmp = path + ".tmp"
    save_file(
      {"embeddings": np.concatenate(chunks)},
      tmp,
      metadata={"prompts_file": os.path.abspath(prompts_path)},
    )
    os.replace(tmp, path)
  return PromptSet(prompts, path)


def _coprime_multiplier(rng: np.random.Generator, n: int) -> int:
  if n <= 2:
    return 1
  while True:
    a = int(rng.integers(1, n))
    if math.gcd(a, n) == 1:
      return a


def prompt_indices(seed: int, positions, num_prompts: int) -> np.ndarray:
  """The prompt of each global example position (stable shuffle per epoch)."""
  positions = np.asarray(positions, np.int64)
  epochs = positions // num_prompts
  out = np.empty_like(positions)
  for e in np.unique(epochs):
    rng = np.random.default_rng([seed, int(e)])
    a = _coprime_multiplier(rng, num_prompts)
    b = int(rng.integers(0, num_prompts))
    sel = epochs == e
    out[sel] = (a * (positions[sel] % num_prompts) + b) % num_prompts
  return out
