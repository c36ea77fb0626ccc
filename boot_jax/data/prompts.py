"""Prompt sources for text-to-image BOOT, at any number of prompts.

Distillation reads prompts only, never images. A prompt source is a
`.txt`, `.jsonl`, `.csv` or `.parquet` file (`boot_jax.prompt_files`).

Prompts are whitespace-normalised and deduplicated (first occurrence
kept). A file is prepared once (`PromptIndex.prepare`), streaming: every
prompt is appended to `texts.bin` with its offset, and a 64-bit hash of it
is kept; one sort of the hashes finds the first occurrences. Memory is
O(number of prompts x 24 bytes), never the text itself (two distinct
prompts share a 64-bit hash with probability ~P^2 / 2^65: 1e-7 for two
million). The prepared index lives in `cache_dir/<sha256 of the file and
column>/` and is reused by every later run; a prompt's text is read back
from the memory-mapped files when a batch needs it.

Embeddings are made in one of two ways (`teacher.text_encoding`):

* `online` (default): each batch's prompts are tokenised on the host and
  encoded by the frozen text encoder on the devices, its parameters
  placed like the teacher's; nothing is prepared beyond the index.
* `cache`: every prompt is encoded once into `EmbeddingCache` shards of
  bfloat16 `[n, L, D]` arrays, each written atomically (a killed run
  resumes at the first missing shard), keyed by the index and the encoder's
  files. It costs `L x D x 2` bytes a prompt on disk (118 KB for CLIP
  ViT-L): 236 GB for DiffusionDB's two million prompts.

Each step's prompts follow a stable shuffle per epoch: the example with
global position `n = step * batch + i` gets prompt `perm_e(n mod P)` of
epoch `e = n // P`, where `perm_e(k) = (a_e k + b_e) mod P` with `a_e`
coprime to P. It is a permutation of the prompts in every epoch, the same
for any process count, and costs O(1) per example.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import time
from collections.abc import Callable

import numpy as np

from boot_jax.data.prompt_files import (  # noqa: F401 - re-exported
  CHUNK,
  FORMATS,
  PromptError,
  check_source,
  file_hash,
  iter_chunks,
  normalise,
  read_prompts,
  remote_prompt_file,
)
from boot_jax.runtime import paths

ENCODINGS = ("online", "cache")
# Bump when the prepared files change meaning.
INDEX_VERSION = 1
# Prompts per embedding-cache shard.
SHARD = 4096


def encoder_key(encoder_dir) -> str:
  """Identifies a text encoder by its config and weight files' contents
  (`encoder_dir`: its folder, or a tuple of the folders of several
  encoders, as SDXL's two)."""
  h = hashlib.sha256()
  dirs = (encoder_dir,) if isinstance(encoder_dir, str) else encoder_dir
  for i, directory in enumerate(dirs):
    for name in sorted(os.listdir(directory)):
      p = os.path.join(directory, name)
      if os.path.isfile(p):
        h.update((f"{i}/" if i else "").encode() + name.encode())
        h.update(file_hash(p).encode())
  return h.hexdigest()


def _hash64(data: bytes) -> int:
  return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")


class PromptIndex:
  """A prepared prompt file: the deduplicated prompts, read lazily.

  Attributes:
    directory: the prepared files (`texts.bin`, `offsets.npy`, `keep.npy`,
      `meta.json`).
    source_sha256: the prompt file's content hash.
  """

  def __init__(self, directory: str):
    self.directory = directory
    with open(os.path.join(directory, "meta.json"), encoding="utf-8") as f:
      self.meta = json.load(f)
    self.source_sha256 = self.meta["source_sha256"]
    self._offsets = np.load(
      os.path.join(directory, "offsets.npy"), mmap_mode="r"
    )
    self._keep = np.load(os.path.join(directory, "keep.npy"), mmap_mode="r")
    size = int(self._offsets[-1])
    self._texts = (
      np.memmap(os.path.join(directory, "texts.bin"), np.uint8, "r")
      if size
      else np.zeros(0, np.uint8)
    )

  def __len__(self) -> int:
    return len(self._keep)

  def texts(self, indices) -> list[str]:
    """The prompts at the given positions (0 .. len - 1, file order)."""
    rows = self._keep[np.asarray(indices, np.int64)]
    starts, stops = self._offsets[rows], self._offsets[rows + 1]
    return [
      self._texts[a:b].tobytes().decode("utf-8")
      for a, b in zip(starts, stops, strict=True)
    ]

  @classmethod
  def prepare(
    cls,
    path: str,
    column: str,
    cache_dir: str,
    printer: Callable = print,
  ) -> PromptIndex:
    """The index of `path`, prepared now unless an earlier run did.

    A `gs://` prompt file is downloaded into the local cache first
    (paths.local_copy); `cache_dir` must be local (memory-mapped).
    """
    if paths.is_remote(cache_dir):
      raise PromptError(
        f"teacher.prompt_cache={cache_dir!r}: the prompt cache must be a "
        "local directory (its index is memory-mapped); the prompt file "
        "itself may be on gs://"
      )
    path = remote_prompt_file(path)
    check_source(path)
    digest = file_hash(path)
    key = hashlib.sha256(
      f"{digest}|{column}|v{INDEX_VERSION}".encode()
    ).hexdigest()[:32]
    final = os.path.join(cache_dir, f"index_{key}")
    if os.path.isfile(os.path.join(final, "meta.json")):
      return cls(final)
    os.makedirs(cache_dir, exist_ok=True)
    tmp = f"{final}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    try:
      printer(f"preparing the prompts of {path} (once; kept in {cache_dir})")
      _prepare_into(tmp, path, column, digest, printer)
      try:
        os.replace(tmp, final)
      except OSError:
        if not os.path.isfile(os.path.join(final, "meta.json")):
          raise
        # Another process prepared the same file first: use theirs.
    finally:
      shutil.rmtree(tmp, ignore_errors=True)
    return cls(final)


def _prepare_into(directory, path, column, digest, printer) -> None:
  start = time.time()
  hashes, lengths = [], []
  with open(os.path.join(directory, "texts.bin"), "wb") as out:
    total = 0
    for chunk in iter_chunks(path, column):
      data = [normalise(p).encode("utf-8") for p in chunk]
      data = [d for d in data if d]
      out.write(b"".join(data))
      hashes.append(np.fromiter(map(_hash64, data), np.uint64, len(data)))
      lengths.append(np.fromiter(map(len, data), np.int64, len(data)))
      total += len(chunk)
      if total // CHUNK % 16 == 0 and len(chunk) == CHUNK:
        printer(f"  {total:,} rows read ({time.time() - start:.0f} s)")
  hashes = np.concatenate(hashes) if hashes else np.zeros(0, np.uint64)
  lengths = np.concatenate(lengths) if lengths else np.zeros(0, np.int64)
  if not len(hashes):
    raise PromptError(f"{path} holds no prompts")
  offsets = np.zeros(len(lengths) + 1, np.int64)
  np.cumsum(lengths, out=offsets[1:])
  _, first = np.unique(hashes, return_index=True)
  keep = np.sort(first).astype(np.int64)
  np.save(os.path.join(directory, "offsets.npy"), offsets)
  np.save(os.path.join(directory, "keep.npy"), keep)
  meta = dict(
    source=os.path.abspath(path),
    source_sha256=digest,
    column=column,
    rows=int(len(hashes)),
    prompts=int(len(keep)),
    version=INDEX_VERSION,
  )
  with open(os.path.join(directory, "meta.json"), "w", encoding="utf-8") as f:
    json.dump(meta, f, indent=2)
  printer(
    f"  {len(keep):,} distinct prompts of {len(hashes):,} "
    f"({time.time() - start:.0f} s)"
  )


class EmbeddingCache:
  """Every prompt's embedding in bfloat16 shards of `SHARD` prompts."""

  def __init__(self, directory: str, num: int):
    self.directory = directory
    self.num = num
    self._open = {}

  def shard_path(self, s: int) -> str:
    return os.path.join(self.directory, f"emb_{s:06d}.npy")

  @property
  def num_shards(self) -> int:
    return -(-self.num // SHARD)

  def missing(self) -> list[int]:
    return [
      s
      for s in range(self.num_shards)
      if not os.path.isfile(self.shard_path(s))
    ]

  def fill(self, index: PromptIndex, encode, shards, printer=print) -> None:
    """Encodes and writes the given shards (each atomically)."""
    import ml_dtypes  # noqa: PLC0415 - a jax dependency

    os.makedirs(self.directory, exist_ok=True)
    start = time.time()
    for n, s in enumerate(shards, 1):
      lo, hi = s * SHARD, min((s + 1) * SHARD, self.num)
      parts = []
      for a in range(lo, hi, 256):
        texts = index.texts(np.arange(a, min(a + 256, hi)))
        parts.append(np.asarray(encode(texts), np.float32))
      emb = np.concatenate(parts).astype(ml_dtypes.bfloat16)
      tmp = self.shard_path(s) + f".tmp-{os.getpid()}"
      with open(tmp, "wb") as f:
        np.save(f, emb.view(np.uint16))
      os.replace(tmp, self.shard_path(s))
      if n % 10 == 0 or n == len(shards):
        printer(
          f"  encoded {n}/{len(shards)} shards of {SHARD} prompts "
          f"({time.time() - start:.0f} s)"
        )

  def _shard(self, s: int):
    if s not in self._open:
      self._open[s] = np.load(self.shard_path(s), mmap_mode="r")
    return self._open[s]

  def rows(self, indices) -> np.ndarray:
    import ml_dtypes  # noqa: PLC0415

    indices = np.asarray(indices, np.int64)
    first = self._shard(0)
    out = np.empty((len(indices),) + first.shape[1:], np.float32)
    for s in np.unique(indices // SHARD):
      sel = np.nonzero(indices // SHARD == s)[0]
      block = self._shard(int(s))[indices[sel] - s * SHARD]
      out[sel] = block.view(ml_dtypes.bfloat16).astype(np.float32)
    return out


class PromptSet:
  """The training prompts: texts from the index, embeddings on demand.

  Attributes:
    index: the prepared prompt file.
    encoding: 'online' or 'cache'.
  """

  def __init__(
    self, index: PromptIndex, encode, cache: EmbeddingCache | None = None
  ):
    self.index = index
    self._encode = encode
    self.cache = cache
    self.encoding = "online" if cache is None else "cache"

  def __len__(self) -> int:
    return len(self.index)

  @property
  def source_sha256(self) -> str:
    return self.index.source_sha256

  def texts(self, indices) -> list[str]:
    return self.index.texts(indices)

  def rows(self, indices) -> np.ndarray:
    """Embeddings `[len(indices), L, D]` (float32) of the given prompts."""
    if self.cache is not None:
      return self.cache.rows(indices)
    return np.asarray(self._encode(self.texts(indices)), np.float32)

  def cycled(self, num: int) -> np.ndarray:
    """The embeddings of the first `num` prompts in file order, cycled."""
    return self.rows(np.arange(num) % len(self))


def load(
  path: str,
  column: str,
  encode,
  cache_dir: str,
  encoding: str = "online",
  encoder_dir: str | None = None,
  printer: Callable = print,
) -> PromptSet:
  """The prompt set of a file: prepared (once), encoded as configured.

  Args:
    path: the prompt file.
    column: the prompt field of .jsonl/.csv/.parquet files.
    encode: `list[str] -> [n, L, D]` embeddings.
    cache_dir: where prepared indices and embedding caches live.
    encoding: 'online' or 'cache' (see the module doc).
    encoder_dir: the text encoder's folder (its files key the cache), or a
      tuple of the folders of a teacher's encoders.
    printer: progress lines.
  """
  if encoding not in ENCODINGS:
    raise PromptError(
      f"teacher.text_encoding={encoding!r}: expected one of {ENCODINGS}"
    )
  index = PromptIndex.prepare(path, column, cache_dir, printer)
  if encoding == "online":
    return PromptSet(index, encode)
  key = hashlib.sha256(
    (os.path.basename(index.directory) + encoder_key(encoder_dir)).encode()
  ).hexdigest()[:32]
  cache = EmbeddingCache(os.path.join(cache_dir, f"emb_{key}"), len(index))
  import jax  # noqa: PLC0415

  rank, count = jax.process_index(), jax.process_count()
  todo = [s for s in cache.missing() if s % count == rank]
  if todo:
    printer(
      f"encoding {len(index):,} prompts into {cache.directory} "
      f"({len(todo)} shards; resumable)"
    )
    cache.fill(index, encode, todo, printer)
  if count > 1:
    from jax.experimental import multihost_utils  # noqa: PLC0415

    multihost_utils.sync_global_devices("boot_jax prompt cache")
    if cache.missing():
      raise PromptError(
        f"{cache.directory} misses shards written by other processes: "
        "the prompt cache must be on a filesystem every process shares"
      )
  return PromptSet(index, encode, cache)


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
