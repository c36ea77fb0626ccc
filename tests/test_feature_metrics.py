"""KID and precision/recall against independent references.

References: scikit-learn's `polynomial_kernel` (degree 3, gamma 1/d,
coef0 1) on the same subsets for KID, and scikit-learn's
`NearestNeighbors` with scipy's `cdist` for the k-NN balls. Both sides
compute in float64, so 1e-9 relative leaves only rounding.
"""

import numpy as np
import pytest
from scipy.spatial.distance import cdist
from sklearn.metrics.pairwise import polynomial_kernel
from sklearn.neighbors import NearestNeighbors

from boot_jax import feature_metrics as fm


def _sets(n=300, m=250, d=16, shift=0.3, seed=0):
  rng = np.random.default_rng(seed)
  return rng.normal(size=(n, d)), rng.normal(size=(m, d)) + shift


def test_kid_matches_sklearn_kernel_on_the_same_subsets():
  x, y = _sets()
  mean, std = fm.kid(x, y, subsets=7, subset_size=100, seed=3)
  rng = np.random.default_rng(3)
  values = []
  d = x.shape[1]
  for _ in range(7):
    a = x[rng.choice(len(x), 100, replace=False)]
    b = y[rng.choice(len(y), 100, replace=False)]

    def k(p, q):
      return polynomial_kernel(p, q, degree=3, gamma=1.0 / d, coef0=1)

    off = ~np.eye(100, dtype=bool)
    values.append(
      k(a, a)[off].mean() + k(b, b)[off].mean() - 2 * k(a, b).mean()
    )
  assert mean == pytest.approx(np.mean(values), rel=1e-9)
  assert std == pytest.approx(np.std(values), rel=1e-9)
  # The unbiased estimate is near 0 for one distribution and grows with
  # the shift.
  same, _ = fm.kid(x[:150], x[150:], subsets=20, subset_size=100)
  assert abs(same) < 0.2 * mean


def test_precision_recall_match_nearest_neighbours():
  x, y = _sets(shift=0.8)
  p, r = fm.precision_recall(x, y, k=3)

  def reference(centres, points):
    dist, _ = NearestNeighbors(n_neighbors=4).fit(centres).kneighbors(centres)
    return (cdist(points, centres) <= dist[:, 3][None, :]).any(1).mean()

  assert p == pytest.approx(reference(x, y), abs=1e-12)
  assert r == pytest.approx(reference(y, x), abs=1e-12)
  assert 0.0 < p < 1.0 and 0.0 < r < 1.0
  assert fm.precision_recall(x, x) == (1.0, 1.0)
  assert fm.precision_recall(x, y + 100.0) == (0.0, 0.0)


def test_blocks_do_not_change_results(monkeypatch):
  x, y = _sets()
  whole = fm.precision_recall(x, y)
  monkeypatch.setattr(fm, "BLOCK", 7)
  assert fm.precision_recall(x, y) == whole


def test_bad_inputs():
  x, y = _sets()
  with pytest.raises(ValueError, match="feature sizes differ"):
    fm.kid(x, y[:, :3])
  with pytest.raises(ValueError, match="rows, dims"):
    fm.precision_recall(x[0], y)
  with pytest.raises(ValueError, match="more than k=3 rows"):
    fm.knn_radii(x[:3])
