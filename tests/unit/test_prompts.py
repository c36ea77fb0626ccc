"""Prompt sources: formats, deduplication, errors, the cache, the shuffle."""

import json

import numpy as np
import pytest

from boot_jax.data import prompts


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


def test_index_is_prepared_once_and_read_lazily(tmp_path):
  src = tmp_path / "p.txt"
  src.write_text("b  one\n\nb one\ntwo\nthree\ntwo\n", encoding="utf-8")
  lines = []
  index = prompts.PromptIndex.prepare(
    str(src), "prompt", str(tmp_path / "c"), lines.append
  )
  assert len(index) == 3
  assert index.texts([2, 0, 1, 0]) == ["three", "b one", "two", "b one"]
  assert any("3 distinct prompts of 5" in line for line in lines)
  again = prompts.PromptIndex.prepare(
    str(src), "prompt", str(tmp_path / "c"), lines.append
  )
  assert again.directory == index.directory and len(lines) == 2
  # Other contents, another index; the first stays valid.
  src.write_text("x\n")
  other = prompts.PromptIndex.prepare(
    str(src), "prompt", str(tmp_path / "c"), lines.append
  )
  assert other.directory != index.directory and other.texts([0]) == ["x"]
  assert other.source_sha256 != index.source_sha256


def _fake_encode(calls):
  def encode(batch):
    calls.append(len(batch))
    return np.stack(
      [np.full((3, 2), float(p.split()[1]) + 0.001) for p in batch]
    )

  return encode


def test_embedding_cache_is_keyed_and_resumable(tmp_path, monkeypatch):
  monkeypatch.setattr(prompts, "SHARD", 4)
  enc_dir = tmp_path / "enc"
  enc_dir.mkdir()
  (enc_dir / "config.json").write_text("{}")
  src = tmp_path / "p.txt"
  src.write_text("\n".join(f"prompt {i}" for i in range(10)))
  calls = []
  kw = dict(
    encode=_fake_encode(calls),
    cache_dir=str(tmp_path / "c"),
    encoding="cache",
    encoder_dir=str(enc_dir),
    printer=lambda s: 0,
  )
  a = prompts.load(str(src), "prompt", **kw)
  assert a.encoding == "cache" and sum(calls) == 10
  rows = a.rows([7, 2, 3, 7])
  # bfloat16 on disk: 8 bits of mantissa, relative error <= 2^-8.
  np.testing.assert_allclose(rows[:, 0, 0], [7.001, 2.001, 3.001, 7.001], 4e-3)
  assert rows.dtype == np.float32 and rows.shape == (4, 3, 2)
  # A killed run lost a shard: only that shard is encoded again.
  shards = sorted((tmp_path / "c").glob("emb_*/emb_*.npy"))
  assert len(shards) == 3
  shards[1].unlink()
  b = prompts.load(str(src), "prompt", **kw)
  assert sum(calls) == 14
  np.testing.assert_array_equal(b.rows([4, 5]), a.rows([4, 5]))
  # Another encoder (its files changed) gets another cache.
  (enc_dir / "config.json").write_text('{"v": 2}')
  prompts.load(str(src), "prompt", **kw)
  assert sum(calls) == 24
  # Online: nothing is encoded until rows are asked for.
  c = prompts.load(str(src), "prompt", **dict(kw, encoding="online"))
  assert sum(calls) == 24 and c.encoding == "online"
  np.testing.assert_allclose(c.rows([9])[0, 0, 0], 9.001, 1e-6)
  with pytest.raises(prompts.PromptError, match="text_encoding='disk'"):
    prompts.load(str(src), "prompt", **dict(kw, encoding="disk"))


def test_missing_columns_are_named(tmp_path):
  csv = tmp_path / "p.csv"
  csv.write_text("id,text\n1,a\n")
  with pytest.raises(prompts.PromptError, match="its columns: id, text"):
    prompts.read_prompts(str(csv))
  pq = pytest.importorskip("pyarrow.parquet")
  import pyarrow as pa

  path = tmp_path / "meta.parquet"
  pq.write_table(pa.table({"caption": ["x"], "seed": [1]}), str(path))
  with pytest.raises(prompts.PromptError, match="its columns: caption, seed"):
    prompts.PromptIndex.prepare(str(path), "prompt", str(tmp_path / "c"))
  bad = tmp_path / "bad.parquet"
  bad.write_bytes(b"not parquet at all")
  with pytest.raises(prompts.PromptError, match="is not a Parquet file"):
    prompts.read_prompts(str(bad))


def test_stable_shuffle_is_a_permutation_per_epoch():
  n = 12
  idx = prompts.prompt_indices(0, np.arange(3 * n), n)
  for e in range(3):
    assert sorted(idx[e * n : (e + 1) * n]) == list(range(n))
  assert not np.array_equal(idx[:n], idx[n : 2 * n])  # reshuffled
  # Any split of the positions (e.g. over processes) gives the same.
  parts = [prompts.prompt_indices(0, np.arange(a, a + 6), n) for a in (0, 6)]
  np.testing.assert_array_equal(np.concatenate(parts), idx[:12])


def test_csv_long_fields_are_read_and_bad_rows_named(tmp_path, monkeypatch):
  import csv

  from boot_jax.data import prompt_files

  path = tmp_path / "p.csv"
  long = "word " * 40_000  # 200 KB: over Python's default field limit
  path.write_text(f'prompt\n"{long}"\na cat\n')
  assert prompt_files.read_prompts(str(path), "prompt") == [
    long.strip(),
    "a cat",
  ]
  # A field over the limit is refused naming the file and its line.
  limit = csv.field_size_limit(1000)
  try:
    monkeypatch.setattr(prompt_files, "CSV_FIELD_LIMIT", 1000)
    path.write_text(f"prompt\na dog\n{'x' * 2000}\n")
    with pytest.raises(prompt_files.PromptError, match=r"p\.csv line 3: "):
      prompt_files.read_prompts(str(path), "prompt")
  finally:
    csv.field_size_limit(limit)
