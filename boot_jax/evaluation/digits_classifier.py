"""Frechet distance in the feature space of a small digits classifier.

Inception features mean nothing on 8x8 digits, so the evaluation trains its
own classifier on the same dataset (a held-out split measures it), caches
its weights (msgpack, keyed by the data and the architecture), and compares
Gaussians fitted to its penultimate features:

    FD = |mu_1 - mu_2|^2 + tr(S_1 + S_2 - 2 (S_1^1/2 S_2 S_1^1/2)^1/2).
"""

from __future__ import annotations

import hashlib
import os

import flax.linen as nn
import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import optax

from boot_jax.data import datasets

FEATURES = 64


class Classifier(nn.Module):
  """A small CNN: two convolutions, then a 64-d feature layer."""

  num_classes: int

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.relu(nn.Conv(32, (3, 3))(x))
    x = nn.relu(nn.Conv(64, (3, 3), strides=(2, 2))(x))
    x = x.reshape(x.shape[0], -1)
    x = nn.Dropout(0.3, deterministic=not train)(x)
    feats = nn.relu(nn.Dense(FEATURES)(x))
    return nn.Dense(self.num_classes)(feats), feats


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
  """The Frechet distance of two Gaussians (float64, symmetric eigh)."""
  mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
  s1, s2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
  w, v = np.linalg.eigh(s1)
  root1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
  middle = root1 @ s2 @ root1
  eig = np.linalg.eigvalsh((middle + middle.T) / 2)
  tr_sqrt = np.sum(np.sqrt(np.clip(eig, 0, None)))
  diff = mu1 - mu2
  return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * tr_sqrt)


def gaussian(features: np.ndarray):
  f = np.asarray(features, np.float64)
  return f.mean(0), np.cov(f, rowvar=False)


def _cache_dir() -> str:
  return os.environ.get(
    "BOOT_JAX_CACHE",
    os.path.join(os.path.expanduser("~"), ".cache", "boot_jax"),
  )


def _fingerprint(dataset: datasets.Dataset, seed: int, steps: int) -> str:
  h = hashlib.sha256()
  h.update(np.ascontiguousarray(dataset.images).tobytes())
  h.update(np.ascontiguousarray(dataset.labels).tobytes())
  h.update(f"{Classifier.__doc__}|{FEATURES}|{seed}|{steps}|v1".encode())
  return h.hexdigest()[:16]


class FeatureNet:
  """A trained classifier: features, predictions and held-out accuracy."""

  def __init__(self, module, params, accuracy: float, path: str):
    self.module = module
    self.params = params
    self.accuracy = accuracy
    self.path = path
    self._apply = jax.jit(lambda p, x: module.apply({"params": p}, x))

  def logits_and_features(self, images, batch_size: int = 1000):
    logits, feats = [], []
    for i in range(0, len(images), batch_size):
      lo, fe = self._apply(self.params, jnp.asarray(images[i : i + batch_size]))
      logits.append(np.asarray(lo))
      feats.append(np.asarray(fe))
    return np.concatenate(logits), np.concatenate(feats)

  def features(self, images):
    return self.logits_and_features(images)[1]

  def predict(self, images):
    return np.argmax(self.logits_and_features(images)[0], -1)


def train_classifier(
  dataset: datasets.Dataset,
  seed: int = 0,
  steps: int = 1500,
  batch_size: int = 128,
  holdout: float = 0.2,
  printer=print,
) -> FeatureNet:
  """Trains (or loads from the cache) the feature classifier.

  The cache file is `$BOOT_JAX_CACHE/classifier-<fingerprint>.msgpack`
  (default `~/.cache/boot_jax`), where the fingerprint covers the images,
  labels, architecture, seed and steps.
  """
  if dataset.num_classes < 2:
    raise datasets.DataError("the FID classifier needs labelled data")
  train, hold = dataset.split(holdout, seed)
  module = Classifier(dataset.num_classes)
  key = jax.random.key(seed)
  params = module.init(key, jnp.asarray(train.images[:1]))["params"]
  path = os.path.join(
    _cache_dir(), f"classifier-{_fingerprint(dataset, seed, steps)}.msgpack"
  )
  if os.path.isfile(path):
    with open(path, "rb") as f:
      params = flax.serialization.from_bytes(params, f.read())
  else:
    params = _fit(module, params, train, key, steps, batch_size)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + f".tmp{os.getpid()}"
    with open(tmp, "wb") as f:
      f.write(flax.serialization.to_bytes(params))
    os.replace(tmp, path)
    printer(f"trained the FID classifier; cached at {path}")
  net = FeatureNet(module, params, 0.0, path)
  net.accuracy = float(np.mean(net.predict(hold.images) == hold.labels))
  return net


def _fit(module, params, train, key, steps, batch_size):
  opt = optax.adamw(optax.cosine_decay_schedule(3e-3, steps), weight_decay=1e-4)
  images = jnp.asarray(train.images)
  labels = jnp.asarray(train.labels)

  @jax.jit
  def step(params, opt_state, i):
    k = jax.random.fold_in(key, i)
    k_idx, k_drop, k_shift = jax.random.split(k, 3)
    idx = jax.random.randint(k_idx, (batch_size,), 0, images.shape[0])
    x = images[idx]
    # Light augmentation: shift by up to one pixel.
    sh = jax.random.randint(k_shift, (2,), -1, 2)
    x = jnp.roll(x, (sh[0], sh[1]), axis=(1, 2))

    def loss_fn(p):
      logits, _ = module.apply(
        {"params": p}, x, train=True, rngs={"dropout": k_drop}
      )
      return optax.softmax_cross_entropy_with_integer_labels(
        logits, labels[idx]
      ).mean()

    grads = jax.grad(loss_fn)(params)
    updates, opt_state = opt.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  opt_state = opt.init(params)
  for i in range(steps):
    params, opt_state = step(params, opt_state, i)
  return params
