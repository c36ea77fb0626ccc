"""KID and precision/recall against independent references.

torch-fidelity 0.4.0 itself (its `kid_features_to_metric` and
`prc_features_to_metric`, run in the vendor folder's process, fed float64
features so both sides compute in float64), scikit-learn's
`polynomial_kernel` (degree 3, gamma 1/d, coef0 1) on the same subsets for
KID, and scikit-learn's `NearestNeighbors` with scipy's `cdist` for the
k-NN balls. 1e-9 relative leaves only float64 rounding, except
torch-fidelity's precision and recall, which it averages in float32
(1e-6).
"""

import numpy as np
import pytest
import vendor
from scipy.spatial.distance import cdist
from sklearn.metrics.pairwise import polynomial_kernel
from sklearn.neighbors import NearestNeighbors

from boot_jax.evaluation import feature_metrics as fm


def _sets(n=300, m=250, d=16, shift=0.3, seed=0):
  rng = np.random.default_rng(seed)
  return rng.normal(size=(n, d)), rng.normal(size=(m, d)) + shift


def test_kid_matches_sklearn_kernel_on_the_same_subsets():
  x, y = _sets()
  mean, std = fm.kid(x, y, subsets=7, subset_size=100, seed=3)
  rng = np.random.RandomState(3)  # noqa: NPY002 (as torch-fidelity draws)
  values = []
  d = x.shape[1]
  for _ in range(7):
    b = y[rng.choice(len(y), 100, replace=False)]
    a = x[rng.choice(len(x), 100, replace=False)]

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


_TORCH_FIDELITY = """
import json
import numpy as np, torch
from torch_fidelity.metric_kid import kid_features_to_metric
from torch_fidelity.metric_prc import prc_features_to_metric

base = sys.argv[1]
real = torch.from_numpy(np.load(base + "/real.npy"))
fake = torch.from_numpy(np.load(base + "/fake.npy"))
# torch-fidelity's convention: input 1 generated, input 2 real; its
# default kernel, subsets, seed and neighbourhood except the sizes.
out = {
  "default": kid_features_to_metric(fake, real, verbose=False),
  "small": kid_features_to_metric(
    fake, real, kid_subsets=9, kid_subset_size=120, rng_seed=5, verbose=False
  ),
  "prc": prc_features_to_metric(fake, real, verbose=False),
}
json.dump(out, open(base + "/out.json", "w"))
"""


def test_kid_and_precision_recall_match_torch_fidelity(tmp_path):
  """torch-fidelity's own functions on the same float64 features: KID
  with its defaults (100 subsets of 1,000, seed 2020) and with other
  sizes and seed, precision/recall with k = 3."""
  vendor.require("torch_fidelity")
  rng = np.random.default_rng(1)
  real = rng.normal(size=(1100, 32))
  fake = 0.9 * rng.normal(size=(1050, 32)) + 0.15
  np.save(tmp_path / "real.npy", real)
  np.save(tmp_path / "fake.npy", fake)
  vendor.run(_TORCH_FIDELITY, tmp_path)
  import json

  want = json.loads((tmp_path / "out.json").read_text())
  for name, kwargs in (
    ("default", {}),
    ("small", dict(subsets=9, subset_size=120, seed=5)),
  ):
    mean, std = fm.kid(real, fake, **kwargs)
    ref = want[name]
    print(name, mean, ref["kernel_inception_distance_mean"])
    assert mean > 1e-3  # the sets differ: a value worth comparing
    assert mean == pytest.approx(
      ref["kernel_inception_distance_mean"], rel=1e-9
    )
    assert std == pytest.approx(ref["kernel_inception_distance_std"], rel=1e-9)
  p, r = fm.precision_recall(real, fake, k=3)
  assert 0.0 < p < 1.0 and 0.0 < r < 1.0
  assert abs(p - want["prc"]["precision"]) <= 1e-6
  assert abs(r - want["prc"]["recall"]) <= 1e-6


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
