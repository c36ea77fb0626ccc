"""Pretrained weights onto our networks' abstract parameters.

Converters (a PyTorch state dict, safetensors shards) rename each source
array to a flat key of the network's parameter tree and hand it to
`Assembly`, which checks its shape against the abstract parameters
(ShapeDtypeStructs: nothing full size is made twice) and, at the end,
that no parameter was left without a weight. Every failure is one line of
the caller's error class.
"""

from __future__ import annotations

import numpy as np
from flax import traverse_util


class Assembly:
  """Collects float32 weights for the flat keys of `abstract`.

  Args:
    abstract: the parameter tree (arrays or ShapeDtypeStructs).
    error: the exception class of the caller's failures.
  """

  def __init__(self, abstract, error=ValueError):
    self.want = traverse_util.flatten_dict(abstract)
    self.error = error
    self.out = {}

  def __contains__(self, key: tuple[str, ...]) -> bool:
    return key in self.want

  def put(self, key: tuple[str, ...], value, source: str) -> None:
    """Stores `value` (from the source weight named `source`) at `key`."""
    shape = tuple(self.want[key].shape)
    if tuple(value.shape) != shape:
      raise self.error(
        f"weight {source} has shape {tuple(value.shape)}, which does not "
        f"fit {'/'.join(key)} {shape}"
      )
    self.out[key] = np.asarray(value, np.float32)

  def tree(self, what: str = "the checkpoint"):
    """The parameter tree, once every key has its weight."""
    missing = sorted(set(self.want) - set(self.out))
    if missing:
      raise self.error(f"{what} has no weight for {'/'.join(missing[0])}")
    return traverse_util.unflatten_dict(self.out)


def torch_key(pt_key: str, ndim: int) -> tuple[tuple[str, ...], str]:
  """A PyTorch key -> (Flax path, how to reshape), for our ports, whose
  submodules are named after PyTorch's module paths with each index joined
  to its parent by an underscore (`down_blocks.1.attentions.0.to_q.weight`
  is `down_blocks_1/attentions_0/to_q/kernel`). `how`: 'conv' (OIHW ->
  HWIO), 'dense' (transposed) or 'same'."""
  parts = []
  for p in pt_key.split("."):
    if p.isdigit() and parts:
      parts[-1] = f"{parts[-1]}_{p}"
    else:
      parts.append(p)
  last = parts[-1]
  if last == "weight":
    if ndim == 4:
      return tuple(parts[:-1]) + ("kernel",), "conv"
    if ndim == 2:
      return tuple(parts[:-1]) + ("kernel",), "dense"
    return tuple(parts[:-1]) + ("scale",), "same"
  return tuple(parts), "same"


def to_flax(tensor, how: str, back: bool = False):
  """A PyTorch weight in the layout `torch_key` said (`how`); with `back`,
  ours in PyTorch's."""
  if how == "conv":
    return tensor.transpose((3, 2, 0, 1) if back else (2, 3, 1, 0))
  if how == "dense":
    return tensor.T
  return tensor


def to_torch(value, how: str):
  """Our weight back in PyTorch's layout (`how` from `torch_key`)."""
  return to_flax(value, how, back=True)
