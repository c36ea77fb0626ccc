"""Distribution metrics on feature vectors: KID, precision and recall.

The Frechet distance lives in `boot_jax.fid`. These take two sets of
feature vectors (rows), whatever network made them, and compute in
float64 numpy, in blocks of rows so that no all-pairs matrix of two large
sets is ever held whole.

KID (kernel inception distance): the unbiased estimate of the squared
maximum mean discrepancy with the cubic polynomial kernel
`k(x, y) = (x . y / d + 1)^3`, on `subsets` random subsets of
`subset_size` rows of each set (drawn without replacement within a
subset), reported as the mean and standard deviation over subsets. The
subsets are drawn as torch-fidelity draws them (numpy's
`RandomState(seed)`, the generated set's rows first, then the real
set's; seed 2020, 100 subsets of 1,000 by default), so that on the same
features the two report the same KID (tests/unit/test_feature_metrics.py);
where a set has fewer rows than `subset_size`, subsets are that small
(torch-fidelity refuses instead):

    MMD^2 = sum_{i != j} k(x_i, x_j) / (m (m - 1))
          + sum_{i != j} k(y_i, y_j) / (m (m - 1))
          - 2 sum_{i, j} k(x_i, y_j) / m^2

Precision and recall (k-nearest-neighbour manifolds, k = 3): each real
row gets the radius of the ball reaching its k-th nearest other real row;
precision is the fraction of generated rows inside at least one real ball,
recall the fraction of real rows inside at least one generated ball (radii
from the generated rows' own neighbours). A row on a ball's surface is
inside.
"""

from __future__ import annotations

import numpy as np

BLOCK = 2048


def _rows(a) -> np.ndarray:
  a = np.asarray(a, np.float64)
  if a.ndim != 2:
    raise ValueError(f"features must be [rows, dims], got shape {a.shape}")
  return a


def _sq_dists(a, b) -> np.ndarray:
  """Squared Euclidean distances `[len(a), len(b)]` (clipped at 0)."""
  d = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
  return np.maximum(d, 0.0)


def kid(
  real,
  fake,
  subsets: int = 100,
  subset_size: int = 1000,
  seed: int = 2020,
) -> tuple[float, float]:
  """`(mean, std)` of the unbiased MMD^2 over subsets of `real` and
  `fake` (module doc)."""
  x, y = _rows(real), _rows(fake)
  if x.shape[1] != y.shape[1]:
    raise ValueError(f"feature sizes differ: {x.shape[1]} vs {y.shape[1]}")
  m = min(subset_size, len(x), len(y))
  if m < 2:
    raise ValueError("KID needs at least 2 rows in each set")
  d = x.shape[1]
  rng = np.random.RandomState(seed)  # noqa: NPY002 (torch-fidelity's)
  values = np.empty(subsets)
  for s in range(subsets):
    b = y[rng.choice(len(y), m, replace=False)]
    a = x[rng.choice(len(x), m, replace=False)]
    kxx = (a @ a.T / d + 1.0) ** 3
    kyy = (b @ b.T / d + 1.0) ** 3
    kxy = (a @ b.T / d + 1.0) ** 3
    within = (kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (
      m * (m - 1)
    )
    values[s] = within - 2.0 * kxy.sum() / (m * m)
  return float(values.mean()), float(values.std())


def knn_radii(a, k: int = 3) -> np.ndarray:
  """Each row's distance to its k-th nearest other row."""
  a = _rows(a)
  if len(a) <= k:
    raise ValueError(f"need more than k={k} rows, got {len(a)}")
  out = np.empty(len(a))
  for i in range(0, len(a), BLOCK):
    d = _sq_dists(a[i : i + BLOCK], a)
    # Column 0 of the sorted row is the row itself (distance 0).
    out[i : i + BLOCK] = np.sqrt(np.partition(d, k, axis=1)[:, k])
  return out


def _covered(points, centres, radii) -> np.ndarray:
  """Whether each point lies in at least one ball (centre, radius)."""
  inside = np.zeros(len(points), bool)
  r2 = radii**2
  for i in range(0, len(points), BLOCK):
    p = points[i : i + BLOCK]
    hit = np.zeros(len(p), bool)
    for j in range(0, len(centres), BLOCK):
      d = _sq_dists(p, centres[j : j + BLOCK])
      hit |= (d <= r2[None, j : j + BLOCK]).any(1)
    inside[i : i + BLOCK] = hit
  return inside


def precision_recall(real, fake, k: int = 3) -> tuple[float, float]:
  """`(precision, recall)` of `fake` against `real` (module doc)."""
  x, y = _rows(real), _rows(fake)
  if x.shape[1] != y.shape[1]:
    raise ValueError(f"feature sizes differ: {x.shape[1]} vs {y.shape[1]}")
  precision = _covered(y, x, knn_radii(x, k)).mean()
  recall = _covered(x, y, knn_radii(y, k)).mean()
  return float(precision), float(recall)
