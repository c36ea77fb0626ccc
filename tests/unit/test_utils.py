"""Small pieces checked against references: Frechet distance, mesh sizes,
image grids, config comparison."""

import ml_collections
import numpy as np
import pytest
import scipy.linalg

from boot_jax.evaluation import digits_classifier
from boot_jax.runtime import sharding, workdir


def test_frechet_distance_matches_scipy_sqrtm():
  rng = np.random.default_rng(0)
  for dim in (2, 16, 64):
    a = rng.standard_normal((500, dim))
    b = rng.standard_normal((400, dim)) @ rng.standard_normal((dim, dim)) * 0.3
    b += 0.5
    mu1, s1 = digits_classifier.gaussian(a)
    mu2, s2 = digits_classifier.gaussian(b)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * covmean)
    # sqrtm of a non-symmetric product vs our symmetric eigh route: both
    # float64; agreement to 1e-8 relative.
    np.testing.assert_allclose(
      digits_classifier.frechet_distance(mu1, s1, mu2, s2), expected, rtol=1e-8
    )
  assert abs(digits_classifier.frechet_distance(mu1, s1, mu1, s1)) < 1e-8


@pytest.mark.parametrize(
  "sizes,devices,expected",
  [
    ((-1, 1, 1), 8, (8, 1, 1)),
    ((2, -1, 1), 8, (2, 4, 1)),
    ((1, 1, 1), 8, (1, 1, 1)),
    ((2, 2, 2), 8, (2, 2, 2)),
  ],
)
def test_mesh_shape(sizes, devices, expected):
  cfg = ml_collections.ConfigDict(dict(zip(sharding.AXES, sizes, strict=True)))
  assert sharding.mesh_shape(cfg, devices) == expected


@pytest.mark.parametrize(
  "sizes,message",
  [
    ((-1, -1, 1), "at most one"),
    ((3, -1, 1), "does not divide"),
    ((4, 4, 1), "needs 16 devices"),
    ((0, 1, 1), "positive"),
  ],
)
def test_mesh_shape_errors(sizes, message):
  cfg = ml_collections.ConfigDict(dict(zip(sharding.AXES, sizes, strict=True)))
  with pytest.raises(ValueError, match=message):
    sharding.mesh_shape(cfg, 8)


def test_image_grid_layout():
  images = np.stack([np.full((2, 3, 1), v) for v in (-1.0, 0.0, 1.0)])
  grid = workdir.image_grid(images, ncol=2)
  # 2 rows x 2 cols of 2x3 tiles with 1-pixel white borders.
  assert grid.shape == (2 * 3 + 1, 2 * 4 + 1)
  assert grid[1, 1] == 0 and grid[1, 5] == 128 and grid[4, 1] == 255
  assert grid[0, 0] == 255  # border


def test_config_differences_ignore_resumable_keys():
  old = {"train": {"steps": 10, "seed": 0}, "boot": {"num_steps": 32}}
  new = {"train": {"steps": 99, "seed": 0}, "boot": {"num_steps": 16}}
  assert workdir.config_differences(old, new) == ["boot.num_steps: 32 -> 16"]
  new["eval"] = {"num_samples": 5}
  assert workdir.config_differences(old, new) == ["boot.num_steps: 32 -> 16"]
