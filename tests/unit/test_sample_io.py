"""sample's --noise files: checked, then read block by block."""


def test_noise_files_are_read_block_by_block(tmp_path, monkeypatch):
  import numpy as np

  from boot_jax.sampling import sample_io

  eps = np.random.default_rng(0).standard_normal((37, 3, 2))
  np.save(tmp_path / "eps.npy", eps.astype(">f8"))  # big-endian float64
  monkeypatch.setattr(sample_io, "NOISE_CHUNK_BYTES", 5 * 48)  # 5 rows
  noise = sample_io.read_noise(str(tmp_path / "eps.npy"), (3, 2))
  assert len(noise) == 37
  blocks = list(noise.blocks())
  assert [start for start, _ in blocks] == list(range(0, 37, 5))
  np.testing.assert_array_equal(
    np.concatenate([rows for _, rows in blocks]), eps.astype(np.float32)
  )
  np.testing.assert_array_equal(noise.rows(30, 10), eps[30:].astype("f4"))
