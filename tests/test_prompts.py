"""Prompt sources: formats, deduplication, errors, the cache, the shuffle."""

import json

import numpy as np
import pytest

from boot_jax import prompts


def test_formats_and_dedup(tmp_path):
  txt = tmp_path / "p.txt"
  txt.write_text("a red square\n\n  a  red square \nblue\n", encoding="utf-8")
  assert prompts.read_prompts(str(txt)) == ["a red square", "blue"]

  jl = tmp_path / "p.jsonl"
  jl.write_text(
    "\n".join(json.dumps({"text": t}) for t in ["x", "y", "x"]) + "\n"
  )
  assert prompts.read_prompts(str(jl), "text") == ["x", "y"]
  with pytest.raises(prompts.PromptError, match="no 'prompt' field"):
    prompts.read_prompts(str(jl))

  csv = tmp_path / "p.csv"
  csv.write_text('id,prompt\n1,"a, b"\n2,c\n3,"a, b"\n')
  assert prompts.read_prompts(str(csv)) == ["a, b", "c"]

  pq = pytest.importorskip("pyarrow.parquet")
  import pyarrow as pa

  path = tmp_path / "meta.parquet"
  pq.write_table(pa.table({"prompt": ["p1", "p2", "p1", None]}), str(path))
  assert prompts.read_prompts(str(path)) == ["p1", "p2"]


def test_bad_sources(tmp_path):
  empty = tmp_path / "empty.txt"
  empty.write_text("\n \n")
  with pytest.raises(prompts.PromptError, match="holds no prompts"):
    prompts.read_prompts(str(empty))
  latin = tmp_path / "latin.txt"
  latin.write_bytes("caf\xe9\n".encode("latin-1"))
  with pytest.raises(prompts.PromptError, match="is not UTF-8"):
    prompts.read_prompts(str(latin))
  with pytest.raises(prompts.PromptError, match="does not exist"):
    prompts.read_prompts(str(tmp_path / "missing.txt"))
  docx = tmp_path / "p.docx"
  docx.write_text("a prompt")
  with pytest.raises(prompts.PromptError, match="unknown prompt file type"):
    prompts.read_prompts(str(docx))


def test_cache_is_keyed_and_read_lazily(tmp_path):
  enc_dir = tmp_path / "enc"
  enc_dir.mkdir()
  (enc_dir / "config.json").write_text("{}")
  src = tmp_path / "p.txt"
  src.write_text("\n".join(f"prompt {i}" for i in range(10)))
  calls = []

  def encode(batch):
    calls.append(len(batch))
    return np.stack([np.full((3, 2), float(p.split()[1])) for p in batch])

  kw = dict(encode=encode, cache_dir=str(tmp_path / "c"), printer=lambda s: 0)
  a = prompts.encode_cached(str(src), "prompt", str(enc_dir), **kw)
  b = prompts.encode_cached(str(src), "prompt", str(enc_dir), **kw)
  assert sum(calls) == 10 and a.path == b.path  # encoded once
  rows = b.rows([7, 2, 3, 7])
  np.testing.assert_array_equal(rows[:, 0, 0], [7, 2, 3, 7])
  # Another encoder (its files changed) gets another cache entry.
  (enc_dir / "config.json").write_text('{"v": 2}')
  c = prompts.encode_cached(str(src), "prompt", str(enc_dir), **kw)
  assert c.path != a.path and sum(calls) == 20


def test_stable_shuffle_is_a_permutation_per_epoch():
  n = 12
  idx = prompts.prompt_indices(0, np.arange(3 * n), n)
  for e in range(3):
    assert sorted(idx[e * n : (e + 1) * n]) == list(range(n))
  assert not np.array_equal(idx[:n], idx[n : 2 * n])  # reshuffled
  # Any split of the positions (e.g. over processes) gives the same.
  parts = [prompts.prompt_indices(0, np.arange(a, a + 6), n) for a in (0, 6)]
  np.testing.assert_array_equal(np.concatenate(parts), idx[:12])
